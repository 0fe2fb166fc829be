"""A physically pruned LLaMA-family model as one GGUF file that llama.cpp, llama-server and Ollama run.

llama.cpp's `deci` architecture (written for Llama-3.1-Nemotron-51B) reads the head count, KV-head count and MLP
size of every layer from per-layer arrays, so it runs a model whose layers differ in width without any change
(../shared/DESIGN.md §6). Tensors keep the names and order of a LLaMA GGUF; q/k rows go into llama.cpp's
interleaved rotary order (whole heads are kept, so the permutation stays within a head). Bias compensation goes
into `attn_output.bias` / `ffn_down.bias`, which the graph applies; `mlp_bias` models' gate/up biases into
`ffn_gate.bias` / `ffn_up.bias`, which it applies too. Every parameter of the model must land in some tensor, else the
export is refused naming it (a family with a tensor deci has no place for cannot export silently wrong).

Where llama.cpp's graph would silently differ from the torch model, the file is written so that it does not,
exactly (zero weights add nothing):
  * a layer with 0 MLP channels: llama.cpp skips the whole layer (attention included), so a few zero channels
    are kept (gate/up rows and down columns of zeros);
  * a removed attention block that carries a compensation bias: llama.cpp's attention-free layer adds nothing,
    so one KV group with zero weights is kept and its output projection carries the bias; layer 0 keeps one such
    group always (llama.cpp refuses a file whose first layer has no heads);
  * MLP widths are padded with zero channels to a multiple of 64 (`align`; 1 writes them as they are): llama.cpp
    runs other widths far slower (prompts below multiples of 32, generation below multiples of 64), and Q8_0 needs
    its blocks of 32 along a row; any other tensor whose rows do not fit stays F16, and the report says so;
  * padded embeddings (Qwen2's vocab_size exceeds its tokenizer's ids): the token list is padded with UNUSED
    `[PAD{i}]` tokens to the embedding's rows, as llama.cpp's converter does (llama.cpp requires they agree).
Sliding-window attention (Mistral v0.1) is refused: deci attends to the whole context.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:  # torch and numpy load when a file is written, not when the CLI names the choices below
    import torch
    from torch import nn

FORMATS = ("hf", "gguf")  # what `selfpruner export` writes
RECORD_KEY = "selfpruner.record"
ARCH = "deci"
# Families of pruned_modeling.FAMILIES (the one table of what the pruner builds) whose layers deci's graph does not
# compute; every other family there is written as LLaMA's layers, guarded by the activation check and the
# tensor coverage check of write_gguf.
NOT_DECI = {"qwen3": "per-head q/k norms", "gemma3_text": "Gemma's norms, scaled embeddings and GELU"}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32
# MLP widths are padded (zero channels, exact) to a multiple of this by default: llama.cpp runs other widths far
# slower, prompts below multiples of 32 (SmolLM2's FLAP widths at β 0.3 on 2 threads: 0.89x dense unpadded, 1.28x
# padded to 32) and generation below multiples of 64 (every layer at 1,056 or 1,120 channels generated at 1.00-1.02x
# dense where 1,024 and 1,088 gave 1.18-1.19x; bench/RESULTS.md, issue 40)
ALIGN = 64


class GgufExportError(UserError):
    """A model or tokenizer this writer cannot put into a GGUF llama.cpp runs correctly; one line."""


@dataclass
class GgufReport:
    path: str
    outtype: str
    heads: list = field(default_factory=list)  # per layer, as written
    kv_heads: list = field(default_factory=list)
    channels: list = field(default_factory=list)
    padded_channels: int = 0  # zero channels added (empty MLPs, quantization blocks)
    kept_bias_groups: int = 0  # zero KV groups kept to carry an empty attention's bias (and in an empty layer 0)
    unquantized: list = field(default_factory=list)  # tensors left in F16 under q8_0
    tokenizer: str = ""  # where the vocabulary came from
    bytes: int = 0


def _qtype(outtype: str):
    import gguf
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]


def _file_type(outtype: str) -> int:
    import gguf
    t = gguf.LlamaFileType
    return {"f32": t.ALL_F32, "f16": t.MOSTLY_F16, "bf16": t.MOSTLY_BF16, "q8_0": t.MOSTLY_Q8_0}[outtype]


def rotary_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half row order of q/k (weights or biases) -> llama.cpp's pairwise order, head by head."""
    if n_heads == 0:
        return w
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _rope(config) -> dict:
    """RoPE settings: transformers 5 keeps them in rope_parameters (theta included), older ones in rope_scaling."""
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def gguf_families() -> tuple[str, ...]:
    """The stock model types written as deci GGUF (imported late: pruned_modeling loads torch)."""
    from .pruned_modeling import FAMILIES
    return tuple(f for f in FAMILIES if f not in NOT_DECI)


