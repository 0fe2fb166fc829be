"""What a stored session says about itself beyond its numbers: how much of it the LLM really wrote, and
results recorded later against a model exported from it."""
from __future__ import annotations

import json
from pathlib import Path

from ..session_files import resolve_session
from ..store import Store, StoreError

LLM_PROPOSERS = ("openai", "llama-cpp", "vllm")


def candidate_shares(proposer: str, origins: list[str], selections: list[dict] = ()) -> dict | None:
    """Of the candidates the LLM was asked to write (random-init candidates and seeded references excluded), how
    many it wrote and
    how many the numeric fallback filled in; likewise for selected parents. None for a non-LLM session."""
    proposer = (proposer or "").removeprefix("random+")
    if proposer not in LLM_PROPOSERS and not proposer.startswith("replay"):
        return None
    asked = [o for o in origins if o != "random" and not o.startswith("reference:")]
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


def _export_record(model_dir: str | Path) -> dict:
    if str(model_dir).endswith(".gguf"):
        from .gguf_export import gguf_record
        return gguf_record(model_dir)
    return json.loads((Path(model_dir) / "config.json").read_text()).get("selfpruner", {})


def predicted_speedups(model_dir: str | Path, sessions_dir: str, engine: str) -> dict | None:
    """{objective: speedup} the session's cost table predicts for an export of a --target-speedup session on
    `engine`, or None (no session at hand, no table, another engine)."""
    from ..cost_table import OBJECTIVES, CostTable
    from ..plans import LayerPlan
    try:
        record = _export_record(model_dir)
        sid = record.get("meta", {}).get("session")
        if not sid or not record.get("plans"):
            return None
        with Store(resolve_session(sid, sessions_dir), readonly=True) as st:
            tables = st.results("cost-table")
    except (OSError, ValueError, StoreError):
        return None
    if not tables or tables[0]["name"] != engine:
        return None
    table = CostTable.from_dict(tables[0]["payload"])
    plans = [LayerPlan(u, c) for u, c in record["plans"]]
    return {o: table.speedup(plans, o) for o in OBJECTIVES}


def record_for_model_dir(model_dir: str | Path, sessions_dir: str, kind: str, name: str, payload: dict) -> str | None:
    """Store a result in the session an exported model came from, when that session is at hand; its id."""
    try:
        sid = _export_record(model_dir).get("meta", {}).get("session")
        if not sid:
            return None
        with Store(resolve_session(sid, sessions_dir)) as st:
            st.add_result(kind, name, payload)
        return sid
    except (OSError, ValueError, StoreError):
        return None


def results_line(store: Store) -> str:
    """What was measured on the session's exports, newest of each kind, in one line: the export's size, the
    speed ratios against dense, zero-shot accuracy, LoRA's ppl (the TUI's session screen shows it)."""
    latest = {r["kind"]: r["payload"] for r in store.results()}  # in id order: the newest of each kind wins
    parts = []
    if "export" in latest:
        e = latest["export"]
        if e.get("params") and e.get("dense_params"):
            parts.append(f"export {e['params'] / 1e6:.1f}M/{e['dense_params'] / 1e6:.1f}M params")
    if "speed" in latest:
        q = latest["speed"].get("ratios", {}).get("pruned", {})
        pre, dec = q.get("prefill_speedup", q.get("prompt")), q.get("decode_speedup", q.get("gen"))
        if pre and dec:
            parts.append(f"speed prefill {pre:.2f}× decode {dec:.2f}×")
        predicted = latest["speed"].get("predicted")
        if predicted:  # a --target-speedup session: its cost table's prediction beside the measurement
            parts.append(f"predicted {predicted['prompt']:.2f}× / {predicted['generation']:.2f}×")
    if "lm_eval" in latest:
        for task, m in latest["lm_eval"].get("results", {}).items():
            acc = m.get("acc,none", m.get("acc"))
            if isinstance(acc, (int, float)):
                parts.append(f"{task} acc {acc:.3f}")
    if "lora" in latest and latest["lora"].get("ppl_after") is not None:
        parts.append(f"LoRA ppl {latest['lora']['ppl_before']:.1f}→{latest['lora']['ppl_after']:.1f}")
    return " · ".join(parts)


HISTORY_FIELDS = ("id", "generation", "phase", "origin", "parents", "fitness", "eval_s", "mean_rate", "rates",
                  "attention")


def candidate_history(store: Store) -> list[dict]:
    """Every candidate of a layer-rate session with its search fitness (None: not evaluated), in order: what
    `show --csv/--history-json` and the TUI's Ctrl+E write."""
    cfg = store.session().get("config") or {}
    fit = store.fitness_by_candidate(budget_tokens=cfg.get("budget_tokens") if cfg.get("race") else None)
    secs = {e["candidate_id"]: e["eval_s"] for e in store.evaluations() if e["kind"] == "search"}
    rows = []
    for c in store.candidates():
        g = c["genes"]  # attention: --split search only
        rates, attention = list(g.layers), g.attention_list
        rows.append({"id": c["id"], "generation": c["generation"], "phase": c["phase"], "origin": c["origin"],
                     "parents": c["parents"], "fitness": fit.get(c["id"]), "eval_s": secs.get(c["id"]),
                     "mean_rate": sum(rates) / len(rates) if rates else None, "rates": rates, "attention": attention})
    return rows


def history_csv(rows: list[dict]) -> str:
    """One row per candidate; parents and rates as space-separated lists, so a spreadsheet keeps one cell each."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(HISTORY_FIELDS)
    for r in rows:
        w.writerow([" ".join(map(str, r[k])) if isinstance(r[k], list) else ("" if r[k] is None else r[k])
                    for k in HISTORY_FIELDS])
    return buf.getvalue()


def write_history(store: Store, directory: str | Path) -> tuple[Path, Path]:
    """`<session>-candidates.csv` and `.json` in `directory`."""
    rows = candidate_history(store)
    sid = store.session()["id"]
    d = Path(directory)
    csv_path, json_path = d / f"{sid}-candidates.csv", d / f"{sid}-candidates.json"
    csv_path.write_text(history_csv(rows), encoding="utf-8")
    json_path.write_text(json.dumps({"session": sid, "candidates": rows}, indent=1), encoding="utf-8")
    return csv_path, json_path
