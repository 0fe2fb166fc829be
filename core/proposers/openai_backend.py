"""OpenAI (or any OpenAI-compatible server) backend with structured outputs.

The reply is constrained by a JSON schema to {"solutions": [{"parents": [...], "rates": [...]}]}. The schema
holds no numeric or length limits (the strict mode of some servers rejects them); repair handles those.
The API key is read from OPENAI_API_KEY and handed to the client only: it never enters a prompt, a
record, a log line or an error message of ours.
"""
from __future__ import annotations

import os

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


class OpenAIBackend:
    style = "chat"
    max_population = None  # a large-context chat model sees the whole population
    max_lists = None

    def __init__(self, model: str = "gpt-4o", *, temperature: float | None = 0.8, base_url: str | None = None,
                 timeout: float = 120.0, client_retries: int = 2, seed: int | None = None):
        try:
            import openai
        except ImportError:
            raise ProposerError("the openai package is not installed: pip install openai") from None
        if not os.environ.get("OPENAI_API_KEY"):
            raise ProposerError("OPENAI_API_KEY is not set; use --proposer llama-cpp for the offline proposer")
        self.model, self.temperature, self.seed = model, temperature, seed
        self._openai = openai
        # the client reads the key from the environment itself, so this object never holds it
        self._client = openai.OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                                     timeout=timeout, max_retries=client_retries)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r})"

    def complete(self, prompt: str, *, n_numbers: int, n_lists: int, max_tokens: int, n_parents: int = 0,
                 parent_ids: list[int] | None = None) -> tuple[str, int | None, int | None]:
        o = self._openai
        name, schema = schema_for(n_numbers)
        kw = dict(model=self.model, messages=[{"role": "user", "content": prompt}], max_completion_tokens=max_tokens,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": name, "schema": schema, "strict": True}})
        if self.temperature is not None:  # None for models that only accept their default temperature
            kw["temperature"] = self.temperature
        if self.seed is not None:
            kw["seed"] = self.seed
        try:
            r = self._client.chat.completions.create(**kw)
        except (o.AuthenticationError, o.PermissionDeniedError) as e:
            # cannot get better by retrying; the server's message does not contain the key
            raise ProposerError(f"OpenAI refused the request ({e.status_code}): check OPENAI_API_KEY") from None
        except o.NotFoundError:
            raise ProposerError(f"OpenAI model {self.model!r} not found") from None
        msg = r.choices[0].message
        text = msg.content if msg.content is not None else (getattr(msg, "refusal", None) or "")
        usage = r.usage
        return text, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
