"""Wanda-sp scores, GQA/MQA grouping, rates → removed counts, apply/restore on tiny random models."""
import pytest
import torch

from selfpruner.core.model.calibration import collect_stats
from selfpruner.core.model.models import describe_model
from selfpruner.core.model.structured import StructuredPruner, ZeroAttention, wanda_sp_scores

from conftest import make_tiny


def _setup(kind):
    model = make_tiny(kind)
    arch = describe_model(model)
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(0, 1000, (4, 32), generator=g)
    stats = collect_stats(model, arch, windows)
    return model, arch, stats, windows


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_wanda_sp_scores_match_definition(kind):
    model, arch, stats, windows = _setup(kind)
    units, chans = wanda_sp_scores(arch, stats)
    # recompute ||X_j|| for down_proj of layer 1 directly with a hook
    xs = []
    h = arch.layers[1].down.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for w in windows:
            model(input_ids=w[None])
    h.remove()
    x = torch.cat(xs)
    expected = (arch.layers[1].down.weight.abs() * x.norm(dim=0)).sum(0)
    torch.testing.assert_close(chans[1], expected, rtol=1e-4, atol=1e-5)
    assert units[0].shape == (arch.n_attn_units,)


def test_gqa_units_are_kv_groups_and_mqa_units_are_heads():
    _, llama, _, _ = _setup("llama")
    _, gemma, _, _ = _setup("gemma")
    assert llama.attn_unit_is_group and llama.n_attn_units == 2 and llama.q_heads_per_unit == 2
    assert not gemma.attn_unit_is_group and gemma.n_attn_units == 4 and gemma.q_heads_per_unit == 1


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_reordering_preserves_function_and_restore_is_exact(kind):
    model, arch, stats, windows = _setup(kind)
    with torch.no_grad():
        before = model(input_ids=windows[:1]).logits
    pruner = StructuredPruner(model, arch, stats)
    with torch.no_grad():
        after = model(input_ids=windows[:1]).logits
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
        pruner.apply([0.5, 0.2, 0.7, 0.4])
        pruned = model(input_ids=windows[:1]).logits
        assert (pruned - before).abs().max() > 1e-3
        pruner.restore()
        torch.testing.assert_close(model(input_ids=windows[:1]).logits, after)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_rates_to_removed_counts_and_shapes(kind):
    model, arch, stats, _ = _setup(kind)
    pruner = StructuredPruner(model, arch, stats)
    rates = [0.0, 0.25, 0.5, 0.75]
    plans = pruner.apply(rates)
    for r, pl, parts in zip(rates, plans, arch.layers):
        # attention units go in whole KV groups (GQA) or whole heads (MQA)
        assert pl.attn_units == arch.n_attn_units - int(r * arch.n_attn_units + 0.5)
        n_q = pl.attn_units * arch.q_heads_per_unit
        if n_q == 0:
            continue  # the block is replaced by ZeroAttention (tested below)
        assert parts.q.weight.shape[0] == n_q * arch.head_dim
        assert parts.o.weight.shape[1] == n_q * arch.head_dim
        n_kv = pl.attn_units if arch.attn_unit_is_group else arch.n_kv_heads
        assert parts.k.weight.shape[0] == parts.v.weight.shape[0] == n_kv * arch.head_dim
        assert parts.gate.weight.shape[0] == parts.up.weight.shape[0] == parts.down.weight.shape[1] == pl.channels
        # each layer loses its share of parameters up to one MLP channel
        removed = 1 - pruner.layer_params(pl) / arch.prunable_params_per_layer
        assert abs(removed - r) <= arch.params_per_channel / arch.prunable_params_per_layer + 1e-9
    assert abs(pruner.achieved_sparsity(plans) - sum(rates) / 4) < 0.02
    # the kept units are the highest-scoring ones
    for i, pl in enumerate(plans):
        s = pruner.chan_scores[i]
        assert torch.all(s[: pl.channels].min() >= s[pl.channels:].max()) if 0 < pl.channels < len(s) else True
    pruner.restore()
    assert arch.layers[3].q.weight.shape[0] == arch.n_heads * arch.head_dim


def test_rate_one_removes_attention_block_and_runs():
    model, arch, stats, windows = _setup("llama")
    pruner = StructuredPruner(model, arch, stats)
    from selfpruner.core.model.models import decoder_layers
    with pruner.applied([1.0, 0.0, 0.0, 0.0]) as plans:
        assert plans[0].attn_units == 0 and plans[0].channels == 0
        assert isinstance(decoder_layers(model)[0].self_attn, ZeroAttention)
        out = model(input_ids=windows[:1]).logits
        assert torch.isfinite(out).all()
    assert decoder_layers(model)[0].self_attn is arch.layers[0].attn


def test_apply_does_not_copy_weights():
    model, arch, stats, _ = _setup("gemma")
    pruner = StructuredPruner(model, arch, stats)
    full = arch.layers[2].gate.weight
    pruner.apply([0.3] * 4)
    assert arch.layers[2].gate.weight.data_ptr() == full.data_ptr()  # a view of the resident tensor
    pruner.restore()


def test_wrong_length_is_rejected():
    model, arch, stats, _ = _setup("llama")
    with pytest.raises(ValueError):
        StructuredPruner(model, arch, stats).plan([0.3] * 3)
