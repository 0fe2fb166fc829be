"""FLAP: the fluctuation importance (Var(X_j)·||W[:, j]||², checked against activations hooked directly), a
pruner ordered by it, FLAP's global structure as layer rates (mean β, fewer rates where scores are high), and
the CLI baseline."""
import pytest
import torch

from selfpruner.core.baselines.rates import flap_rates
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.flap import flap_scores


@pytest.fixture(scope="module")
def flap_bench(tiny_llama_dir):
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local", importance="flap")


def test_flap_scores_are_input_variance_times_squared_column_norm(tiny_llama_dir):
    from selfpruner.core.model.calibration import collect_stats
    from selfpruner.core.model.data import load_token_data
    from selfpruner.core.model.models import load_model

    lm = load_model(str(tiny_llama_dir), device="cpu")
    windows = load_token_data(lm.tokenizer, calib_tokens=256, source="local").windows("calib", 32)
    seen = []
    h = lm.arch.layers[1].down.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    stats = collect_stats(lm.model, lm.arch, windows)
    h.remove()
    x = torch.cat(seen).double()
    w = lm.arch.layers[1].down.weight.double()
    want = x.var(0, unbiased=False) * (w * w).sum(0)
    _, chans = flap_scores(lm.arch, stats)
    assert torch.allclose(chans[1].double(), want, rtol=1e-4, atol=1e-9)


def test_pruner_orders_by_flap(flap_bench, tiny_llama_dir):
    plain = Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local", importance="wanda-sp")
    assert flap_bench.pruner.importance == "flap" and plain.pruner.importance == "wanda-sp"
    for scores in flap_bench.pruner.chan_scores:  # kept in descending order: prefixes keep the best
        assert torch.all(scores[:-1] >= scores[1:])
    rates = [0.5] * 4
    assert flap_bench.fitness(rates, 64)[0] != plain.fitness(rates, 64)[0]


def test_flap_rates_keep_the_mean(flap_bench):
    from selfpruner.core.baselines.run import baseline_rates

    arch, stats = flap_bench.lm.arch, flap_bench.pruner.stats
    raw = flap_rates(arch, stats, 0.4)
    assert abs(sum(raw) / len(raw) - 0.4) < 0.05 and len(set(round(r, 3) for r in raw)) > 1
    rates = baseline_rates(flap_bench, "flap", 0.4, lo=0.1, hi=0.7)
    assert abs(sum(rates) / 4 - 0.4) < 1e-9 and all(0.1 - 1e-9 <= r <= 0.7 + 1e-9 for r in rates)


def test_search_refuses_another_importance_than_its_workbench(flap_bench, tmp_path, tiny_llama_dir):
    from selfpruner.core.config import ConfigError, SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import start_search

    cfg = SearchConfig(model=str(tiny_llama_dir), proposer="numeric", seq_len=32, budget_tokens=32,
                       calib_tokens=256, data="local", sessions_dir=str(tmp_path), importance="wanda-sp")
    with pytest.raises(ConfigError, match="orders heads and channels by flap"):
        start_search(cfg, bus=EventBus(), control=Control(), bench=flap_bench)


def test_flap_baseline_cli(tmp_path, tiny_llama_dir):
    from selfpruner.cli import main
    from selfpruner.core.store import Store

    assert main(["baseline", "--method", "flap", "--importance", "flap", "--compensate", "--model",
                 str(tiny_llama_dir), "--ratio", "0.4", "--seq-len", "32", "--calib-tokens", "256",
                 "--final-tokens", "64", "--data", "local", "--sessions-dir", str(tmp_path)]) == 0
    (db,) = tmp_path.glob("*.db")
    s = Store(db).session()
    assert s["proposer"] == "flap" and s["config"]["importance"] == "flap" and s["config"]["reconstruct"] == "bias"
    assert s["final_ppl"] > 1
