"""FLAP's bias compensation on the LLaMA-family model: final ppl with and without it for uniform Wanda-sp, OWL, the
FLAP baseline (FLAP's importance and global structure) and a numeric-GA search (searched without it, then searched
with it), and what it costs per fitness evaluation.

Each search spends K + N·(M+S) evaluations (defaults: the paper's K:(M+S) = 30:20 at K=6, M=S=2, N=6). Final ppl
on --final-tokens held-out test tokens. The per-candidate cost is the median of --repeats fitness calls on one
rate vector with compensation against without, interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench

from bench_args import add, add_protocol_args, conditions, spread  # bench/ is on sys.path when run as a script


def final(bench, rates, tokens, compensate: bool) -> float:
    bench.pruner.reconstruct = compensate
    return bench.fitness(rates, tokens, which="test")[0]


def search(bench, args, beta: float, compensate: bool, sessions: str):
    cfg = SearchConfig(model=args.model, beta=beta, proposer="numeric", population=args.K, mutations=args.M,
                       crossovers=args.S, generations=args.N, budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                       calib_tokens=args.calib_tokens, final_eval=False, data="local", seed=args.seed,
                       sessions_dir=sessions, reconstruct="bias" if compensate else "none")
    return start_search(cfg, bus=EventBus(), control=Control(), bench=bench).run().best_rates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(ap)
    ap.add_argument("--ratios", default="0.3,0.5")
    add(ap, final_tokens=4096, repeats=5, seed=0)
    ap.add_argument("--baselines-only", action="store_true", help="uniform, OWL and FLAP rows only (no searches)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    # FLAP as FLAP prunes: its own importance orders the heads and channels, its global structure gives the rates
    flap = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                           importance="flap")
    sessions = tempfile.mkdtemp(prefix="selfpruner-comp-")
    evals = args.K + args.N * (args.M + args.S)
    print(f"model {bench.lm.name}; searches: numeric GA, {evals} evaluations of {args.budget_tokens} tokens, seed "
          f"{args.seed}; final ppl on {bench.windows('test', args.final_tokens).numel()} test tokens")
    print(f"{'β':>4} {'rates':<32} {'plain':>10} {'compensated':>12} {'ratio':>7}")
    for beta in [float(x) for x in args.ratios.split(",")]:
        rows = {"uniform Wanda-sp": baseline_rates(bench, "uniform", beta),
                "OWL": baseline_rates(bench, "owl", beta)}
        if not args.baselines_only:
            rows["GA searched without"] = search(bench, args, beta, False, sessions)
        for name, rates in rows.items():
            p, c = final(bench, rates, args.final_tokens, False), final(bench, rates, args.final_tokens, True)
            print(f"{beta:>4} {name:<32} {p:>10.2f} {c:>12.2f} {c / p:>7.3f}", flush=True)
        rates = baseline_rates(flap, "flap", beta)
        p, c = final(flap, rates, args.final_tokens, False), final(flap, rates, args.final_tokens, True)
        print(f"{beta:>4} {'FLAP (its importance and rates)':<32} {p:>10.2f} {c:>12.2f} {c / p:>7.3f}", flush=True)
        if not args.baselines_only:
            c = final(bench, search(bench, args, beta, True, sessions), args.final_tokens, True)
            p = final(bench, rows["GA searched without"], args.final_tokens, False)
            print(f"{beta:>4} {'GA searched with (vs without)':<32} {p:>10.2f} {c:>12.2f} {c / p:>7.3f}", flush=True)
    rates = baseline_rates(bench, "uniform", 0.3)
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for comp in (False, True):
            bench.pruner.reconstruct = comp
            times[comp].append(bench.fitness(rates, args.budget_tokens)[1])
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"fitness time with / without compensation ({args.budget_tokens} tokens, median of {args.repeats} "
          f"interleaved, {conditions()}): {ratio:.3f}; seconds with {spread(times[True])}, without "
          f"{spread(times[False])}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
