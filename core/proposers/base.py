"""The one interface every proposer (LLM or not) implements for the layer-rate search."""
from __future__ import annotations

from typing import Callable, Protocol

from ..errors import UserError
from ..types import CallRecord, Problem, Proposal, Scored

# The search loop sets this on a proposer; it stores the record and returns the stored call id.
CallSink = Callable[[CallRecord], int | None]


class ProposerError(UserError, RuntimeError):
    """A proposer that cannot start (missing key, missing model file...); one line for the user."""


class Proposer(Protocol):
    name: str
    on_call: CallSink | None

    # `seen`: identities (repair.identity) of every candidate the session has stored; new proposals avoid
    # them as well as the population. A proposer may also have
    #     select(problem, population, count, generation) -> llm.Selection
    # (Algorithm 1's selection step); the search then passes mutate/crossover only the selected parents.

    def initial(self, problem: Problem, k: int, seen=frozenset()) -> list[Proposal]:
        """k distinct rate vectors with mean beta (origin 'init', or 'fallback'/'random')."""

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int,
               seen=frozenset()) -> list[Proposal]:
        """m new vectors, each derived from one parent of `population` (sorted best first)."""

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int,
                  seen=frozenset()) -> list[Proposal]:
        """s new vectors, each combining two parents of `population`."""
