"""Build and save the physically smaller model for a rate vector.

`export_pruned` applies the rates on the resident model (prefix views, see structured.py), copies every
kept tensor into a fresh contiguous one, puts them into a `selfpruner_<base>` model whose per-layer
projection sizes come from the config (pruned_modeling.py), and saves it with `save_pretrained` plus the
tokenizer. The saved directory loads back offline with

    import selfpruner.core.results.export            # registers the selfpruner_* model types
    AutoModelForCausalLM.from_pretrained(DIR)

or, without selfpruner installed, `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`
(pruned_modeling.py is copied into DIR and named in `auto_map`). The config also records, under the
`selfpruner` key, the rates, per-layer plans, achieved sparsity, source model and the caller's `meta`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..model.models import LoadedModel, ModelArch, decoder_layers, frozen
from ..model.structured import LayerPlan, StructuredPruner, ZeroAttention
from ..plans import Genes
from . import pruned_modeling

pruned_modeling.register()

# Keys of the dense config that must not leak into the pruned one.
_DROP_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path",
              "quantization_config", "selfpruner", "compensation_bias", *pruned_modeling.PER_LAYER_KEYS)


def resident_sizes(model: nn.Module, arch: ModelArch) -> dict[str, list[int]]:
    """Per-layer kept (query heads, KV heads, MLP channels), read from the currently applied weights."""
    heads, kv, chans = [], [], []
    for layer, parts in zip(decoder_layers(model), arch.layers):
        if isinstance(layer.self_attn, ZeroAttention):
            heads.append(0)
            kv.append(0)
        else:
            heads.append(parts.q.weight.shape[0] // arch.head_dim)
            kv.append(parts.k.weight.shape[0] // arch.head_dim)
        chans.append(parts.gate.weight.shape[0])
    return dict(zip(pruned_modeling.PER_LAYER_KEYS, (heads, kv, chans)))


def pruned_config(dense_config, arch: ModelArch, sizes: dict[str, list[int]], record: dict):
    d = {k: v for k, v in dense_config.to_dict().items() if k not in _DROP_KEYS}
    cfg_cls, model_cls = pruned_modeling.classes_for(dense_config.model_type)
    # head_dim is written explicitly: some families derive it from hidden/num_heads otherwise.
    cfg = cfg_cls.from_dict({**d, **sizes, "head_dim": arch.head_dim, "selfpruner": record})
    cfg.architectures = [model_cls.__name__]
    cfg.auto_map = {"AutoConfig": f"pruned_modeling.{cfg_cls.__name__}",
                    "AutoModelForCausalLM": f"pruned_modeling.{model_cls.__name__}"}
    return cfg


def _kept_tensors(model: nn.Module, dtype: torch.dtype | None, device=None) -> dict[str, torch.Tensor]:
    """Contiguous copies of the (prefix-view) state dict, on `device` (None: where each tensor is); tied
    tensors stay one tensor."""
    out, copies = {}, {}
    for name, t in model.state_dict().items():
        key = (t.device, t.data_ptr(), tuple(t.shape), t.stride())
        if key not in copies:
            copies[key] = torch.empty(t.shape, dtype=dtype or t.dtype, device=device or t.device).copy_(t)
        out[name] = copies[key]
    return out


def build_pruned(lm: LoadedModel, pruner: StructuredPruner, rates, *, meta: dict | None = None,
                 dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """The physically pruned model for `rates`, in memory, on `device` (None: each tensor where the resident
    model's is, e.g. spread over GPUs like it). Leaves the resident model restored (dense)."""
    model, arch = lm.model, pruner.arch
    with pruner.applied(rates) as plans:
        sizes = resident_sizes(model, arch)
        record = _record(lm, pruner, rates, plans, meta or {})
        cfg = pruned_config(model.config, arch, sizes, record)
        cfg.compensation_bias = pruner.compensate  # o_proj / down_proj (and empty attention) carry a bias
        state = _kept_tensors(model, dtype, device)
    _, model_cls = pruned_modeling.classes_for(cfg.model_type)
    with torch.device("meta"):  # shapes only; every tensor is assigned below
        new = model_cls(cfg)
    new.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (RoPE frequencies, embedding scale) are not in the state dict.
    # Copy them by name; a buffer of a removed attention block has no counterpart and is skipped.
    new_buffers = dict(new.named_buffers())
    for name, buf in model.named_buffers():
        if name in new_buffers:
            mod_name, _, buf_name = name.rpartition(".")
            new.get_submodule(mod_name)._buffers[buf_name] = buf.detach().to(device or buf.device, copy=True)
    new.tie_weights()
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"export left tensors unset: {left[:5]}")
    new.generation_config = copy.deepcopy(model.generation_config)
    try:
        new.set_attn_implementation(model.config._attn_implementation)
    except (AttributeError, ValueError):
        pass
    return frozen(new)


