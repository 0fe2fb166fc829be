"""Plain data passed between the search loop, proposers, the store and the UIs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .plans import LayerGrain

if TYPE_CHECKING:
    from .cost_table import SpeedBudget


@dataclass(frozen=True)
class Problem:
    """What a proposer needs to know about the layer-rate search."""
    model_name: str
    n_layers: int
    beta: float  # target mean rate
    lo: float = 0.0  # per-layer bounds
    hi: float = 1.0
    decimals: int = 5
    # How coarse a layer is. With it, two vectors that give the same pruned model (the same layer plans)
    # count as the same candidate; without it (unit tests of the operators), their 5-decimal strings do.
    grain: LayerGrain | None = None
    # A prompt design (--prompt-sensitivity): per layer, the ppl with only that layer pruned at
    # `sensitivity_rate` (measured once per session; `dense_ppl` beside it). None: not shown.
    fitness_name: str = "ppl"  # ppl | kl (KL from the dense model): what the population's numbers are
    sensitivity: tuple[float, ...] | None = None
    sensitivity_rate: float | None = None
    dense_ppl: float | None = None
    # --target-speedup: the budget is the predicted time on an engine (needs grain), not the mean rate; beta is then
    # the uniform rate that meets it, where prompts and random vectors centre
    speed: SpeedBudget | None = None

    @property
    def attention_genes(self) -> bool:
        """--split search: a candidate is n layer rates, then n attention-unit rates (core/plans.py)."""
        return self.grain is not None and self.grain.attention_genes

    @property
    def n_genes(self) -> int:
        return self.n_layers * (2 if self.attention_genes else 1)


@dataclass
class Proposal:
    """A candidate rate vector as a proposer produced it (already repaired)."""
    rates: list[float]
    origin: str  # init | mutation | crossover | random | fallback
    parents: list[int] = field(default_factory=list)  # candidate ids
    repaired: bool = False  # repair changed the proposer's raw numbers
    raw: list[float] | None = None  # the numbers before repair, when they differ
    call_id: int | None = None  # the LLM call that produced it


@dataclass
class Scored:
    """A candidate in the population: id in the store, rates, fitness (ppl, lower is better)."""
    id: int
    rates: list[float]
    fitness: float
    origin: str = "init"
    generation: int = 0
    parents: list[int] = field(default_factory=list)


@dataclass
class CallRecord:
    """One LLM request/response, as stored and shown in the TUI's call log."""
    proposer: str
    phase: str  # init | mutation | crossover | metric
    attempt: int
    prompt: str
    response: str
    parsed: int = 0  # candidates kept from this reply
    repaired: int = 0  # of which changed by repair
    error: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float = 0.0
    generation: int = 0
    asked: int | None = None  # lists (or parent ids) the call asked for; replay re-reads the reply with it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalJob:
    """One fitness evaluation to run, here or on a Ray worker: `key` is what the caller knows it by (a
    candidate id); measure 'ppl' or 'kl' (mean KL from the dense model, with the dense top-kl_k kept)."""
    key: int
    rates: list[float]
    budget_tokens: int
    which: str = "search"
    measure: str = "ppl"
    kl_k: int | None = None


# SQLite has no inf/nan: store a sentinel so a diverged model is still a number the UIs can sort.
INF_SENTINEL = 1e300


def finite(x: float) -> float:
    return INF_SENTINEL if x != x or x == float("inf") else float(x)


def from_db(x: float | None) -> float | None:
    return float("inf") if x is not None and x >= INF_SENTINEL else x
