"""Sequential calibration (--sequential) against one-shot least squares: held-out ppl of the same allocations
rebuilt both ways, and what the layer-by-layer rebuild costs.

For each β: FLAP's allocation (and the uniform one) on the workbench of the defaults (FLAP importance, rule split,
--reconstruct ls), scored on --final-tokens held-out tokens with the one-shot factors, then rebuilt layer by layer
on the pruned layers' own outputs; "closer" is the share of one-shot's distance to dense the rebuild removes
(negative: it lost). The allocation `searched` is the best of a numeric GA search per --seeds (bench/peers.py's
"GA + references + level-switch + ls": K=20 M=5 S=5 N=8 on --budget-tokens), whose fitness uses the one-shot
factors, as `search --sequential` does: only its final evaluation is rebuilt.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.sequential import sequential_least_squares

from bench_args import add, conditions  # bench/ is on sys.path when run as a script


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", seq_len=512, calib_tokens=8192, final_tokens=8192, ratios="0.3,0.5", budget_tokens=512)
    ap.add_argument("--allocations", default="flap,uniform", help="flap, uniform, searched")
    ap.add_argument("--seeds", default="0,1,2", help="the searched allocation's seeds")
    args = ap.parse_args(argv)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                            device="cpu", importance="flap", reconstruct="ls")
    dense = bench.dense_ppl(args.final_tokens, "test")
    print(f"model {args.model}; FLAP importance, rule split, least squares; {args.calib_tokens} calibration tokens; "
          f"final ppl on {args.final_tokens} held-out tokens (dense {dense:.2f}); {conditions()}")
    print(f"{'β':>4} {'allocation':>10} {'one-shot':>9} {'sequential':>11} {'closer':>7} {'rebuild s':>10}")
    for beta in [float(x) for x in args.ratios.split(",")]:
        refs = bench.reference_rates(beta, 0.0, 1.0)
        allocations = [(name, refs[name]) for name in args.allocations.split(",") if name != "searched"]
        if "searched" in args.allocations.split(","):
            allocations += [(f"seed {seed}", searched(bench, args, beta, seed)) for seed in args.seeds.split(",")]
        for name, rates in allocations:
            one = bench.fitness(rates, args.final_tokens, which="test")[0]
            t0 = time.perf_counter()
            bench.pruner.use_factors(rates, sequential_least_squares(bench.pruner, rates, bench.windows("calib", None)))
            secs = time.perf_counter() - t0
            seq = bench.fitness(rates, args.final_tokens, which="test")[0]
            bench.pruner.forget_factors()
            print(f"{beta:>4} {name:>10} {one:>9.2f} {seq:>11.2f} {(one - seq) / (one - dense):>7.0%} {secs:>10.0f}",
                  flush=True)


def searched(bench, args, beta: float, seed: str) -> list[float]:
    cfg = SearchConfig(model=args.model, beta=beta, proposer="numeric", population=20, mutations=5, crossovers=5,
                       generations=8, budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                       calib_tokens=args.calib_tokens, final_eval=False, data="local", seed=int(seed),
                       sessions_dir=tempfile.mkdtemp(prefix="selfpruner-sequential-"), importance="flap",
                       reconstruct="ls", seed_references=True, numeric_mutation="mixed", split="rule")
    return start_search(cfg, bus=EventBus(), control=Control(), bench=bench).run().best_rates


if __name__ == "__main__":
    main()
