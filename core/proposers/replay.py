"""Replay: re-read, phase by phase, the replies a stored session's LLM wrote.

Each stored reply is parsed and repaired again by the code that runs now (llm.interpret_reply /
interpret_selection), with the search state the replay has reached, so a parse or repair regression
shows as a diverged trajectory; candidates that came from no reply (numeric fallback, random init, a
numeric GA session) are handed back as stored. With the same model and data the fitness values come out
the same, and `core.layer_search.self_pruner.compare_trajectories` checks that they did.
"""
from __future__ import annotations

from ..store import Store
from ..types import CallRecord, Problem, Proposal, Scored
from .base import CallSink, ProposerError
from .llm import Selection, interpret_reply, interpret_selection
from .numeric import ranked
from .repair import identity


class ReplayProposer:
    def __init__(self, source: Store):
        self.source = source
        self.name = "replay"
        self.on_call: CallSink | None = None
        self.source_id = source.session()["id"]
        self._calls = source.calls()
        if source.selections():  # only a session that ran the selection step replays one
            self.select = self._select

    def _restore_call(self, c: dict) -> int | None:
        rec = CallRecord(proposer=f"replay:{c['proposer']}", phase=c["phase"], attempt=c["attempt"],
                         prompt=c["prompt"], response=c["response"], parsed=c["parsed"], repaired=c["repaired"],
                         error=c["error"], tokens_in=c["tokens_in"], tokens_out=c["tokens_out"], latency_s=0.0,
                         generation=c["generation"], asked=c.get("asked"))
        return self.on_call(rec) if self.on_call else None

    def _phase(self, problem: Problem, population: list[Scored], generation: int, phase: str, count: int,
               seen) -> list[Proposal]:
        # the one-shot peers' allocations (--seed-references) came from the search, not the proposer: it puts them
        # in again itself
        rows = [c for c in self.source.candidates(generation)
                if c["phase"] == phase and not c["origin"].startswith("reference:")]
        if len(rows) != count:
            raise ProposerError(f"session {self.source_id} stored {len(rows)} {phase} candidates for generation "
                                f"{generation}, the replay asked for {count}: run with the same K/M/S")
        pop = ranked(population)
        taken = {identity(s.rates, problem) for s in pop} | set(seen)
        calls = [c for c in self._calls if c["generation"] == generation and c["phase"] == phase]
        by_call = {c["id"]: [r for r in rows if r["call_id"] == c["id"]] for c in calls}
        out: list[Proposal] = []
        for c in calls:
            new_id = self._restore_call(c)
            if c.get("asked") is None:  # a session stored before calls recorded what they asked for
                kept = [self._stored(r) for r in by_call[c["id"]]]
            else:
                kept, _ = interpret_reply(phase, c["response"], problem, pop, c["asked"], taken)
            for p in kept:
                p.call_id = new_id
                taken.add(identity(p.rates, problem))
            out += kept
        out += [self._stored(r) for r in rows if r["call_id"] is None]
        return out

    @staticmethod
    def _stored(r: dict) -> Proposal:
        return Proposal(rates=r["rates"], origin=r["origin"], parents=r["parents"], repaired=bool(r["repaired"]),
                        raw=r["raw"])

    def _select(self, problem: Problem, population: list[Scored], count: int, generation: int) -> Selection:
        stored = self.source.selection(generation)
        if stored is None:
            raise ProposerError(f"session {self.source_id} stored no selection for generation {generation}")
        calls = [c for c in self._calls if c["generation"] == generation and c["phase"] == "selection"]
        new_ids = {c["id"]: self._restore_call(c) for c in calls}
        reply = next((c["response"] for c in calls if c["id"] == stored["call_id"]), None)
        chosen = interpret_selection(reply, ranked(population), count) if reply is not None else []
        # the ids past the LLM's own came from the proposer's tournament, which replay takes as stored
        chosen += [i for i in stored["parents"][len(chosen):] if i not in chosen]
        return Selection(chosen, stored["from_llm"], new_ids.get(stored["call_id"]))

    def initial(self, problem: Problem, k: int, seen=frozenset()) -> list[Proposal]:
        return self._phase(problem, [], 0, "init", k, seen)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int,
               seen=frozenset()) -> list[Proposal]:
        return self._phase(problem, population, generation, "mutation", m, seen)

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int,
                  seen=frozenset()) -> list[Proposal]:
        return self._phase(problem, population, generation, "crossover", s, seen)
