"""The one registry of proposers: for each name a label, a line of help and a factory from the search's config.
The CLI's --proposer choices, the TUI's proposer list and both searches are built from it. Proposers are
built before any model loads, so that a missing key, file or package fails at once with one line
(ProposerError). `make_proposer` is the layer-rate factories' constructor by name and options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .base import Proposer, ProposerError

NAMES = ("openai", "llama-cpp", "vllm", "numeric", "random")


@dataclass(frozen=True)
class Entry:
    name: str
    label: str  # in the TUI's list
    help: str  # one line: what it needs
    # the search's config -> a proposer (layer search); (search config, MetricRun) -> prompt -> text (metric search)
    build: Callable[..., Any]
    in_form: bool = True  # offered in the TUI's start form (replay is started from a stored session)


def _layer_options(cfg) -> dict:
    opts = {"seed": cfg.seed, "max_retries": cfg.max_retries, "temperature": cfg.temperature}
    if cfg.proposer_model:
        opts["model"] = cfg.proposer_model
    if cfg.proposer in ("openai", "llama-cpp", "vllm"):
        opts["fitness_view"] = cfg.prompt_fitness
    return opts


def _numeric(cfg) -> Proposer:
    return make_proposer("numeric", mutation=cfg.numeric_mutation, **_layer_options(cfg))


def _llama_cpp(cfg) -> Proposer:
    opts = _layer_options(cfg)
    if cfg.llm_threads:
        opts["n_threads"] = cfg.llm_threads
    return make_proposer("llama-cpp", **opts)


def _openai(cfg) -> Proposer:
    return make_proposer("openai", base_url=cfg.base_url, concurrency=cfg.llm_concurrency, **_layer_options(cfg))


def _vllm(cfg) -> Proposer:
    return make_proposer("vllm", gpu_share=cfg.vllm_gpu_share, **_layer_options(cfg))


def _replay(cfg) -> Proposer:
    from ..session_files import resolve_session
    from ..store import Store
    from .replay import ReplayProposer
    if not cfg.replay_from:
        raise ProposerError("the replay proposer needs the session to replay: --replay-from SESSION")
    return ReplayProposer(Store(resolve_session(cfg.replay_from, cfg.sessions_dir), readonly=True))


def _llama_cpp_metric(cfg, run) -> Callable[[str], str]:
    from ..metric_search.metric_writers import llama_cpp_metric_proposer
    return llama_cpp_metric_proposer(cfg, run.proposer_model)


def _openai_metric(cfg, run) -> Callable[[str], str]:
    from ..metric_search.metric_writers import openai_metric_proposer
    return openai_metric_proposer(cfg, run.proposer_model, run.base_url)


LAYER_PROPOSERS = {e.name: e for e in (
    Entry("numeric", "numeric (offline GA, no LLM)",
          "writes mutations and crossovers numerically: no LLM, no key, runs anywhere", _numeric),
    Entry("llama-cpp", "llama-cpp (local GGUF)",
          "a local GGUF model via llama-cpp-python (default: the bundled gemma-3-270m)", _llama_cpp),
    Entry("openai", "OpenAI API", "needs OPENAI_API_KEY in the environment", _openai),
    Entry("vllm", "vLLM (GPU)", "needs vllm and a GPU", _vllm),
    Entry("replay", "replay", "re-reads a stored session's answers (--replay-from SESSION)", _replay, in_form=False),
)}
METRIC_PROPOSERS = {e.name: e for e in (
    Entry("llama-cpp", "llama-cpp (local GGUF)", "a local GGUF model writes metric trees under a grammar",
          _llama_cpp_metric),
    Entry("openai", "OpenAI API", "needs OPENAI_API_KEY, or --base-url for an OpenAI-compatible server",
          _openai_metric),
)}


def build_proposer(cfg) -> Proposer:
    """The layer-rate search's proposer named by cfg.proposer."""
    entry = LAYER_PROPOSERS.get(cfg.proposer)
    if entry is None:
        raise ProposerError(f"unknown proposer {cfg.proposer!r}; choose one of {', '.join(LAYER_PROPOSERS)}")
    return entry.build(cfg)


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
    if name == "replay":  # built from a stored session, not from options: LAYER_PROPOSERS["replay"]
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
