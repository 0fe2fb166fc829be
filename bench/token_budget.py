"""How well does a small search-time token budget rank candidates, compared with the final test ranking?

20 candidates are scored as a search scores them, on the search stream, window by window up to the
largest budget (each smaller budget is a prefix of that pass), and as the final evaluation scores them, on
--reference-tokens of the test stream (disjoint text). Prints the Spearman correlation of each budget's
ranking with the reference ranking, where the reference's best lands in each budget's ranking, and what
each budget costs relative to the largest. Beside ppl's Spearman, KL fitness's (--fitness kl: mean KL from the
dense model's top --kl-k log-probs) on the same search windows.
--candidates-from random: the numeric GA's random initial population (widely spread, like an early
generation); neighbours: numeric-GA mutations (sigma 0.05) of the uniform vector (close, like a late one).
On a GPU box use --reference-tokens 0 (the whole test stream) and larger --budgets.
"""
from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import spearmanr

from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.evaluate import ppl_from_nlls, window_nlls
from selfpruner.core.proposers.registry import make_proposer
from selfpruner.core.types import Problem, Scored

from bench_args import add  # bench/ is on sys.path when run as a script


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model=None, ratio=0.3, candidates=20, seq_len=512, calib_tokens=8192, seed=1)
    ap.add_argument("--budgets", default="512,1024,2048")
    ap.add_argument("--reference-tokens", type=int, default=3072, help="0 = whole test stream")
    ap.add_argument("--candidates-from", choices=["random", "neighbours"], default="random")
    ap.add_argument("--kl-k", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    n = bench.lm.arch.n_layers
    problem = Problem(bench.lm.name, n, args.ratio)
    ga = make_proposer("numeric", seed=args.seed)
    if args.candidates_from == "random":
        cands = [p.rates for p in ga.initial(problem, args.candidates)]
    else:
        uniform = Scored(0, [args.ratio] * n, 0.0)
        cands = [p.rates for p in ga.mutate(problem, [uniform], args.candidates, 1)]
    budgets = sorted(int(x) for x in args.budgets.split(","))
    search_windows = bench.windows("search", budgets[-1])
    ref_windows = bench.windows("test", args.reference_tokens or None)
    t0 = time.perf_counter()
    search_nlls, ref_nlls = [], []
    for rates in cands:
        with bench.pruner.applied(rates):
            search_nlls.append(window_nlls(bench.lm.model, search_windows))
            ref_nlls.append(window_nlls(bench.lm.model, ref_windows))
    secs = time.perf_counter() - t0
    kls = {b: [bench.fitness(r, b, measure="kl", kl_k=args.kl_k)[0] for r in cands] for b in budgets}
    ref = [ppl_from_nlls(w, args.seq_len) for w in ref_nlls]
    best_ref = min(range(len(ref)), key=ref.__getitem__)
    print(f"model {bench.lm.name}, ratio {args.ratio}, {len(cands)} {args.candidates_from} candidates, reference "
          f"{ref_windows.numel()} test tokens, budgets on the search stream ({secs:.0f} s for all candidates)")
    print(f"reference ppl: min {min(ref):.2f}  median {sorted(ref)[len(ref) // 2]:.2f}  max {max(ref):.2f}")
    print(f"{'budget':>8} {'spearman':>9} {'ref-best rank':>14} {'cost':>6} {'KL spearman':>12} {'KL ref-best':>12}")
    for b in budgets:
        k = max(1, b // args.seq_len)
        small = [ppl_from_nlls(w[:k], args.seq_len) for w in search_nlls]
        rho = spearmanr(small, ref).statistic
        rank = sorted(range(len(small)), key=small.__getitem__).index(best_ref) + 1
        kl_rho = spearmanr(kls[b], ref).statistic
        kl_rank = sorted(range(len(cands)), key=kls[b].__getitem__).index(best_ref) + 1
        print(f"{k * args.seq_len:>8} {rho:>9.3f} {rank:>14} {k / search_windows.shape[0]:>6.2f} {kl_rho:>12.3f} "
              f"{kl_rank:>12}")


if __name__ == "__main__":
    main()
