"""What the run screen shows, as plain data: built from the core's events (live) or from a session DB
(replay), so both screens render the same thing and tests can compare it with the store.

`SearchState.view(g)` is the search "as of generation g": the pool that generation g selected from
(the population it inherited plus its new candidates, ranked; those beyond K were dropped), the
best/mean fitness per generation up to g, and the LLM calls made up to g.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfpruner.core import events as E
from selfpruner.core.config import RECONSTRUCTION_NAMES, reconstruction_of
from selfpruner.core.plans import Genes


@dataclass
class Candidate:
    id: int
    generation: int
    origin: str
    parents: list[int]
    rates: list[float]
    phase: str = ""
    fitness: float | None = None  # None while it waits for its evaluation
    cached: bool = False
    eval_s: float | None = None
    raced: str = ""  # --race: its last early-stage score ("35.210 @512") while it has none on the search budget
    attention: list[float] | None = None  # --split search: each layer's attention-unit rate (`rates` is the layer's)

    @property
    def mean_rate(self) -> float:
        return sum(self.rates) / len(self.rates) if self.rates else 0.0


def candidate(config: dict, id: int, generation: int, origin: str, parents, genes, *rest) -> Candidate:
    """A stored or proposed candidate as the screens show it: `genes` is a stored row's Genes, or a proposal's flat
    list, cut by the session's split (core/plans.py Genes)."""
    g = genes if isinstance(genes, Genes) else Genes.of(genes, config.get("split"))
    return Candidate(id, generation, origin, list(parents), list(g.layers), *rest,
                     attention=g.attention_list)


@dataclass
class Generation:
    generation: int
    best: float
    mean: float
    population: list[int]  # survivors, best first


@dataclass
class Call:
    id: int | None
    generation: int
    phase: str
    proposer: str
    attempt: int
    prompt: str
    response: str
    parsed: int
    repaired: int
    error: str | None
    latency_s: float
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass
class Row:
    """One line of the population table."""
    cand: Candidate
    rank: int | None  # position in the generation's selection order; None while unevaluated
    status: str  # alive (kept), new (this generation, not yet selected), dropped (not kept)


@dataclass
class View:
    generation: int | None
    rows: list[Row]
    best: list[float]  # per finished generation up to `generation`
    mean: list[float]
    calls: list[Call]


