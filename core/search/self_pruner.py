"""Self-Pruner, Algorithm 1: LLM-written initial population, then N generations in which the LLM selects
parents and writes mutations and crossovers of them, keeping the best K (elitist (K + M + S) selection).
Lower fitness (ppl) is better.

Candidates are identified by the pruned model they give (their layer plans, core/plans.py): proposers
avoid every plan the session has stored, and a plan already evaluated is never evaluated again.
Every proposal, selection and fitness is stored before the next step, and each generation is rebuilt
from the store, so a killed session resumes where it stopped, re-proposing nothing that was stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config import SearchConfig
from ..events import (CandidateEvaluated, CandidateProposed, Control, EvalProgress, EventBus, GenerationFinished,
                      GenerationStarted, LLMCall, SearchFinished, Stage)
from ..proposers.base import Proposer
from ..plans import plan_key_text
from ..proposers.repair import identity
from ..store import Store
from ..types import CallRecord, Problem, Scored
from ..workbench import Workbench


class Stopped(Exception):
    pass


@dataclass
class SelfPrunerSearch:
    cfg: SearchConfig
    bench: Workbench
    store: Store
    proposer: Proposer
    bus: EventBus
    control: Control
    init_proposer: Proposer | None = None  # the paper's random-init ablation swaps this in

    def __post_init__(self):
        a = self.bench.lm.arch
        self.problem = Problem(self.bench.lm.name, a.n_layers, self.cfg.beta, self.cfg.lo, self.cfg.hi,
                               decimals=self.cfg.decimals, grain=a.grain, fitness_name=self.cfg.fitness)
        self._generation = 0
        for p in {id(x): x for x in (self.proposer, self.init_proposer) if x is not None}.values():
            p.on_call = self._record_call

    # ---- plumbing ---------------------------------------------------------------------------
    def _record_call(self, rec: CallRecord) -> int:
        rec.generation = self._generation
        call_id = self.store.add_call(rec)
        self.bus.emit(LLMCall(call_id, rec))
        return call_id

    def _stored_phase(self, generation: int, phase: str) -> list[dict]:
        return [c for c in self.store.candidates(generation) if c["phase"] == phase]

    def _seen(self) -> set:
        """Identities of every candidate stored so far: no proposal repeats one of them."""
        return {identity(c["rates"], self.problem) for c in self.store.candidates()}

    def _propose(self, generation: int, phase: str, count: int, population: list[Scored]) -> list[dict]:
        """The phase's candidates: from the store when a resumed run already has them, else proposed now."""
        if count == 0:
            return []
        stored = self._stored_phase(generation, phase)
        if stored:
            return stored
        if self.control.checkpoint():
            raise Stopped
        self._generation = generation
        seen = self._seen()
        if phase == "init":
            proposals = (self.init_proposer or self.proposer).initial(self.problem, count, seen)
        elif phase == "mutation":
            proposals = self.proposer.mutate(self.problem, population, count, generation, seen)
        else:
            proposals = self.proposer.crossover(self.problem, population, count, generation, seen)
        keys = [plan_key_text(identity(p.rates, self.problem)) for p in proposals]
        ids = self.store.add_candidates(generation, phase, proposals, keys)
        for cid, p in zip(ids, proposals):
            self.bus.emit(CandidateProposed(cid, generation, p.origin, p.rates, p.parents))
        return self._stored_phase(generation, phase)

    def _sensitivity(self) -> None:
        """--prompt-sensitivity: per layer, the search ppl with only that layer pruned at 2β (at most hi), measured
        once and stored, so a resumed session shows the LLM the same table."""
        stored = self.store.results("sensitivity")
        if stored:
            d = stored[0]["payload"]
        else:
            n, rate = self.problem.n_layers, min(self.cfg.hi, 2 * self.cfg.beta)
            ppl = []
            for i in range(n):
                if self.control.checkpoint():
                    raise Stopped
                self.bus.emit(Stage("sensitivity", f"layer {i} alone at rate {rate:g}", i, n))
                alone = [rate if j == i else 0.0 for j in range(n)]
                ppl.append(self.bench.fitness(alone, self.cfg.budget_tokens)[0])
            d = {"rate": rate, "ppl": ppl, "dense": self.bench.dense_ppl(self.cfg.budget_tokens)}
            self.store.add_result("sensitivity", "layers", d)
        self.problem = replace(self.problem, sensitivity=tuple(d["ppl"]), sensitivity_rate=d["rate"],
                               dense_ppl=d["dense"])

    def _prefetch(self, generation: int, parents: list[Scored]) -> None:
        """Let a proposer that can send mutation and crossover requests at once do so (not on a resume that
        already stored one of them)."""
        prefetch = getattr(self.proposer, "prefetch", None)
        if prefetch is None or self._stored_phase(generation, "mutation") or \
                self._stored_phase(generation, "crossover"):
            return
        if self.control.checkpoint():
            raise Stopped
        self._generation = generation
        prefetch(self.problem, parents, {"mutation": self.cfg.mutations, "crossover": self.cfg.crossovers},
                 generation)

    def _evaluate(self, rows: list[dict], known: dict[int, float]) -> list[Scored]:
        cfg, out = self.cfg, []
        for r in rows:
            if r["id"] not in known:
                if self.control.checkpoint():
                    raise Stopped
                cached = self.store.cached_fitness(r["key"], cfg.budget_tokens, cfg.seq_len)
                if cached is not None:
                    fit, secs = cached, 0.0
                else:
                    try:
                        fit, secs = self.bench.fitness(
                            r["rates"], cfg.budget_tokens, measure=cfg.fitness, kl_k=cfg.kl_k,
                            should_stop=lambda: self.control.stopped,
                            progress=lambda d, t, i=r["id"]: self.bus.emit(EvalProgress(i, d, t)))
                    except InterruptedError:
                        raise Stopped from None
                self.store.add_evaluation(r["id"], fit, budget_tokens=cfg.budget_tokens, seq_len=cfg.seq_len,
                                          eval_s=secs, cached=cached is not None)
                known[r["id"]] = fit
                self.bus.emit(CandidateEvaluated(r["id"], r["generation"], r["origin"], r["rates"], r["parents"],
                                                 fit, secs, cached is not None))
            out.append(Scored(r["id"], r["rates"], known[r["id"]], r["origin"], r["generation"], r["parents"]))
        return out

    def _parents(self, generation: int, pop: list[Scored]) -> list[Scored]:
        """Algorithm 1's selection step: the parents mutation and crossover build on. The whole population
        with --selection inline, or for a proposer without one (the numeric GA's tournament is its own)."""
        select = getattr(self.proposer, "select", None)
        stored = self.store.selection(generation)
        if stored is None and (self.cfg.selection != "llm" or select is None or
                               self._stored_phase(generation, "mutation") or
                               self._stored_phase(generation, "crossover")):
            return pop
        if stored is None:
            if self.control.checkpoint():
                raise Stopped
            self._generation = generation
            sel = select(self.problem, pop, self.cfg.n_selected, generation)
            self.store.add_selection(generation, sel.ids, sel.from_llm, sel.call_id)
            stored = {"parents": sel.ids}
        by_id = {s.id: s for s in pop}
        return [by_id[i] for i in stored["parents"] if i in by_id]

    def _select(self, generation: int, pool: list[Scored]) -> list[Scored]:
        pop = sorted(pool, key=lambda s: (s.fitness, s.id))[: self.cfg.population]
        finite = [s.fitness for s in pop if math.isfinite(s.fitness)]
        mean = sum(finite) / len(finite) if finite else float("inf")
        self.store.add_generation(generation, pop[0].fitness, mean, [s.id for s in pop])
        self.bus.emit(GenerationFinished(generation, pop[0].fitness, mean, [s.id for s in pop]))
        return pop

    # ---- Algorithm 1 --------------------------------------------------------------------------
    def run(self) -> SearchFinished:
        cfg = self.cfg
        known = self.store.fitness_by_candidate(budget_tokens=cfg.budget_tokens)
        try:
            return self._run(known)
        except Exception as e:  # recorded so the DB says why; the session stays resumable
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            self.store.update_session(status="failed", error=msg)
            self.bus.emit(SearchFinished("failed", None, None, None, error=msg))
            raise

    def _run(self, known: dict[int, float]) -> SearchFinished:
        cfg = self.cfg
        try:
            if cfg.prompt_sensitivity:
                self._sensitivity()
            self.bus.emit(GenerationStarted(0, cfg.population))
            pop = self._select(0, self._evaluate(self._propose(0, "init", cfg.population, []), known))
            for g in range(1, cfg.generations + 1):
                self.bus.emit(GenerationStarted(g, cfg.mutations + cfg.crossovers))
                parents = self._parents(g, pop)
                self._prefetch(g, parents)
                rows = self._propose(g, "mutation", cfg.mutations, parents)
                rows += self._propose(g, "crossover", cfg.crossovers, parents)
                pop = self._select(g, pop + self._evaluate(rows, known))
            status = "finished"
        except Stopped:
            status = "stopped"
        return self._finish(status, known)

    def _finish(self, status: str, known: dict[int, float]) -> SearchFinished:
        rows = {r["id"]: r for r in self.store.candidates()}
        best_id = min(known, key=lambda i: (known[i], i)) if known else None
        best_rates = rows[best_id]["rates"] if best_id is not None else None
        final_ppl = None
        if status == "finished" and best_id is not None and self.cfg.final_eval:
            try:
                final_ppl = self.final_evaluation(best_id, best_rates)
            except InterruptedError:
                status = "stopped"  # the search itself is complete; resume re-runs only the final evaluation
        self.store.update_session(status=status, best_candidate=best_id,
                                  best_fitness=known.get(best_id), final_ppl=final_ppl)
        ev = SearchFinished(status, best_id, known.get(best_id), best_rates, final_ppl)
        self.bus.emit(ev)
        return ev

    def final_evaluation(self, candidate_id: int, rates: list[float]) -> float:
        self.bus.emit(Stage("final", "final evaluation on the test stream"))
        ppl, secs = self.bench.fitness(rates, self.cfg.final_tokens or 10**12, which="test",
                                       should_stop=lambda: self.control.stopped)
        tokens = self.bench.windows("test", self.cfg.final_tokens).numel()
        self.store.add_evaluation(candidate_id, ppl, kind="final", budget_tokens=tokens,
                                  seq_len=self.cfg.seq_len, eval_s=secs)
        self.store.add_result("best", "self-pruner", {"candidate_id": candidate_id, "rates": rates,
                                                      "final_ppl": ppl, "final_tokens": tokens})
        return ppl


