"""Least-squares reconstruction (--reconstruct ls) against bias compensation and nothing, one shot: FLAP's own
allocation at each β and calibration size, held-out ppl on --final-tokens, and what each costs per candidate.

For every --calib-tokens value: the workbench (FLAP importance, the rule split) is built, FLAP's rates at each β are
scored with none, bias and ls; "closer" is how much of bias compensation's distance to dense ls removes
((bias - ls) / (bias - dense)). Then the fitness cost: --candidates random rate vectors at the first β (mean β,
fresh widths each, so no solve is reused), each scored on --budget-tokens with the three reconstructions in turn,
--repeats rounds, each after one untimed candidate (ls builds its per-layer factors once per search); the median
seconds per candidate and the ratios to none and bias.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from selfpruner.core.layer_search.workbench import Workbench

from bench_args import add, conditions  # bench/ is on sys.path when run as a script

HOW = ("none", "bias", "ls")


def random_rates(n: int, beta: float, rng: random.Random) -> list[float]:
    r = [min(max(beta + rng.uniform(-0.2, 0.2), 0.0), 0.9) for _ in range(n)]
    shift = beta - sum(r) / n
    return [min(max(x + shift, 0.0), 1.0) for x in r]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", seq_len=512, final_tokens=8192, budget_tokens=512, candidates=6, repeats=3)
    ap.add_argument("--calib", default="8192,16384,65536", help="calibration token counts")
    ap.add_argument("--ratios", default="0.3,0.5")
    args = ap.parse_args(argv)
    ratios = [float(x) for x in args.ratios.split(",")]
    print(f"model {args.model}; FLAP importance, rule split; final ppl on {args.final_tokens} held-out tokens; "
          f"{conditions()}")
    print(f"{'calib':>7} {'β':>4} {'none':>10} {'bias':>9} {'ls':>8} {'closer':>7} {'ls / dense':>10}")
    bench = None
    for calib in [int(x) for x in args.calib.split(",")]:
        bench = None  # one resident model at a time
        t0 = time.perf_counter()
        bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=calib, data="local", device="cpu",
                                importance="flap")
        bench.set_pruning("ls")  # the Gram pass, timed with the build
        built = time.perf_counter() - t0
        dense = bench.dense_ppl(args.final_tokens, "test")
        for beta in ratios:
            rates = bench.reference_rates(beta, 0.0, 1.0)["flap"]
            ppl = {}
            for how in HOW:
                bench.set_pruning(how)
                ppl[how] = bench.fitness(rates, args.final_tokens, which="test")[0]
            closer = (ppl["bias"] - ppl["ls"]) / (ppl["bias"] - dense)
            print(f"{calib:>7} {beta:>4} {ppl['none']:>10.2f} {ppl['bias']:>9.2f} {ppl['ls']:>8.2f} {closer:>7.0%} "
                  f"{ppl['ls'] / dense:>9.2f}x   (dense {dense:.2f}; build + Gram pass {built:.0f} s)", flush=True)
    rng = random.Random(0)
    cands = [random_rates(bench.lm.arch.n_layers, ratios[0], rng) for _ in range(args.candidates)]
    warm = random_rates(bench.lm.arch.n_layers, ratios[0], rng)
    secs = {how: [] for how in HOW}
    for _ in range(args.repeats):
        for how in HOW:
            bench.set_pruning(how)
            bench.fitness(warm, args.budget_tokens)  # ls builds its per-layer factors once per search: not timed
            t0 = time.perf_counter()
            for c in cands:
                bench.fitness(c, args.budget_tokens)
            secs[how].append((time.perf_counter() - t0) / len(cands))
    med = {how: statistics.median(v) for how, v in secs.items()}
    print(f"\nfitness per candidate ({args.budget_tokens} tokens, {args.candidates} random candidates at β "
          f"{ratios[0]}, median of {args.repeats} rounds): " + ", ".join(f"{h} {med[h]:.3f} s" for h in HOW))
    print(f"ls / none {med['ls'] / med['none']:.2f}x, ls / bias {med['ls'] / med['bias']:.2f}x")


if __name__ == "__main__":
    main()
