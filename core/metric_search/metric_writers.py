"""The LLMs that write metrics for the metric search (prompt -> text), as the proposer registry builds them:
llama.cpp constrained by a grammar of parseable metrics, and any OpenAI-compatible server."""
from __future__ import annotations

from pathlib import Path

from ..proposers.base import ProposerError
from .prompts import metric_grammar
from .pruner_zero import MetricSearchConfig


def llama_cpp_metric_proposer(cfg: MetricSearchConfig, model_path: str | None = None, temperature: float = 0.8):
    """prompt -> text with llama.cpp, constrained by a grammar that admits only parseable metrics."""
    from llama_cpp import Llama, LlamaGrammar

    from ..model.models import BUNDLED_NAMES, bundled_gguf_path
    from ..proposers.llama_cpp_backend import default_threads
    path = bundled_gguf_path(model_path or "bundled") if model_path in (None, *BUNDLED_NAMES) else Path(model_path)
    if not path.is_file():
        raise ProposerError(f"GGUF model not found: {path}")
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=default_threads(), seed=cfg.seed, verbose=False)
    grammar = LlamaGrammar.from_string(metric_grammar(cfg, cfg.llm_count), verbose=False)

    def propose(prompt: str, seed: int | None = None) -> str:
        # `seed` comes from the iteration (see pruner_zero.ask_llm) and the prompt cache starts empty, so a
        # resumed search asks exactly what the uninterrupted one asked
        llm.reset()
        return llm(prompt, max_tokens=60 * cfg.llm_count, temperature=temperature, grammar=grammar,
                   seed=cfg.seed if seed is None else seed)["choices"][0]["text"]
    propose.name = "llama-cpp"
    propose.seeded = True
    return propose


def openai_metric_proposer(cfg: MetricSearchConfig, model: str | None = None, base_url: str | None = None,
                           temperature: float = 0.8):
    """prompt -> text through the OpenAI API or any OpenAI-compatible server (--base-url). No grammar there: the
    reply is free text, and the search's reader keeps the lines that parse as metrics and stores the others as
    rejections."""
    from ..proposers.openai_backend import OpenAIBackend
    backend = OpenAIBackend(model or "gpt-4o", temperature=temperature, base_url=base_url, seed=cfg.seed)
    backend.format = "text"  # one metric per line, as the prompt asks; the JSON schemas are the layer search's

    def propose(prompt: str, seed: int | None = None) -> str:
        return backend.complete(prompt, n_numbers=0, n_lists=1, max_tokens=60 * cfg.llm_count, seed=seed)[0]
    propose.name = "openai"
    propose.seeded = True  # best effort on the server's side: the seed is sent, as the layer search does
    return propose
