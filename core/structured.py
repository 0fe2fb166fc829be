"""Structured (head / KV-group / MLP-channel) pruning with Wanda-sp scores on one resident model.

Trick that makes fitness cheap: once, we permute every layer's attention units and MLP channels into
descending score order. The permutation does not change the model's function, and afterwards "remove the
r lowest-scoring units" is "keep a prefix", so applying any rate vector only swaps each projection's
weight for a narrow() view of the full tensor — no copy, no reload, and the forward pass really runs on
the smaller matrices. `restore()` puts the full views back.

Rates → removed counts: attention units (KV groups, or query heads under MQA) are coarse, so a layer
removes round(p·units) of them and then exactly as many MLP channels as are needed for the layer to lose
p of its prunable attention+MLP parameters.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .calibration import CalibrationStats
from .models import ModelArch, decoder_layers


@dataclass(frozen=True)
class LayerPlan:
    attn_units: int  # kept attention units (KV groups, or query heads under MQA)
    channels: int  # kept MLP channels


class ZeroAttention(nn.Module):
    """Stands in for an attention block whose every head was removed."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def wanda_sp_scores(arch: ModelArch, stats: CalibrationStats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: attention-unit scores [n_units] and MLP-channel scores [intermediate].

    Column score s_j = sum_r |W_rj| * ||X_j||; a head sums its o_proj columns, a KV group its heads.
    """
    unit_scores, chan_scores = [], []
    for i, parts in enumerate(arch.layers):
        col = parts.o.weight.detach().abs().sum(0) * stats.norm(i, "o_in")
        per_head = col.view(arch.n_heads, arch.head_dim).sum(1)
        unit_scores.append(per_head.view(arch.n_attn_units, arch.q_heads_per_unit).sum(1))
        chan_scores.append(parts.down.weight.detach().abs().sum(0) * stats.norm(i, "down_in"))
    return unit_scores, chan_scores


def _rows(w: torch.Tensor, perm: torch.Tensor, block: int) -> torch.Tensor:
    """Reorder w's rows in blocks of `block` rows."""
    return w.view(-1, block, *w.shape[1:])[perm].reshape(w.shape)


def _permute_layer(arch: ModelArch, i: int, unit_perm: torch.Tensor, chan_perm: torch.Tensor) -> None:
    p, hd = arch.layers[i], arch.head_dim
    q_block = arch.q_heads_per_unit * hd
    with torch.no_grad():
        for lin in (p.q,):
            lin.weight.copy_(_rows(lin.weight, unit_perm, q_block))
            if lin.bias is not None:
                lin.bias.copy_(_rows(lin.bias, unit_perm, q_block))
        if arch.attn_unit_is_group:
            for lin in (p.k, p.v):
                lin.weight.copy_(_rows(lin.weight, unit_perm, hd))
                if lin.bias is not None:
                    lin.bias.copy_(_rows(lin.bias, unit_perm, hd))
        p.o.weight.copy_(_rows(p.o.weight.t(), unit_perm, q_block).t())
        for lin in (p.gate, p.up):
            lin.weight.copy_(lin.weight[chan_perm])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[chan_perm])
        p.down.weight.copy_(p.down.weight[:, chan_perm])


def _permute_stats(arch: ModelArch, stats: CalibrationStats, i: int, unit_perm, chan_perm) -> None:
    s = stats.sqsum[i]
    s["o_in"] = _rows(s["o_in"], unit_perm, arch.q_heads_per_unit * arch.head_dim)
    s["down_in"] = s["down_in"][chan_perm]


