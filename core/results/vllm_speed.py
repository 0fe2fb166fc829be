"""`selfpruner speed DIR --engine vllm --dense MODEL`: an export against its dense model on vLLM, measured as the
Self-Pruner paper reports it (offline batched throughput), with the ceiling the kept weights allow.

Protocol: both engines live in one process and take turns in every round (prefill alone, then prefill + the
generated tokens), after a warm-up of each; medians and min-max over the rounds. The decode ceiling is the dense
weight bytes over the pruned ones: a weight-bound decode step cannot gain more than that."""
from __future__ import annotations

import platform
import time

import torch

from ..errors import UserError
from .export import saved_size
from .vllm_runs import load, on_cpu, throughput, vllm_available


def compare_vllm(model_dir, dense: str | None, *, batch: int = 16, prompt_len: int = 256, gen_tokens: int = 64,
                 rounds: int = 5, dtype: str = "auto", seed: int = 0) -> dict:
    from ..model.models import ModelLoadError, hf_directory

    ok, why = vllm_available()
    if not ok:
        raise UserError(why)
    try:
        dirs = {"dense": hf_directory(dense), "pruned": hf_directory(str(model_dir))}
    except ModelLoadError as e:
        raise UserError(str(e)) from None
    # both engines alive at once (they share vLLM's process-wide parallel state, released with the last of them)
    engines = {name: load(d, dtype=dtype, max_model_len=prompt_len + gen_tokens + 8, seed=seed)
               for name, d in dirs.items()}
    vocab = min(engines["dense"].get_tokenizer().vocab_size, engines["dense"].llm_engine.model_config.get_vocab_size())
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, vocab - 1, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    t0 = time.time()
    res = throughput(engines, prompts, gen_tokens, rounds)
    del engines
    sizes = {name: saved_size(d) for name, d in dirs.items()}
    med = {k: {m: v[m]["median"] for m in ("prefill_tok_s", "gen_tok_s", "total_tok_s")} for k, v in res.items()}
    return {"engine": "vllm", "device": "cpu" if on_cpu() else torch.cuda.get_device_name(),
            "host": platform.node(), "batch": batch, "prompt_len": prompt_len, "gen_tokens": gen_tokens,
            "rounds": rounds, "seconds": time.time() - t0, "results": res,
            "params": {k: s[0] for k, s in sizes.items()}, "weight_bytes": {k: s[1] for k, s in sizes.items()},
            "ratios": {m: med["pruned"][m] / med["dense"][m] for m in med["dense"]},
            "ceiling": sizes["dense"][1] / sizes["pruned"][1]}


def vllm_markdown(r: dict) -> str:
    rows = ["| model | params | prefill tok/s | generate tok/s | total tok/s |", "|---|---:|---:|---:|---:|"]
    for name, v in r["results"].items():
        cells = [f"{v[m]['median']:.1f} [{v[m]['min']:.1f}-{v[m]['max']:.1f}]"
                 for m in ("prefill_tok_s", "gen_tok_s", "total_tok_s")]
        rows.append(f"| {name} | {r['params'][name] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    q = r["ratios"]
    rows.append(f"| pruned / dense | {r['params']['pruned'] / r['params']['dense']:.3f} | {q['prefill_tok_s']:.2f}x | "
                f"{q['gen_tok_s']:.2f}x | {q['total_tok_s']:.2f}x |")
    return ("\n".join(rows) + f"\n\nvLLM on {r['device']}: {r['batch']} prompts of {r['prompt_len']} tokens + "
            f"{r['gen_tokens']} generated, median [min-max] of {r['rounds']} interleaved rounds after a warm-up; "
            f"the kept weights allow at most {r['ceiling']:.2f}x on a weight-bound decode "
            f"({q['gen_tok_s'] / r['ceiling']:.2f} of it reached).")
