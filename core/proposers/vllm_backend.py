"""vLLM offline backend for a GPU box: an instruction model through LLM.chat with JSON-schema guided decoding
(the same schema as the OpenAI backend). vllm is imported only when this backend is built."""
from __future__ import annotations

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


class VLLMBackend:
    style = "chat"
    max_population = None
    max_lists = None

    def __init__(self, model: str = "Qwen/Qwen2.5-7B-Instruct", *, temperature: float = 0.8, seed: int = 0,
                 max_model_len: int = 16384, **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise ProposerError("vLLM is not installed: pip install 'selfpruner[gpu]' on a GPU box") from None
        self.model, self.temperature, self.seed = model, temperature, seed
        self._vllm = vllm
        try:
            self._llm = vllm.LLM(model=model, seed=seed, max_model_len=max_model_len, **llm_kwargs)
        except Exception as e:  # no GPU, unknown model, out of memory: one line for the user
            first = (str(e).splitlines() or [""])[0][:200]
            raise ProposerError(f"vLLM cannot load {model}: {type(e).__name__}: {first}") from None
        self._calls = 0

    def complete(self, prompt: str, *, n_numbers: int, n_lists: int, max_tokens: int, n_parents: int = 0,
                 parent_ids: list[int] | None = None) -> tuple[str, int | None, int | None]:
        self._calls += 1  # a new seed per call, so retries differ
        params = _structured_params(self._vllm.SamplingParams, schema_for(n_numbers)[1], temperature=self.temperature,
                                    max_tokens=max_tokens, seed=self.seed + self._calls)
        out = self._llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False)[0]
        text = out.outputs[0].text
        return text, len(out.prompt_token_ids or []), len(out.outputs[0].token_ids)
