"""GGUF export (deci architecture): llama.cpp loads what the writer produces and computes what torch computes,
for the bundled SmolLM2 pruned every way a search can prune it, and for HF-directory sources whose vocabulary the
writer builds itself; what llama.cpp cannot run is refused in one line."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from selfpruner.core.model.models import bundled_gguf_path, load_model
from selfpruner.core.plans import candidate_key, layer_plan
from selfpruner.core.results.gguf_export import ALIGN, GgufExportError, check_exportable, write_gguf

PIQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "piqa"


def llama_cpp_logits(path, ids, kv_f32: bool = False) -> np.ndarray:
    """All positions' logits; `kv_f32`: keep the KV cache in F32 (llama.cpp's default F16 rounds K and V)."""
    f32 = {"type_k": 0, "type_v": 0} if kv_f32 else {}
    llm = llama_cpp.Llama(str(path), n_ctx=len(ids) + 8, logits_all=True, n_threads=2, verbose=False, **f32)
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def ppl(logits: np.ndarray, ids) -> float:
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(ids) - 1), np.asarray(ids[1:])].mean()))


def agreement(got: np.ndarray, ref: np.ndarray, ids) -> dict:
    return {"top1": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "corr": float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]),
            "ppl_ratio": ppl(got, ids) / ppl(ref, ids)}


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer
    p = bundled_gguf_path("smollm2")
    return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


def _tiny_dir(tmp_path, kind, tokenizer, biases=False, **over):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    kw = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    kw.update(over)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**kw)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    if biases:  # Qwen2's q/k/v biases, made large enough to matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    d = tmp_path / kind
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


TEXT = "The 12345 apples, isn't it? <|im_start|>user\nHello  world!\n"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_directory_source_round_trips(tmp_path, smollm2_tokenizer, kind):
    """A tiny LLaMA / Qwen2 (q/k/v biases) with a real tokenizer.json: the vocabulary is built from it, llama.cpp
    tokenizes as transformers does (special tokens included) and computes the same logits."""
    lm = load_model(str(_tiny_dir(tmp_path, kind, smollm2_tokenizer, biases=kind == "qwen2")), device="cpu",
                    dtype="float32")
    rep = write_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", outtype="f32")
    assert rep.tokenizer == "built from the HF tokenizer"
    ids = lm.tokenizer(TEXT).input_ids
    llm = llama_cpp.Llama(rep.path, n_ctx=64, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids
    assert llm.token_bos() == lm.tokenizer.bos_token_id or lm.tokenizer.bos_token_id is None
    with torch.no_grad():
        ref = lm.model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    a = agreement(llama_cpp_logits(rep.path, ids), ref, ids)
    assert a["top1"] == 1.0 and a["corr"] > 0.99999 and abs(a["ppl_ratio"] - 1) < 1e-3, a


def test_llama3_split_is_recognised_and_tokenizes_alike(tmp_path, smollm2_tokenizer):
    """The LLaMA-3 split pattern (llama-bpe) written into a tokenizer.json: llama.cpp splits text the same way."""
    from transformers import PreTrainedTokenizerFast

    from selfpruner.core.results.gguf_export import _LLAMA3_RE
    smollm2_tokenizer.save_pretrained(tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_RE}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    lm = load_model(str(_tiny_dir(tmp_path, "llama", smollm2_tokenizer)), device="cpu", dtype="float32")
    rep = write_gguf(lm.model, tok, tmp_path / "l3.gguf", outtype="f16")
    text = "I've 1234567 ideas!!  Don't\n\n  you?"
    from gguf import GGUFReader
    assert GGUFReader(rep.path).fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    llm = llama_cpp.Llama(rep.path, n_ctx=64, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok(text).input_ids


def test_what_llama_cpp_cannot_run_is_refused_in_one_line(tmp_path, tiny_tokenizer):
    from transformers import Gemma3TextConfig, LlamaConfig, LlamaForCausalLM
    with pytest.raises(GgufExportError, match="gemma3_text.*per-layer arrays") as e:
        check_exportable(Gemma3TextConfig(num_hidden_layers=1))
    assert "\n" not in str(e.value)
    with pytest.raises(GgufExportError, match="RoPE scaling 'yarn'"):
        check_exportable(LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 2048}))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(GgufExportError, match="byte-level BPE vocabularies only") as e:  # a WordLevel tokenizer
        write_gguf(model, tiny_tokenizer, tmp_path / "w.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "w.gguf").exists()


def test_channel_multiple_keeps_mlp_widths_aligned_and_dedups_on_them(tiny_bench):
    grain = replace(tiny_bench.pruner.arch.grain, channel_multiple=32)
    widths = {layer_plan(grain, p).channels for p in np.linspace(0, 1, 201)}
    assert all(w % 32 == 0 or w == grain.channels for w in widths) and len(widths) > 2
    close = [0.3] * 4, [0.3 + grain.channel_rate * 3] * 4  # three channels apart: one plan at multiple 32
    assert candidate_key(close[0], grain) == candidate_key(close[1], grain)
    assert candidate_key(close[0], replace(grain, channel_multiple=1)) != candidate_key(close[1], replace(
        grain, channel_multiple=1))


# ---- the bundled SmolLM2, pruned every way a search prunes it (slow) ---------------------------------------------
SEARCHED = [0.1, 0.5, 0.34, 0.2, 0.7, 0.0] * 5
ATTENTION_FREE = [1.0, 0.2, 0.3, 0.9, 0.1, 0.3] * 5  # every sixth layer removed entirely, others without attention


def _zero_mlp(model, layer: int):
    """A layer whose MLP has no channel left but whose attention stays (llama.cpp would skip the whole layer)."""
    mlp = model.model.layers[layer].mlp
    for name in ("gate_proj", "up_proj"):
        setattr(mlp, name, torch.nn.Linear(mlp.gate_proj.in_features, 0, bias=False))
    mlp.down_proj = torch.nn.Linear(0, mlp.down_proj.out_features, bias=mlp.down_proj.bias is not None)
    return model


CASES = {  # name: (rates, reconstruction, outtype, channel multiple, edit)
    "dense": ([0.0] * 30, False, "f32", 1, None),
    "searched+ls": (SEARCHED, "ls", "f16", 1, None),  # the default reconstruction
    "searched+comp": (SEARCHED, True, "f16", 1, None),
    "attention-free+comp": (ATTENTION_FREE, True, "f32", 1, None),
    "mlp-free layer": (SEARCHED, False, "f32", 1, lambda m: _zero_mlp(m, 2)),
    "q8_0": ([0.2] * 30, True, "q8_0", 64, None),  # a usable model: SEARCHED's ppl is ~1,000, where noise grows
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_runs_the_export_as_torch_does(smol, tmp_path, case):
    from selfpruner.core.results.export import build_pruned

    rates, comp, outtype, multiple, edit = CASES[case]
    smol.set_pruning(comp, multiple)
    try:
        model = build_pruned(smol.lm, smol.pruner, rates, dtype=torch.float32, device="cpu")
    finally:
        smol.set_pruning(False)
    if edit:
        model = edit(model)
    rep = write_gguf(model, smol.lm.tokenizer, tmp_path / f"{case}.gguf", source_gguf=smol.lm.gguf_path,
                     outtype=outtype)
    ids = smol.windows("test", 256)[0].tolist()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    a = agreement(llama_cpp_logits(rep.path, ids, kv_f32=outtype == "f32"), ref, ids)
    if outtype == "q8_0":  # quantization noise on top: the logits move a little, the ppl hardly
        assert a["top1"] >= 0.9 and a["corr"] >= 0.998 and abs(a["ppl_ratio"] - 1) < 0.03, a
        assert rep.unquantized == [] and rep.padded_channels == 0  # the search kept multiples of 64
    else:
        assert a["top1"] >= 0.99 and a["corr"] >= 0.9999 and abs(a["ppl_ratio"] - 1) < 0.005, a
    if case == "attention-free+comp":
        assert 0 < rep.kept_bias_groups and rep.heads[0] == 3 and rep.kv_heads[0] == 1
    if case == "mlp-free layer":  # one block of zero channels keeps the layer; every width padded to the export's 64
        assert rep.channels[2] == ALIGN and all(c % ALIGN == 0 for c in rep.channels)
    if case == "dense":
        assert rep.heads == [9] * 30 and rep.channels == [1536] * 30


@pytest.mark.slow
def test_cli_exports_a_session_to_gguf_with_a_modelfile(tmp_path):
    from conftest import cli
    sessions = tmp_path / "s"
    code, stdout, stderr = cli("baseline", "--model", "smollm2", "--method", "flap", "--ratio", "0.3",
                               "--channel-multiple", "64",
            "--seq-len", "256", "--calib-tokens", "4096", "--final-tokens", "512", "--data", "local",
            "--sessions-dir", str(sessions))
    assert code == 0, stderr
    sid = next(sessions.glob("*.db")).stem
    out = tmp_path / "smol-flap.gguf"
    code, stdout, stderr = cli("export", sid, "--out", str(out), "--outtype", "q8_0", "--sessions-dir", str(sessions))
    assert code == 0, stderr
    assert "ollama create NAME -f" in stdout and "note:" not in stdout  # nothing padded: multiples of 64
    assert (tmp_path / "Modelfile").read_text() == "FROM ./smol-flap.gguf\n"
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    assert llm.n_vocab() == 49152
    code, _, stderr = cli("export", sid, "--out", str(out), "--sessions-dir", str(sessions))
    assert code == 2 and "exists" in stderr and len(stderr.strip().splitlines()) == 1
    code, stdout, _ = cli("show", sid, "--json", "--sessions-dir", str(sessions))
    assert "smol-flap.gguf" in stdout


def _slice_mlp(model, keep: int):
    """`model` with each layer's first `keep` MLP channels only (a structured prune, written as a stock model)."""
    from transformers import LlamaForCausalLM
    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "intermediate_size": keep})
    pruned = LlamaForCausalLM(cfg)
    sd = {k: v[:keep] if k.endswith(("gate_proj.weight", "up_proj.weight")) else
          v[:, :keep] if k.endswith("down_proj.weight") else v for k, v in model.state_dict().items()}
    pruned.load_state_dict(sd)
    return pruned.eval()


