"""Self-Pruner, Algorithm 1: LLM-written initial population, then N generations in which the LLM selects
parents and writes mutations and crossovers of them, keeping the best K (elitist (K + M + S) selection).
Lower fitness (ppl) is better.

Candidates are identified by the pruned model they give (their layer plans, core/plans.py): proposers
avoid every plan the session has stored, and a plan already evaluated is never evaluated again.
Every proposal, selection and fitness is stored before the next step, and each generation is rebuilt
from the store, so a killed session resumes where it stopped, re-proposing nothing that was stored. What a
phase proposes depends only on the stored session (its seed, the generation, the phase, the population),
never on what this process did before, so the resumed trajectory is the uninterrupted one.

A stop (Ctrl-C, SIGTERM, the TUI) is honoured between evaluations, between LLM calls and inside a long local
generation: the phase in flight is dropped whole (its calls stay in the log), the session is marked
stopped, and the run lock (core/run_lock.py) is released with the outcome.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config import SearchConfig
from ..cost_table import SpeedBudget
from ..events import (
    CandidateEvaluated,
    CandidateProposed,
    Control,
    EvalProgress,
    EventBus,
    GenerationFinished,
    GenerationStarted,
    LLMCall,
    SearchFinished,
    Stage,
)
from ..plans import candidate_key_text
from ..proposers.base import Proposer
from ..proposers.repair import identity, repair
from ..run_lock import RunLock
from ..steering import ControlPoller
from ..store import Store, StoreError
from ..types import CallRecord, EvalJob, Problem, Proposal, Scored
from .racing import stage_counts, survivors
from .speed_budget import nominal_beta
from .workbench import Workbench


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
    owns_bench: bool = False  # release the workbench (stop Ray's workers) when the run ends
    lock: RunLock | None = None  # this process's hold on the session, released with the outcome when run() ends
    speed: SpeedBudget | None = None  # --target-speedup: the budget repair puts every candidate on

    def __post_init__(self):
        a, grain, cfg = self.bench.lm.arch, self.bench.layer_grain(), self.cfg
        beta = cfg.beta if self.speed is None else nominal_beta(self.speed, grain, a.n_layers, cfg.lo, cfg.hi,
                                                               cfg.decimals)
        self.problem = Problem(self.bench.lm.name, a.n_layers, beta, cfg.lo, cfg.hi, decimals=cfg.decimals,
                               fitness_name=cfg.fitness, grain=grain, speed=self.speed)
        self._generation = 0
        for p in {id(x): x for x in (self.proposer, self.init_proposer) if x is not None}.values():
            p.on_call = self._record_call
            if hasattr(p, "should_stop"):
                p.should_stop = lambda: self.control.stopped
        # commands from other processes (a TUI attached elsewhere, `selfpruner control`) reach this run's Control
        self.control.poll = ControlPoller(self.store, self.control, self.lock.run_id if self.lock else None)

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
        try:
            if phase == "init":
                proposals = self._references(seen, count) if self.cfg.seed_references else []
                if count > len(proposals):
                    proposals += (self.init_proposer or self.proposer).initial(self.problem, count - len(proposals),
                                                                                seen)
            elif phase == "mutation":
                proposals = self.proposer.mutate(self.problem, population, count, generation, seen)
            else:
                proposals = self.proposer.crossover(self.problem, population, count, generation, seen)
        except InterruptedError:  # stopped during an LLM call: nothing of the phase is stored
            raise Stopped from None
        keys = [candidate_key_text(identity(p.rates, self.problem)) for p in proposals]
        ids = self.store.add_candidates(generation, phase, proposals, keys)
        for cid, p in zip(ids, proposals):
            self.bus.emit(CandidateProposed(cid, generation, p.origin, p.rates, p.parents))
        return self._stored_phase(generation, phase)

    def _references(self, seen: set, count: int) -> list[Proposal]:
        """The one-shot peers' allocations (uniform, OWL, FLAP), repaired to this problem, distinct, at most
        `count`; their identities join `seen`."""
        out = []
        for name, rates in self.bench.reference_rates(self.problem.beta, self.cfg.lo, self.cfg.hi).items():
            if rates is None or len(out) == count:
                continue
            rates = repair(rates, self.problem)[0]
            key = identity(rates, self.problem)
            if key not in seen:
                seen.add(key)
                out.append(Proposal(rates=rates, origin=f"reference:{name}"))
        return out

    def _sensitivity(self) -> None:
        """--prompt-sensitivity: per layer, the search ppl with only that layer pruned at 2β (at most hi), measured
        once and stored, so a resumed session shows the LLM the same table."""
        stored = self.store.results("sensitivity")
        if stored:
            d = stored[0]["payload"]
        else:
            n, rate = self.problem.n_layers, min(self.cfg.hi, 2 * self.problem.beta)
            ppl = [0.0] * n

            def done(job: EvalJob, fit: float, secs: float) -> None:
                ppl[job.key] = fit
                self.bus.emit(Stage("sensitivity", f"layer {job.key} alone at rate {rate:g}", sum(p > 0 for p in ppl),
                                    n))

            genes = 2 if self.problem.attention_genes else 1  # --split search: attention as the rule (a = p)
            jobs = [EvalJob(i, [rate if j == i else 0.0 for j in range(n)] * genes, self.cfg.budget_tokens)
                    for i in range(n)]
            try:
                self.bench.evaluate_many(jobs, done=done, before=self.control.checkpoint,
                                         should_stop=lambda: self.control.stopped)
            except InterruptedError:
                raise Stopped from None
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
        try:
            prefetch(self.problem, parents, {"mutation": self.cfg.mutations, "crossover": self.cfg.crossovers},
                     generation)
        except InterruptedError:
            raise Stopped from None

    def _store_fitness(self, r: dict, fit: float, secs: float, budget: int, cached: bool) -> None:
        self.store.add_evaluation(r["id"], fit, budget_tokens=budget, seq_len=self.cfg.seq_len, eval_s=secs,
                                  cached=cached)
        self.bus.emit(CandidateEvaluated(r["id"], r["generation"], r["origin"], r["rates"], r["parents"], fit, secs,
                                         cached, budget, final=budget == self.cfg.budget_tokens))

    def _score(self, rows: list[dict], budget: int, known: dict[int, float]) -> dict[int, float]:
        """Each row's fitness on `budget` tokens: stored by this session already (`known`), from the fitness
        cache (an earlier candidate with the same layer plans), or evaluated now, on the workbench or in
        parallel on Ray's workers. A new value is stored as it arrives; the result does not depend on the
        order in which evaluations finish."""
        cfg, out, todo, dups, first = self.cfg, {}, [], [], {}
        for r in rows:
            if r["id"] in known:
                out[r["id"]] = known[r["id"]]
                continue
            cached = self.store.cached_fitness(r["key"], budget, cfg.seq_len)
            if cached is not None:
                self._store_fitness(r, cached, 0.0, budget, cached=True)
                out[r["id"]] = cached
            elif r["key"] in first:  # the same pruned model twice in one batch: evaluated once
                dups.append(r)
            else:
                first[r["key"]] = r["id"]
                todo.append(r)
        by_id = {r["id"]: r for r in todo}

        def done(job: EvalJob, fit: float, secs: float) -> None:
            self._store_fitness(by_id[job.key], fit, secs, budget, cached=False)
            out[job.key] = fit

        jobs = [EvalJob(r["id"], r["rates"], budget, measure=cfg.fitness, kl_k=cfg.kl_k) for r in todo]
        try:
            self.bench.evaluate_many(jobs, done=done, before=self.control.checkpoint,
                                     should_stop=lambda: self.control.stopped,
                                     progress=lambda k, d, t: self.bus.emit(EvalProgress(k, d, t)))
        except InterruptedError:
            raise Stopped from None
        for r in dups:
            self._store_fitness(r, out[first[r["key"]]], 0.0, budget, cached=True)
            out[r["id"]] = out[first[r["key"]]]
        return out

    def _evaluate(self, rows: list[dict], known: dict[int, float]) -> list[Scored]:
        known.update(self._score(rows, self.cfg.budget_tokens, known))
        return [Scored(r["id"], r["rates"], known[r["id"]], r["origin"], r["generation"], r["parents"]) for r in rows]

    def _race(self, rows: list[dict], known: dict[int, float]) -> list[Scored]:
        """--race: every offspring on the first budget, the best few again on each larger one; only the last
        stage's survivors are returned to join the population (each stage's fitness is stored)."""
        stages, by_id, alive, fit = self.cfg.race_stages, {r["id"]: r for r in rows}, rows, {}
        for i, st in enumerate(stages):
            if i:
                alive = [by_id[j] for j in survivors([(r["id"], fit[r["id"]]) for r in alive], st.keep)]
            last = i == len(stages) - 1
            at = known if last else self.store.fitness_by_candidate(budget_tokens=st.budget_tokens)
            fit = self._score(alive, st.budget_tokens, at)
        known.update(fit)
        return [Scored(r["id"], r["rates"], fit[r["id"]], r["origin"], r["generation"], r["parents"]) for r in alive]

    def _offspring_evaluations(self) -> int:
        n = self.cfg.mutations + self.cfg.crossovers
        return sum(stage_counts(self.cfg.race_stages, n)) if self.cfg.race else n

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
            try:
                sel = select(self.problem, pop, self.cfg.n_selected, generation)
            except InterruptedError:
                raise Stopped from None
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
        outcome = "failed"
        try:
            known = self.store.fitness_by_candidate(budget_tokens=cfg.budget_tokens)
            result = self._run(known)
            outcome = result.status
            return result
        except Exception as e:  # recorded so the DB says why; the session stays resumable
            msg = str(e) if isinstance(e, StoreError) else f"{type(e).__name__}: {e}"
            msg = msg.splitlines()[0]
            self._mark(status="failed", error=msg)
            self.bus.emit(SearchFinished("failed", None, None, None, error=msg))
            raise
        except BaseException:  # a second Ctrl-C: the evaluation in flight is lost, the rest is stored
            outcome = "aborted"
            self._mark(status="stopped", error="aborted by the user")
            raise
        finally:
            if self.owns_bench:
                self.bench.close()
            if self.lock is not None:
                self.lock.release(outcome)

    def _mark(self, **fields) -> None:
        """Say in the DB how the run ended, unless the DB itself is what failed (a full disk)."""
        try:
            self.store.update_session(**fields)
        except StoreError:
            pass

    def _run(self, known: dict[int, float]) -> SearchFinished:
        cfg = self.cfg
        try:
            if cfg.prompt_sensitivity:
                self._sensitivity()
            self.bus.emit(GenerationStarted(0, cfg.population))
            pop = self._select(0, self._evaluate(self._propose(0, "init", cfg.population, []), known))
            for g in range(1, cfg.generations + 1):
                if self.control.stopping_after_generation:  # asked to stop once a generation is complete
                    raise Stopped
                self.bus.emit(GenerationStarted(g, self._offspring_evaluations()))
                parents = self._parents(g, pop)
                self._prefetch(g, parents)
                rows = self._propose(g, "mutation", cfg.mutations, parents)
                rows += self._propose(g, "crossover", cfg.crossovers, parents)
                pop = self._select(g, pop + (self._race if cfg.race else self._evaluate)(rows, known))
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
        ppl, secs, tokens = self.bench.final_ppl(rates, self.cfg.final_tokens,
                                                 should_stop=lambda: self.control.stopped)
        self.store.add_evaluation(candidate_id, ppl, kind="final", budget_tokens=tokens,
                                  seq_len=self.cfg.seq_len, eval_s=secs)
        self.store.add_result("best", "self-pruner", {"candidate_id": candidate_id, "rates": rates,
                                                      "final_ppl": ppl, "final_tokens": tokens})
        return ppl


def compare_trajectories(a: Store, b: Store, rel_tol: float = 0.0) -> list[str]:
    """Differences between two sessions' candidates, fitness values, selections and generations
    ([] = identical). rel_tol 0: bit-exact, as a replay on the machine that ran it is; on another CPU or a GPU
    the kernels round the last bits differently, so a tolerance is passed there."""
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
