"""Make any numeric vector a valid layer-rate candidate: right length, inside [lo, hi], mean exactly beta at
`problem.decimals` decimals, and distinct from the vectors already taken. "Distinct" is judged on the pruned
model a vector gives (its layer plans, core/plans.py) when the problem knows the layers' grain.

Under --split search a candidate also carries n attention-unit rates after its n layer rates: they are put on
each layer's unit grid inside what its rate allows (plans.fit_attention), and missing ones follow the rule split.

Work is done in integer units of 10**-decimals after a continuous projection, so the stored 5-decimal text
of a repaired vector sums to n*beta exactly (whenever n*beta is itself a multiple of 10**-decimals).

Under --target-speedup (problem.speed) the mean is free and the budget is time: every rate is shifted by one common
amount, the least that brings the plans' predicted time on the engine within the budget (core/cost_table.py), so a
vector keeps its shape as the mean projection keeps it.
"""
from __future__ import annotations

import math
import random
from itertools import combinations

from ..plans import candidate_key, fit_attention, plans
from ..types import Problem


class RepairError(ValueError):
    """The numbers cannot be made into a candidate (NaN/inf, empty, or an infeasible problem)."""


def identity(values, problem: Problem) -> tuple:
    """What `taken` holds: the candidate's one identity (plans.candidate_key) under the problem's grain."""
    return candidate_key(values, problem.grain, problem.decimals)


def _step_units(problem: Problem) -> int:
    """The smallest move (in 10**-decimals units) that changes a layer's plan: one MLP channel's rate (or one
    multiple of channels')."""
    if problem.grain is None:
        return 1
    return max(1, math.ceil(problem.grain.channel_step_rate * 10 ** problem.decimals))


def _check_problem(problem: Problem) -> None:
    if problem.n_layers < 1 or not (problem.lo <= problem.beta <= problem.hi):
        raise RepairError(f"infeasible problem: n={problem.n_layers}, lo={problem.lo}, beta={problem.beta}, "
                          f"hi={problem.hi}")


def project(values: list[float], beta: float, lo: float, hi: float) -> list[float]:
    """Euclidean projection onto {mean = beta, lo <= x <= hi}: x_i = clip(v_i + t). Shifting only the
    coordinates that can still move in the needed direction converges in at most n rounds."""
    x = [min(max(v, lo), hi) for v in values]
    n = len(x)
    for _ in range(n + 1):
        gap = n * beta - sum(x)
        if abs(gap) <= 1e-12 * max(1.0, n):
            break
        free = [i for i, v in enumerate(x) if (v < hi if gap > 0 else v > lo)]
        if not free:
            break
        step = gap / len(free)
        for i in free:
            x[i] = min(max(x[i] + step, lo), hi)
    return x


def _to_units(x: list[float], problem: Problem) -> list[int]:
    """Round to integer units and fix the rounding residual so that sum(units) == n*beta in units."""
    scale = 10 ** problem.decimals
    lo_u, hi_u = _unit_bounds(problem)
    exact = problem.n_layers * problem.beta * scale
    target = round(exact)  # not a whole number of units when beta has more decimals: closest reachable
    target = min(max(target, lo_u * len(x)), hi_u * len(x))
    units = [min(max(round(v * scale), lo_u), hi_u) for v in x]
    residual = target - sum(units)
    step = 1 if residual > 0 else -1
    # give the missing units to the coordinates that rounding moved furthest the other way
    order = sorted(range(len(x)), key=lambda i: (step * (units[i] - x[i] * scale), i))
    while residual:
        moved = False
        for i in order:
            if residual == 0:
                break
            if lo_u <= units[i] + step <= hi_u:
                units[i] += step
                residual -= step
                moved = True
        if not moved:  # cannot happen for a feasible problem; guard against an endless loop
            raise RepairError("cannot reach the target mean within the bounds")
    return units


