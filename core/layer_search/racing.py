"""Racing (EvoPress's multi-step selection): every offspring is scored on a small token budget, and only the
best few are scored again on larger ones. `--race 512:all,2048:4,8192:1` reads: all offspring on 512 tokens,
the best 4 of those on 2,048, the best 1 on 8,192. Only the last stage's survivors join the population, so
every population member has a fitness on the same (last) budget, which is the search's budget_tokens.

The initial population is not raced: each of its K members must have a fitness on the last budget to be
ranked against later survivors, so it is scored on that budget alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class RaceStage:
    budget_tokens: int
    keep: int | None  # how many candidates this stage scores (the best of the previous stage); None = all


def parse_race(spec: str, seq_len: int) -> list[RaceStage]:
    stages = []
    for part in spec.split(","):
        budget, sep, keep = part.strip().partition(":")
        try:
            b = int(budget)
            k = None if keep.strip() in ("all", "") and sep else int(keep)
        except ValueError:
            raise ConfigError(f"--race stages are TOKENS:COUNT (COUNT a number or 'all'), got {part.strip()!r}") \
                from None
        if not sep:
            raise ConfigError(f"--race stages are TOKENS:COUNT (COUNT a number or 'all'), got {part.strip()!r}")
        stages.append(RaceStage(b, k))
    if len(stages) < 2:
        raise ConfigError("--race needs at least two stages, e.g. 512:all,2048:4")
    for prev, st in zip(stages, stages[1:]):
        if st.budget_tokens <= prev.budget_tokens:
            raise ConfigError(f"--race budgets must grow from stage to stage ({prev.budget_tokens} then "
                              f"{st.budget_tokens})")
        if st.keep is None or (prev.keep is not None and st.keep > prev.keep):
            raise ConfigError("--race counts must shrink from stage to stage ('all' only first)")
    if stages[0].budget_tokens < seq_len:
        raise ConfigError(f"--race's first budget ({stages[0].budget_tokens}) must be at least --seq-len ({seq_len})")
    if stages[-1].keep < 1:
        raise ConfigError("--race's last stage must keep at least one candidate")
    return stages


def search_budget(race: str | None, seq_len: int, budget_tokens: int | None) -> int:
    """The rule, written once: a raced search's budget is its last stage's (a different --budget-tokens is
    refused); without a race it is --budget-tokens, or one seq_len window when left out."""
    if not race:
        return budget_tokens or seq_len
    last = parse_race(race, seq_len)[-1].budget_tokens
    if budget_tokens is not None and budget_tokens != last:
        raise ConfigError(f"--budget-tokens ({budget_tokens}) must be --race's last budget ({last}), or left out")
    return last


def survivors(scored: list[tuple[int, float]], keep: int | None) -> list[int]:
    """The ids a stage passes on: the `keep` best by (fitness, id), ties to the older candidate."""
    ranked = sorted(scored, key=lambda t: (t[1], t[0]))
    return [i for i, _ in (ranked if keep is None else ranked[:keep])]


def stage_counts(stages: list[RaceStage], offspring: int) -> list[int]:
    """How many of a generation's `offspring` each stage scores."""
    counts, n = [], offspring
    for st in stages:
        n = n if st.keep is None else min(n, st.keep)
        counts.append(n)
    return counts


def race_tokens(stages: list[RaceStage], offspring: int) -> int:
    """Tokens one generation's race scores (no cache hits): what `--race` costs against a full budget."""
    return sum(n * st.budget_tokens for n, st in zip(stage_counts(stages, offspring), stages))
