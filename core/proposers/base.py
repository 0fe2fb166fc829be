"""The one interface every proposer (LLM or not) implements for the layer-rate search."""
from __future__ import annotations

from typing import Callable, Protocol

from ..types import CallRecord, Problem, Proposal, Scored

# The search loop sets this on a proposer; it stores the record and returns the stored call id.
CallSink = Callable[[CallRecord], int | None]


class ProposerError(RuntimeError):
    """A proposer that cannot start (missing key, missing model file...); one line for the user."""


class Proposer(Protocol):
    name: str
    on_call: CallSink | None

    def initial(self, problem: Problem, k: int) -> list[Proposal]:
        """k distinct rate vectors with mean beta (origin 'init', or 'fallback'/'random')."""

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int) -> list[Proposal]:
        """m new vectors, each derived from one parent of `population` (sorted best first)."""

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int) -> list[Proposal]:
        """s new vectors, each combining two parents of `population`."""
