"""A plain genetic algorithm without an LLM: the "numeric GA" baseline, the LLM proposers' fallback when a
model's replies do not give enough candidates, and the random initial population of the paper's ablation.

Each phase draws from random.Random(f"{seed}:{phase}:{generation}"), so a phase's proposals depend only
on the seed, the phase and the population, not on what ran before (a resumed session proposes the same).
"""
from __future__ import annotations

import math
import random

from ..plans import attention_bounds
from ..types import Problem, Proposal, Scored
from .base import CallSink, Proposer, ProposerError
from .repair import RepairError, identity, random_vector, repair


def phase_rng(seed: int, phase: str, generation: int) -> random.Random:
    return random.Random(f"{seed}:{phase}:{generation}")  # str seeds hash deterministically (sha512)


def ranked(population: list[Scored]) -> list[Scored]:
    """Best (lowest ppl) first; NaN/inf fitness last."""
    return sorted(population, key=lambda s: (s.fitness if math.isfinite(s.fitness) else math.inf, s.id))


class NumericProposer:
    def __init__(self, seed: int = 0, sigma: float = 0.05, tournament: int = 3, crossover: str = "uniform",
                 init_spread: float | None = None, init_origin: str = "init", mutation: str = "gauss",
                 level_step: float = 0.05):
        if crossover not in ("uniform", "blend"):
            raise ProposerError(f"unknown crossover {crossover!r} (uniform | blend)")
        if mutation not in ("gauss", "level-switch", "mixed"):
            raise ProposerError(f"unknown mutation {mutation!r} (gauss | level-switch | mixed)")
        self.mutation_kind, self.level_step = mutation, level_step
        self.name = "numeric"
        self.on_call: CallSink | None = None
        self.seed, self.sigma, self.tournament = seed, sigma, tournament
        self.crossover_kind, self.init_spread, self.init_origin = crossover, init_spread, init_origin

    # ---- single operators (also the LLM proposers' fallback) ----------------------------------------
    def pick(self, pop: list[Scored], rng: random.Random) -> Scored:
        """Tournament selection on a best-first list: the best of `tournament` random members."""
        return pop[min(rng.randrange(len(pop)) for _ in range(min(self.tournament, len(pop))))]

    def random_one(self, problem: Problem, rng: random.Random, taken) -> tuple[list[float], list[int]]:
        return random_vector(problem, rng, self.init_spread, taken), []

    def mutate_one(self, problem: Problem, pop: list[Scored], rng: random.Random, taken):
        parent = self.pick(pop, rng)
        kind = self.mutation_kind if self.mutation_kind != "mixed" else rng.choice(("gauss", "level-switch"))
        n = problem.n_layers
        if kind == "gauss":
            child = [v + rng.gauss(0.0, self.sigma) for v in parent.rates[:n]]
        else:
            child = self.level_switch(parent.rates[:n], problem, rng)
        if problem.attention_genes:
            child += self.attention_step(parent.rates[n:], child, problem, rng)
        return repair(child, problem, taken)[0], [parent.id]

    @staticmethod
    def attention_step(attention: list[float], layer: list[float], problem: Problem, rng: random.Random) -> list[float]:
        """--split search: half the mutations also move one layer's attention by one unit (Gaussian noise of the
        rates' size would almost never cross a unit: SmolLM2 has 3 per layer), where its rate allows."""
        out = list(attention)
        if rng.random() < 0.5:
            i = rng.randrange(len(out))
            least, most = attention_bounds(problem.grain, layer[i])
            units = round(out[i] * problem.grain.attn_units)
            moves = [u for u in (units - 1, units + 1) if least <= u <= most]
            if moves:
                out[i] = rng.choice(moves) / problem.grain.attn_units
        return out

    def level_switch(self, rates: list[float], problem: Problem, rng: random.Random) -> list[float]:
        """EvoPress's mutation: move one step of rate from one layer to another, a geometric number of times
        (1, 2, ... with halving odds); the mean stays β, and a move that would leave [lo, hi] is not made."""
        child = list(rates)
        moves = 1
        while rng.random() < 0.5 and moves < len(child):
            moves += 1
        for _ in range(moves):
            up, down = rng.sample(range(len(child)), 2) if len(child) > 1 else (0, 0)
            step = min(self.level_step, problem.hi - child[up], child[down] - problem.lo)
            if step > 0:
                child[up] += step
                child[down] -= step
        return child

    def cross_one(self, problem: Problem, pop: list[Scored], rng: random.Random, taken):
        a = self.pick(pop, rng)
        b = self.pick(pop, rng)
        for _ in range(8):  # two different parents when the population has them
            if b.id != a.id or len(pop) < 2:
                break
            b = self.pick(pop, rng)
        if self.crossover_kind == "uniform":  # a layer's genes (its rate and, split searched, attention) go together
            n = problem.n_layers
            take_a = [rng.random() < 0.5 for _ in range(n)]
            child = [x if take_a[i % n] else y for i, (x, y) in enumerate(zip(a.rates, b.rates))]
        else:  # BLX-0.25: a random point on (and a little beyond) the segment between the parents, per layer
            child = [x + rng.uniform(-0.25, 1.25) * (y - x) for x, y in zip(a.rates, b.rates)]
        return repair(child, problem, taken)[0], [a.id, b.id] if b.id != a.id else [a.id]

    def fill(self, problem: Problem, population: list[Scored], count: int, phase: str, rng: random.Random,
             taken: set, origin: str) -> list[Proposal]:
        """`count` distinct proposals from one operator; adds their keys to `taken`."""
        pop = ranked(population)
        out: list[Proposal] = []
        for _ in range(20 * count + 20):
            if len(out) == count:
                break
            try:
                if phase == "init" or not pop:
                    rates, parents = self.random_one(problem, rng, taken)
                elif phase == "mutation":
                    rates, parents = self.mutate_one(problem, pop, rng, taken)
                else:
                    rates, parents = self.cross_one(problem, pop, rng, taken)
            except RepairError:
                continue
            taken.add(identity(rates, problem))
            out.append(Proposal(rates=rates, origin=origin, parents=parents))
        if len(out) < count:
            raise ProposerError(f"only {len(out)} of {count} distinct rate vectors exist for n={problem.n_layers}, "
                                f"beta={problem.beta} in [{problem.lo}, {problem.hi}]")
        return out

    # ---- the Proposer protocol -------------------------------------------------------------------
    def _taken(self, problem: Problem, population: list[Scored], seen) -> set:
        return {identity(s.rates, problem) for s in population} | set(seen)

    def initial(self, problem: Problem, k: int, seen=frozenset()) -> list[Proposal]:
        return self.fill(problem, [], k, "init", phase_rng(self.seed, "init", 0), set(seen), self.init_origin)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int,
               seen=frozenset()) -> list[Proposal]:
        return self.fill(problem, population, m, "mutation", phase_rng(self.seed, "mutation", generation),
                         self._taken(problem, population, seen), "mutation")

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int,
                  seen=frozenset()) -> list[Proposal]:
        return self.fill(problem, population, s, "crossover", phase_rng(self.seed, "crossover", generation),
                         self._taken(problem, population, seen), "crossover")


class RandomInitProposer:
    """The paper's "random init" ablation: a random initial population (origin 'random'); mutation and
    crossover go to `inner` (the LLM proposer), or to the numeric GA when there is none."""

    def __init__(self, seed: int = 0, inner: Proposer | None = None, spread: float | None = None):
        self.seed = seed
        self.inner: Proposer = inner if inner is not None else NumericProposer(seed)
        self._random = NumericProposer(seed, init_spread=spread, init_origin="random")
        self.name = "random" if inner is None else f"random+{inner.name}"
        if hasattr(self.inner, "select"):  # the LLM's selection step stays the LLM's
            self.select = self.inner.select

    @property
    def on_call(self) -> CallSink | None:
        return self.inner.on_call

    @on_call.setter
    def on_call(self, sink: CallSink | None) -> None:
        self.inner.on_call = sink

    def initial(self, problem: Problem, k: int, seen=frozenset()) -> list[Proposal]:
        return self._random.initial(problem, k, seen)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int,
               seen=frozenset()) -> list[Proposal]:
        return self.inner.mutate(problem, population, m, generation, seen)

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int,
                  seen=frozenset()) -> list[Proposal]:
        return self.inner.crossover(problem, population, s, generation, seen)