def _with_attention(layer: list[float], attention: list[float | None] | None, problem: Problem) -> list[float]:
    """The whole candidate: the layer rates, then (--split search) each attention gene fitted to its layer's rate,
    a missing one as the rule split would remove (round(p·units) units)."""
    if attention is None:
        return layer
    return layer + [round(fit_attention(problem.grain, p, p if a is None else a), problem.decimals)
                    for p, a in zip(layer, attention)]


def _unit_bounds(problem: Problem) -> tuple[int, int]:
    scale = 10 ** problem.decimals
    return math.ceil(problem.lo * scale - 1e-9), math.floor(problem.hi * scale + 1e-9)


def _fit_budget(units: list[int], problem: Problem, attention=None) -> list[int]:
    """--target-speedup: the units shifted by the least common amount whose plans fit the time budget (bisection:
    more pruning never costs more time in a cost table whose savings grow with what is removed)."""
    scale, (lo_u, hi_u) = 10 ** problem.decimals, _unit_bounds(problem)

    def shifted(t: int) -> list[int]:
        return [min(max(u + t, lo_u), hi_u) for u in units]

    def fits_units(u: list[int]) -> bool:
        return problem.speed.fits(plans(problem.grain, _with_attention([v / scale for v in u], attention, problem)))

    def fits(t: int) -> bool:
        return fits_units(shifted(t))

    a, b = lo_u - max(units), hi_u - min(units)  # every layer at lo, every layer at hi
    if fits(a):
        return shifted(a)
    if not fits(b):
        raise RepairError(f"no rates within [{problem.lo}, {problem.hi}] reach a predicted "
                          f"{problem.speed.target:g}x speedup")
    while b - a > 1:
        m = (a + b) // 2
        a, b = (a, m) if fits(m) else (m, b)
    # one unit of shift can move many layers' attention at once (the rule split's steps): give back, layer by layer,
    # the unit that still fits, so the candidate spends its budget rather than overshooting it
    best, before = shifted(b), shifted(b - 1)
    for i in range(len(best)):
        if before[i] != best[i]:
            trial = best[:i] + [before[i]] + best[i + 1:]
            if fits_units(trial):
                best = trial
    return best


def _distinct(units: list[int], problem: Problem, taken, attention=None) -> list[int]:
    """Smallest deterministic mean-preserving change (move d units from layer i to layer j) whose identity
    is not in `taken`; d grows in steps of one MLP channel's rate. There are at most len(taken) collisions,
    so the search ends quickly. Under a speed budget each moved vector is put back on the budget."""
    scale = 10 ** problem.decimals
    lo_u, hi_u = _unit_bounds(problem)

    def settle(u):
        return _fit_budget(u, problem, attention) if problem.speed is not None else u

    def k(u):
        return identity(_with_attention([v / scale for v in u], attention, problem), problem)

    if k(units) not in taken:
        return units
    n = len(units)
    step = _step_units(problem)
    for d in range(step, max(step + 1, hi_u - lo_u + 1), step):
        feasible = False
        for i, j in combinations(range(n), 2):
            for a, b in ((i, j), (j, i)):
                if units[a] + d <= hi_u and units[b] - d >= lo_u:
                    feasible = True
                    cand = list(units)
                    cand[a] += d
                    cand[b] -= d
                    cand = settle(cand)
                    if k(cand) not in taken:
                        return cand
        if not feasible:  # a larger move will not fit either
            break
    raise RepairError("no distinct vector with this mean and these bounds is left")