def compare_trajectories(a: Store, b: Store, rel_tol: float = 0.0) -> list[str]:
    """Differences between two sessions' candidates, fitness values, selections and generations
    ([] = identical). rel_tol 0: bit-exact, as a CPU replay is; a GPU replay may pass a tolerance."""
    diffs = []
    ca, cb = a.candidates(), b.candidates()
    if len(ca) != len(cb):
        diffs.append(f"candidate count {len(ca)} != {len(cb)}")
    fa, fb = a.fitness_by_candidate(), b.fitness_by_candidate()
    for x, y in zip(ca, cb):
        if (x["generation"], x["phase"], x["rates"], x["parents"]) != (y["generation"], y["phase"], y["rates"],
                                                                       y["parents"]):
            diffs.append(f"candidate {x['id']} differs")
        u, v = fa.get(x["id"]), fb.get(y["id"])
        if (u is None) != (v is None) or (u is not None and u != v and not math.isclose(u, v, rel_tol=rel_tol)):
            diffs.append(f"candidate {x['id']} fitness {u!r} != {v!r}")
    if [s["parents"] for s in a.selections()] != [s["parents"] for s in b.selections()]:
        diffs.append("selected parents differ")
    ga, gb = a.generations(), b.generations()
    if [g["population"] for g in ga] != [g["population"] for g in gb]:
        diffs.append("generation populations differ")
    return diffs
