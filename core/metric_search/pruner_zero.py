"""Pruner-Zero (Dong et al., ICML 2024): genetic programming over symbolic pruning metrics.

Steady-state, elitist GP. The population is always the best `population` metrics evaluated so far; each
iteration breeds one child from parents picked by tournament among the top `top_k` (mutation with
probability `p_mutation`, else subtree crossover), simplifies it to canonical form, and evaluates it only
if no equivalent metric was evaluated before. Fitness = perplexity after unstructured pruning at
`sparsity` (lower is better), computed by the caller's `evaluate_fn`.

Resuming: pass every stored candidate back as `resume_from`. The fitness cache, the population and the
iteration counter are rebuilt from them, and each iteration draws from its own RNG seeded by
(seed, iteration), so a resumed pure-GP run continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterable

from ..config import ConfigError
from ..proposers.llm import call_seed
from ..types import CallRecord
from .expr import BINARY, OPERANDS, UNARY, Node, depth, size
from .expr_gp import Primitives, crossover, mutate, random_tree
from .expr_parse import MAX_PARSE_DEPTH, ParseError, parse
from .expr_print import to_text
from .expr_simplify import canonical, metric_key
from .prompts import build_metric_prompt, extract_expressions


@dataclass
class MetricSearchConfig:
    population: int = 50
    iterations: int = 300  # children bred (one per iteration), LLM proposals come on top
    top_k: int = 10  # tournament pool: the best K of the population
    tournament_size: int = 3
    p_mutation: float = 0.5
    init_min_depth: int = 3  # random initial trees: ramped half-and-half over these depths
    init_max_depth: int = 5
    max_depth: int = 5  # no candidate deeper than this (depth counts levels: W is 1, abs(W) 2)
    max_nodes: int = 31
    operands: tuple[str, ...] = OPERANDS  # drop "G" to search without gradients
    unary: tuple[str, ...] = UNARY
    binary: tuple[str, ...] = BINARY
    p_binary: float = 0.5
    seeds: tuple[str, ...] = ("abs(W)", "mul(abs(W), X)")  # magnitude, Wanda
    dedup_by_ranking: bool = True  # also treat e.g. sqrt(|W|·X) as Wanda (same per-row ranking)
    sparsity: float = 0.5
    budget_tokens: int = 2048  # fitness tokens per candidate
    seq_len: int = 512
    grad_tokens: int = 4096  # calibration tokens for G (unused without "G" in operands)
    # racing, as the layer search's last stage: the best `race_top` by search fitness are scored again on
    # `race_tokens` search tokens (0: 4 x budget_tokens), and the best there is the one the search reports
    race_top: int = 5
    race_tokens: int = 0
    llm_every: int = 0  # ask the proposer every n iterations; 0 = never
    llm_count: int = 5  # metrics requested per LLM call
    llm_show: int = 10  # top metrics shown in the prompt
    max_attempts: int = 100  # breeding attempts per iteration before falling back to a random tree
    seed: int = 0
    model: str | None = None  # for the prompt and the store; None = bundled gemma-3-270m

    def validate(self) -> "MetricSearchConfig":
        if self.population < 2 or self.top_k < 1 or self.tournament_size < 1:
            raise ConfigError("population must be >= 2, top_k and tournament_size >= 1")
        if self.iterations < 0:
            raise ConfigError("iterations must be >= 0")
        if not 0.0 <= self.p_mutation <= 1.0:
            raise ConfigError(f"p_mutation must be in [0, 1], got {self.p_mutation}")
        if not 2 <= self.init_min_depth <= self.init_max_depth <= self.max_depth <= MAX_PARSE_DEPTH:
            raise ConfigError(f"need 2 <= init_min_depth <= init_max_depth <= max_depth <= {MAX_PARSE_DEPTH}")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.budget_tokens < self.seq_len:
            raise ConfigError(f"budget_tokens ({self.budget_tokens}) must be at least seq_len ({self.seq_len})")
        bad = [x for x in self.operands if x not in OPERANDS] + [x for x in self.unary if x not in UNARY] \
            + [x for x in self.binary if x not in BINARY]
        if bad or "W" not in self.operands:
            raise ConfigError(f"unknown primitives {bad}" if bad else "the operands must include W")
        for s in self.seeds:
            try:
                parse(s, operands=self.operands)
            except ParseError as e:
                raise ConfigError(f"seed metric {s!r}: {e}") from None
        if self.llm_every < 0 or self.llm_count < 0:
            raise ConfigError("llm_every and llm_count must be >= 0")
        if self.race_top < 0 or (self.race_tokens and self.race_tokens < self.seq_len):
            raise ConfigError("race_top must be >= 0 and race_tokens 0 or at least seq_len")
        return self

    @property
    def race_budget(self) -> int:
        return self.race_tokens or 4 * self.budget_tokens

    @property
    def uses_gradients(self) -> bool:
        return "G" in self.operands

    def primitives(self) -> Primitives:
        return Primitives(tuple(self.operands), tuple(self.unary), tuple(self.binary), self.p_binary)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MetricSearchConfig":
        tuples = {"operands", "unary", "binary", "seeds"}
        known = {f.name for f in fields(cls)}
        d = {"race_top": 0, **d}  # sessions stored before racing existed had none
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items() if k in known})


@dataclass
class MetricCandidate:
    """One evaluated metric, as reported to `on_candidate` and passed back in `resume_from`."""
    id: int  # evaluation order, from 0
    expression: str  # as bred (before simplification) or as the LLM wrote it
    canonical: str  # the simplified tree that was evaluated
    key: str  # de-duplication key (canonical, or its per-row ranking form)
    fitness: float  # ppl after pruning; inf when it diverged
    origin: str  # seed | init | crossover | mutation | random | llm
    parents: list[int] = field(default_factory=list)  # ids; for llm: the candidates shown in the prompt
    iteration: int = 0  # 0 = initial population
    eval_s: float = 0.0
    call_id: int | None = None  # the LLM call that proposed it

    @property
    def tree(self) -> Node:
        return parse(self.canonical)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MetricCandidate":
        """From a stored row; columns that are not fields (session id, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        c = cls(**{k: v for k, v in d.items() if k in known})
        c.parents = list(c.parents or [])
        c.fitness = float(c.fitness) if c.fitness is not None else math.inf
        return c


@dataclass
class MetricRejection:
    """An LLM-written expression that was not evaluated, and why (a ParseError reason, too_deep/too_big
    after simplification, or duplicate)."""
    text: str
    reason: str
    detail: str
    iteration: int
    call_id: int | None = None


@dataclass
class MetricSearchResult:
    status: str  # finished | stopped
    best: MetricCandidate | None
    population: list[MetricCandidate]  # best first
    records: list[MetricCandidate]  # every evaluated candidate, resumed ones included, by id
    n_evaluated: int  # evaluations done by this call
    n_duplicates: int  # bred children skipped as already evaluated


def _rank(c: MetricCandidate):
    f = c.fitness
    return (f if f == f else math.inf, c.id)  # NaN sorts last, like inf


class _Stop(Exception):
    pass


class _Search:
    def __init__(self, cfg, evaluate_fn, on_candidate, should_stop, proposer, on_call, on_reject, on_iteration,
                 resume_from):
        self.cfg, self.evaluate_fn = cfg, evaluate_fn
        self.on_candidate, self.should_stop = on_candidate, should_stop
        self.proposer, self.on_call, self.on_reject, self.on_iteration = proposer, on_call, on_reject, on_iteration
        self.prims = cfg.primitives()
        self.records = sorted((c if isinstance(c, MetricCandidate) else MetricCandidate.from_dict(c)
                               for c in resume_from), key=lambda c: c.id)
        self.cache = {c.key: c for c in self.records}
        self.n_evaluated = self.n_duplicates = 0

    # ---- bookkeeping ----------------------------------------------------------------------------
    def key(self, tree: Node) -> str:
        return metric_key(tree, self.cfg.dedup_by_ranking)

    def population(self) -> list[MetricCandidate]:
        return sorted(self.records, key=_rank)[: self.cfg.population]

    def fits(self, tree: Node) -> bool:
        return depth(tree) <= self.cfg.max_depth and size(tree) <= self.cfg.max_nodes

    def evaluate(self, tree: Node, origin: str, parents, iteration: int, call_id=None,
                 expression: str | None = None) -> MetricCandidate | None:
        """Evaluate the canonical form of `tree` unless an equivalent metric already was. `expression` is
        the text as proposed (default: the tree before simplification)."""
        canon = canonical(tree)
        key = self.key(canon)
        if key in self.cache:
            return None
        if self.should_stop is not None and self.should_stop():
            raise _Stop
        t0 = time.perf_counter()
        try:
            fitness = float(self.evaluate_fn(canon))
        except InterruptedError:
            raise _Stop from None
        if fitness != fitness:
            fitness = math.inf
        next_id = self.records[-1].id + 1 if self.records else 0
        c = MetricCandidate(next_id, expression or to_text(tree), to_text(canon), key, fitness, origin,
                            list(parents), iteration, time.perf_counter() - t0, call_id)
        self.records.append(c)
        self.cache[key] = c
        self.n_evaluated += 1
        if self.on_candidate is not None:
            self.on_candidate(c)
        return c

    # ---- phases ---------------------------------------------------------------------------------
    def initial_trees(self) -> list[tuple[Node, str]]:
        """Seeds then ramped half-and-half random trees, distinct by key. Deterministic in the seed and
        independent of the cache, so a resumed run regenerates the same list and skips what it has."""
        cfg, rng = self.cfg, random.Random(f"{self.cfg.seed}:init")
        out, seen = [], set()
        for s in cfg.seeds:
            t = parse(s, operands=cfg.operands)
            if self.key(t) not in seen:
                seen.add(self.key(t))
                out.append((t, "seed"))
        depths = range(cfg.init_min_depth, cfg.init_max_depth + 1)
        attempts = 0
        while len(out) < cfg.population and attempts < 50 * cfg.population:
            attempts += 1
            d = depths[attempts % len(depths)]
            t = canonical(random_tree(rng, d, self.prims, "full" if attempts % 2 else "grow"))
            k = self.key(t)
            if k not in seen and self.fits(t):
                seen.add(k)
                out.append((t, "init"))
        return out

    def tournament(self, rng: random.Random, pool: list[MetricCandidate]) -> MetricCandidate:
        return min(rng.sample(pool, min(self.cfg.tournament_size, len(pool))), key=_rank)

    def breed(self, iteration: int) -> bool:
        """One new child for this iteration; False when every attempt was a duplicate."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:{iteration}")
        pool = self.population()[: cfg.top_k]
        for _ in range(cfg.max_attempts):
            p1 = self.tournament(rng, pool)
            if rng.random() < cfg.p_mutation:
                child, origin, parents = mutate(rng, p1.tree, cfg.max_depth, self.prims), "mutation", [p1.id]
            else:
                others = [c for c in pool if c.id != p1.id] or pool
                p2 = self.tournament(rng, others)
                child, origin, parents = crossover(rng, p1.tree, p2.tree, cfg.max_depth), "crossover", [p1.id, p2.id]
            if child is None:
                continue
            canon = canonical(child)
            if not self.fits(canon):
                continue
            if self.key(canon) in self.cache:
                self.n_duplicates += 1
                continue
            return self.evaluate(child, origin, parents, iteration) is not None
        for _ in range(cfg.max_attempts):  # the pool has converged: inject a fresh random tree
            child = canonical(random_tree(rng, rng.randint(cfg.init_min_depth, cfg.init_max_depth), self.prims))
            if self.fits(child) and self.key(child) not in self.cache:
                return self.evaluate(child, "random", [], iteration) is not None
        return False

    def ask_llm(self, iteration: int) -> None:
        cfg = self.cfg
        shown = self.population()[: cfg.llm_show]
        prompt = build_metric_prompt(cfg, shown, cfg.llm_count)
        name = getattr(self.proposer, "name", "llm")
        t0 = time.perf_counter()
        try:
            if getattr(self.proposer, "seeded", False):  # a sampling seed from the iteration, not the process
                reply = self.proposer(prompt, seed=call_seed(cfg.seed, iteration, "metric", 1))
            else:
                reply = self.proposer(prompt)
            error = None
        except Exception as e:  # a proposer failure (network, model) costs this step only
            reply, error = "", f"{type(e).__name__}: {e}"
        latency = time.perf_counter() - t0
        accepted, rejected = self.read_reply(reply or "", iteration)
        if error is None and not accepted:
            error = "no new valid expression in the reply"
        rec = CallRecord(proposer=name, phase="metric", attempt=1, prompt=prompt, response=reply or "",
                         parsed=len(accepted), error=error, latency_s=latency, generation=iteration)
        call_id = self.on_call(rec) if self.on_call is not None else None
        if self.on_reject is not None:
            for r in rejected:
                r.call_id = call_id
                self.on_reject(r)
        for text, tree in accepted[: cfg.llm_count]:
            self.evaluate(tree, "llm", [c.id for c in shown], iteration, call_id, expression=text)

    def read_reply(self, reply: str, iteration: int):
        accepted, rejected, keys = [], [], set()
        for text in extract_expressions(reply):
            try:
                tree = parse(text, operands=self.cfg.operands)
            except ParseError as e:
                rejected.append(MetricRejection(text, e.reason, e.message, iteration))
                continue
            canon = canonical(tree)
            k = self.key(canon)
            if depth(canon) > self.cfg.max_depth:
                rejected.append(MetricRejection(text, "too_deep", f"depth {depth(canon)} > {self.cfg.max_depth}",
                                                iteration))
            elif size(canon) > self.cfg.max_nodes:
                rejected.append(MetricRejection(text, "too_big", f"{size(canon)} nodes > {self.cfg.max_nodes}",
                                                iteration))
            elif k in self.cache or k in keys:
                same = self.cache[k].canonical if k in self.cache else "an earlier line"
                rejected.append(MetricRejection(text, "duplicate", f"equivalent to {same}", iteration))
            else:
                keys.add(k)
                accepted.append((text, tree))
        return accepted, rejected

    def run(self) -> MetricSearchResult:
        cfg, status = self.cfg, "finished"
        try:
            for tree, origin in self.initial_trees():
                self.evaluate(tree, origin, [], 0)
            done = [c.iteration for c in self.records if c.origin in ("crossover", "mutation", "random")]
            for it in range(max(done, default=0) + 1, cfg.iterations + 1):
                if self.should_stop is not None and self.should_stop():
                    raise _Stop
                if self.proposer is not None and cfg.llm_every and it % cfg.llm_every == 0:
                    self.ask_llm(it)
                self.breed(it)
                if self.on_iteration is not None:
                    self.on_iteration(it, self.population())
        except _Stop:
            status = "stopped"
        pop = self.population()
        return MetricSearchResult(status, pop[0] if pop else None, pop, list(self.records), self.n_evaluated,
                                  self.n_duplicates)


def run_metric_search(cfg: MetricSearchConfig, evaluate_fn: Callable[[Node], float], *,
                      on_candidate: Callable[[MetricCandidate], None] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      proposer: Callable[[str], str] | None = None,
                      on_call: Callable[[CallRecord], int | None] | None = None,
                      on_reject: Callable[[MetricRejection], None] | None = None,
                      on_iteration: Callable[[int, list[MetricCandidate]], None] | None = None,
                      resume_from: Iterable[MetricCandidate | dict] = ()) -> MetricSearchResult:
    """Run (or continue) the GP. `evaluate_fn(tree)` returns the fitness of a canonical tree (lower is
    better; it may raise InterruptedError to stop). `on_candidate` sees every evaluation as it happens;
    `proposer(prompt) -> text` is asked every `cfg.llm_every` iterations, its call is reported to
    `on_call` (which may return a stored call id) and every unusable line to `on_reject`. Nothing a
    proposer writes can crash the search."""
    cfg.validate()
    return _Search(cfg, evaluate_fn, on_candidate, should_stop, proposer, on_call, on_reject, on_iteration,
                   resume_from).run()


# ---- fitness on a resident model -------------------------------------------------------------------
def ppl_fitness(model, pruner, windows, sparsity: float, should_stop=None, progress=None) -> Callable[[Node], float]:
    """evaluate_fn for run_metric_search: prune with the metric, perplexity over `windows`, restore."""
    from ..model.evaluate import perplexity

    def fitness(tree: Node) -> float:
        with pruner.pruned_with(tree, sparsity):
            return perplexity(model, windows, should_stop=should_stop, progress=progress)

    return fitness
