"""make_proposer: one name -> one ready Proposer, built before any model loads so that a missing key, file
or package fails at once with one line (ProposerError)."""
from __future__ import annotations

from .base import Proposer, ProposerError

NAMES = ("openai", "llama-cpp", "vllm", "numeric", "random")


def make_proposer(name: str, *, model: str | None = None, max_retries: int = 3, seed: int = 0,
                  temperature: float = 0.8, fitness_view: str = "ppl", **backend_opts) -> Proposer:
    """`model`: GGUF path (llama-cpp), model name (openai, vllm); None = the backend's default.
    `backend_opts` go to the backend (e.g. n_ctx, decoding for llama-cpp; base_url for openai)."""
    if name == "numeric":
        from .numeric import NumericProposer
        return NumericProposer(seed, **backend_opts)
    if name == "random":  # the paper's random-init ablation (initial population only)
        from .numeric import RandomInitProposer
        return RandomInitProposer(seed, **backend_opts)
    if name == "replay":
        # Built from a stored session, not from options: core.session.build_proposer constructs
        # proposers.replay.ReplayProposer(Store(...)) directly. Register it here if it ever takes options.
        raise ProposerError("the replay proposer is built from a session: use --proposer replay --replay-from")
    if name == "llama-cpp":
        from .llama_cpp_backend import LlamaCppBackend
        backend = LlamaCppBackend(model, seed=seed, temperature=temperature, **backend_opts)
    elif name == "openai":
        from .openai_backend import OpenAIBackend
        backend = OpenAIBackend(model or "gpt-4o", temperature=temperature, **backend_opts)
    elif name == "vllm":
        from .vllm_backend import VLLMBackend
        backend = VLLMBackend(model or "Qwen/Qwen2.5-7B-Instruct", temperature=temperature, seed=seed,
                              **backend_opts)
    else:
        raise ProposerError(f"unknown proposer {name!r}; choose one of {', '.join(NAMES)} or replay")
    from .llm import LLMProposer
    return LLMProposer(backend, name, max_retries=max_retries, rng_seed=seed, fitness_view=fitness_view)
