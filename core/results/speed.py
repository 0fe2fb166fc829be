"""Size and speed of an exported model next to the dense one (transformers on CPU or CUDA; vLLM optional).

Measured per model: parameters (tied tensors once), weight bytes, prefill throughput (one forward over a
fixed-length random-token batch without KV cache, logits for the last position only, as a server would)
and decode throughput (greedy `generate` of N tokens, each decoding step timed on its own: the median step
time over every step of every round; a difference of two whole `generate` calls, as this module used before,
swung by ±50% between runs on a 2-core box). Each timing is the median (or min) of `repeats` runs after one
warm-up, interleaved across models. Memory: on CUDA each model's weights plus its peak working memory
(activations, KV cache); on CPU only the process-wide peak RSS can be had, reported once. Ratios are against
the baseline (the first model unless named); absolute times depend on the box.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Mapping

import torch
from torch import nn


def _unique(tensors):
    """Tied tensors (e.g. embedding = lm_head) share storage; count them once."""
    seen = set()
    for t in tensors:
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        yield t


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in _unique(model.parameters()))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, tied tensors once."""
    return sum(t.numel() * t.element_size() for t in _unique([*model.parameters(), *model.buffers()]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, clock=time.perf_counter) -> float:
    _sync(device)
    t = clock()
    fn()
    _sync(device)
    return clock() - t


def _workloads(model: nn.Module, *, prefill_len: int, batch: int, prompt_len: int, decode_tokens: int, seed: int,
               timer=time.perf_counter):
    """For one model: (device, {"prefill": a timed call, "decode": a generate call that times each of its
    decoding steps}, the list those step times land in)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    # Random ordinary tokens (ids below ~10 are specials in most vocabularies).
    ids = torch.randint(min(10, vocab - 1), vocab, (batch, prefill_len), generator=g).to(device)
    prompt = ids[:, :prompt_len]
    pad = getattr(model.generation_config, "pad_token_id", None)
    pad = pad if pad is not None else 0

    def prefill():
        try:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        except TypeError:  # families without logits_to_keep
            model(input_ids=ids, use_cache=False)

    steps: list[float] = []  # the decoding steps of the last generate call, in seconds

    def decode():
        from transformers import LogitsProcessor, LogitsProcessorList

        class StepClock(LogitsProcessor):  # called once per generated token, right after its forward
            def __call__(self, input_ids, scores):
                _sync(device)
                stamps.append(timer())
                return scores

        stamps: list[float] = []
        model.generate(prompt, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False,
                       pad_token_id=pad, attention_mask=torch.ones_like(prompt),
                       logits_processor=LogitsProcessorList([StepClock()]))
        steps[:] = [b - a for a, b in zip(stamps, stamps[1:])]  # the first stamp ends the prompt's prefill

    return device, {"prefill": prefill, "decode": decode}, steps


@torch.no_grad()
def compare(models: Mapping[str, nn.Module], *, baseline: str | None = None, prefill_len: int = 256,
            batch: int = 1, prompt_len: int = 16, decode_tokens: int = 32, repeats: int = 3, seed: int = 0,
            estimator: str = "median", clock: str = "wall") -> dict:
    """Benchmark each model on the device it sits on; `ratios[name]` = model / baseline.

    Runs are interleaved (repeat 1 of every model, then repeat 2, ...) so that load from other processes
    on a shared box hits all models alike; one warm-up run of everything comes first. On a contended CPU,
    `estimator="min"` helps (other processes only ever add time), and `clock="cpu"` (this process's CPU
    time) with `torch.set_num_threads(1)` approximates uncontended single-core time: time spent
    descheduled is not counted. With several threads the CPU clock also counts threads' spin-waiting.
    """
    pick = {"median": statistics.median, "min": min}[estimator]
    load_avg = round(os.getloadavg()[0], 2)  # a busy box moves every figure: say how busy it was
    timer = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    names = list(models)
    baseline = baseline or names[0]
    loads = {name: _workloads(m, prefill_len=prefill_len, batch=batch, prompt_len=prompt_len,
                              decode_tokens=max(decode_tokens, 2), seed=seed, timer=timer)
             for name, m in models.items()}
    prefill_times = {name: [] for name in loads}
    step_times = {name: [] for name in loads}  # per round: that round's decoding step times
    work = {}  # CUDA: peak working memory (activations, KV cache) above what was allocated before
    for rep in range(repeats + 1):
        for name, (device, fns, steps) in loads.items():
            if device.type == "cuda":
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t = _timed(fns["prefill"], device, timer)
            fns["decode"]()
            if rep > 0:  # rep 0 is the warm-up
                prefill_times[name].append(t)
                step_times[name].append(list(steps))
            if device.type == "cuda":
                work[name] = max(work.get(name, 0), torch.cuda.max_memory_allocated(device) - before)
    results = {}
    for name, m in models.items():
        prefill_s = pick(prefill_times[name])
        step_s = pick([x for r in step_times[name] for x in r])
        # per-round rates, for the spread beside each median
        prefills = [batch * prefill_len / x for x in prefill_times[name]]
        decodes = [batch / statistics.median(r) for r in step_times[name]]
        results[name] = {"params": param_count(m), "weight_bytes": weight_bytes(m),
                         "prefill_tok_s": batch * prefill_len / prefill_s,
                         "decode_tok_s": batch / step_s,
                         "prefill_spread": [min(prefills), max(prefills)],
                         "decode_spread": [min(decodes), max(decodes)],
                         "prefill_s": prefill_s, "decode_s": step_s * (decode_tokens - 1)}
        if name in work:  # all models sit on the GPU together, so the peak is weights + own working memory
            results[name]["peak_mem_bytes"] = results[name]["weight_bytes"] + work[name]
    base = results[baseline]
    ratios = {name: {"params": r["params"] / base["params"],
                     "weight_bytes": r["weight_bytes"] / base["weight_bytes"],
                     "prefill_speedup": r["prefill_tok_s"] / base["prefill_tok_s"],
                     "decode_speedup": r["decode_tok_s"] / base["decode_tok_s"]}
              for name, r in results.items()}
    device = loads[baseline][0]
    env = {"device": str(device), "torch_threads": torch.get_num_threads(), "load_avg_1min": load_avg,
           "settings": {"prefill_len": prefill_len, "batch": batch, "prompt_len": prompt_len,
                        "decode_tokens": decode_tokens, "repeats": repeats, "estimator": estimator,
                        "clock": clock}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["process_peak_rss_bytes"] = _peak_rss_bytes()
    return {"baseline": baseline, "results": results, "ratios": ratios, "env": env}


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def to_markdown(report: dict) -> str:
    rows = ["| model | params (M) | weights (MB) | prefill tok/s (min-max) | decode tok/s (min-max) | prefill × | "
            "decode × |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        q = report["ratios"][name]
        ps, ds = r.get("prefill_spread"), r.get("decode_spread")
        rows.append(f"| {name} | {r['params'] / 1e6:.1f} | {r['weight_bytes'] / 2**20:.1f} | "
                    f"{r['prefill_tok_s']:.0f}" + (f" ({ps[0]:.0f}-{ps[1]:.0f})" if ps else "") + " | "
                    f"{r['decode_tok_s']:.1f}" + (f" ({ds[0]:.1f}-{ds[1]:.1f})" if ds else "") + " | "
                    f"{q['prefill_speedup']:.2f} | {q['decode_speedup']:.2f} |")
    env, st = report["env"], report["env"]["settings"]
    note = f"device {env['device']}" + (f" ({env['gpu']})" if "gpu" in env else f", {env['torch_threads']} threads")
    if "load_avg_1min" in env:
        note += f", load average {env['load_avg_1min']} at start"
    note += (f"; {st['estimator']} of {st['repeats']} runs, {st['clock']} clock; prefill {st['prefill_len']} tokens,"
             f" decode {st['decode_tokens']} tokens, batch {st['batch']}; ratios vs {report['baseline']}.")
    return "\n".join(rows) + "\n\n" + note
