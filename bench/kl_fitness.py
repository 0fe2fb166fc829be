"""KL-from-dense fitness against ppl fitness on the LLaMA-family model: how well each ranks candidates at the
same search-token budget, which top-k to keep, what an evaluation costs, and what a search on each finds.

Ranking: --candidates rate vectors at β (half random, half mutations of uniform, like early and late
generations) are scored on --budget-tokens search tokens by ppl, by KL with each k in --ks and by the full-
vocabulary KL; the reference ranks them by ppl on --reference-tokens held-out test tokens (what the final
evaluation measures). Search: the numeric GA with each fitness at the same evaluation count, final ppl on
test text.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

from scipy.stats import spearmanr

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.kl import dense_full, full_kl
from selfpruner.core.proposers.repair import random_vector, repair
from selfpruner.core.types import Problem

from bench_args import add, add_protocol_args, conditions  # bench/ is on sys.path when run as a script


def candidates(n_layers: int, beta: float, count: int, seed: int) -> list[list[float]]:
    rng, prob = random.Random(seed), Problem("bench", n_layers, beta)
    out = [random_vector(prob, rng) for _ in range(count // 2)]
    out += [repair([beta + rng.gauss(0, 0.08) for _ in range(n_layers)], prob)[0] for _ in range(count - len(out))]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(ap)
    add(ap, ratio=0.3, candidates=16)
    ap.add_argument("--reference-tokens", type=int, default=4096)
    ap.add_argument("--ks", default="8,64,512")
    ap.add_argument("--no-search", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    n, ks = bench.lm.arch.n_layers, [int(k) for k in args.ks.split(",")]
    cands = candidates(n, args.ratio, args.candidates, 0)
    windows = bench.windows("search", args.budget_tokens)
    full_ref = dense_full(bench.lm.model, windows)
    print(f"model {bench.lm.name}, β={args.ratio}, {len(cands)} candidates; fitness on {windows.numel()} search "
          f"tokens; reference: ppl on {bench.windows('test', args.reference_tokens).numel()} test tokens")
    ref, scores, secs = [], {"ppl": []} | {f"kl k={k}": [] for k in ks} | {"kl full": []}, {}
    for r in cands:
        ref.append(bench.fitness(r, args.reference_tokens, which="test")[0])
        v, s = bench.fitness(r, args.budget_tokens)
        scores["ppl"].append(v)
        secs.setdefault("ppl", []).append(s)
        for k in ks:
            v, s = bench.fitness(r, args.budget_tokens, measure="kl", kl_k=k)
            scores[f"kl k={k}"].append(v)
            secs.setdefault(f"kl k={k}", []).append(s)
        with bench.pruner.applied(r):
            scores["kl full"].append(full_kl(bench.lm.model, full_ref, windows))
    print(f"{'fitness':<12} {'spearman':>9} {'ref-best rank':>14} {'s/eval vs ppl':>14}  (median over the candidates, "
          f"interleaved; {conditions()})")
    best = min(range(len(cands)), key=ref.__getitem__)
    for name, vals in scores.items():
        rho = spearmanr(vals, ref).statistic
        rank = sorted(range(len(vals)), key=vals.__getitem__).index(best) + 1
        cost = (f"{statistics.median(secs[name]) / statistics.median(secs['ppl']):.2f}" if name in secs else "-")
        print(f"{name:<12} {rho:>9.3f} {rank:>14} {cost:>14}")
    if not args.no_search:
        sessions = tempfile.mkdtemp(prefix="selfpruner-kl-")
        evals = args.K + args.N * (args.M + args.S)
        print(f"\nnumeric GA, {evals} evaluations, final ppl on {args.reference_tokens} test tokens")
        for fit in ("ppl", "kl"):
            cfg = SearchConfig(model=args.model, beta=args.ratio, proposer="numeric", population=args.K,
                               mutations=args.M, crossovers=args.S, generations=args.N,
                               budget_tokens=args.budget_tokens,
                               seq_len=args.seq_len, calib_tokens=args.calib_tokens, final_tokens=args.reference_tokens,
                               data="local", sessions_dir=sessions, fitness=fit)
            res = start_search(cfg, bus=EventBus(), control=Control(), bench=bench).run()
            print(f"  fitness {fit:<4} final ppl {res.final_ppl:.2f}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
