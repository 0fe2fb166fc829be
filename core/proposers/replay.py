"""Replay: hand back, phase by phase, the candidates a stored session's proposer wrote.

With the same model and data the fitness values come out the same, so the search follows the stored
trajectory; `core.search.self_pruner.compare_trajectories` checks that it did.
"""
from __future__ import annotations

from ..store import Store
from ..types import CallRecord, Problem, Proposal, Scored
from .base import CallSink, ProposerError


class ReplayProposer:
    def __init__(self, source: Store):
        self.source = source
        self.name = "replay"
        self.on_call: CallSink | None = None
        self.source_id = source.session()["id"]
        self._calls = {c["id"]: c for c in source.calls()}

    def _phase(self, generation: int, phase: str, count: int) -> list[Proposal]:
        rows = [c for c in self.source.candidates(generation) if c["phase"] == phase]
        if len(rows) != count:
            raise ProposerError(f"session {self.source_id} stored {len(rows)} {phase} candidates for generation "
                                f"{generation}, the replay asked for {count}: run with the same K/M/S")
        new_call_ids = {}
        for cid in sorted({r["call_id"] for r in rows if r["call_id"] is not None}):
            c = self._calls[cid]
            rec = CallRecord(proposer=f"replay:{c['proposer']}", phase=c["phase"], attempt=c["attempt"],
                             prompt=c["prompt"], response=c["response"], parsed=c["parsed"],
                             repaired=c["repaired"], error=c["error"], tokens_in=c["tokens_in"],
                             tokens_out=c["tokens_out"], latency_s=0.0, generation=c["generation"])
            new_call_ids[cid] = self.on_call(rec) if self.on_call else None
        return [Proposal(rates=r["rates"], origin=r["origin"], parents=r["parents"], repaired=bool(r["repaired"]),
                         raw=r["raw"], call_id=new_call_ids.get(r["call_id"])) for r in rows]

    def initial(self, problem: Problem, k: int) -> list[Proposal]:
        return self._phase(0, "init", k)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int) -> list[Proposal]:
        return self._phase(generation, "mutation", m)

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int) -> list[Proposal]:
        return self._phase(generation, "crossover", s)
