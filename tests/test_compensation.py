"""FLAP bias compensation: a removed head's or channel's input is replaced by its calibration mean, as a bias of
o_proj / down_proj computed for the prefix being applied. Checked against that definition on the dense model,
for an emptied attention block too, through export and reload, and on SmolLM2 (slow)."""
import pytest
import torch

from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.results.export import build_pruned, export_pruned, load_pruned

RATES = [0.25, 0.5, 1.0, 0.4]  # layer 2 loses every head and channel: only the bias is left of it


@pytest.fixture(scope="module")
def bench(tiny_llama_dir):
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local", device="cpu",
                           reconstruct="bias")


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def test_compensated_prefix_equals_mean_substitution_on_the_dense_model(bench):
    """The definition: the dense (permuted) model with every removed input column of o_proj and down_proj
    replaced by its calibration mean gives the same logits as the compensated prefix views."""
    lm, pruner = bench.lm, bench.pruner
    ids = bench.windows("search", 64)
    plans = pruner.plan(RATES)
    hooks = []
    for i, (parts, pl) in enumerate(zip(lm.arch.layers, plans)):
        for lin, kept, point in ((parts.o, pl.attn_units * lm.arch.q_heads_per_unit * lm.arch.head_dim, "o_in"),
                                 (parts.down, pl.channels, "down_in")):
            mu = pruner.stats.mean(i, point).float()

            def sub(mod, args, kept=kept, mu=mu):
                x = args[0].clone()
                x[..., kept:] = mu[kept:]
                return (x,)
            hooks.append(lin.register_forward_pre_hook(sub))
    try:
        want = _logits(lm.model, ids)
    finally:
        for h in hooks:
            h.remove()
    with pruner.applied(RATES):
        got = _logits(lm.model, ids)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    pruner.reconstruct = False
    try:
        with pruner.applied(RATES):
            plain = _logits(lm.model, ids)
    finally:
        pruner.reconstruct = True
    assert (plain - want).abs().max() > 1e-2  # the bias is not a no-op


def test_restore_leaves_the_dense_model_untouched(bench):
    ids = bench.windows("search", 32)
    before = _logits(bench.lm.model, ids)
    with bench.pruner.applied(RATES):
        pass
    assert torch.equal(_logits(bench.lm.model, ids), before)
    assert all(p.o.bias is None and p.down.bias is None for p in bench.lm.arch.layers)


def test_export_carries_the_bias_and_reloads_with_equal_logits(bench, tmp_path):
    ids = bench.windows("search", 64)
    with bench.pruner.applied(RATES):
        resident = _logits(bench.lm.model, ids)
    built = build_pruned(bench.lm, bench.pruner, RATES)
    assert torch.allclose(_logits(built, ids), resident, atol=1e-5)
    out = export_pruned(bench.lm, bench.pruner, RATES, tmp_path / "comp")
    model, _ = load_pruned(out)
    assert model.config.compensation_bias and model.config.selfpruner["compensation"]
    assert model.model.layers[0].mlp.down_proj.bias is not None
    assert model.model.layers[2].self_attn.bias is not None  # an emptied attention block keeps its bias
    assert torch.allclose(_logits(model, ids), resident, atol=1e-5)


def test_search_stores_and_uses_compensation(bench, tmp_path, tiny_llama_dir):
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import start_search

    kw = dict(model=str(tiny_llama_dir), beta=0.4, proposer="numeric", population=3, mutations=1, crossovers=1,
              generations=1, budget_tokens=64, seq_len=32, calib_tokens=256, final_eval=False, data="local",
              sessions_dir=str(tmp_path))
    fits = {}
    for comp in (False, True):
        s = start_search(SearchConfig(**kw, reconstruct="bias" if comp else "none"), bus=EventBus(), control=Control(), bench=bench)
        s.run()
        assert s.store.session()["config"]["reconstruct"] == ("bias" if comp else "none")
        fits[comp] = sorted(s.store.fitness_by_candidate().values())
    assert fits[True] != fits[False]  # same candidates (same seed), other fitness
    bench.pruner.reconstruct = True


@pytest.mark.slow
def test_compensation_lowers_smollm2_uniform_ppl(smol):
    b = smol
    rates = [0.3] * b.lm.arch.n_layers
    plain = b.fitness(rates, 1024)[0]
    b.set_pruning(True)
    comp = b.fitness(rates, 1024)[0]
    assert comp < 0.8 * plain, (plain, comp)
