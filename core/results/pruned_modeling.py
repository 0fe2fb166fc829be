"""Config + model classes for exported (physically pruned) checkpoints whose layers differ in size.

An exported directory holds a stock-looking checkpoint whose `config.json` says
`"model_type": "selfpruner_<base>"` (e.g. `selfpruner_gemma3_text`, `selfpruner_llama`) and carries three
per-layer lists next to the dense sizes:

    num_attention_heads_per_layer   kept query heads of each layer (0: the attention block is gone)
    num_key_value_heads_per_layer   kept KV heads of each layer
    intermediate_size_per_layer     kept MLP channels of each layer (0 is allowed)

The classes here subclass the stock transformers config/model of the base architecture and change
nothing but the shapes: after the stock `__init__` builds the dense layer stack, `shrink_layers` swaps each
q/k/v/o and gate/up/down projection for one of the kept size and sets the layer's `num_key_value_groups`.
The stock forward passes infer the head count from the projection width (`view(..., -1, head_dim)`), so no
forward code is copied and the checkpoint keeps working as transformers evolves.

Loading (offline, no network needed):
  * with selfpruner installed: `import selfpruner.core.results.pruned_modeling as pm; pm.register()` (done by
    `selfpruner.core.results.export`), then `AutoModelForCausalLM.from_pretrained(DIR)`;
  * without selfpruner: the exporter copies this file into DIR and writes `auto_map`, so
    `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` works with only torch+transformers.
This file must therefore import nothing but torch and transformers.

Limits: the dense `num_attention_heads` / `num_key_value_heads` / `intermediate_size` stay in the config
(head_dim and RoPE depend on them), so code that pre-sizes buffers from them — `StaticCache`, vLLM, GGUF
converters — does not know about the per-layer sizes. The default `DynamicCache` works.
"""
from __future__ import annotations

import warnings

import torch
import transformers
from torch import nn

PER_LAYER_KEYS = ("num_attention_heads_per_layer", "num_key_value_heads_per_layer", "intermediate_size_per_layer")
PREFIX = "selfpruner_"

# base model_type -> (stock config class, stock causal-LM class); all share the
# layers[i].self_attn.{q,k,v,o}_proj / layers[i].mlp.{gate,up,down}_proj layout.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}


class ZeroHeadAttention(nn.Module):
    """An attention block with every head removed: it adds nothing to the residual stream.

    It still appends a one-element-per-token placeholder to the KV cache, because transformers reads the
    cached sequence length from layer 0 (positions and masks would be wrong during generation if that
    layer's cache stayed empty).
    """

    def __init__(self, layer_idx: int, hidden: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        # with bias compensation, the removed heads' mean output (config.compensation_bias)
        self.bias = nn.Parameter(torch.zeros(hidden)) if hidden else None

    def forward(self, hidden_states, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            b, t = hidden_states.shape[:2]
            stub = hidden_states.new_zeros(b, 1, t, 1)
            past_key_values.update(stub, stub, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        return (out if self.bias is None else out + self.bias), None


def _linear(old: nn.Linear, n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
    """A Linear of the new shape on the old one's device/dtype (meta during from_pretrained: no memory);
    `bias` adds one where the checkpoint's has none (bias compensation)."""
    w = old.weight
    with warnings.catch_warnings():  # a fully pruned MLP has 0-channel projections; their init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(n_in, n_out, bias=bias or old.bias is not None, device=w.device, dtype=w.dtype)


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def shrink_layers(model: nn.Module, config) -> None:
    """Resize each decoder layer's projections to the per-layer sizes recorded in `config`."""
    heads, kv_heads, channels = (getattr(config, k) for k in PER_LAYER_KEYS)
    hd = config.head_dim
    layers = _layers(model)
    if not (len(heads) == len(kv_heads) == len(channels) == len(layers)):
        raise ValueError(f"per-layer sizes do not match the {len(layers)} decoder layers")
    comp = bool(getattr(config, "compensation_bias", False))
    for i, layer in enumerate(layers):
        nq, nkv, ch = int(heads[i]), int(kv_heads[i]), int(channels[i])
        attn = layer.self_attn
        if nq == 0:
            layer.self_attn = ZeroHeadAttention(i, attn.o_proj.out_features if comp else None)
        else:
            if nkv == 0 or nq % nkv:
                raise ValueError(f"layer {i}: {nq} query heads cannot share {nkv} KV heads")
            hidden = attn.q_proj.in_features
            attn.q_proj = _linear(attn.q_proj, hidden, nq * hd)
            attn.k_proj = _linear(attn.k_proj, hidden, nkv * hd)
            attn.v_proj = _linear(attn.v_proj, hidden, nkv * hd)
            attn.o_proj = _linear(attn.o_proj, nq * hd, attn.o_proj.out_features, comp)
            attn.num_key_value_groups = nq // nkv
        mlp = layer.mlp
        hidden = mlp.gate_proj.in_features
        mlp.gate_proj = _linear(mlp.gate_proj, hidden, ch)
        mlp.up_proj = _linear(mlp.up_proj, hidden, ch)
        mlp.down_proj = _linear(mlp.down_proj, ch, mlp.down_proj.out_features, comp)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = ch


class _PrunedCausalLM:
    """Mixin placed before the stock causal-LM class: build the dense stack, then shrink it."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        shrink_layers(self, config)


def _make_family(base_type: str, config_name: str, model_name: str):
    base_cfg = getattr(transformers, config_name)
    base_model = getattr(transformers, model_name)
    cfg_cls = type(f"SelfPruner{config_name}", (base_cfg,),
                   {"model_type": PREFIX + base_type, "__module__": __name__})
    model_cls = type(f"SelfPruner{model_name}", (_PrunedCausalLM, base_model),
                     {"config_class": cfg_cls, "__module__": __name__})
    return cfg_cls, model_cls


# Module-level names (SelfPrunerLlamaConfig, SelfPrunerGemma3ForCausalLM, ...) are what `auto_map` points
# at. A family this transformers version lacks is skipped rather than breaking the others.
CLASSES: dict[str, tuple[type, type]] = {}
for _base, (_cfg_name, _model_name) in FAMILIES.items():
    try:
        _pair = _make_family(_base, _cfg_name, _model_name)
    except AttributeError:
        continue
    CLASSES[_base] = _pair
    globals()[_pair[0].__name__] = _pair[0]
    globals()[_pair[1].__name__] = _pair[1]


def classes_for(base_type: str) -> tuple[type, type]:
    """(config class, model class) for a stock model_type such as 'llama' or 'gemma3_text'."""
    base_type = base_type.removeprefix(PREFIX)
    if base_type not in CLASSES:
        raise ValueError(f"cannot export model_type {base_type!r}; supported: {', '.join(CLASSES)}")
    return CLASSES[base_type]


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve the selfpruner_* model types (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for cfg_cls, model_cls in CLASSES.values():
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)