class StructuredPruner:
    """Owns the resident model's reordering and swaps in any layer-rate vector in milliseconds.

    The o_proj / down_proj input statistics in `stats` are permuted in place along with the weights, so
    later users of `stats` (OWL, symbolic metrics) still see matching columns.
    """

    def __init__(self, model: nn.Module, arch: ModelArch, stats: CalibrationStats):
        self.model, self.arch = model, arch
        units, chans = wanda_sp_scores(arch, stats)
        self.unit_scores, self.chan_scores = [], []
        for i in range(arch.n_layers):
            up = torch.argsort(units[i], descending=True, stable=True)
            cp = torch.argsort(chans[i], descending=True, stable=True)
            _permute_layer(arch, i, up, cp)
            _permute_stats(arch, stats, i, up, cp)
            self.unit_scores.append(units[i][up])
            self.chan_scores.append(chans[i][cp])
        self._full = [{name: getattr(p, name).weight for name in ("q", "k", "v", "o", "gate", "up", "down")}
                      | {"_bias": {n: getattr(p, n).bias for n in ("q", "k", "v", "gate", "up")}}
                      for p in arch.layers]
        self._groups = [p.attn.num_key_value_groups if hasattr(p.attn, "num_key_value_groups") else None
                        for p in arch.layers]
        self._layers = list(decoder_layers(model))
        self.current: list[LayerPlan] | None = None

    # ---- rates -> counts -------------------------------------------------------------------
    def plan(self, rates) -> list[LayerPlan]:
        a = self.arch
        if len(rates) != a.n_layers:
            raise ValueError(f"expected {a.n_layers} rates, got {len(rates)}")
        total = a.prunable_params_per_layer
        out = []
        for p in rates:
            p = min(max(float(p), 0.0), 1.0)
            removed_units = min(a.n_attn_units, math.floor(p * a.n_attn_units + 0.5))
            rest = p * total - removed_units * a.params_per_attn_unit
            removed_ch = min(a.intermediate, max(0, round(rest / a.params_per_channel)))
            out.append(LayerPlan(a.n_attn_units - removed_units, a.intermediate - removed_ch))
        return out

    def layer_params(self, plan: LayerPlan) -> int:
        a = self.arch
        kv = plan.attn_units * a.kv_heads_per_unit if a.attn_unit_is_group else (a.n_kv_heads if plan.attn_units else 0)
        q = plan.attn_units * a.q_heads_per_unit
        return 2 * (q + kv) * a.head_dim * a.hidden + plan.channels * a.params_per_channel

    def achieved_sparsity(self, plans: list[LayerPlan]) -> float:
        kept = sum(self.layer_params(p) for p in plans)
        return 1.0 - kept / (self.arch.prunable_params_per_layer * self.arch.n_layers)

    # ---- apply / restore -------------------------------------------------------------------
    def apply(self, rates) -> list[LayerPlan]:
        plans = self.plan(rates)
        for i, pl in enumerate(plans):
            self._apply_layer(i, pl)
        self.current = plans
        return plans

    def restore(self) -> None:
        full = LayerPlan(self.arch.n_attn_units, self.arch.intermediate)
        for i in range(self.arch.n_layers):
            self._apply_layer(i, full)
        self.current = None

    @contextmanager
    def applied(self, rates):
        try:
            yield self.apply(rates)
        finally:
            self.restore()

    def _apply_layer(self, i: int, pl: LayerPlan) -> None:
        a, parts, full, layer = self.arch, self.arch.layers[i], self._full[i], self._layers[i]
        hd = a.head_dim
        nq = pl.attn_units * a.q_heads_per_unit
        nkv = pl.attn_units if a.attn_unit_is_group else (a.n_kv_heads if nq else 0)
        if nq == 0:
            if not isinstance(layer.self_attn, ZeroAttention):
                layer.self_attn = ZeroAttention()
        else:
            layer.self_attn = parts.attn
            _set(parts.q, full["q"][: nq * hd], full["_bias"]["q"], nq * hd)
            _set(parts.k, full["k"][: nkv * hd], full["_bias"]["k"], nkv * hd)
            _set(parts.v, full["v"][: nkv * hd], full["_bias"]["v"], nkv * hd)
            _set(parts.o, full["o"][:, : nq * hd], None, None)
            if self._groups[i] is not None:
                parts.attn.num_key_value_groups = nq // nkv
        c = pl.channels
        _set(parts.gate, full["gate"][:c], full["_bias"]["gate"], c)
        _set(parts.up, full["up"][:c], full["_bias"]["up"], c)
        _set(parts.down, full["down"][:, :c], None, None)


def _set(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, n_out: int | None) -> None:
    lin.weight = nn.Parameter(weight, requires_grad=False)
    lin.out_features, lin.in_features = weight.shape
    if bias is not None:
        lin.bias = nn.Parameter(bias[:n_out], requires_grad=False)

