"""What the core reports while it runs. The CLI and the TUI only subscribe to these; the core never
imports a UI. Subscribers are called on the search thread: UIs must hand events over to their own loop."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .types import CallRecord


@dataclass
class Stage:
    """A setup step (loading the model, tokenising, calibrating, final evaluation...)."""
    name: str
    message: str = ""
    done: int = 0
    total: int = 0


@dataclass
class SessionStarted:
    session_id: str
    path: str
    config: dict
    n_layers: int
    resumed: bool = False


@dataclass
class GenerationStarted:
    generation: int
    n_candidates: int  # candidates to evaluate in this generation


@dataclass
class CandidateProposed:
    id: int
    generation: int
    origin: str
    rates: list[float]
    parents: list[int]


@dataclass
class EvalProgress:
    candidate_id: int
    done: int  # windows scored so far
    total: int


@dataclass
class CandidateEvaluated:
    id: int
    generation: int
    origin: str
    rates: list[float]
    parents: list[int]
    fitness: float
    eval_s: float
    cached: bool = False
    budget_tokens: int = 0
    final: bool = True  # on the search's budget; False: an early --race stage (not comparable with the population)


@dataclass
class WorkerState:
    """A Ray worker (core/layer_search/distributed.py): idle, evaluating (candidate_id), or dead."""
    worker: int
    state: str
    candidate_id: int | None = None
    where: str = ""  # node / device, when known


@dataclass
class LLMCall:
    call_id: int | None
    record: CallRecord


@dataclass
class GenerationFinished:
    generation: int
    best: float
    mean: float
    population: list[int]  # surviving candidate ids, best first


@dataclass
class SearchFinished:
    status: str  # finished | stopped | failed
    best_id: int | None
    best_fitness: float | None
    best_rates: list[float] | None
    final_ppl: float | None = None
    error: str | None = None


@dataclass
class MetricEvaluated:
    """Pruner-Zero: one symbolic metric scored."""
    id: int
    iteration: int
    expression: str
    canonical: str
    origin: str
    fitness: float
    eval_s: float


Event = Any
Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self):
        self._subs: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subs.append(fn)
        return lambda: self._subs.remove(fn)

    def emit(self, event: Event) -> None:
        for fn in list(self._subs):
            fn(event)


@dataclass
class Control:
    """Pause / stop requested by a UI; the search checks it between (and inside) evaluations. `poll`, when set
    (core/steering.py), is called at every checkpoint and while paused: it applies commands stored by other
    processes."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: threading.Event = field(default_factory=threading.Event)
    _after_generation: threading.Event = field(default_factory=threading.Event)
    poll: Callable[[], None] | None = None
    poll_s: float = 0.5  # while paused, how often `poll` looks for a resume

    def __post_init__(self):
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused search must wake up to stop

    def pause(self) -> None:
        self._running.clear()

    def stop_after_generation(self) -> None:
        """Finish the generation in flight, then stop (resumable like any stop)."""
        self._after_generation.set()

    @property
    def stopping_after_generation(self) -> bool:
        return self._after_generation.is_set()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def checkpoint(self) -> bool:
        """Block while paused; True when the search should stop."""
        if self.poll is not None:
            self.poll()
            while not self._running.wait(self.poll_s):
                self.poll()
        self._running.wait()
        return self._stop.is_set()
