"""lm-eval on llama.cpp: zero-shot accuracy of a GGUF on the engine it is served with.

A pruned model exported as GGUF uses llama.cpp's `deci` architecture (per-layer widths), which transformers
cannot load, so `selfpruner eval FILE.gguf` scores such a file in llama-cpp-python. Scoring follows lm-eval's own
HF model: the context and context + continuation are tokenised without BOS, the continuation is what the longer
one adds, an empty context is replaced by the end-of-text token, and a continuation counts as greedy when every
one of its tokens is the argmax. That covers the multiple-choice tasks (the paper's seven, PIQA among them);
generation and rolling-perplexity tasks are refused in one line (use the HF export for those).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TaskUnavailable


def is_pruned_gguf(path) -> bool:
    """A GGUF that selfpruner wrote with per-layer widths (transformers cannot read its architecture)."""
    from .gguf_export import ARCH
    if not str(path).endswith(".gguf") or not Path(path).is_file():
        return False
    from gguf import GGUFReader
    field = GGUFReader(str(path)).fields.get("general.architecture")
    return field is not None and bytes(field.parts[field.data[0]]).decode() == ARCH


def llama_cpp_lm(path, n_ctx: int = 1024, threads: int | None = None):
    """An lm-eval LM backed by llama-cpp-python on `path` (contexts longer than n_ctx keep their end)."""
    import os

    import llama_cpp
    from lm_eval.api.model import LM

    class LlamaCppLM(LM):
        def __init__(self):
            super().__init__()
            t = threads or max(1, len(os.sched_getaffinity(0)))
            # a small batch: with logits for every position, llama.cpp fills an n_batch x vocabulary buffer per
            # decode (a 1,024-token batch made each request 6x slower on SmolLM2)
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 128), n_threads=t,
                                       n_threads_batch=t, logits_all=True, verbose=False)
            self.eot = self.llm.token_eos()

        def _ids(self, text: str) -> list[int]:
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

        def _score(self, context: str, continuation: str) -> tuple[float, bool]:
            spaces = len(context) - len(context.rstrip())  # lm-eval moves them to the continuation
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole, ctx = self._ids(context + continuation), self._ids(context)
            cont = whole[len(ctx):]
            ctx = ctx or [self.eot]
            tokens = (ctx + cont)[-(n_ctx + 1):][:-1]  # the inputs whose logits predict every continuation token
            self.llm.reset()
            self.llm.eval(tokens)
            logits = np.asarray(self.llm.scores[len(tokens) - len(cont):len(tokens)], dtype=np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            picked = logp[np.arange(len(cont)), cont]
            return float(picked.sum()), bool((logits.argmax(-1) == np.asarray(cont)).all())

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [self._score(*r.args) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise TaskUnavailable("perplexity tasks on a GGUF export are not scored here: use `selfpruner export "
                                  "--format hf` and evaluate that directory")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise TaskUnavailable("generation tasks on a GGUF export are not scored here: use `selfpruner export "
                                  "--format hf` and evaluate that directory")

    return LlamaCppLM()