@dataclass
class SearchState:
    session_id: str = ""
    path: str = ""
    kind: str = "layer"
    model: str = ""
    config: dict = field(default_factory=dict)
    n_layers: int = 0
    beta: float = 0.0
    proposer: str = ""
    status: str = "starting"  # starting | running | paused | stopping | finished | stopped | failed | ...
    error: str | None = None
    stage: str = ""  # latest setup step, e.g. "calibrate: calibration pass over 16384 tokens"
    stage_done: int = 0
    stage_total: int = 0
    cands: dict[int, Candidate] = field(default_factory=dict)
    gens: dict[int, Generation] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    current: int | None = None  # generation in progress (live) or last one started
    gen_total: int = 0  # candidates to evaluate in the current generation
    gen_done: int = 0
    eval_frac: float = 0.0  # progress inside the candidate being evaluated
    best_id: int | None = None
    final_ppl: float | None = None
    workers: dict[int, tuple[str, int | None, str]] = field(default_factory=dict)  # Ray: (state, candidate, where)

    # ---- live: one core event at a time -----------------------------------------------------
    def apply(self, ev) -> set[str]:
        """Fold one event in; returns which parts of the screen changed."""
        if isinstance(ev, E.Stage):
            if ev.message:
                self.stage = f"{ev.name}: {ev.message}"
            self.stage_done, self.stage_total = ev.done, ev.total
            return {"status"}
        if isinstance(ev, E.SessionStarted):
            self.session_id, self.path, self.config = ev.session_id, ev.path, ev.config
            self.n_layers, self.beta = ev.n_layers, float(ev.config.get("beta", 0.0))
            self.proposer = ev.config.get("proposer", "")
            self.status, self.stage = "running", ""
            return {"status"}
        if isinstance(ev, E.GenerationStarted):
            # A resumed run may already hold some of this generation's fitness values.
            done = sum(c.generation == ev.generation and c.fitness is not None for c in self.cands.values())
            self.current, self.gen_total, self.gen_done, self.eval_frac = ev.generation, ev.n_candidates, done, 0.0
            return {"table", "progress", "status"}
        if isinstance(ev, E.CandidateProposed):
            self.cands[ev.id] = candidate(self.config, ev.id, ev.generation, ev.origin, ev.parents, ev.rates)
            return {"table", "progress"}
        if isinstance(ev, E.EvalProgress):
            self.eval_frac = ev.done / ev.total if ev.total else 0.0
            return {"progress"}
        if isinstance(ev, E.CandidateEvaluated):
            c = self.cands.get(ev.id)
            if c is None:  # resumed run: proposed before this process started
                c = self.cands[ev.id] = candidate(self.config, ev.id, ev.generation, ev.origin, ev.parents, ev.rates)
            if ev.final:
                c.fitness, c.eval_s, c.cached, c.raced = ev.fitness, ev.eval_s, ev.cached, ""
            else:  # an early --race stage: another token budget, not ranked with the population
                c.raced = f"{fmt_fitness(ev.fitness)} @{ev.budget_tokens}"
            self.gen_done, self.eval_frac = self.gen_done + 1, 0.0
            return {"table", "progress"}
        if isinstance(ev, E.WorkerState):
            where = ev.where or self.workers.get(ev.worker, ("", None, ""))[2]
            self.workers[ev.worker] = (ev.state, ev.candidate_id, where)
            return {"status"}
        if isinstance(ev, E.LLMCall):
            r = ev.record
            self.calls.append(Call(ev.call_id, r.generation, r.phase, r.proposer, r.attempt, r.prompt, r.response,
                                   r.parsed, r.repaired, r.error, r.latency_s, r.tokens_in, r.tokens_out))
            return {"calls"}
        if isinstance(ev, E.GenerationFinished):
            self.gens[ev.generation] = Generation(ev.generation, ev.best, ev.mean, list(ev.population))
            self.gen_done = self.gen_total
            return {"table", "fitness", "progress"}
        if isinstance(ev, E.SearchFinished):
            self.status, self.error = ev.status, ev.error
            self.best_id, self.final_ppl = ev.best_id, ev.final_ppl
            self.stage = ""
            return {"status", "table"}
        return set()

    # ---- replay: everything from the DB ----------------------------------------------------
    @classmethod
    def from_store(cls, store) -> "SearchState":
        s = store.session()
        cfg = s["config"] or {}
        st = cls(session_id=s["id"], path=str(store.path), kind=s["kind"], model=s["model_name"] or "", config=cfg,
                 beta=float(s["beta"] if s["beta"] is not None else cfg.get("beta", 0.0)),
                 proposer=s["proposer"] or "", status=s["status"] or "?", error=s["error"],
                 best_id=s["best_candidate"], final_ppl=s["final_ppl"])
        race = cfg.get("race")  # only the search budget's fitness ranks; early stages are shown beside it
        fit = store.fitness_by_candidate(budget_tokens=cfg.get("budget_tokens") if race else None)
        evals = {e["candidate_id"]: e for e in store.evaluations() if e["kind"] == "search"}
        for c in store.candidates():
            e = evals.get(c["id"])
            cand = st.cands[c["id"]] = candidate(cfg, c["id"], c["generation"], c["origin"], c["parents"], c["genes"],
                                                 c["phase"], fit.get(c["id"]), bool(e and e["cached"]),
                                                 e["eval_s"] if e else None)
            if race and cand.fitness is None and e:
                cand.raced = f"{fmt_fitness(e['fitness'])} @{e['budget_tokens']}"
        for g in store.generations():
            st.gens[g["generation"]] = Generation(g["generation"], g["best"], g["mean"], g["population"])
        st.calls = [Call(c["id"], c["generation"] or 0, c["phase"], c["proposer"], c["attempt"], c["prompt"] or "",
                         c["response"] or "", c["parsed"] or 0, c["repaired"] or 0, c["error"],
                         c["latency_s"] or 0.0, c["tokens_in"], c["tokens_out"]) for c in store.calls()]
        if st.cands:
            st.n_layers = len(next(iter(st.cands.values())).rates)
        st.current = max(st.generations(), default=None)
        return st

    def reload(self, store) -> None:
        """A resumed live run starts from what the session already holds."""
        fresh = SearchState.from_store(store)
        for name in ("cands", "gens", "calls", "current", "model", "kind"):
            setattr(self, name, getattr(fresh, name))

    # ---- queries ------------------------------------------------------------------------------
    def generations(self) -> list[int]:
        """Every generation with a stored candidate or a finished selection, in order."""
        return sorted({c.generation for c in self.cands.values()} | set(self.gens))

    @property
    def last_generation(self) -> int | None:
        return max(self.generations(), default=None)

    def best(self) -> Candidate | None:
        scored = [c for c in self.cands.values() if c.fitness is not None]
        return min(scored, key=lambda c: (c.fitness, c.id)) if scored else None

    def view(self, upto: int | None = None) -> View:
        g = self.current if upto is None else upto
        if g is None:
            return View(None, [], [], [], [])
        prev = self.gens.get(g - 1)
        pool = [self.cands[i] for i in (prev.population if prev else []) if i in self.cands]
        seen = {c.id for c in pool}
        pool += [c for c in self.cands.values() if c.generation == g and c.id not in seen]
        kept = set(self.gens[g].population) if g in self.gens else None
        order = sorted((c for c in pool if c.fitness is not None), key=lambda c: (c.fitness, c.id))
        rank = {c.id: i + 1 for i, c in enumerate(order)}
        rows = []
        for c in pool:
            if kept is not None:
                status = "alive" if c.id in kept else "dropped"
            elif self.kind != "layer":  # a baseline: one candidate, no selection
                status = "alive"
            else:
                status = "new" if c.generation == g else "alive"
            rows.append(Row(c, rank.get(c.id), status))
        rows.sort(key=lambda r: (r.rank is None, r.rank or 0, r.cand.id))
        done = [self.gens[i] for i in sorted(self.gens) if i <= g]
        return View(g, rows, [x.best for x in done], [x.mean for x in done],
                    [c for c in self.calls if c.generation <= g])


