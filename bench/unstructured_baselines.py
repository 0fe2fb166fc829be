"""Unstructured and 2:4 baselines in one run: magnitude, Wanda, RIA, the published Pruner-Zero metric and
SparseGPT, at 50% and 60% per-row sparsity and at the 2:4 pattern, on one loaded model.

Each row is held-out WikiText-2 ppl on --tokens test tokens in --seq-len windows (the regime of
`selfpruner prune`: BOS, held-out split), with the calibration statistics of --calib-tokens tokens (SparseGPT's
Hessians come from the same windows) and G over --grad-tokens for the Pruner-Zero metric. Also: seconds to
prune (metric: score and mask every projection; SparseGPT: its layer-by-layer pass).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from selfpruner.core.events import EventBus
from selfpruner.core.metric_search.expr import KNOWN_METRICS
from selfpruner.core.metric_search.expr_parse import parse
from selfpruner.core.metric_search.pruner_zero import MetricSearchConfig
from selfpruner.core.metric_search.session import MetricRun, Workspace
from selfpruner.core.metric_search.unstructured import parse_pattern

from bench_args import add  # bench/ is on sys.path when run as a script

METHODS = ("magnitude", "wanda", "ria", "pruner-zero", "sparsegpt")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", seq_len=512, calib_tokens=16384)
    ap.add_argument("--tokens", type=int, default=4096, help="held-out test tokens")
    ap.add_argument("--grad-tokens", type=int, default=4096)
    ap.add_argument("--regimes", default="0.5,0.6,2:4", help="sparsities and N:M patterns")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--metric", action="append", default=[], metavar="NAME=TREE",
                    help="one more metric row, e.g. a searched one (repeatable)")
    ap.add_argument("--update", default="", metavar="NAME,...",
                    help="metrics also run with SparseGPT's update of the weights they keep (rows NAME+update)")
    args = ap.parse_args(argv)
    extra = dict(m.split("=", 1) for m in args.metric)
    methods = args.methods.split(",") + list(extra) + [f"{m}+update" for m in args.update.split(",") if m]
    torch.manual_seed(0)
    cfg = MetricSearchConfig(model=args.model, seq_len=args.seq_len, grad_tokens=args.grad_tokens,
                             operands=("W", "G", "X"))
    ws = Workspace(cfg, MetricRun(calib_tokens=args.calib_tokens, data="local"), EventBus())
    test = ws.test_windows(args.tokens)
    calib = ws.data.windows("calib", args.seq_len)
    print(f"model {ws.lm.name}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"{test.numel()} test tokens, {calib.numel()} calibration tokens, G over {args.grad_tokens}")
    dense = ws.ppl(test)
    print(f"dense ppl {dense:.2f}")
    regimes = args.regimes.split(",")
    rows = {}
    for method in methods:
        for regime in regimes:
            pattern = parse_pattern(regime) if ":" in regime else None
            sparsity = 1 - pattern[0] / pattern[1] if pattern else float(regime)
            t0 = time.perf_counter()
            base = method.removesuffix("+update")
            if method == "sparsegpt" or method.endswith("+update"):  # SparseGPT's update of its own or a metric's mask
                metric = None if method == "sparsegpt" else (extra.get(base) or KNOWN_METRICS[base])
                achieved = ws.pruner.apply_sparsegpt(ws.lm.model, calib, sparsity, pattern, batch_size=ws.batch_size,
                                                     metric=metric)
            else:
                achieved = ws.pruner.apply(parse(extra.get(method) or KNOWN_METRICS[method]), sparsity, pattern)
            secs = time.perf_counter() - t0
            ppl = ws.ppl(test)
            ws.pruner.restore()
            rows[(method, regime)] = (ppl, secs)
            print(f"{method:<12} {regime:<4} sparsity {achieved:.4f}  ppl {ppl:9.2f}  ({secs:.1f} s to prune)",
                  flush=True)
    print("\n| method | " + " | ".join(f"{r} ppl" for r in regimes) + " | seconds to prune (50%) |")
    print("|---|" + "---:|" * (len(regimes) + 1))
    print(f"| dense | {dense:.2f} |" + " |" * len(regimes))
    for method in methods:
        cells = " | ".join(f"{rows[(method, r)][0]:.2f}" for r in regimes)
        base = method.removesuffix("+update")
        name = f"{method} `{extra[base]}`" if base in extra else method
        print(f"| {name} | {cells} | {rows[(method, regimes[0])][1]:.1f} |")


if __name__ == "__main__":
    main()