def test_speed_command_compares_gguf_files_on_llama_cpp(tmp_path, smollm2_tokenizer):
    """`speed PRUNED.gguf --dense MODEL`: the dense model is written as GGUF in the pruned file's type and computes in
    llama.cpp what transformers computes; each row shows its own file, and the pruned row's ratios are its medians
    over the dense row's."""
    from conftest import cli
    dense_dir = _tiny_dir(tmp_path, "llama", smollm2_tokenizer, intermediate_size=1024)
    lm = load_model(str(dense_dir), device="cpu", dtype="float32")
    pruned = write_gguf(_slice_mlp(lm.model, 256), lm.tokenizer, tmp_path / "pruned.gguf", outtype="f16").path
    cache = tmp_path / "cache"  # where the command writes the dense GGUF
    code, stdout, stderr = cli("speed", pruned, "--dense", dense_dir, "--threads", "1", "--repeats", "2",
                               "--prefill-len", "16", "--decode-tokens", "4", env={"SELFPRUNER_CACHE": str(cache)})
    assert code == 0, stderr
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in stdout.splitlines()
            if ln.startswith(("| dense", "| pruned"))]
    assert [r[0] for r in rows] == ["dense", "pruned"] and "1 threads" in stdout
    assert "median of 2 interleaved rounds" in stdout and "ratios vs dense" in stdout
    (dense,) = (cache / "gguf-dense").glob("*.gguf")
    assert dense.name.endswith("-f16.gguf")  # in the pruned file's type
    mib = lambda p: f"{Path(p).stat().st_size / 2**20:.1f}"
    assert [r[1] for r in rows] == [mib(dense), mib(pruned)] and mib(dense) != mib(pruned)
    # the dense GGUF the command ran computes what transformers computes for the dense model
    ids = lm.tokenizer(TEXT).input_ids
    with torch.no_grad():
        ref = lm.model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    a = agreement(llama_cpp_logits(dense, ids), ref, ids)
    assert a["top1"] >= 0.95 and a["corr"] > 0.99999 and abs(a["ppl_ratio"] - 1) < 1e-3, a
    # ratios: each row's median tok/s over the dense row's (1.00 for dense itself), within the printed rounding
    for col, ratio, half in ((3, 5, 0.5), (4, 6, 0.05)):  # prompt (whole tok/s), gen (one decimal)
        d, p = (float(r[col].split()[0]) for r in rows)
        assert rows[0][ratio] == "1.00", rows
        assert abs(float(rows[1][ratio]) - p / d) <= 0.005 + p / d * (half / p + half / d) + 1e-9, rows
    code, _, stderr = cli("speed", str(tmp_path / "missing.gguf"), "--dense", dense)
    assert code == 2 and "not found" in stderr


