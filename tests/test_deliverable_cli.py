"""search → export → eval → speed from the command line, on a tiny model; results land in the session."""
import json
from pathlib import Path

from selfpruner.core.store import Store

from conftest import cli as run_cli

DATA = Path(__file__).parent / "data"


def cli(*args):
    code, out, err = run_cli(*args)
    assert code == 0, err
    return out


def test_search_export_eval_speed(tmp_path, tiny_llama_dir):
    sd = tmp_path / "sessions"
    cli("search", "--model", tiny_llama_dir, "--proposer", "numeric", "--ratio", "0.5", "-K", "3", "-M", "1",
        "-S", "1", "-N", "1", "--seq-len", "32", "--calib-tokens", "256",
        "--final-tokens", "256", "--data", "local", "--sessions-dir", sd)
    (db,) = sd.glob("*.db")
    out_dir = tmp_path / "pruned"
    text = cli("export", db.stem, "--out", out_dir, "--sessions-dir", sd)
    assert "exported candidate" in text
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["model_type"] == "selfpruner_llama"
    st = Store(db)
    assert st.session()["config"]["budget_tokens"] == 32  # default search budget: one --seq-len window
    best = next(c for c in st.candidates() if c["id"] == st.session()["best_candidate"])
    assert cfg["selfpruner"]["rates"] == [round(r, 6) for r in best["rates"]]
    (export,) = st.results("export")
    assert export["payload"]["params"] < export["payload"]["dense_params"]

    text = cli("eval", out_dir, "--tasks", DATA / "tiny_facts.yaml", "--limit", "4", "--sessions-dir", sd)
    assert "selfpruner_tiny_facts" in text and f"stored in session {db.stem}" in text
    (ev,) = Store(db).results("lm_eval")
    acc = ev["payload"]["results"]["selfpruner_tiny_facts"]["acc"]
    assert 0.0 <= acc <= 1.0

    text = cli("speed", out_dir, "--dense", tiny_llama_dir, "--repeats", "1", "--prefill-len", "32",
               "--decode-tokens", "4", "--sessions-dir", sd)
    assert "pruned" in text and Store(db).results("speed")
