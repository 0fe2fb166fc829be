"""GGUF export of the LLaMA-layer families beyond the bundled SmolLM2: tiny random models with a byte-level BPE
tokenizer of 300 ids, dense and pruned to per-layer widths, run by llama.cpp as transformers runs them: mlp_bias
(gate/up biases), Qwen2's padded embeddings (vocab_size above the tokenizer's ids, q/k/v biases, tied head);
what the deci graph cannot compute (a sliding window, a parameter with no tensor) is refused in one line."""
import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from test_gguf_export import agreement, llama_cpp_logits

from selfpruner.core.results import pruned_modeling as pm
from selfpruner.core.results.gguf_export import NOT_DECI, GgufExportError, check_exportable, gguf_families, write_gguf

TEXT = "the quick brown fox jumps over the lazy dog, hello world! <|im_start|>apples 123"
TOKENIZER_IDS = 300


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """GPT-2-style byte-level BPE: 256 byte symbols, merges of a few words, 2 special tokens = 300 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for piece, _ in split.pre_tokenize_str(TEXT + " the lazy fox jumps over brown apples"):
        cur = piece[0]
        for ch in piece[1:]:
            if cur + ch not in vocab and len(vocab) < TOKENIZER_IDS - 2:
                vocab[cur + ch] = len(vocab)
                merges.append((cur, ch))
            cur += ch
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer, tok.decoder = split, decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>"])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert len(out) == TOKENIZER_IDS
    return out


PRUNED = {"num_attention_heads_per_layer": [2, 0], "num_key_value_heads_per_layer": [1, 0],
          "intermediate_size_per_layer": [37, 50]}  # odd widths; layer 1 without attention


def tiny(kind: str, vocab: int, pruned: bool = False, **extra):
    """A random 2-layer model of `kind`, as a stock class or (pruned) selfpruner_<kind> with per-layer widths;
    every bias it has is drawn large enough to matter."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    kw = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
          "tie_word_embeddings": kind == "qwen2"} | extra
    cfg_cls, model_cls = pm.classes_for(kind) if pruned else {
        "llama": (LlamaConfig, "LlamaForCausalLM"), "mistral": (MistralConfig, "MistralForCausalLM"),
        "qwen2": (Qwen2Config, "Qwen2ForCausalLM")}[kind]
    if isinstance(model_cls, str):
        import transformers
        model_cls = getattr(transformers, model_cls)
    torch.manual_seed(0)
    shape = PRUNED | {"head_dim": 16} if pruned else {}
    model = model_cls(cfg_cls(**(shape | kw)))  # as export writes it
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model.eval().requires_grad_(False)