def _record(lm, pruner: StructuredPruner, rates, plans: list[LayerPlan], meta: dict) -> dict:
    kept = sum(pruner.layer_params(p) for p in plans)
    g = Genes.of(rates, pruner.split)
    rates, attention = g.layers, g.attention
    return {
        "source_model": lm.name,
        "source_fingerprint": lm.fingerprint,
        "dense_arch": pruner.arch.describe(),
        "rates": [round(float(r), 6) for r in rates],
        "mean_rate": round(sum(float(r) for r in rates) / len(rates), 6),
        **({"attention_rates": [round(float(a), 6) for a in attention]} if attention is not None else {}),
        "split": pruner.split,
        "plans": [[p.attn_units, p.channels] for p in plans],
        "compensation": pruner.compensate,
        "reconstruct": pruner.reconstruct,
        "achieved_sparsity": round(pruner.achieved_sparsity(plans), 6),
        "kept_prunable_params": kept,
        "meta": json.loads(json.dumps(meta, default=str)),  # must be JSON: it lives in config.json
    }


def export_pruned(lm: LoadedModel, pruner: StructuredPruner, rates, out_dir, *, meta: dict | None = None,
                  dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Save the pruned model + tokenizer to `out_dir` (written to a temp dir, then renamed). The copy is
    built on the CPU: a GPU holding the resident model need not hold the pruned one beside it."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export directory is not empty: {out} (pass overwrite=True)")
    new = build_pruned(lm, pruner, rates, meta=meta, dtype=dtype, device="cpu")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    new.save_pretrained(tmp)
    if lm.tokenizer is not None:  # an in-memory model (bench/scale.py's random ones) may have none
        lm.tokenizer.save_pretrained(tmp)
    shutil.copy(pruned_modeling.__file__, tmp / "pruned_modeling.py")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def saved_size(path) -> tuple[int, int]:
    """(parameters, bytes) of a saved model directory read from its safetensors headers, without loading a
    tensor (tied tensors are saved, and so counted, once; non-persistent buffers are not saved)."""
    import struct

    params = nbytes = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name != "__metadata__":
                params += math.prod(t["shape"])
                nbytes += t["data_offsets"][1] - t["data_offsets"][0]
    return params, nbytes


def load_pruned(path, *, dtype: str | torch.dtype | None = None, device: str | None = None,
                device_map: str | None = None):
    """(model, tokenizer) of an exported directory (or any HF directory), offline, loaded straight into
    `dtype` (None: the saved one; 'auto': bfloat16 on CUDA, float32 on the CPU) on `device` (None: the CPU;
    'auto': CUDA when visible) or spread by `device_map` over the visible GPUs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..model.models import placement, resolve_device, resolve_dtype

    dev = resolve_device("cuda" if device_map else (device or "cpu"))
    kwargs = {"dtype": resolve_dtype(dtype, dev)} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **placement(dev, device_map))
    return frozen(model), AutoTokenizer.from_pretrained(path)


def is_export_dir(path) -> bool:
    """A directory written by export_pruned (its config names a selfpruner_* model type)."""
    cfg = Path(str(path)).expanduser() / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type", "").startswith(pruned_modeling.PREFIX)
    except (OSError, ValueError):
        return False


def load_any(spec, *, dtype: str | torch.dtype | None = None, device: str | None = None,
             device_map: str | None = None):
    """(model, tokenizer) of an exported directory, or of any model `search` takes by name (smollm2, bundled, a
    GGUF, an HF directory or hub id), so a dense row is one command like the pruned one."""
    from ..model.models import load_model

    if spec is not None and is_export_dir(spec):
        return load_pruned(spec, dtype=dtype, device=device, device_map=device_map)
    lm = load_model(spec, dtype=dtype or "auto", device=device or "cpu", device_map=device_map)
    return lm.model, lm.tokenizer
