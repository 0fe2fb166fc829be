"""vLLM model classes for selfpruner exports: per-layer query heads, KV heads and MLP widths.

Stock vLLM sizes every layer from one config value (vllm issue 31454), and its DeciLM/Nemotron-NAS class keeps
the query-head count fixed per layer, so neither holds a model whose layers lost whole GQA groups. These classes
are built only from vLLM's own layers (LlamaAttention takes its head counts per instance), one decoder layer per
exported layer, with that layer's sizes from the export's `*_per_layer` lists (core/results/pruned_modeling.py):
  * a layer with 0 heads has no attention (vLLM divides by the head count) and a layer with 0 channels no MLP;
    where bias compensation left their mean output, that bias is added instead;
  * compensation biases sit on o_proj / down_proj only; Qwen2's q/k/v biases stay on qkv_proj;
  * tied embeddings share the embedding matrix with the LM head.
vLLM imports this module through the registry entry selfpruner's plugin adds (selfpruner/vllm_plugin.py), so it
may import vLLM at the top; nothing else in selfpruner imports it.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.llama import LlamaAttention
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix

from .pruned_modeling import PER_LAYER_KEYS, PREFIX
from .served_families import refusal

STACKED = WeightsMapper(orig_to_new_stacked={
    ".q_proj": (".qkv_proj", "q"), ".k_proj": (".qkv_proj", "k"), ".v_proj": (".qkv_proj", "v"),
    ".gate_proj": (".gate_up_proj", 0), ".up_proj": (".gate_up_proj", 1)})


class BiasOnly(nn.Module):
    """What is left of a removed sublayer under bias compensation: its calibration-mean output."""

    def __init__(self, hidden: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden), requires_grad=False)


class PrunedMLP(nn.Module):
    def __init__(self, hidden: int, channels: int, gate_up_bias: bool, down_bias: bool, prefix: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [channels] * 2, bias=gate_up_bias,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(channels, hidden, bias=down_bias, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x):
        x, _ = self.gate_up_proj(x)
        x, _ = self.down_proj(self.act_fn(x))
        return x


class PrunedDecoderLayer(nn.Module):
    """A LLaMA-layout decoder layer of its own width; residual adds are plain (a skipped sublayer adds nothing
    or its bias), so RMSNorm's fused residual path is not used."""

    def __init__(self, vllm_config: VllmConfig, index: int, prefix: str):
        super().__init__()
        config = vllm_config.model_config.hf_config
        heads, kv_heads, channels = (int(getattr(config, k)[index]) for k in PER_LAYER_KEYS)
        hidden, comp = config.hidden_size, bool(getattr(config, "compensation_bias", False))
        self.input_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        if heads:
            qkv_bias = bool(getattr(config, "attention_bias", False)) or config.model_type == PREFIX + "qwen2"
            self.self_attn = LlamaAttention(
                config=config, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                max_position_embeddings=getattr(config, "max_position_embeddings", 8192),
                quant_config=vllm_config.quant_config, bias=qkv_bias, bias_o_proj=comp,
                cache_config=vllm_config.cache_config, prefix=f"{prefix}.self_attn")
        else:  # named as the HF export names it: self_attn.bias
            self.self_attn = BiasOnly(hidden) if comp else None
        if channels:
            mlp_bias = bool(getattr(config, "mlp_bias", False))
            self.mlp = PrunedMLP(hidden, channels, mlp_bias, comp or mlp_bias, f"{prefix}.mlp")
        else:  # mlp.down_proj.bias, as in the HF export's 0-channel projection
            self.mlp = nn.Module()
            self.mlp.down_proj = BiasOnly(hidden) if comp else None
        self.attends, self.has_mlp = bool(heads), bool(channels)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.attends:
            hidden_states = hidden_states + self.self_attn(positions=positions,
                                                           hidden_states=self.input_layernorm(hidden_states))
        elif self.self_attn is not None:
            hidden_states = hidden_states + self.self_attn.bias
        if self.has_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        elif self.mlp.down_proj is not None:
            hidden_states = hidden_states + self.mlp.down_proj.bias
        return hidden_states


class PrunedModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PrunedDecoderLayer(vllm_config, i, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        h = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        for layer in self.layers:
            h = layer(positions, h)
        return self.norm(h)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # the 0-sized projections of removed sublayers have nothing to load
        return AutoWeightsLoader(self).load_weights(((n, w) for n, w in weights if w.numel()), mapper=STACKED)


def check_servable(config, tp_size: int) -> None:
    """One line where vLLM would serve the export wrong, or cannot split it over `tp_size` GPUs."""
    why = refusal(config.model_type.removeprefix(PREFIX), config)
    if why:
        raise ValueError(f"selfpruner's vLLM plugin cannot serve this export: {why}")
    for i, (h, kv) in enumerate(zip(*(getattr(config, k) for k in PER_LAYER_KEYS[:2]))):
        if h and (h % tp_size or (kv % tp_size if kv >= tp_size else tp_size % kv)):
            raise ValueError(f"layer {i} keeps {h} query / {kv} KV heads, which tensor parallelism over {tp_size} "
                             f"GPUs cannot split: serve it with --tensor-parallel-size 1 (or a size dividing them)")


class SelfPrunerForCausalLM(nn.Module):
    """Every exported family vLLM can serve with LLaMA's layers (LLaMA/SmolLM2, Mistral, Qwen2)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        check_servable(config, get_tensor_model_parallel_world_size())
        self.config = config
        self.model = PrunedModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # a tied head is the embedding (vLLM's loader skips the second name of one parameter)
        return AutoWeightsLoader(self).load_weights(weights)
