"""Physical export: reload gives the masked resident model's logits; sizes, speed report and LoRA recovery."""
import json
import os
import subprocess
import sys

import pytest
import torch

from selfpruner.core.model.calibration import collect_stats
from selfpruner.core.model.data import load_token_data
from selfpruner.core.model.models import LoadedModel, describe_model
from selfpruner.core.model.structured import StructuredPruner
from selfpruner.core.results import speed
from selfpruner.core.results.export import build_pruned, export_pruned, load_pruned
from selfpruner.core.results.lora import lora_recover, lora_targets
from selfpruner.core.results.pruned_modeling import PER_LAYER_KEYS, ZeroHeadAttention

from conftest import make_tiny

# layer 0 loses everything (ZeroAttention + 0 MLP channels), layer 3 nothing
RATES = [1.0, 0.3, 0.55, 0.0]


def _tiny(kind, tokenizer):
    model = make_tiny(kind, tokenizer)
    arch = describe_model(model)
    windows = torch.randint(0, len(tokenizer), (4, 48), generator=torch.Generator().manual_seed(1))
    pruner = StructuredPruner(model, arch, collect_stats(model, arch, windows))
    return LoadedModel(model, tokenizer, arch, f"tiny-{kind}", "test"), pruner, windows


def _dense_params_removed(pruner, plans):
    a = pruner.arch
    return sum(a.prunable_params_per_layer - pruner.layer_params(p) for p in plans)


def _expected_params(dense_model, pruner, plans):
    """Dense minus what the plans remove; a block with no heads also drops its q/k norms (Gemma3)."""
    attn = pruner.arch.layers[0].attn
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    norms = sum(p.numel() for n, p in attn.named_parameters() if n.split(".")[0] not in projections)
    zero_blocks = sum(p.attn_units == 0 for p in plans)
    return speed.param_count(dense_model) - _dense_params_removed(pruner, plans) - zero_blocks * norms


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_export_reload_matches_masked_model(kind, tiny_tokenizer, tmp_path):
    lm, pruner, windows = _tiny(kind, tiny_tokenizer)
    with torch.no_grad():
        dense = lm.model(input_ids=windows[:2]).logits
        with pruner.applied(RATES) as plans:
            masked = lm.model(input_ids=windows[:2]).logits
    out = export_pruned(lm, pruner, RATES, tmp_path / "export", meta={"session": "s1", "candidate": 7})
    model, tok = load_pruned(out)
    with torch.no_grad():
        got = model(input_ids=windows[:2]).logits
    assert (got - masked).abs().max() < 1e-5
    assert (got - dense).abs().max() > 1e-3  # it really is the pruned model
    with torch.no_grad():  # the resident model is dense again
        torch.testing.assert_close(lm.model(input_ids=windows[:2]).logits, dense)

    cfg = json.loads((out / "config.json").read_text())
    a = lm.arch
    assert cfg["model_type"] == "selfpruner_" + a.model_type
    assert cfg["num_attention_heads_per_layer"] == [p.attn_units * a.q_heads_per_unit for p in plans]
    assert cfg["intermediate_size_per_layer"] == [p.channels for p in plans]
    assert cfg["num_key_value_heads_per_layer"][0] == 0 and cfg["num_attention_heads_per_layer"][3] == a.n_heads
    assert cfg["selfpruner"]["meta"] == {"session": "s1", "candidate": 7}
    assert cfg["selfpruner"]["rates"] == RATES
    assert isinstance(model.model.layers[0].self_attn, ZeroHeadAttention)
    assert tok("the cat")["input_ids"] == tiny_tokenizer("the cat")["input_ids"]

    # parameter count = dense - what the plans remove (pruner.layer_params), exactly
    assert speed.param_count(model) == _expected_params(make_tiny(kind, tiny_tokenizer), pruner, plans)
    removed = _dense_params_removed(pruner, plans) / (a.prunable_params_per_layer * a.n_layers)
    assert removed == pytest.approx(cfg["selfpruner"]["achieved_sparsity"], abs=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_generate_with_kv_cache_matches_full_recompute(kind, tiny_tokenizer):
    """Layer 0 has no heads: its cache placeholder must keep positions right (gemma crosses its window)."""
    lm, pruner, windows = _tiny(kind, tiny_tokenizer)
    model = build_pruned(lm, pruner, RATES)
    prompt = windows[:1, :30]
    gen = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         attention_mask=torch.ones_like(prompt))
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(gen, ids)


