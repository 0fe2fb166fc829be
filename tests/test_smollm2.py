"""The GQA path on the bundled LLaMA-family model, SmolLM2-135M-Instruct (30 layers, 9 query heads in 3 KV
groups): unit counts, the search against uniform, a killed and resumed run, replay, and the export (slow)."""
import pytest
import torch

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.events import CandidateEvaluated, Control, EventBus
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.layer_search.session import replay_session
from selfpruner.core.results.export import export_pruned, load_pruned

from conftest import cli
from conftest import run_search as _run

pytestmark = pytest.mark.slow

SMALL = dict(model="smollm2", beta=0.3, proposer="numeric", population=4, mutations=2, crossovers=2,
             generations=2, budget_tokens=256, seq_len=256, calib_tokens=4096, final_tokens=512, data="local")


def test_smollm2_is_llama_with_three_kv_groups(smol):
    a = smol.lm.arch
    assert (a.model_type, a.n_layers, a.n_heads, a.n_kv_heads, a.intermediate) == ("llama", 30, 9, 3, 1536)
    assert a.attn_unit_is_group and a.n_attn_units == 3 and a.q_heads_per_unit == 3
    plans = smol.pruner.plan([0.0, 0.2, 0.34, 1.0] + [0.3] * 26)
    assert [p.attn_units for p in plans[:4]] == [3, 2, 2, 0] and plans[3].channels == 0
    assert smol.data.bos is None  # its tokenizer starts no sequence with a BOS token
    assert 10 < smol.dense_ppl(512) < 100


def test_search_beats_uniform_on_smollm2(smol, tmp_path):
    search, res = _run(SearchConfig(sessions_dir=str(tmp_path), **SMALL, reconstruct="none"), smol)
    uniform, _ = smol.fitness(baseline_rates(smol, "uniform", 0.3), 256)
    # layer allocation matters on this model: without reconstruction, 12 numeric-GA evaluations beat uniform clearly
    assert res.status == "finished" and res.best_fitness < 0.5 * uniform


def test_a_search_with_the_defaults_ends_at_or_below_every_one_shot_baseline_held_out(smol, tmp_path):
    """The defaults that won in RESULTS (FLAP importance, least squares, the rule split, references seeded): the
    searched model's held-out ppl is at most the best of uniform, OWL and FLAP pruned the same way."""
    cfg = SearchConfig(sessions_dir=str(tmp_path), **SMALL)
    assert (cfg.importance, cfg.reconstruct, cfg.split, cfg.seed_references) == ("flap", "ls", "rule", True)
    search, res = _run(cfg, smol)
    held_out = {m: smol.fitness(baseline_rates(smol, m, 0.3), 2048, which="test")[0] for m in ("uniform", "owl", "flap")}
    searched = smol.fitness(res.best_rates, 2048, which="test")[0]
    assert searched <= min(held_out.values()), (searched, held_out)


class Crash(Exception):
    pass


def test_killed_and_resumed_run_matches_and_replays(smol, tmp_path):
    small = {**SMALL, "reconstruct": "bias"}  # the resume machinery, not the solve (test_reconstruct), and faster
    ref, _ = _run(SearchConfig(sessions_dir=str(tmp_path / "ref"), **small), smol)
    n = []

    def killer(ev):
        if isinstance(ev, CandidateEvaluated):
            n.append(ev.id)
            if len(n) == 6:
                raise Crash

    cfg = SearchConfig(sessions_dir=str(tmp_path / "crash"), **small)
    with pytest.raises(Crash):
        _run(cfg, smol, subscriber=killer)
    (path,) = list((tmp_path / "crash").glob("*.db"))
    resumed, res = _run(cfg, smol, resume=path)
    assert res.status == "finished" and compare_trajectories(ref.store, resumed.store) == []
    replay, _ = replay_session(ref.store.path.stem, str(tmp_path / "ref"), bus=EventBus(), control=Control())
    replay.run()
    assert compare_trajectories(ref.store, replay.store) == []


def test_export_reloads_with_equal_logits(smol, tmp_path):
    rates = [0.1, 0.5, 0.34, 0.2, 0.7, 0.0] * 5
    x = smol.windows("search", 64)[:2]
    with torch.no_grad(), smol.pruner.applied(rates):
        masked = smol.lm.model(input_ids=x).logits
    model, _ = load_pruned(export_pruned(smol.lm, smol.pruner, rates, tmp_path / "smol-pruned"))
    with torch.no_grad():
        got = model(input_ids=x).logits
    assert (got - masked).abs().max() < 1e-3
    # whole KV groups went: round(p * 3) of them, each with its 3 query heads
    assert model.config.num_key_value_heads_per_layer[:3] == [3, 1, 2]
    assert model.config.num_attention_heads_per_layer[:3] == [9, 3, 6]


def test_lm_eval_bridge_scores_dense_above_heavily_pruned(smol):
    from pathlib import Path

    from selfpruner.core.results.lm_eval_bridge import evaluate_tasks

    task = Path(__file__).parent / "data" / "tiny_facts.yaml"
    dense = evaluate_tasks(smol.lm.model, smol.lm.tokenizer, [task], batch_size=8)["selfpruner_tiny_facts"]
    with smol.pruner.applied([0.9] * smol.lm.arch.n_layers):
        pruned = evaluate_tasks(smol.lm.model, smol.lm.tokenizer, [task], batch_size=8)["selfpruner_tiny_facts"]
    assert dense["acc"] > pruned["acc"]


def test_metric_search_on_smollm2_finds_wanda_better_than_magnitude(tmp_path):
    """Pruner-Zero on the GQA model, through the CLI (the final evaluation scores --final-tokens only)."""
    from selfpruner.core.store import Store

    code, _, err = cli("metric-search", "--model", "smollm2", "--population", "3", "--iterations", "1", "--top-k", "3",
                       "--no-gradients", "--budget-tokens", "256", "--seq-len", "256", "--calib-tokens", "1024",
                       "--final-tokens", "256", "--data", "local", "--sessions-dir", str(tmp_path))
    assert code == 0, err
    (db,) = tmp_path.glob("*.db")
    st = Store(db)
    rows = {c["canonical"]: c["fitness"] for c in st.metric_candidates()}
    assert rows["mul(abs(W), X)"] < rows["abs(W)"]  # activations matter on SmolLM2 as on gemma
    final = st.results("final")[0]["payload"]
    assert final["tokens"] == 256 and final["wanda"]["ppl"] < final["magnitude"]["ppl"]
