"""How well does a small search-time token budget rank candidates, compared with a large reference budget?

20 candidates (the numeric GA's random initial population, mean β) are scored window by window once on
--reference-tokens; the ppl under each smaller budget uses the first windows of the same pass, so every
budget is measured in this one run. Prints the Spearman correlation with the reference ranking, and
whether the reference's best candidate is in each budget's top 3. On a GPU box use
--reference-tokens 0 (= the whole test stream).
"""
from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import spearmanr

from selfpruner.core.evaluate import ppl_from_nlls, window_nlls
from selfpruner.core.proposers.registry import make_proposer
from selfpruner.core.types import Problem
from selfpruner.core.workbench import Workbench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--budgets", default="512,1024,2048,4096")
    ap.add_argument("--reference-tokens", type=int, default=6144, help="0 = whole test stream")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    n = bench.lm.arch.n_layers
    problem = Problem(bench.lm.name, n, args.ratio)
    cands = [p.rates for p in make_proposer("numeric", seed=args.seed).initial(problem, args.candidates)]
    ref_windows = bench.windows("test", args.reference_tokens or None)
    t0 = time.perf_counter()
    per_window = []
    for rates in cands:
        with bench.pruner.applied(rates):
            per_window.append(window_nlls(bench.lm.model, ref_windows))
    secs = time.perf_counter() - t0
    ref = [ppl_from_nlls(w, args.seq_len) for w in per_window]
    best_ref = min(range(len(ref)), key=ref.__getitem__)
    print(f"model {bench.lm.name}, ratio {args.ratio}, {len(cands)} candidates, reference "
          f"{ref_windows.numel()} tokens ({secs:.0f} s for all candidates)")
    print(f"reference ppl: min {min(ref):.2f}  median {sorted(ref)[len(ref) // 2]:.2f}  max {max(ref):.2f}")
    print(f"{'budget':>8} {'spearman':>9} {'ref-best rank':>14} {'cost vs ref':>12}")
    for b in [int(x) for x in args.budgets.split(",")]:
        k = max(1, b // args.seq_len)
        if k > ref_windows.shape[0]:
            continue
        small = [ppl_from_nlls(w[:k], args.seq_len) for w in per_window]
        rho = spearmanr(small, ref).statistic
        rank = sorted(range(len(small)), key=small.__getitem__).index(best_ref) + 1
        print(f"{k * args.seq_len:>8} {rho:>9.3f} {rank:>14} {k / ref_windows.shape[0]:>12.3f}")


if __name__ == "__main__":
    main()
