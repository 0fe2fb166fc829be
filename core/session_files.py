"""The session files of a directory: found by path, id or id prefix, and listed with what each says of itself
(the CLI's `sessions`, the TUI browser)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .store import DEFAULT_DIR, Store, StoreError
from .types import from_db


def session_paths(directory: Path | str = DEFAULT_DIR) -> list[Path]:
    d = Path(directory)
    return sorted(d.glob("*.db"), key=lambda p: p.stat().st_mtime, reverse=True) if d.is_dir() else []


def resolve_session(ref: str, directory: Path | str = DEFAULT_DIR) -> Path:
    """A session by path, by id, or by unique id prefix."""
    p = Path(ref)
    if p.suffix == ".db" and p.exists():
        return p
    matches = [q for q in session_paths(directory) if q.stem == ref] or \
              [q for q in session_paths(directory) if q.stem.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"no session {ref!r} in {directory}/")
    raise StoreError(f"session {ref!r} is ambiguous: {', '.join(q.stem for q in matches[:5])}")


def list_sessions(directory: Path | str = DEFAULT_DIR) -> list[dict]:
    """Summary rows for the CLI and the TUI browser; unreadable files are listed with their error."""
    from .run_lock import shown_status

    rows = []
    for path in session_paths(directory):
        try:
            with Store(path, readonly=True) as st:
                s = st.session()
                s["status"] = shown_status(path, s["status"])
                runner = None
                if s["status"] == "running":  # live: who runs it
                    last = (st.runs() or [None])[-1]
                    runner = f"pid {last['pid']} on {last['host']}" if last else None
                n_gen = st.db["generations"].count
                n_cand = st.db["candidates"].count + st.db["metric_candidates"].count
            rows.append({"id": s["id"], "path": str(path), "kind": s["kind"], "status": s["status"],
                         "model": s["model_name"], "beta": s["beta"], "proposer": s["proposer"],
                         "best_fitness": from_db(s["best_fitness"]), "final_ppl": s["final_ppl"],
                         "created": s["created"], "generations": n_gen, "candidates": n_cand, "error": None,
                         "config": s.get("config") or {}, "runner": runner})
        except (StoreError, sqlite3.DatabaseError) as e:
            rows.append({"id": path.stem, "path": str(path), "kind": "?", "status": "unreadable",
                         "error": str(e).splitlines()[0]})
    return rows
