"""A baseline session (uniform, OWL, FLAP: one rate vector, core/baselines/run.py) on its TUI screen: its header
says what it ran, not the evolution sizes it never used, and it is exported and measured like a layer search."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from test_tui import SIZE, TINY, cell_text, one_torch_thread, tiny_app, wait_for  # noqa: F401 (autouse fixture)
from textual.widgets import DataTable, Select, Static

from selfpruner.core.baselines.run import run_baseline
from selfpruner.core.config import SearchConfig
from selfpruner.core.results.export import load_pruned
from selfpruner.core.store import Store
from selfpruner.tui.screens.replay import ReplayScreen


def _baseline_session(sessions: Path, model_dir: Path, bench, method: str = "flap") -> Path:
    cfg = SearchConfig(model=str(model_dir), sessions_dir=str(sessions), reconstruct="bias", **TINY)
    run_baseline(cfg, method, bench=bench)
    (db,) = sessions.glob("*.db")
    return db


async def test_a_baseline_session_shows_what_it_ran_and_exports(tmp_path, tiny_llama_dir, tiny_bench):
    from selfpruner.tui.screens.export import ExportScreen
    from selfpruner.tui.screens.jobs import JobsScreen
    sessions = tmp_path / "sessions"
    db = _baseline_session(sessions, tiny_llama_dir, tiny_bench)
    with Store(db, readonly=True) as st:
        s = st.session()
        (cand,) = st.candidates()
    assert s["kind"] == "baseline" and s["best_candidate"] == cand["id"]

    app = tiny_app(sessions, tiny_llama_dir, tiny_bench)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+o")
        await pilot.pause()
        table = app.screen.query_one("#sessions", DataTable)
        assert table.row_count == 1 and cell_text(table, "0", "kind") == "baseline"
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen)

        header = str(screen.query_one("#status", Static).content)
        assert "K=" not in header and "N=" not in header  # the evolution sizes it never ran
        assert "FLAP baseline" in header and "β 0.4" in header
        assert "flap importance" in header and "bias compensation" in header
        assert f"search ppl {s['best_fitness']:.3f}" in header and f"final ppl {s['final_ppl']:.3f}" in header
        assert "gen 0/" not in str(screen.query_one("#gen-label").content)  # no generations to come

        assert screen.check_action("export", ()) and screen.check_action("measure", ())
        assert {"x", "m"} <= set(screen.active_bindings)
        await pilot.press("x")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ExportScreen)
        dialog.query_one("#format", Select).value = "hf"
        await pilot.pause()
        await pilot.click("#export")
        await wait_for(pilot, lambda: isinstance(app.screen, ReplayScreen), what="the export")
        assert f"exported #{cand['id']}" in screen.note

        await pilot.press("m")  # measure: the jobs dialog finds the export just written
        await pilot.pause()
        jobs = app.screen
        assert isinstance(jobs, JobsScreen) and jobs.export.endswith("-pruned")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ReplayScreen)

    with Store(db, readonly=True) as st:
        (rec,) = st.results("export")
    info = rec["payload"]
    assert info["rates"] == cand["rates"] and info["params"] < info["dense_params"]
    model, _ = load_pruned(info["out_dir"])
    with tiny_bench.pruner.applied(cand["rates"]) as plans:
        pass
    a = tiny_bench.lm.arch
    config = json.loads(Path(info["out_dir"], "config.json").read_text())
    assert config["intermediate_size_per_layer"] == [p.channels for p in plans]
    assert config["num_attention_heads_per_layer"] == [p.attn_units * a.q_heads_per_unit for p in plans]
    assert [layer.mlp.down_proj.weight.shape[1] for layer in model.model.layers] == [p.channels for p in plans]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9, 2]])).logits).all()


def test_baseline_header_parts_name_the_method_and_its_settings():
    from selfpruner.tui.state import baseline_options
    owl = {"method": "owl", "owl_lambda": 0.1, "owl_m": 7.0, "importance": "flap", "compensate": False,
           "budget_tokens": 512, "population": 30}
    assert baseline_options(owl) == ["OWL baseline (λ 0.1, M 7)", "flap importance", "no reconstruction",
                                     "search ppl on 512 tok"]
    assert baseline_options({"split": "flap"}, "uniform")[::3] == ["uniform baseline", "flap split"]