def test_loads_with_trust_remote_code_without_selfpruner(tiny_tokenizer, tmp_path):
    lm, pruner, windows = _tiny("llama", tiny_tokenizer)
    with torch.no_grad(), pruner.applied(RATES):
        expected = float(lm.model(input_ids=windows[:1]).logits.double().sum())
    out = export_pruned(lm, pruner, RATES, tmp_path / "export", meta={})
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "assert 'selfpruner' not in sys.modules\n"
        f"ids = torch.tensor([{windows[0].tolist()}])\n"
        "print(float(m(input_ids=ids).logits.double().sum()))\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)


def test_export_refuses_non_empty_dir(tiny_tokenizer, tmp_path):
    lm, pruner, _ = _tiny("llama", tiny_tokenizer)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_pruned(lm, pruner, RATES, tmp_path / "x", meta={})


def test_speed_report_ratios(tiny_tokenizer):
    lm, pruner, _ = _tiny("llama", tiny_tokenizer)
    small = build_pruned(lm, pruner, [0.5] * 4)
    rep = speed.compare({"dense": lm.model, "pruned": small}, prefill_len=32, decode_tokens=4, repeats=1)
    q = rep["ratios"]
    assert q["dense"] == {"params": 1.0, "weight_bytes": 1.0, "prefill_speedup": 1.0, "decode_speedup": 1.0}
    assert 0.5 < q["pruned"]["params"] < 0.95 and 0.5 < q["pruned"]["weight_bytes"] < 0.95
    for r in rep["results"].values():
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        assert r["prefill_spread"][0] <= r["prefill_tok_s"] <= r["prefill_spread"][1]
    table = speed.to_markdown(rep)
    assert "| pruned |" in table and "| dense |" in table and "load average" in table


def test_lora_lowers_training_loss(tiny_tokenizer):
    lm, pruner, _ = _tiny("gemma", tiny_tokenizer)
    small = build_pruned(lm, pruner, [0.3, 0.5, 0.3, 1.0])
    assert not any(n.startswith("model.layers.3.mlp") for n in lora_targets(small))  # 0-channel MLP
    data = load_token_data(tiny_tokenizer, calib_tokens=2048, source="local")
    train = data.windows("calib", 64)[:4]
    merged, res = lora_recover(small, train, train, steps=16, lr=1e-2)
    assert res.ppl_after < res.ppl_before
    assert sum(res.losses[-4:]) / 4 < res.losses[0]
    assert type(merged).__name__ == "SelfPrunerGemma3ForCausalLM" and res.trainable_params > 0


# ---- the bundled gemma-3-270m -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled_pruner(bundled):
    data = load_token_data(bundled.tokenizer, calib_tokens=2048, source="local")
    stats = collect_stats(bundled.model, bundled.arch, data.windows("calib", 128, 512))
    return StructuredPruner(bundled.model, bundled.arch, stats), data


@pytest.mark.slow
def test_bundled_export_reload_non_uniform(bundled, bundled_pruner, tmp_path):
    pruner, data = bundled_pruner
    rates = [0.1, 0.5, 0.3, 0.2, 0.7, 0.0, 0.4, 0.35, 0.25, 0.3, 0.3, 0.3, 0.2, 0.6, 0.3, 1.0, 0.3, 0.3]
    x = data.windows("search", 64, 128)
    with torch.no_grad(), pruner.applied(rates) as plans:
        masked = bundled.model(input_ids=x).logits
    out = export_pruned(bundled, pruner, rates, tmp_path / "gemma-pruned", meta={"test": True})
    model, tok = load_pruned(out)
    with torch.no_grad():
        got = model(input_ids=x).logits
    assert (got - masked).abs().max() < 1e-3
    assert speed.param_count(model) == _expected_params(bundled.model, pruner, plans)
    cfg = model.config
    assert getattr(cfg, PER_LAYER_KEYS[0])[15] == 0 and getattr(cfg, PER_LAYER_KEYS[2])[15] == 0
    assert tok("The tower is 324 metres")["input_ids"] == bundled.tokenizer("The tower is 324 metres")["input_ids"]