def session_options(cfg: dict) -> list[str]:
    """What a session scored with, beyond the paper's defaults: fitness, importance, split, compensation, racing."""
    out = []
    if cfg.get("fitness") == "kl":
        out.append("KL fitness")
    if cfg.get("importance") == "flap":
        out.append("FLAP importance")
    if cfg.get("split", "rule") != "rule":
        out.append(f"{cfg['split']} split")
    if reconstruction_of(cfg) != "none":
        out.append(RECONSTRUCTION_NAMES[reconstruction_of(cfg)])
    out += sequential_option(cfg)
    if cfg.get("race"):
        out.append(f"race {cfg['race']}")
    return out


def sequential_option(cfg: dict) -> list[str]:
    """--sequential, where a session's finals and exports were rebuilt layer by layer."""
    return ["sequential calibration"] if cfg.get("sequential") else []


BASELINE_NAMES = {"flap": "FLAP", "owl": "OWL", "uniform": "uniform"}


def baseline_options(cfg: dict, method: str = "") -> list[str]:
    """What a baseline session (core/baselines/run.py: one rate vector, evaluated once) did: its method (OWL
    with its λ and M), the importance and compensation it pruned with, its split and its search ppl's tokens."""
    method = cfg.get("method") or method or "?"
    name = f"{BASELINE_NAMES.get(method, method)} baseline"
    if method == "owl":
        name += f" (λ {cfg.get('owl_lambda', 0.08):g}, M {cfg.get('owl_m', 5.0):g})"
    out = [name, f"{cfg.get('importance') or 'wanda-sp'} importance",
           RECONSTRUCTION_NAMES[reconstruction_of(cfg)]]
    out += sequential_option(cfg)
    if cfg.get("split", "rule") != "rule":
        out.append(f"{cfg['split']} split")
    if cfg.get("budget_tokens"):
        out.append(f"search ppl on {cfg['budget_tokens']} tok")
    return out


def workers_text(workers: dict) -> "Text":
    """One chunk per Ray worker: idle, evaluating #id, or dead (red)."""
    from rich.text import Text
    t = Text()
    for i in sorted(workers):
        state, cid, _ = workers[i]
        label = f"evaluating #{cid}" if state == "evaluating" and cid is not None and cid >= 0 else state
        t.append(f"{i}: {label}", style={"dead": "bold red", "idle": "dim", "loading": "yellow"}.get(state, "green"))
        t.append("  ")
    return t


def fmt_fitness(x: float | None, nd: int = 3) -> str:
    if x is None:
        return "…"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.{nd}f}"
