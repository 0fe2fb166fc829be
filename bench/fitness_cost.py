"""What one fitness evaluation costs, against the physical limit and against the naive approach.

(a) ours: apply a rate vector to the resident model as prefix views, score ppl on the token budget, restore.
(b) the physical limit: a bare forward pass over the same tokens through the same pruned model built
    physically smaller (contiguous, smaller matrices), built beforehand and not timed.
(c) naive: deep-copy the dense model, prune the copy (index-select the kept heads/channels), evaluate.
(c') naive as a per-candidate pruning script does it: (c) plus the Wanda-sp calibration pass on the copy.
Prints (a)/(b), (c)/(a) and (c')/(a) from the medians of --repeats interleaved rounds measured in this one process
(each time with its min-max, the thread count and the load average at start: issue 25's protocol).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.calibration import collect_stats
from selfpruner.core.model.evaluate import perplexity
from selfpruner.core.model.models import describe_model

from bench_args import add, conditions, spread  # bench/ is on sys.path when run as a script


def physically_pruned(bench: Workbench, rates) -> nn.Module:
    """A deep copy of the pruned model whose projections own contiguous, smaller weights."""
    with bench.pruner.applied(rates):
        phys = copy.deepcopy(bench.lm.model)
    for mod in phys.modules():
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(mod.weight.detach().contiguous().clone(), requires_grad=False)
    return phys


def naive(bench: Workbench, rates, windows, calibrate: bool) -> float:
    model = copy.deepcopy(bench.lm.model)
    arch = describe_model(model)
    if calibrate:  # what re-running a Wanda-sp pruning script per candidate costs
        collect_stats(model, arch, bench.windows("calib", None))
    for parts, plan in zip(arch.layers, bench.pruner.plan(rates)):
        nq = plan.attn_units * arch.q_heads_per_unit * arch.head_dim
        nkv = (plan.attn_units if arch.attn_unit_is_group else arch.n_kv_heads) * arch.head_dim
        idx = lambda n: torch.arange(n)  # the resident model is score-ordered: kept = first n
        for lin, n in ((parts.q, nq), (parts.k, nkv), (parts.v, nkv)):
            lin.weight = nn.Parameter(lin.weight.index_select(0, idx(n)), requires_grad=False)
        parts.o.weight = nn.Parameter(parts.o.weight.index_select(1, idx(nq)), requires_grad=False)
        if hasattr(parts.attn, "num_key_value_groups") and nkv:
            parts.attn.num_key_value_groups = nq // nkv
        for lin in (parts.gate, parts.up):
            lin.weight = nn.Parameter(lin.weight.index_select(0, idx(plan.channels)), requires_grad=False)
        parts.down.weight = nn.Parameter(parts.down.weight.index_select(1, idx(plan.channels)), requires_grad=False)
    return perplexity(model, windows)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model=None, ratio=0.3, budget_tokens=1024, seq_len=512, calib_tokens=8192, repeats=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    n = bench.lm.arch.n_layers
    # a fixed non-uniform vector with mean = ratio
    rates = [args.ratio + 0.1 * ((i % 3) - 1) for i in range(n)]
    shift = args.ratio - sum(rates) / n
    rates = [r + shift for r in rates]
    windows = bench.windows("search", args.budget_tokens)
    phys = physically_pruned(bench, rates)
    ppl_phys = perplexity(phys, windows)
    head = f"model {bench.lm.name}, {windows.numel()} tokens, ratio {args.ratio}, {conditions()}"

    def bare():
        with torch.no_grad():
            return [phys(input_ids=windows[i:i + 1]) for i in range(windows.shape[0])]

    times = {k: [] for k in ("a", "b", "c")}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the box hits every approach alike
        t, ppl_a = timed(lambda: bench.fitness(rates, args.budget_tokens)[0])
        times["a"].append(t)
        times["b"].append(timed(bare)[0])
        t, ppl_c = timed(lambda: naive(bench, rates, windows, calibrate=False))
        times["c"].append(t)
    t_c2, _ = timed(lambda: naive(bench, rates, windows, calibrate=True))  # once: it is minutes on a large model
    t_a, t_b, t_c = (statistics.median(times[k]) for k in "abc")

    print(head)
    print(f"ppl: ours {ppl_a:.4f}  physical {ppl_phys:.4f}  naive {ppl_c:.4f}  (must agree)")
    print(f"seconds, median (min-max) of {args.repeats} interleaved rounds:")
    print(f"(a) ours            {spread(times['a'])}")
    print(f"(b) physical fwd    {spread(times['b'])}")
    print(f"(c) naive copy      {spread(times['c'])}")
    print(f"(c') naive + calib  {t_c2:.3f} (once)")
    print(f"(a)/(b)  = {t_a / t_b:.3f}   target <= 1.15")
    print(f"(c)/(a)  = {t_c / t_a:.3f}   target >= 5")
    print(f"(c')/(a) = {t_c2 / t_a:.3f}")


if __name__ == "__main__":
    main()
