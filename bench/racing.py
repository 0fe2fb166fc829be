"""Racing (--race) against a full-budget search: final ppl per token spent on fitness.

Three searches per seed, the numeric GA proposer (racing changes what is evaluated, not what is proposed):
  full         every candidate on --full-tokens (the search budget of a run without racing)
  race         the same K, M, S, N with --race (offspring on the small budgets, the best few on larger ones)
  race, equal  --race with as many generations as fit in the full search's tokens
Tokens = tokens the search scored (stored evaluations that were not cache hits), so a cache hit costs
nothing in any of them. Final ppl on --final-tokens held-out test tokens. Target: race reaches the full
search's final ppl with <= 0.5x its tokens.
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.racing import race_tokens
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench

from bench_args import add  # bench/ is on sys.path when run as a script


def search(bench, sessions, base: dict, **over) -> tuple[float, int, float, float]:
    """(final ppl, tokens scored, search fitness, seconds)."""
    t0 = time.perf_counter()
    cfg = SearchConfig(sessions_dir=sessions, final_eval=False, **{**base, **over})
    s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    res = s.run()
    tokens = sum(e["budget_tokens"] for e in s.store.evaluations() if e["kind"] == "search" and not e["cached"])
    final = bench.fitness(res.best_rates, base["final_tokens"], which="test")[0]
    return final, tokens, res.best_fitness, time.perf_counter() - t0


def summary(rows: dict[str, list[tuple[float, float]]]) -> None:
    """Mean ± sd over seeds of each search's final ppl and of its tokens as a multiple of the full search's."""
    print(f"\n{'search':<26} {'x full tokens':>13} {'final ppl (mean ± sd)':>22} {'/ full':>7}")
    full_mean = statistics.mean(f for f, _ in rows["full"])
    for name, r in rows.items():
        finals = [f for f, _ in r]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(f"{name:<26} {statistics.mean(t for _, t in r):>13.2f} "
              f"{statistics.mean(finals):>12.2f} ± {sd:>7.2f} {statistics.mean(finals) / full_mean:>7.3f}")
    race_mean = statistics.mean(f for f, _ in rows["race"])
    ratio = statistics.mean(t for _, t in rows["race"])
    print(f"target: race's final ppl within one sd of full's at <= 0.5x tokens: tokens {ratio:.2f}x, final ppl "
          f"{race_mean / full_mean:.3f}x full's")


def from_log(path: str) -> dict[str, list[tuple[float, float]]]:
    """The per-seed lines a run printed (e.g. one stopped before its last seed), back into rows."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\s*\d+ (full|race.*?)\s+\d+\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+\d+$", line.rstrip())
        if m:
            rows.setdefault(m.group(1), []).append((float(m.group(3)), float(m.group(2))))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", ratio=0.3, K=6, M=5, S=5, N=6, seq_len=256, calib_tokens=8192, final_tokens=4096,
            sessions_dir=None)
    ap.add_argument("--race", default="256:all,1024:3,2048:1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--report", default=None, metavar="LOG", help="re-print the summary from a run's output")
    args = ap.parse_args(argv)
    if args.report:
        return summary(from_log(args.report))
    t_start = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    stages = SearchConfig(race=args.race, seq_len=args.seq_len).race_stages
    full_tokens = stages[-1].budget_tokens
    per_gen_full, per_gen_race = (args.M + args.S) * full_tokens, race_tokens(stages, args.M + args.S)
    init = args.K * full_tokens
    n_equal = (init + args.N * per_gen_full - init) // per_gen_race  # generations the race affords
    sessions = args.sessions_dir or tempfile.mkdtemp(prefix="selfpruner-race-")
    print(f"model {bench.lm.name}, β={args.ratio}, numeric GA, K={args.K} M={args.M} S={args.S}; full budget "
          f"{full_tokens} tokens, race {args.race}; final ppl on {bench.test_tokens(args.final_tokens)} test tokens")
    base = dict(model=args.model, beta=args.ratio, proposer="numeric", population=args.K, mutations=args.M,
                crossovers=args.S, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                final_tokens=args.final_tokens)
    runs = {"full": dict(generations=args.N, budget_tokens=full_tokens),
            "race": dict(generations=args.N, race=args.race),
            f"race, equal tokens (N={n_equal})": dict(generations=n_equal, race=args.race)}
    rows = {name: [] for name in runs}
    print(f"{'seed':>4} {'search':<26} {'tokens':>8} {'x full':>7} {'search fit':>11} {'final ppl':>10} {'s':>6}")
    for seed in [int(x) for x in args.seeds.split(",")]:
        full_tok = None
        for name, over in runs.items():
            final, tokens, fit, secs = search(bench, sessions, base | {"seed": seed}, **over)
            full_tok = full_tok or tokens
            rows[name].append((final, tokens / full_tok))
            print(f"{seed:>4} {name:<26} {tokens:>8} {tokens / full_tok:>7.2f} {fit:>11.3f} {final:>10.2f} "
                  f"{secs:>6.0f}", flush=True)
    summary(rows)
    print(f"total {time.perf_counter() - t_start:.0f} s; sessions in {sessions}")


if __name__ == "__main__":
    main()
