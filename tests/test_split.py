"""--split: how a layer's rate is divided between its attention units and MLP channels. The flap split removes
both in the order of their standardised FLAP scores, which reproduces FLAP's own per-layer structure from its
layer rates (checked against a direct global removal), stays on the rate's parameter budget, and is stored,
prompted and refused on resume like the other pruning settings."""
from dataclasses import replace

import pytest

from selfpruner.core.baselines.rates import flap_rates
from selfpruner.core.config import ConfigError, SearchConfig
from selfpruner.core.model.flap import flap_scores, standardised
from selfpruner.core.plans import LayerGrain, plans, scored_unit_order
from selfpruner.core.proposers.llm import grain_text
from selfpruner.core.types import Problem

from conftest import run_search

GRAIN = LayerGrain(attn_units=4, q_heads_per_unit=1, params_per_attn_unit=100, channels=50, params_per_channel=10,
                   prunable_params=900)


def test_scored_split_takes_the_lowest_scores_first_and_meets_the_rate():
    # layer 0: its units score below every channel; layer 1: above every channel
    low, high = scored_unit_order([-9] * 4, [0] * 50), scored_unit_order([9] * 4, [0] * 50)
    assert low == (0, 1, 2, 3) and high == (50, 51, 52, 53)
    g = replace(GRAIN, unit_order=(low, high))
    for p in (0.0, 0.1, 0.25, 0.5, 0.8, 1.0):
        a, b = plans(g, [p, p])
        target = p * 900
        # layer 0: heads go first; once all four are gone (400 parameters) channels take the rest
        assert a.attn_units == 4 - min(4, round(target / 100)), (p, a)
        assert a.channels == 50 - max(0, round((target - 400) / 10)), (p, a)
        # layer 1: channels go first; once all fifty are gone (500 parameters) heads take the rest
        assert b.channels == 50 - min(50, round(target / 10)), (p, b)
        assert b.attn_units == 4 - max(0, round((target - 500) / 100)), (p, b)
        for pl in (a, b):  # within half of the coarsest step of the rate's parameters
            removed = 900 - pl.attn_units * 100 - pl.channels * 10
            assert abs(removed - p * 900) <= 50
    assert plans(g, [0.0, 1.0]) == [plans(g, [0.0])[0], plans(GRAIN, [1.0])[0]]  # dense and empty as always
    assert plans(g, [0.3, 0.3])[0].attn_units == 1 and plans(g, [0.3, 0.3])[1].attn_units == 4
    with pytest.raises(ValueError, match="by its index"):
        from selfpruner.core.plans import layer_plan
        layer_plan(g, 0.3)


def _flap_directly(arch, stats, beta: float) -> list[tuple[int, int]]:
    """FLAP itself: every layer's units and channels on one standardised scale, the lowest removed first until β
    of the model's prunable parameters are gone; each layer's (kept units, kept channels)."""
    units, chans = flap_scores(arch, stats)
    entries = sorted([(float(z), "u", i) for i in range(arch.n_layers) for z in standardised(units[i])]
                     + [(float(z), "c", i) for i in range(arch.n_layers) for z in standardised(chans[i])])
    target, done = beta * arch.n_layers * arch.prunable_params_per_layer, 0
    gone = [[0, 0] for _ in range(arch.n_layers)]
    for _, kind, i in entries:
        if done >= target:
            break
        gone[i][kind == "c"] += 1
        done += arch.params_per_attn_unit if kind == "u" else arch.params_per_channel
    return [(arch.n_attn_units - u, arch.intermediate - c) for u, c in gone]


def test_flap_split_reproduces_flaps_global_structure(tiny_bench):
    arch, stats = tiny_bench.lm.arch, tiny_bench.pruner.stats
    differs = 0
    try:
        for beta in (0.2, 0.4, 0.6):
            rates, want = flap_rates(arch, stats, beta), _flap_directly(arch, stats, beta)
            tiny_bench.set_pruning(False, 1, "flap")
            assert [(p.attn_units, p.channels) for p in tiny_bench.pruner.plan(rates)] == want
            tiny_bench.set_pruning(False, 1, "rule")
            differs += [(p.attn_units, p.channels) for p in tiny_bench.pruner.plan(rates)] != want
    finally:
        tiny_bench.set_pruning(False)
    assert differs  # the rule split does not give FLAP's structure from FLAP's own rates


def test_flap_split_search_is_stored_prompted_and_kept_on_resume(tiny_bench, tmp_path, tiny_llama_dir, capsys):
    cfg = SearchConfig(model=str(tiny_llama_dir), proposer="numeric", beta=0.4, population=4, mutations=1,
                       crossovers=1, generations=1, seq_len=32, budget_tokens=32, calib_tokens=256, data="local",
                       sessions_dir=str(tmp_path), split="flap", final_eval=False)
    try:
        search, _ = run_search(cfg, tiny_bench)
        assert search.problem.grain.unit_order is not None and search.store.session()["config"]["split"] == "flap"
        assert "in the order of their measured importance" in grain_text(search.problem)
        assert "round(rate x" in grain_text(Problem("m", 4, 0.4, grain=tiny_bench.lm.arch.grain))
        from selfpruner.core.layer_search.session import resume_config
        with pytest.raises(ConfigError, match="split"):
            resume_config(str(search.store.path), str(tmp_path), {"split": "rule"})
        again, _ = run_search(resume_config(str(search.store.path), str(tmp_path), {"generations": 2})[0],
                              tiny_bench, resume=search.store.path)
        assert tiny_bench.pruner.split == "flap" and again.store.session()["config"]["split"] == "flap"
        from selfpruner.cli import main
        assert main(["show", again.store.session()["id"], "--sessions-dir", str(tmp_path)]) == 0
        assert "flap split" in capsys.readouterr().out
    finally:
        tiny_bench.set_pruning(False)
    with pytest.raises(ConfigError, match="split"):
        SearchConfig(split="half").validate()