def round_trip(model, tokenizer, path, outtype="f32", align=1):
    """Written as the model's widths are (align=1) unless a test asks for padding."""
    rep = write_gguf(model, tokenizer, path, outtype=outtype, align=align)
    ids = tokenizer(TEXT).input_ids
    llm = llama_cpp.Llama(model_path=rep.path, n_ctx=64, vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    got = llama_cpp_logits(rep.path, ids, kv_f32=True)
    assert got.shape == ref.shape
    return rep, got, ref, ids


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_mlp_bias_gate_and_up_biases_are_written_and_applied(tmp_path, bpe_tokenizer, pruned):
    """LLaMA with mlp_bias: without ffn_gate.bias / ffn_up.bias llama.cpp computed other logits (here by 0.03)."""
    model = tiny("llama", TOKENIZER_IDS, pruned, mlp_bias=True)
    rep, got, ref, _ = round_trip(model, bpe_tokenizer, tmp_path / "m.gguf")
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()
    from gguf import GGUFReader
    names = {t.name for t in GGUFReader(rep.path).tensors}
    assert {"blk.0.ffn_gate.bias", "blk.0.ffn_up.bias", "blk.1.ffn_gate.bias", "blk.1.ffn_up.bias"} <= names
    if pruned:
        assert rep.heads == [2, 0] and rep.channels == [37, 50]


def test_default_alignment_pads_mlp_widths_to_64_and_changes_no_logit(tmp_path, bpe_tokenizer):
    """write_gguf's default align (64, what llama.cpp's kernels run fast) pads 37 and 50 channels to 64 with zero
    channels, mlp biases included; f32 logits stay those of the unpadded model."""
    from selfpruner.core.results.gguf_export import ALIGN
    model = tiny("llama", TOKENIZER_IDS, True, mlp_bias=True)
    rep, got, ref, _ = round_trip(model, bpe_tokenizer, tmp_path / "a.gguf", align=ALIGN)
    assert ALIGN == 64 and rep.channels == [64, 64] and rep.padded_channels == 27 + 14
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()


def test_an_attention_free_first_layer_loads_and_computes_alike(tmp_path, bpe_tokenizer):
    """llama.cpp takes the head size from layer 0 and refused a file whose first layer had no heads: that layer
    keeps one zero KV group (exact: zero queries, keys, values and output add nothing)."""
    from selfpruner.core.results.pruned_modeling import PER_LAYER_KEYS
    model = tiny("llama", TOKENIZER_IDS, True, **dict(zip(PER_LAYER_KEYS, ([0, 4], [0, 2], [37, 50]))))
    rep, got, ref, _ = round_trip(model, bpe_tokenizer, tmp_path / "f.gguf")
    assert rep.heads == [2, 4] and rep.kv_heads == [1, 2] and rep.kept_bias_groups == 1
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()


def test_mlp_bias_with_padded_channels_under_q8_0(tmp_path, bpe_tokenizer):
    """q8_0 pads 37 and 50 channels to 64: the padded gate/up biases are zero, so the padding adds nothing."""
    model = tiny("llama", TOKENIZER_IDS, True, mlp_bias=True)
    rep, got, ref, ids = round_trip(model, bpe_tokenizer, tmp_path / "q.gguf", outtype="q8_0")
    assert rep.channels == [64, 64] and rep.padded_channels == 27 + 14
    a = agreement(got, ref, ids)
    assert a["corr"] > 0.999 and abs(a["ppl_ratio"] - 1) < 0.01, a


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_qwen2_padded_embeddings_load_and_compute_alike(tmp_path, bpe_tokenizer, pruned):
    """vocab_size 320 over a 300-id tokenizer (as every Qwen2 checkpoint pads): the token list is padded with
    UNUSED [PAD i] tokens to the embedding's rows, llama.cpp loads the file and all 320 logits agree."""
    from gguf import GGUFReader, TokenType
    model = tiny("qwen2", 320, pruned)
    rep, got, ref, _ = round_trip(model, bpe_tokenizer, tmp_path / "q.gguf")
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()
    f = GGUFReader(rep.path).fields
    tokens, types = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == 320 and tokens[TOKENIZER_IDS:] == [f"[PAD{i}]" for i in range(TOKENIZER_IDS, 320)]
    assert set(types[TOKENIZER_IDS:]) == {int(TokenType.UNUSED)} and f["deci.vocab_size"].contents() == 320


def test_mistral_without_a_window_round_trips(tmp_path, bpe_tokenizer):
    model = tiny("mistral", TOKENIZER_IDS, sliding_window=None)
    _, got, ref, _ = round_trip(model, bpe_tokenizer, tmp_path / "m.gguf")
    assert np.abs(got - ref).max() < 1e-3


def test_a_sliding_window_shorter_than_the_context_is_refused(tmp_path, bpe_tokenizer):
    from transformers import MistralConfig, Qwen2Config
    model = tiny("mistral", TOKENIZER_IDS, sliding_window=16)
    with pytest.raises(GgufExportError, match=r"sliding-window attention \(window 16 < context 256\)") as e:
        write_gguf(model, bpe_tokenizer, tmp_path / "w.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "w.gguf").exists()
    assert check_exportable(model.config, context_length=16) == "mistral"  # the window spans the whole context
    assert check_exportable(MistralConfig(sliding_window=None)) == "mistral"
    assert check_exportable(Qwen2Config(sliding_window=16)) == "qwen2"  # use_sliding_window=False: not applied
    with pytest.raises(GgufExportError, match="window 16"):
        check_exportable(Qwen2Config(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                     num_hidden_layers=2))


def test_a_parameter_without_a_gguf_tensor_is_refused_naming_it(tmp_path, bpe_tokenizer):
    """A family whose layers carry a tensor the writer does not place (here an extra one on a LLaMA layer) is
    refused, not written without it."""
    model = tiny("llama", TOKENIZER_IDS)
    model.model.layers[1].self_attn.q_norm = torch.nn.LayerNorm(16)
    with pytest.raises(GgufExportError, match=r"model\.layers\.1\.self_attn\.q_norm\.weight has no place.*1 more") \
            as e:
        write_gguf(model, bpe_tokenizer, tmp_path / "x.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.iterdir())  # nor its temporary file


def test_one_family_table_and_what_it_refuses(tmp_path, bpe_tokenizer):
    from transformers import LlamaConfig, Qwen3Config
    assert gguf_families() == ("llama", "mistral", "qwen2")
    assert set(gguf_families()) | set(NOT_DECI) == set(pm.FAMILIES)
    with pytest.raises(GgufExportError, match="qwen3.*per-layer arrays.*q/k norms"):
        check_exportable(Qwen3Config(num_hidden_layers=1))
    with pytest.raises(GgufExportError, match="activation 'gelu'"):
        check_exportable(LlamaConfig(hidden_act="gelu"))
    with pytest.raises(GgufExportError, match="ids up to 299 but the model's embedding only 280 rows"):
        write_gguf(tiny("llama", 280), bpe_tokenizer, tmp_path / "s.gguf")


def test_a_llama_cpp_cost_table_is_measured_with_probe_ggufs(tmp_path, bpe_tokenizer):
    """The llama.cpp engine of `cost-table`: probe models of the tiny LLaMA's shape written as GGUFs (widths padded
    as the export pads them) and timed against the dense shape; the table covers every unit count and probed width,
    and a random allocation's prediction stands beside its measurement."""
    from selfpruner.core.cost_table import Workload
    from selfpruner.core.model.models import LoadedModel
    from selfpruner.core.results.cost_probes import check_table, measure_table
    lm = LoadedModel.wrap(tiny("llama", TOKENIZER_IDS), "tiny", tokenizer=bpe_tokenizer)
    t = measure_table(lm, "llama-cpp", Workload(prompt_len=16, decode_tokens=2, threads=1), rounds=1, points=2)
    assert t.units == [0, 1, 2] and t.widths == [0, 64, 96] and t.pad_to == 64 and t.env["probes"] == 2 + 2
    assert t.dense["prompt"] > 0 and t.dense["token"] > 0 and "llama.cpp" in t.env["engine"]
    assert t.run_width(37) == 64 and t.run_width(90) == 96  # padded as the export pads, never past the dense width
    (c,) = check_table(lm, t, 1, rounds=1)
    assert c["measured"]["mix"] > 0 and c["predicted"]["mix"] > 0 and len(c["plans"]) == 2
