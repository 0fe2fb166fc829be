"""GGUF deployment on SmolLM2: what --channel-multiple costs in final ppl, and how fast llama.cpp runs the exports.

1. Channel multiples: the same numeric-GA search (same seed, bias compensation on) at --channel-multiple 1, 32, 64
   and 128; final ppl of its best on --final-tokens held-out tokens.
2. Speed: uniform, FLAP (FLAP's importance and structure) and the searched rates at multiple 32, each written as
   a deci GGUF in f16 and q8_0, against the dense model in the same type, on llama.cpp (gguf_speed.compare_gguf:
   median and min-max of --repeats interleaved rounds, resident memory, file size).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.results.export import build_pruned
from selfpruner.core.results.gguf_export import write_gguf
from selfpruner.core.results.gguf_speed import compare_gguf, gguf_markdown

from bench_args import add, add_protocol_args  # bench/ is on sys.path when run as a script


def search(bench, args, beta: float, multiple: int, sessions: str):
    cfg = SearchConfig(model=args.model, beta=beta, proposer="numeric", population=args.K, mutations=args.M,
                       crossovers=args.S, generations=args.N, budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                       calib_tokens=args.calib_tokens, final_eval=False, data="local", seed=args.seed,
                       sessions_dir=sessions, reconstruct="bias", channel_multiple=multiple)
    return start_search(cfg, bus=EventBus(), control=Control(), bench=bench).run().best_rates


def export(bench, rates, path: Path, outtype: str, multiple: int) -> Path:
    bench.set_pruning(True, multiple)
    model = build_pruned(bench.lm, bench.pruner, rates, dtype=torch.float32, device="cpu")
    return Path(write_gguf(model, bench.lm.tokenizer, path, source_gguf=bench.lm.gguf_path, outtype=outtype).path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(ap)
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--multiples", default="1,32,64,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128, help="generated tokens per round (short rounds: noise)")
    ap.add_argument("--skip-multiples", action="store_true")
    add(ap, final_tokens=8192, repeats=7, seed=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    flap = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                           importance="flap")
    sessions, out = tempfile.mkdtemp(prefix="selfpruner-gguf-"), Path(tempfile.mkdtemp(prefix="selfpruner-gguf-"))
    evals = args.K + args.N * (args.M + args.S)
    tokens = bench.windows("test", args.final_tokens).numel()
    print(f"model {bench.lm.name}; numeric GA, {evals} evaluations of {args.budget_tokens} tokens, seed {args.seed}, "
          f"bias compensation on; final ppl on {tokens} held-out tokens\n")
    searched = {}
    if not args.skip_multiples:
        print("1. what --channel-multiple costs (the same search at each multiple)")
        print(f"{'β':>4} {'multiple':>8} {'final ppl':>10} {'× multiple 1':>13}")
    for beta in [float(x) for x in args.ratios.split(",")]:
        base = None
        for m in [int(x) for x in args.multiples.split(",")] if not args.skip_multiples else [32]:
            rates = search(bench, args, beta, m, sessions)
            if m == 32:
                searched[beta] = rates
            if args.skip_multiples:
                continue
            bench.set_pruning(True, m)
            ppl = bench.fitness(rates, args.final_tokens, which="test")[0]
            base = base or ppl
            print(f"{beta:>4} {m:>8} {ppl:>10.2f} {ppl / base:>13.3f}", flush=True)
    print(f"\n2. llama.cpp speed (MLP widths in multiples of 32, compensation on), {args.threads} threads")
    for outtype in ("f16", "q8_0"):
        dense = export(bench, [0.0] * bench.lm.arch.n_layers, out / f"dense-{outtype}.gguf", outtype, 32)
        for beta, rates in searched.items():
            models = {"dense": dense,
                      "uniform": export(bench, baseline_rates(bench, "uniform", beta), out / f"u{beta}-{outtype}.gguf",
                                        outtype, 32),
                      "FLAP": export(flap, baseline_rates(flap, "flap", beta), out / f"f{beta}-{outtype}.gguf", outtype,
                                     32),
                      "searched": export(bench, rates, out / f"s{beta}-{outtype}.gguf", outtype, 32)}
            report = compare_gguf(models, threads=args.threads, repeats=args.repeats, prompt_len=args.prompt_len,
                                  decode_tokens=args.decode_tokens)
            print(f"\nβ {beta}, {outtype}:\n" + gguf_markdown(report), flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
