"""Where a pruned SmolLM2's transformers decode step goes: the dense model, the same weights through selfpruner's
pruned modeling code at rate 0 (same width: any cost the per-layer-width code adds shows here), and FLAP's β
allocation exported, timed by results.speed.compare (interleaved rounds, median and min-max).

A decode step of a model this small is its weight traffic plus a per-step cost that does not shrink with the
weights (generate's Python, module dispatch of 30 layers). Two rows with different weight bytes give both: the
bandwidth (slope) and that fixed cost (intercept), and from them the decode speedup the fixed cost leaves
possible, beside the weight ratio's. With a second ratio (--ratios 0.3,0.5) the line fitted on dense and the
first ratio predicts the second one's step before it is compared with the measured one: a check that the model
of the step (weights + a fixed cost) holds, not only a two-point fit.
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
    add(ap, model="smollm2", ratios="0.3", repeats=5, calib_tokens=1024)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    b = Workbench.build(args.model, seq_len=256, calib_tokens=args.calib_tokens, data="local", importance="flap")
    n = b.lm.arch.n_layers
    ratios = [float(r) for r in args.ratios.split(",")]
    models = {"dense": load_model(args.model, device="cpu", dtype=dtype).model,
              "pruned code, rate 0": build_pruned(b.lm, b.pruner, [0.0] * n, dtype=dtype, device="cpu")}
    for r in ratios:
        models[f"FLAP β {r}"] = build_pruned(b.lm, b.pruner, baseline_rates(b, "flap", r), dtype=dtype, device="cpu")
    rep = compare(models, prefill_len=128, prompt_len=16, decode_tokens=args.decode_tokens, repeats=args.repeats)
    print(to_markdown(rep))
    res = rep["results"]
    step = {k: 1 / r["decode_tok_s"] for k, r in res.items()}
    nbytes = {k: r["weight_bytes"] for k, r in res.items()}
    first = f"FLAP β {ratios[0]}"
    per_byte = (step["dense"] - step[first]) / (nbytes["dense"] - nbytes[first])
    fixed = step["dense"] - per_byte * nbytes["dense"]
    print(f"\ndecode step: dense {step['dense'] * 1e3:.1f} ms, {first} {step[first] * 1e3:.1f} ms; weight traffic "
          f"{1 / per_byte / 1e9:.1f} GB/s; per-step cost that does not shrink with the weights {fixed * 1e3:.1f} ms")
    for r in ratios:
        k = f"FLAP β {r}"
        predicted = fixed + per_byte * nbytes[k]
        print(f"{k}: weight ratio {nbytes['dense'] / nbytes[k]:.2f}x (decode at zero fixed cost); measured "
              f"{step['dense'] / step[k]:.2f}x; step {step[k] * 1e3:.1f} ms"
              + ("" if k == first else f", predicted by the line through dense and {first}: {predicted * 1e3:.1f} ms "
                 f"({step['dense'] / predicted:.2f}x)"))


if __name__ == "__main__":
    main()
