"""Where a pruned SmolLM2's transformers decode step goes: the dense model, the same weights through selfpruner's
pruned modeling code at rate 0 (same width: any cost the per-layer-width code adds shows here), and FLAP's β
allocation exported, timed by results.speed.compare (interleaved rounds, median and min-max).

A decode step of a model this small is its weight traffic plus a per-step cost that does not shrink with the
weights (generate's Python, module dispatch of 30 layers). Two rows with different weight bytes give both: the
bandwidth (slope) and that fixed cost (intercept), and from them the decode speedup the fixed cost leaves
possible, beside the weight ratio's.
"""
from __future__ import annotations

import argparse

import torch

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.models import load_model
from selfpruner.core.results.export import build_pruned
from selfpruner.core.results.speed import compare, to_markdown

from bench_args import add  # bench/ is on sys.path when run as a script


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    add(ap, model="smollm2", ratio=0.3, repeats=5, calib_tokens=1024)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    b = Workbench.build(args.model, seq_len=256, calib_tokens=args.calib_tokens, data="local", importance="flap")
    n = b.lm.arch.n_layers
    models = {"dense": load_model(args.model, device="cpu", dtype=dtype).model,
              "pruned code, rate 0": build_pruned(b.lm, b.pruner, [0.0] * n, dtype=dtype, device="cpu"),
              f"FLAP β {args.ratio}": build_pruned(b.lm, b.pruner, baseline_rates(b, "flap", args.ratio),
                                                     dtype=dtype, device="cpu")}
    rep = compare(models, prefill_len=128, prompt_len=16, decode_tokens=args.decode_tokens, repeats=args.repeats)
    print(to_markdown(rep))
    dense, pruned = rep["results"]["dense"], rep["results"][f"FLAP β {args.ratio}"]
    step = {k: 1 / r["decode_tok_s"] for k, r in (("dense", dense), ("pruned", pruned))}
    per_byte = (step["dense"] - step["pruned"]) / (dense["weight_bytes"] - pruned["weight_bytes"])
    fixed = step["dense"] - per_byte * dense["weight_bytes"]
    print(f"\ndecode step: dense {step['dense'] * 1e3:.1f} ms, pruned {step['pruned'] * 1e3:.1f} ms; weight traffic "
          f"{1 / per_byte / 1e9:.1f} GB/s; per-step cost that does not shrink with the weights {fixed * 1e3:.1f} ms")
    print(f"weight ratio {dense['weight_bytes'] / pruned['weight_bytes']:.2f}x (decode at zero fixed cost); "
          f"measured {step['dense'] / step['pruned']:.2f}x")


if __name__ == "__main__":
    main()