def repair(values, problem: Problem, taken=frozenset(), notes: list[str] | None = None) -> tuple[list[float], bool]:
    """(repaired vector, whether it differs from `values`). `taken` holds `identity()` tuples to avoid; reasons
    for the changes are appended to `notes` when given (for the call log)."""
    _check_problem(problem)
    vals = [float(v) for v in values]
    if not vals:
        raise RepairError("empty vector")
    if not all(math.isfinite(v) for v in vals):
        raise RepairError("vector contains NaN or infinity")
    notes = notes if notes is not None else []
    n = problem.n_layers
    attention = _attention_genes(vals, n, notes) if problem.attention_genes else None
    vals = vals[:n] if attention is not None else vals
    if len(vals) != n:
        notes.append(f"length {len(vals)} != {n}: " + ("truncated" if len(vals) > n else f"padded with {problem.beta}"))
        vals = (vals + [problem.beta] * n)[:n]
    if any(v < problem.lo or v > problem.hi for v in vals):
        notes.append(f"values outside [{problem.lo}, {problem.hi}] clamped")
    scale = 10 ** problem.decimals
    if problem.speed is not None:
        lo_u, hi_u = _unit_bounds(problem)
        start = [min(max(round(v * scale), lo_u), hi_u) for v in vals]
        units = _fit_budget(start, problem, attention)
        if units != start:
            notes.append(f"rates shifted by {(units[0] - start[0]) / scale:+g} onto the {problem.speed.target:g}x "
                         f"speed budget")
    else:
        mean = sum(vals) / n
        if abs(mean - problem.beta) > 1e-9:
            notes.append(f"mean {mean:.6f} moved to {problem.beta}")
        units = _to_units(project(vals, problem.beta, problem.lo, problem.hi), problem)
        if abs(sum(units) - n * problem.beta * scale) > 1e-6:
            notes.append(f"mean cannot be exactly {problem.beta} at {problem.decimals} decimals")
    before = list(units)
    units = _distinct(units, problem, taken, attention)
    if units != before:
        notes.append("perturbed to differ from an existing candidate")
    out = _with_attention([u / scale for u in units], attention, problem)
    given = [float(v) for v in values]
    changed = len(given) != len(out) or any(a != b for a, b in zip(out, given))
    return out, changed


def _attention_genes(vals: list[float], n: int, notes: list[str]) -> list[float | None]:
    """The attention part of a --split search vector (None where it is missing)."""
    attention: list[float | None] = list(vals[n:2 * n])
    if len(vals) > 2 * n:
        notes.append(f"length {len(vals)} != {2 * n}: truncated")
    elif len(attention) < n:
        notes.append(f"{len(attention)} of {n} attention rates: the rest follow the rule split")
        attention += [None] * (n - len(attention))
    if any(a is not None and not 0.0 <= a <= 1.0 for a in attention):
        notes.append("attention rates outside [0, 1] clamped")
    return attention


def is_valid(values, problem: Problem, tol: float = 1e-9) -> bool:
    """Length n (2n under --split search), finite, inside the bounds, the layer rates' mean beta within tol, and
    written at `decimals` decimals."""
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    scale = 10 ** problem.decimals
    if len(vals) != problem.n_genes or not all(math.isfinite(v) for v in vals):
        return False
    layer, attention = vals[:problem.n_layers], vals[problem.n_layers:]
    on_budget = (problem.speed.fits(plans(problem.grain, vals)) if problem.speed is not None
                 else abs(sum(layer) / len(layer) - problem.beta) <= tol)
    return (all(problem.lo - tol <= v <= problem.hi + tol for v in layer)
            and all(-tol <= v <= 1 + tol for v in attention)
            and on_budget
            and all(abs(v * scale - round(v * scale)) < 1e-6 for v in vals))


def random_vector(problem: Problem, rng: random.Random, spread: float | None = None, taken=frozenset()) -> list[float]:
    """A random valid vector: uniform in beta ± spread (default: the widest symmetric band inside the
    bounds), then repaired. `rng` is a random.Random, so callers control determinism."""
    _check_problem(problem)
    if spread is None:
        spread = min(problem.beta - problem.lo, problem.hi - problem.beta)
    raw = [problem.beta + rng.uniform(-spread, spread) for _ in range(problem.n_layers)]
    if problem.attention_genes:  # around the rule's split of each layer's rate
        raw += [p + rng.uniform(-spread, spread) for p in raw]
    return repair(raw, problem, taken)[0]
