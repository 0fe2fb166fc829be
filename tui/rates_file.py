"""Files the UI writes: the best candidate's rate vector as JSON, and screenshots (beside the session DB,
else in the cwd). Saving rates is not `selfpruner export`, which writes a physically smaller model."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .state import SearchState


def output_dir(state: SearchState) -> Path:
    """The sessions dir holding the DB when it is writable, else the current directory."""
    d = Path(state.path).parent if state.path else Path.cwd()
    return d if d.is_dir() and os.access(d, os.W_OK) else Path.cwd()


def save_best_rates(state: SearchState) -> Path:
    """Write `<session>-best-rates.json`: the best candidate's per-layer rates with its provenance."""
    best = state.best()
    if best is None:
        raise ValueError("no evaluated candidate to save yet")
    payload = {
        "session": state.session_id,
        "model": state.model or state.config.get("model") or "bundled gemma-3-270m",
        "beta": state.beta,
        "n_layers": len(best.rates),
        "candidate_id": best.id,
        "origin": best.origin,
        "generation": best.generation,
        "parents": best.parents,
        "search_ppl": best.fitness if math.isfinite(best.fitness) else None,
        "final_ppl": state.final_ppl if state.best_id == best.id else None,
        "budget_tokens": state.config.get("budget_tokens"),
        "seq_len": state.config.get("seq_len"),
        "rates": best.rates,
    }
    if best.attention is not None:  # --split search: each layer's attention-unit rate
        payload["attention"] = best.attention
    path = output_dir(state) / f"{state.session_id or 'session'}-best-rates.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