def _sliding_window(config) -> int | None:
    """The attention window the torch model applies to some layer (None: full attention everywhere)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):  # Qwen2's off by default
        return None
    return int(window)


def check_exportable(config, context_length: int | None = None) -> str:
    """The stock model type of a (pruned or dense) config, or a one-line refusal. `context_length`: the one the
    file will declare (default max_position_embeddings)."""
    base = config.model_type.removeprefix("selfpruner_")
    families = gguf_families()
    if base not in families:
        why = f"; {base}'s layers have {NOT_DECI[base]}" if base in NOT_DECI else ""
        raise GgufExportError(
            f"cannot write {base} as GGUF with per-layer widths: llama.cpp's {base} graph takes one head count and "
            f"one MLP size for every layer (only its deci graph reads per-layer arrays, and it runs LLaMA-family "
            f"layers: {', '.join(families)}{why}); export --format hf instead")
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise GgufExportError(f"cannot write an MLP with activation {act!r} to GGUF (deci's graph applies SiLU); "
                              f"export --format hf instead")
    kind = _rope(config).get("rope_type", _rope(config).get("type", "default"))
    if kind not in ("default", "linear"):
        raise GgufExportError(f"cannot write RoPE scaling {kind!r} to GGUF yet (default and linear are written); "
                              f"export --format hf instead")
    window = _sliding_window(config)
    ctx = int(context_length or getattr(config, "max_position_embeddings", 4096))
    if window is not None and window < ctx:
        raise GgufExportError(f"cannot write sliding-window attention (window {window} < context {ctx}) to GGUF: "
                              f"llama.cpp's deci graph attends to the whole context; export --format hf instead")
    return base


class _Writer:
    """Collects tensors in the file's dtype; norms and biases stay F32 as llama.cpp's converter writes them.
    `covered` holds the ids of the model parameters written (or known to add nothing), for the coverage check."""

    def __init__(self, gw, outtype: str, report: GgufReport):
        self.gw, self.outtype, self.report = gw, outtype, report
        self.covered: set[int] = set()

    def add(self, name: str, t: torch.Tensor, src: torch.Tensor | None = None) -> None:
        """Write `t` as `name`; `src`: the parameter it was made from (default `t` itself)."""
        import gguf
        import numpy as np
        import torch

        self.covered.add(id(t if src is None else src))
        data = t.detach().to("cpu", torch.float32).contiguous().numpy()
        if data.ndim == 1 or self.outtype == "f32":
            self.gw.add_tensor(name, data)
            return
        qtype = _qtype(self.outtype)
        if self.outtype == "q8_0" and data.shape[-1] % Q8_BLOCK:
            qtype = gguf.GGMLQuantizationType.F16  # as llama.cpp's quantizer falls back
            self.report.unquantized.append(name)
        if qtype == gguf.GGMLQuantizationType.F16:
            self.gw.add_tensor(name, data.astype(np.float16))
        else:
            self.gw.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)  # shape from the bytes


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    import torch

    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])]) if rows > w.shape[0] else w


def _layer_tensors(layer: nn.Module, i: int, group: int, hd: int, multiple: int, w: _Writer) -> None:
    """One decoder layer's tensors (and its widths into the report), with the exact fixes of the module doc."""
    import torch

    p = f"blk.{i}."
    attn, mlp = layer.self_attn, layer.mlp
    bias_only = getattr(attn, "bias", None) if not hasattr(attn, "q_proj") else None
    if hasattr(attn, "q_proj"):
        nq, nkv = attn.q_proj.out_features // hd, attn.k_proj.out_features // hd
        q, k, v, o = (m.weight for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        biases = {n: getattr(attn, f"{n}_proj").bias for n in "qkvo"}
    elif (bias_only is not None and bool(bias_only.detach().abs().max() > 0)) or i == 0:
        # one zero KV group whose output projection carries the bias; in layer 0 also without one, since llama.cpp
        # derives the head size from layer 0's head count and refuses the file when it is 0
        nq, nkv = group, 1
        hidden = layer.post_attention_layernorm.weight.shape[0]
        q = torch.zeros(nq * hd, hidden)
        k = v = torch.zeros(hd, hidden)
        o = torch.zeros(hidden, nq * hd)
        biases = {"q": None, "k": None, "v": None, "o": bias_only}
        w.report.kept_bias_groups += 1
        if bias_only is not None:
            w.covered.add(id(bias_only))
    else:
        nq = nkv = 0
        if bias_only is not None:
            w.covered.add(id(bias_only))  # all zeros: the attention-free layer adds the same nothing
    if nq:
        w.add(p + "attn_norm.weight", layer.input_layernorm.weight)
        w.add(p + "attn_q.weight", rotary_interleave(q, nq), q)
        w.add(p + "attn_k.weight", rotary_interleave(k, nkv), k)
        w.add(p + "attn_v.weight", v)
        w.add(p + "attn_output.weight", o)
        for n, name, heads in (("q", "attn_q", nq), ("k", "attn_k", nkv), ("v", "attn_v", 0), ("o", "attn_output", 0)):
            if biases[n] is not None:
                w.add(p + name + ".bias", rotary_interleave(biases[n], heads), biases[n])
    else:
        w.covered.add(id(layer.input_layernorm.weight))  # it normalises only the input of the removed attention
    ch = mlp.gate_proj.out_features
    width = max(multiple, -(-ch // multiple) * multiple)  # at least one block: 0 channels would skip the layer
    w.report.padded_channels += width - ch
    w.add(p + "ffn_norm.weight", layer.post_attention_layernorm.weight)
    for proj, name in ((mlp.gate_proj, "ffn_gate"), (mlp.up_proj, "ffn_up")):
        w.add(p + name + ".weight", _pad_rows(proj.weight, width), proj.weight)
        if proj.bias is not None:  # mlp_bias; padded channels stay silent: up's zero row makes their product 0
            w.add(p + name + ".bias", _pad_rows(proj.bias, width), proj.bias)
    w.add(p + "ffn_down.weight", _pad_rows(mlp.down_proj.weight.T, width).T, mlp.down_proj.weight)
    if mlp.down_proj.bias is not None:
        w.add(p + "ffn_down.bias", mlp.down_proj.bias)
    w.report.heads.append(nq)
    w.report.kv_heads.append(nkv)
    w.report.channels.append(width)


def write_gguf(model: nn.Module, tokenizer, out: str | Path, *, source_gguf: str | Path | None = None,
               outtype: str = "f16", name: str | None = None, context_length: int | None = None,
               align: int = ALIGN) -> GgufReport:
    """Write `model` (a physically pruned selfpruner_* model, or a dense stock one) to `out` as a deci GGUF.
    The vocabulary is copied from `source_gguf` when the model came from one, else built from `tokenizer`. MLP
    widths are padded with zero channels to a multiple of `align` (and of Q8_0's block)."""
    import gguf

    if outtype not in OUTTYPES:
        raise GgufExportError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    if align < 1:
        raise GgufExportError(f"--align must be at least 1, got {align}")
    cfg = model.config
    check_exportable(cfg, context_length)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    inner = model.model
    head = model.get_output_embeddings()
    n_vocab = inner.embed_tokens.weight.shape[0]  # llama.cpp sizes token_embd and output by the token count
    if head is not None and head.weight.shape[0] != n_vocab:
        raise GgufExportError(f"the output head has {head.weight.shape[0]} rows but the embedding {n_vocab}; "
                              f"llama.cpp needs them equal")
    vocab_keys = gguf_vocab(source_gguf, n_vocab) if source_gguf else hf_vocab(tokenizer, n_vocab)  # refuse first
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    report = GgufReport(str(out), outtype, tokenizer=f"copied from {Path(source_gguf).name}" if source_gguf
                        else "built from the HF tokenizer")
    gw = gguf.GGUFWriter(tmp, ARCH)
    w = _Writer(gw, outtype, report)
    w.add("token_embd.weight", inner.embed_tokens.weight)
    multiple = math.lcm(align, Q8_BLOCK if outtype == "q8_0" else 1)
    for i, layer in enumerate(inner.layers):
        _layer_tensors(layer, i, group, hd, multiple, w)
    w.add("output_norm.weight", inner.norm.weight)
    if head is not None and head.weight.data_ptr() != inner.embed_tokens.weight.data_ptr():
        w.add("output.weight", head.weight)  # absent: llama.cpp ties the output to token_embd
    missed = [n for n, prm in model.named_parameters() if id(prm) not in w.covered]
    if missed:
        gw.close()
        tmp.unlink(missing_ok=True)
        raise GgufExportError(f"{missed[0]} has no place in a deci GGUF (llama.cpp would run the model without it"
                              f"{f', nor {len(missed) - 1} more' if len(missed) > 1 else ''}); "
                              f"export --format hf instead")

    gw.add_name(name or out.stem)
    gw.add_file_type(_file_type(outtype))
    if outtype == "q8_0":
        gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    gw.add_block_count(len(inner.layers))
    gw.add_context_length(int(context_length or getattr(cfg, "max_position_embeddings", 4096)))
    gw.add_embedding_length(cfg.hidden_size)
    gw.add_feed_forward_length(report.channels)
    gw.add_head_count(report.heads)
    gw.add_head_count_kv(report.kv_heads)
    gw.add_key_length(hd)  # per-layer head counts: llama.cpp cannot derive head_dim from them
    gw.add_value_length(hd)
    gw.add_rope_dimension_count(hd)
    scaling = _rope(cfg)
    gw.add_rope_freq_base(float(scaling.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        gw.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        gw.add_rope_scaling_factor(float(scaling["factor"]))
    gw.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    gw.add_vocab_size(n_vocab)
    record = getattr(cfg, "selfpruner", None)
    if record:  # rates, plans, source and session, as an HF export keeps them in config.json; llama.cpp ignores it
        gw.add_string(RECORD_KEY, json.dumps(record))
    for key, (value, vtype, sub) in vocab_keys.items():
        gw.add_key_value(key, value, vtype, sub_type=sub)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    tmp.replace(out)
    report.bytes = out.stat().st_size
    return report


# ---- the vocabulary --------------------------------------------------------------------------------------------
def gguf_vocab(path: str | Path, n_vocab: int | None = None) -> dict:
    """Every tokenizer.* key of a GGUF file, with its stored type: {key: (value, type, array element type)};
    `n_vocab`: the embedding rows its token list must match."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    keys = {}
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = f.types[0]
        sub = f.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        keys[key] = (f.contents(), main, sub)
    if "tokenizer.ggml.model" not in keys:
        raise GgufExportError(f"{Path(path).name} holds no tokenizer to copy")
    tokens = keys.get("tokenizer.ggml.tokens", ([],))[0]
    if n_vocab is not None and len(tokens) != n_vocab:
        raise GgufExportError(f"{Path(path).name} holds {len(tokens)} tokens but the model's embedding has "
                              f"{n_vocab} rows; llama.cpp needs them equal")
    return keys


# llama.cpp's pre-tokenizer names for the byte-level BPE pre-tokenizers recognised in a tokenizer.json, by the
# pattern each splits text with before BPE. Others are refused rather than written with a wrong split.
_GPT2_SPLIT = "ByteLevel(use_regex)"
_BYTES = "ByteLevel"  # bytes to symbols only, the split done before it
# The split patterns of LLaMA-3's and Qwen2's tokenizer.json (they differ in how digits group).
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {
    (_GPT2_SPLIT,): "gpt-2",
    ("Digits(individual)", _GPT2_SPLIT): "smollm",  # SmolLM's own tokenizer.json
    ("Split:" + _LLAMA3_RE, _BYTES): "llama-bpe",
    ("Split:" + _QWEN2_RE, _BYTES): "qwen2",
}
NORMALIZERS = (None, {"type": "NFC"})  # llama.cpp normalises nothing; NFC leaves ordinary text as it is


def _pre_tokenizer_shape(pre: dict | None) -> tuple:
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    shape = []
    for s in steps:
        if s["type"] == "ByteLevel" and not s.get("add_prefix_space", False):
            shape.append(_GPT2_SPLIT if s.get("use_regex", True) else _BYTES)
        elif s["type"] == "Split" and s.get("behavior") == "Isolated" and not s.get("invert"):
            shape.append("Split:" + s["pattern"].get("Regex", ""))
        elif s["type"] == "Digits" and s.get("individual_digits"):
            shape.append("Digits(individual)")
        else:
            shape.append(json.dumps(s, sort_keys=True)[:80])
    return tuple(shape)


def hf_vocab(tokenizer, n_vocab: int | None = None) -> dict:
    """The tokenizer.* keys for an HF fast tokenizer of the byte-level BPE families llama.cpp knows (GPT-2's split,
    SmolLM's, LLaMA-3's, Qwen2's), built with the gguf package's vocabulary support; other tokenizers are refused
    in one line. `n_vocab`: the embedding's rows; the token list is padded with UNUSED `[PAD{i}]` tokens to it."""
    import gguf

    with tempfile.TemporaryDirectory() as d:
        try:
            tokenizer.save_pretrained(d)
        except (AttributeError, OSError, TypeError) as e:
            raise GgufExportError(f"cannot read the model's tokenizer for GGUF: {e}") from None
        path = Path(d)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise GgufExportError("the model's tokenizer has no tokenizer.json (a slow tokenizer); export the GGUF "
                                  "from a GGUF source, or use llama.cpp's convert_hf_to_gguf.py on --format hf")
        spec = json.loads(tj.read_text(encoding="utf-8"))
        model = spec["model"]
        decoder = (spec.get("decoder") or {}).get("type")
        if model["type"] != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
            raise GgufExportError(f"GGUF export builds byte-level BPE vocabularies only; this tokenizer is "
                                  f"{model['type']}{' with byte fallback' if model.get('byte_fallback') else ''} "
                                  f"(SentencePiece-style): export from a GGUF source or convert --format hf with "
                                  f"llama.cpp's convert_hf_to_gguf.py")
        shape = _pre_tokenizer_shape(spec.get("pre_tokenizer"))
        pre = PRE_TOKENIZERS.get(shape)
        if pre is None or spec.get("normalizer") not in NORMALIZERS:
            raise GgufExportError(f"GGUF export does not know this tokenizer's pre-tokenizer {list(shape)} "
                                  f"(known: those of GPT-2, SmolLM, LLaMA-3 and Qwen2); export from a GGUF source or "
                                  f"convert "
                                  f"--format hf with llama.cpp's convert_hf_to_gguf.py")
        added = {a["id"]: a for a in spec.get("added_tokens", [])}
        by_id = {i: t for t, i in model["vocab"].items()} | {i: a["content"] for i, a in added.items()}
        n = max(by_id) + 1
        if n_vocab is not None and n > n_vocab:
            raise GgufExportError(f"the tokenizer has ids up to {n - 1} but the model's embedding only {n_vocab} "
                                  f"rows")
        n = max(n, n_vocab or 0)
        tokens, types = [], []
        for i in range(n):
            a = added.get(i)
            tokens.append(by_id.get(i, f"[PAD{i}]"))
            types.append(gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL if a is None
                         else gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
        keys = {
            "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING, None),
            "tokenizer.ggml.pre": (pre, gguf.GGUFValueType.STRING, None),
            "tokenizer.ggml.tokens": (tokens, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING),
            "tokenizer.ggml.token_type": ([int(t) for t in types], gguf.GGUFValueType.ARRAY,
                                          gguf.GGUFValueType.INT32),
        }
        scratch = gguf.GGUFWriter(None, ARCH)  # catches the keys SpecialVocab writes: merges, special ids, template
        gguf.SpecialVocab(path, load_merges=True, n_vocab=n).add_to_gguf(scratch, quiet=True)
        keys |= {k: (v.value, v.type, v.sub_type) for k, v in scratch.kv_data[0].items()}
    return keys


def write_modelfile(gguf_path: str | Path) -> Path:
    """Ollama's Modelfile beside the GGUF (`ollama create NAME -f Modelfile`); the chat template comes from the
    GGUF's tokenizer.chat_template."""
    p = Path(gguf_path)
    mf = p.with_name("Modelfile")
    mf.write_text(f"FROM ./{p.name}\n", encoding="utf-8")
    return mf


def gguf_record(path: str | Path) -> dict:
    """The selfpruner record a GGUF export carries ({} for any other GGUF)."""
    import gguf

    f = gguf.GGUFReader(str(path)).fields.get(RECORD_KEY)
    return json.loads(f.contents()) if f is not None else {}


def gguf_outtype(path: str | Path) -> str:
    """f32 | f16 | bf16 | q8_0 from a GGUF's general.file_type (f16 when it says something else)."""
    import gguf

    f = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    kinds = {int(_file_type(o)): o for o in OUTTYPES}
    return kinds.get(int(f.contents()) if f is not None else -1, "f16")
