"""Scale: search-time costs on a random-weight LLaMA of a real shape (llama-2-7b, llama-3-8b, llama-2-70b).

No download: the model is built from a transformers LlamaConfig on the meta device and materialised straight
into --dtype on its device, one tensor at a time from a fixed seed (a 7B bf16 model never exists in fp32);
token windows are random ids from the same seed. Reports build and calibration time, one fitness (prefix
views on the resident model) against a bare forward of the physically pruned model over the same tokens,
the peak memory over the weight bytes (CPU: peak RSS; GPU: torch.cuda.max_memory_allocated), and the
export's prefill tokens/s against dense (core/results/speed.py).

The physical comparison needs the pruned copy beside the resident model. When that does not fit in the memory
available (a 7B on a 24 GB CPU box), it is run instead on the same shape cut to --physical-layers layers
(default 4), and the output says so.
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

# The calibration cache would turn a repeated run's calibration time into a file read.
os.environ.setdefault("SELFPRUNER_CACHE", tempfile.mkdtemp(prefix="selfpruner-scale-"))

from selfpruner.core.layer_search.workbench import Workbench  # noqa: E402
from selfpruner.core.model.data import TokenData  # noqa: E402
from selfpruner.core.model.evaluate import HEAD_CHUNK, perplexity  # noqa: E402
from selfpruner.core.model.models import LoadedModel, resolve_device, resolve_dtype  # noqa: E402
from selfpruner.core.results.export import build_pruned  # noqa: E402
from selfpruner.core.results.speed import compare, param_count, weight_bytes  # noqa: E402

from bench_args import add  # noqa: E402  (bench/ is on sys.path when run as a script)
from fitness_cost import timed  # noqa: E402  (bench/ is on sys.path when run as a script)
from search_memory import rss_bytes  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,  # smoke runs on a CPU
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0),
    "llama-2-70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096),
}
GiB = 2**30


def build_random(shape: str, layers: int | None, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A LlamaForCausalLM of `shape` with N(0, 0.02) weights (norms 1), in `dtype` on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})},
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model.to_empty(device=device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1:
                p.fill_(1.0)
            else:  # drawn on the CPU in the target dtype, one tensor at a time, then moved
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype).mul_(0.02))
    with torch.device(device):  # to_empty left the RoPE buffers uninitialised
        model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)
    model.set_attn_implementation("sdpa")
    return model


def random_tokens(vocab: int, calib: int, search: int, test: int, seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed + 1)
    draw = lambda n: torch.randint(10, vocab, (n,), generator=g)  # noqa: E731 - ids below 10: specials
    return TokenData(draw(calib), draw(search), draw(test), f"random ids, seed {seed + 1}", None)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rates_for(n: int, ratio: float) -> list[float]:
    """The fixed non-uniform vector of bench/fitness_cost.py, mean = ratio."""
    rates = [ratio + 0.1 * ((i % 3) - 1) for i in range(n)]
    shift = ratio - sum(rates) / n
    return [min(max(r + shift, 0.0), 1.0) for r in rates]


def activation_bytes(model, seq_len: int, batch: int, elem: int) -> int:
    """One forward's working set, roughly: a layer's widest activations (q/k/v/o, gate/up/act) plus the head's
    fp32 logits and log-softmax over one HEAD_CHUNK slice."""
    c = model.config
    per_token = (4 * c.hidden_size + 3 * c.intermediate_size) * elem
    return batch * seq_len * per_token + 2 * batch * min(seq_len, HEAD_CHUNK) * c.vocab_size * 4


def setup(args, layers, device, dtype, out):
    t0 = time.perf_counter()
    model = build_random(args.shape, layers, dtype, device, args.seed)
    t_build = time.perf_counter() - t0
    n_layers = model.config.num_hidden_layers
    lm = LoadedModel.wrap(model, f"random {args.shape} ({n_layers} layers, {str(dtype)[6:]})")
    wbytes = weight_bytes(model)
    out(f"model      {lm.name}: {param_count(model) / 1e9:.2f} B parameters, {wbytes / GiB:.2f} GiB of weights "
        f"({wbytes / 1e9:.2f} GB), built in {t_build:.1f} s")
    td = random_tokens(model.config.vocab_size, args.calib_tokens, max(args.budget_tokens, args.seq_len) * 4,
                       args.seq_len * 4, args.seed)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    bench = Workbench.from_parts(lm, td, seq_len=args.seq_len, batch_size=args.batch_size)
    t_cal = time.perf_counter() - t0
    n_cal = td.windows("calib", args.seq_len).numel()
    out(f"calibrate  {n_cal} tokens ({n_cal // args.seq_len} x {args.seq_len}), batch {bench.batch_size}, stats "
        f"float64 on {bench.stats.sqsum[0]['attn_in'].device}, plus Wanda-sp permutation: {t_cal:.1f} s "
        f"(RSS {rss0 / GiB:.2f} -> {rss_bytes() / GiB:.2f} GiB)")
    return bench, wbytes, t_build, t_cal


def physical(args, bench, rates, windows, out, label):
    """Fitness on prefix views against a bare forward of the physically pruned model, and prefill tokens/s."""
    phys = build_pruned(bench.lm, bench.pruner, rates)
    dev = bench.lm.device
    b = bench.batch_size

    def bare():
        with torch.no_grad():
            for i in range(0, windows.shape[0], b):
                phys(input_ids=windows[i:i + b].to(dev), use_cache=False)

    fit, raw = [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        t, (ppl_views, _) = timed(lambda: bench.fitness(rates, args.budget_tokens))
        fit.append(t)
        raw.append(timed(bare)[0])
    ppl_phys = perplexity(phys, windows, batch_size=b)
    med_fit, med_raw = statistics.median(fit), statistics.median(raw)
    out(f"fitness    {label}: prefix views {med_fit:.2f} s vs bare forward of the physically pruned model "
        f"{med_raw:.2f} s over {windows.numel()} tokens (median of {args.repeats}, interleaved): ratio "
        f"{med_fit / med_raw:.3f}, best-of ratio {min(fit) / min(raw):.3f} (ppl {ppl_views:.4f} vs {ppl_phys:.4f})")
    rep = compare({"dense": bench.lm.model, "pruned": phys}, prefill_len=args.seq_len, decode_tokens=16,
                  repeats=args.repeats)
    r, q = rep["results"], rep["ratios"]["pruned"]

    def rate(key):
        lo, hi = r["pruned"][f"{key}_spread"]
        return f"{r['pruned'][f'{key}_tok_s']:.1f} ({lo:.1f}-{hi:.1f}) vs dense {r['dense'][f'{key}_tok_s']:.1f} " \
               f"({r['dense'][f'{key}_spread'][0]:.1f}-{r['dense'][f'{key}_spread'][1]:.1f})"
    kept = r["pruned"]["params"] / r["dense"]["params"]
    out(f"export     {label}: {r['pruned']['weight_bytes'] / GiB:.2f} of {r['dense']['weight_bytes'] / GiB:.2f} GiB "
        f"(parameters {kept:.3f} x dense: a speedup of {1 / kept:.2f}x where time follows the weights read); "
        f"prefill {rate('prefill')} tokens/s = {q['prefill_speedup']:.2f}x, decode {rate('decode')} tokens/s = "
        f"{q['decode_speedup']:.2f}x ({args.seq_len}-token prefill; decode: median step of 15 per round; median and "
        f"min-max of {args.repeats} interleaved rounds, {torch.get_num_threads()} threads, load average "
        f"{rep['env']['load_avg_1min']} at start)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: auto)")
    add(ap, ratio=0.3, seq_len=256, calib_tokens=512, budget_tokens=256, repeats=2, seed=0)
    ap.add_argument("--candidates", type=int, default=3, help="distinct rate vectors scored (no copy each)")
    ap.add_argument("--physical", choices=["auto", "on", "off"], default="auto",
                    help="the physical comparison at full depth (auto: when the pruned copy fits in memory)")
    ap.add_argument("--physical-layers", type=int, default=4,
                    help="depth for the physical comparison when it does not run at full depth (0: skip)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rss_start = rss_bytes()  # python, torch and transformers, before any weight exists
    def out(line):
        print(line, flush=True)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    out(f"scale: {args.shape}, {str(dtype)[6:]} on {device}" + (f" ({gpu})" if gpu else
        f", {torch.get_num_threads()} threads, {available_bytes() / GiB:.1f} GiB available at start"))
    bench, wbytes, t_build, t_cal = setup(args, args.layers, device, dtype, out)
    n = bench.lm.arch.n_layers
    windows = bench.windows("search", args.budget_tokens)
    rss_before = rss_bytes()
    fit_times = []
    for k in range(args.candidates):
        rates = rates_for(n, args.ratio + 0.02 * (k - args.candidates // 2))
        ppl, secs = bench.fitness(rates, args.budget_tokens)
        fit_times.append(secs)
        out(f"candidate  {k}: mean rate {sum(rates) / n:.3f}, ppl {ppl:.2f}, {secs:.2f} s, RSS {rss_bytes() / GiB:.2f} GiB")
    peak = peak_bytes(device)
    act = activation_bytes(bench.lm.model, args.seq_len, bench.batch_size, bench.lm.dtype.itemsize)
    target = 1.3 * wbytes + act
    what = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    out(f"fitness    {args.candidates} candidates of {windows.numel()} tokens: median {statistics.median(fit_times):.2f} s;"
        f" RSS {rss_before / GiB:.2f} GiB before, {rss_bytes() / GiB:.2f} GiB after (no copy per candidate)")
    out(f"memory     {what} {peak / GiB:.2f} GiB = {peak / wbytes:.3f} x weights ({wbytes / GiB:.2f} GiB); target "
        f"<= 1.3 x weights + one window's activations ({act / GiB:.3f} GiB) = {target / GiB:.2f} GiB: "
        + ("met" if peak <= target else "NOT met"))
    if device.type == "cpu":
        out(f"memory     peak RSS less the {rss_start / GiB:.2f} GiB the process held before building: "
            f"{(peak - rss_start) / GiB:.2f} GiB = {(peak - rss_start) / wbytes:.3f} x weights")
    if device.type == "cpu":
        out("GPU        not measured: no GPU")

    rates = rates_for(n, args.ratio)
    kept = sum(bench.pruner.layer_params(p) for p in bench.pruner.plan(rates))
    prunable = bench.lm.arch.prunable_params_per_layer * n
    phys_bytes = wbytes - (prunable - kept) * bench.lm.dtype.itemsize
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_bytes())
    fits = phys_bytes * 1.15 < free
    if args.physical == "on" or (args.physical == "auto" and fits):
        physical(args, bench, rates, windows, out, f"{n} layers")
    else:
        out(f"physical   skipped at {n} layers: the pruned copy needs {phys_bytes / GiB:.2f} GiB beside the "
            f"resident model and {free / GiB:.2f} GiB are available" + (
                f"; measured on the same shape cut to {args.physical_layers} layers instead"
                if args.physical_layers else ""))
        if args.physical_layers:
            del bench
            gc.collect()
            small, *_ = setup(args, args.physical_layers, device, dtype, out)
            physical(args, small, rates_for(args.physical_layers, args.ratio),
                     small.windows("search", args.budget_tokens), out, f"{args.physical_layers} layers")


if __name__ == "__main__":
    main()