@pytest.mark.slow
def test_zero_shot_on_a_gguf_export_scores_as_transformers_does(smol, tmp_path):
    """`eval FILE.gguf` runs a per-layer-width export in llama.cpp (transformers cannot read `deci`): each
    (context, continuation) log-likelihood equals lm-eval's HF model's on the same pruned model, so PIQA's choices
    come out the same."""
    from lm_eval.models.huggingface import HFLM

    from selfpruner.core.results.export import build_pruned
    from selfpruner.core.results.llama_cpp_lm import is_pruned_gguf, llama_cpp_lm

    smol.set_pruning("ls")
    try:
        model = build_pruned(smol.lm, smol.pruner, SEARCHED, dtype=torch.float32, device="cpu")
    finally:
        smol.set_pruning(False)
    rep = write_gguf(model, smol.lm.tokenizer, tmp_path / "p.gguf", source_gguf=smol.lm.gguf_path, outtype="f32")
    assert is_pruned_gguf(rep.path) and not is_pruned_gguf(smol.lm.gguf_path)

    class Req:  # what lm-eval hands a model: .args = (context, continuation)
        def __init__(self, *args):
            self.args = args

    items = [json.loads(line) for line in (PIQA / "valid.jsonl").read_text().splitlines()[:6]]
    reqs = [Req(f"Question: {it['goal']}\nAnswer:", f" {it[sol]}") for it in items for sol in ("sol1", "sol2")]
    reqs.append(Req("", "The first words of a text."))  # an empty context starts from end-of-text, as lm-eval does
    engine = llama_cpp_lm(rep.path, n_ctx=256)
    got = engine.loglikelihood(reqs)
    ref = HFLM(pretrained=model, tokenizer=smol.lm.tokenizer, backend="causal", batch_size=1).loglikelihood(reqs)
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got, ref):
        assert abs(lp - lp_ref) < 0.02 * max(1.0, abs(lp_ref)) and greedy == greedy_ref, (got, ref)
    pick = lambda res: [res[i][0] > res[i + 1][0] for i in range(0, 12, 2)]
    assert pick(got) == pick(ref)
    from selfpruner.core.results.lm_eval_bridge import TaskUnavailable
    with pytest.raises(TaskUnavailable, match="--format hf"):  # one line, not a crash inside lm-eval
        engine.generate_until([Req("Question:", {"until": ["\n"]})])
