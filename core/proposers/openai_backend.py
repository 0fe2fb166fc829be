"""OpenAI (or any OpenAI-compatible server: `vllm serve`, llama-cpp-python's server, Ollama) backend with
structured outputs.

The reply is constrained by a JSON schema to {"solutions": [{"parents": [...], "rates": [...]}]}. The schema
holds no numeric or length limits (the strict mode of some servers rejects them); repair handles those.
A server that refuses `json_schema` (llama-cpp-python's answers 500 naming response_format) gets the schema as
`json_object` (its dialect), then plain text, which parse and repair read like any reply; the first format a
server accepts is kept for the rest of the run.

`complete_many` sends one generation's requests at once (the mutation and crossover calls) through the async
client, at most `concurrency` in flight. Rate limits (429), 5xx, timeouts and dropped connections are retried
by the client with exponential backoff and jitter (honouring Retry-After), `client_retries` times; what still
fails is one failed attempt of that call, never the end of the search.

The API key is read from OPENAI_API_KEY and handed to the client only: it never enters a prompt, a
record, a log line or an error message of ours. A --base-url server needs no key.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

from .base import ProposerError

SCHEMA = {
    "type": "object",
    "properties": {
        "solutions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"parents": {"type": "array", "items": {"type": "integer"}},
                               "rates": {"type": "array", "items": {"type": "number"}}},
                "required": ["parents", "rates"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["solutions"],
    "additionalProperties": False,
}
# the selection step's answer (n_numbers = 0): parent ids only
SELECTION_SCHEMA = {
    "type": "object",
    "properties": {"parents": {"type": "array", "items": {"type": "integer"}}},
    "required": ["parents"],
    "additionalProperties": False,
}


def schema_for(n_numbers: int) -> tuple[str, dict]:
    return ("rate_vectors", SCHEMA) if n_numbers else ("parent_selection", SELECTION_SCHEMA)


FORMATS = ("json_schema", "json_object", "text")  # what a server is asked for, best first


def response_format(kind: str, n_numbers: int) -> dict | None:
    name, schema = schema_for(n_numbers)
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def run_coroutine(coro):
    """Run `coro` to completion from synchronous code, also where this thread already runs an event loop
    (the TUI): then in a helper thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e
    t = threading.Thread(target=target, name="openai-batch")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class OpenAIBackend:
    style = "chat"
    max_population = None  # a large-context chat model sees the whole population
    max_lists = None

    def __init__(self, model: str = "gpt-4o", *, temperature: float | None = 0.8, base_url: str | None = None,
                 timeout: float = 120.0, client_retries: int = 2, seed: int | None = None, concurrency: int = 4):
        try:
            import openai
        except ImportError:
            raise ProposerError("the openai package is not installed: pip install openai") from None
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not os.environ.get("OPENAI_API_KEY") and not base_url:
            raise ProposerError("OPENAI_API_KEY is not set; use --proposer llama-cpp for the offline proposer "
                                "(or --base-url for a local OpenAI-compatible server)")
        self.model, self.temperature, self.seed = model, temperature, seed
        self.concurrency = max(1, int(concurrency))
        self.format = FORMATS[0]  # stepped down once when the server refuses it
        self._openai = openai
        # The client reads the key from the environment itself, so this object never holds it; a local server
        # without a key gets a placeholder (the client insists on one).
        self._client_kw = dict(base_url=base_url, timeout=timeout, max_retries=client_retries)
        if not os.environ.get("OPENAI_API_KEY"):
            self._client_kw["api_key"] = "no-key"
        self._client = openai.OpenAI(**self._client_kw)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r})"

    def _kwargs(self, prompt: str, n_numbers: int, max_tokens: int, fmt: str, seed: int | None = None) -> dict:
        kw = dict(model=self.model, messages=[{"role": "user", "content": prompt}], max_completion_tokens=max_tokens)
        rf = response_format(fmt, n_numbers)
        if rf is not None:
            kw["response_format"] = rf
        if self.temperature is not None:  # None for models that only accept their default temperature
            kw["temperature"] = self.temperature
        seed = self.seed if seed is None else seed  # the call's own seed: best-effort determinism on the server
        if seed is not None:
            kw["seed"] = seed
        return kw

    def _refused_format(self, e: Exception, fmt: str) -> bool:
        """The server does not speak the structured format asked for (step down): a 400/422, or any error
        status whose message names response_format (llama-cpp-python's server answers 500 with its
        validation error)."""
        o = self._openai
        if fmt == "text" or not isinstance(e, o.APIStatusError):
            return False
        return isinstance(e, (o.BadRequestError, o.UnprocessableEntityError)) or "response_format" in str(e)

    def _fatal(self, e: Exception) -> None:
        o = self._openai
        if isinstance(e, (o.AuthenticationError, o.PermissionDeniedError)):
            # cannot get better by retrying; the server's message does not contain the key
            raise ProposerError(f"OpenAI refused the request ({e.status_code}): check OPENAI_API_KEY") from None
        if isinstance(e, o.NotFoundError):
            raise ProposerError(f"OpenAI model {self.model!r} not found") from None

    @staticmethod
    def _reply(r) -> tuple[str, int | None, int | None]:
        msg = r.choices[0].message
        text = msg.content if msg.content is not None else (getattr(msg, "refusal", None) or "")
        usage = r.usage
        return text, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)

    def complete(self, prompt: str, *, n_numbers: int, n_lists: int, max_tokens: int, n_parents: int = 0,
                 parent_ids: list[int] | None = None, seed: int | None = None,
                 fresh: bool = True) -> tuple[str, int | None, int | None]:
        while True:
            fmt = self.format
            try:
                return self._reply(self._client.chat.completions.create(**self._kwargs(prompt, n_numbers,
                                                                                       max_tokens, fmt, seed)))
            except Exception as e:
                self._fatal(e)
                if not self._refused_format(e, fmt):
                    raise
                self._step_down(fmt)

    def _step_down(self, fmt: str) -> None:
        if self.format == fmt:  # concurrent refusals step down once
            self.format = FORMATS[FORMATS.index(fmt) + 1]

    def complete_many(self, requests: list[tuple[str, dict]]) -> list[tuple[object, float]]:
        """[(prompt, complete()'s keywords)] -> [(reply triple or the exception, seconds)], in request order
        whatever order they finish in; at most `concurrency` in flight."""
        async def one(client, gate, prompt, kw):
            async with gate:
                t0 = time.perf_counter()
                while True:
                    fmt = self.format
                    try:
                        r = await client.chat.completions.create(**self._kwargs(prompt, kw["n_numbers"],
                                                                                kw["max_tokens"], fmt,
                                                                                kw.get("seed")))
                        return self._reply(r), time.perf_counter() - t0
                    except Exception as e:
                        try:
                            self._fatal(e)
                        except ProposerError as fatal:
                            return fatal, time.perf_counter() - t0
                        if not self._refused_format(e, fmt):
                            return e, time.perf_counter() - t0
                        self._step_down(fmt)

        async def run_all():
            client = self._openai.AsyncOpenAI(**self._client_kw)
            gate = asyncio.Semaphore(self.concurrency)
            try:
                return await asyncio.gather(*(one(client, gate, p, kw) for p, kw in requests))
            finally:
                await client.close()
        return list(run_coroutine(run_all()))
