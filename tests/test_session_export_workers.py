"""Exporting a session that evaluated on Ray workers (--workers N / --ray-address) rebuilds the model in this
process: the export needs the weights here, not on the actors, whatever cluster the session's config names."""
import json
import sqlite3

import pytest
import torch

from selfpruner.core.config import SearchConfig
from selfpruner.core.results.export import load_pruned
from selfpruner.core.results.session_export import export_session_candidate
from selfpruner.core.store import Store

from conftest import run_search

SMALL = {"beta": 0.4, "proposer": "numeric", "population": 4, "mutations": 2, "crossovers": 2, "generations": 1,
         "budget_tokens": 128, "seq_len": 32, "calib_tokens": 256, "final_tokens": 256, "data": "local"}


def _as_ray_session(db, **cluster) -> None:
    """Rewrite the stored config as a Ray driver would have stored it."""
    con = sqlite3.connect(db)
    (raw,) = con.execute("SELECT config FROM session").fetchone()
    con.execute("UPDATE session SET config = ?", (json.dumps(json.loads(raw) | cluster),))
    con.commit()
    con.close()


@pytest.mark.parametrize("cluster", [{"workers": 2}, {"workers": 0, "ray_address": "127.0.0.1:1"}])
def test_export_of_a_ray_session_rebuilds_the_model_in_process(tmp_path, tiny_llama_dir, tiny_bench, cluster):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **SMALL)
    search, _ = run_search(cfg, tiny_bench)
    db = search.store.path
    search.store.close()
    _as_ray_session(db, **cluster)
    with Store(db, readonly=True) as st:
        s = st.session()
        assert {k: s["config"][k] for k in cluster} == cluster
        best = {c["id"]: c for c in st.candidates()}[s["best_candidate"]]

    info = export_session_candidate(str(db), tmp_path / "pruned", sessions_dir=str(tmp_path))

    assert info["candidate"] == best["id"] and info["params"] < info["dense_params"]
    model, _ = load_pruned(info["out_dir"])  # transformers' AutoModelForCausalLM
    with tiny_bench.pruner.applied(best["rates"]) as plans:
        pass
    a = tiny_bench.lm.arch
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["intermediate_size_per_layer"] == [p.channels for p in plans]
    assert config["num_attention_heads_per_layer"] == [p.attn_units * a.q_heads_per_unit for p in plans]
    for layer, p in zip(model.model.layers, plans):
        assert layer.mlp.down_proj.weight.shape[1] == p.channels
        if p.attn_units:
            assert layer.self_attn.q_proj.weight.shape[0] == p.attn_units * a.q_heads_per_unit * a.head_dim
    assert any(p.channels < a.intermediate for p in plans)  # really pruned
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9, 2]])).logits).all()
    with Store(db, readonly=True) as st:
        (rec,) = st.results("export")
    assert rec["payload"]["out_dir"] == info["out_dir"]
