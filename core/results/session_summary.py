"""What a stored session says about itself beyond its numbers: how much of it the LLM really wrote, and
results recorded later against a model exported from it."""
from __future__ import annotations

import json
from pathlib import Path

from ..store import Store, StoreError, resolve_session

LLM_PROPOSERS = ("openai", "llama-cpp", "vllm")


def candidate_shares(proposer: str, origins: list[str], selections: list[dict] = ()) -> dict | None:
    """Of the candidates the LLM was asked to write (random-init candidates excluded), how many it wrote and
    how many the numeric fallback filled in; likewise for selected parents. None for a non-LLM session."""
    proposer = (proposer or "").removeprefix("random+")
    if proposer not in LLM_PROPOSERS and not proposer.startswith("replay"):
        return None
    asked = [o for o in origins if o != "random"]
    if not asked:
        return None
    written = sum(1 for o in asked if o != "fallback")
    return {"asked": len(asked), "llm": written, "fallback": len(asked) - written,
            "parents": sum(len(x["parents"]) for x in selections),
            "parents_llm": sum(x["from_llm"] or 0 for x in selections),
            "weak": written < len(asked) / 2}


def proposal_shares(store: Store) -> dict | None:
    return candidate_shares(store.session().get("proposer"), [c["origin"] for c in store.candidates()],
                            store.selections())


def shares_line(sh: dict) -> str:
    line = f"LLM wrote {sh['llm']} of {sh['asked']} candidates ({sh['fallback']} from the numeric fallback)"
    if sh["parents"]:
        line += f"; selected {sh['parents_llm']} of {sh['parents']} parents"
    if sh["weak"]:
        line += " - WARNING: fewer than half came from the LLM, so this search is mostly the numeric GA"
    return line


def record_for_model_dir(model_dir: str | Path, sessions_dir: str, kind: str, name: str, payload: dict) -> str | None:
    """Store a result in the session an exported model came from, when that session is at hand; its id."""
    try:
        if str(model_dir).endswith(".gguf"):
            from .gguf_export import gguf_record
            record = gguf_record(model_dir)
        else:
            record = json.loads((Path(model_dir) / "config.json").read_text()).get("selfpruner", {})
        sid = record.get("meta", {}).get("session")
        if not sid:
            return None
        with Store(resolve_session(sid, sessions_dir)) as st:
            st.add_result(kind, name, payload)
        return sid
    except (OSError, ValueError, StoreError):
        return None
