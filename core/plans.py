"""Rates -> layer plans: the pure arithmetic that decides which pruned model a rate vector stands for.

A layer's pruned shape is its plan (kept attention units, kept MLP channels). Attention units (KV groups,
or query heads under MQA) are coarse. How a layer's rate p is split between them and the MLP channels is
`--split`:
  rule: remove round(p·units) units, then exactly as many MLP channels as are needed for the layer to lose p of
        its prunable attention+MLP parameters;
  flap: remove units and channels in the order of their standardised importance (FLAP's z-scores, each kind
        standardised within its layer) until p of the layer's parameters are gone, so a layer whose heads
        matter less than its channels loses heads first (FLAP's own within-layer structure);
  search: the split is a gene of its own. A candidate is [p_1..p_n, a_1..a_n]: the layer rates (mean β, so the
        global budget is the same as under the other splits) and then each layer's attention-unit rate a_i, the
        share of its attention units removed; its MLP channels remove the rest of p_i. a_i is kept inside what
        p_i allows (attention_bounds), so the MLP rate follows from the pair.
Many rate vectors give the same plans, so plans (not rate strings) are what the search deduplicates and caches on.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerPlan:
    attn_units: int  # kept attention units (KV groups, or query heads under MQA)
    channels: int  # kept MLP channels


@dataclass(frozen=True)
class LayerGrain:
    """How coarse one decoder layer is: everything plan() needs, and what the prompts tell the LLM."""
    attn_units: int
    q_heads_per_unit: int
    params_per_attn_unit: int
    channels: int
    params_per_channel: int
    prunable_params: int
    # MLP channels are kept in multiples of this (--channel-multiple), so that an exported model's widths suit
    # quantized types (Q8_0 blocks of 32) and aligned GPU kernels; a dense layer is always whole
    channel_multiple: int = 1
    # --split flap: per layer, the positions (0-based, ascending) at which its attention units come in the
    # layer's merged ascending-score order of units and channels; None = the rule split
    unit_order: tuple[tuple[int, ...], ...] | None = None
    # --split search: candidates carry a second gene per layer, its attention-unit rate (see the module's doc)
    attention_genes: bool = False

    @property
    def channel_rate(self) -> float:
        """The rate one MLP channel is worth."""
        return self.params_per_channel / self.prunable_params

    @property
    def channel_step_rate(self) -> float:
        """The rate between two kept-channel counts: one channel, or one multiple of channels."""
        return self.channel_multiple * self.channel_rate

    @property
    def unit_rate(self) -> float:
        """The rate between two attention-unit counts (rates in one such step remove as many units)."""
        return 1.0 / self.attn_units


def attention_bounds(grain: LayerGrain, p: float) -> tuple[int, int]:
    """The fewest and most attention units a layer at rate p can remove: its MLP channels must be able to take
    the rest of p, and the units alone must not remove more than p."""
    target, tiny = min(max(float(p), 0.0), 1.0) * grain.prunable_params, 1e-9
    most = min(grain.attn_units, math.floor(target / grain.params_per_attn_unit + tiny))
    least = max(0, math.ceil((target - grain.channels * grain.params_per_channel) / grain.params_per_attn_unit - tiny))
    return min(least, most), most


def fit_attention(grain: LayerGrain, p: float, a: float) -> float:
    """The attention-unit rate the pair (p, a) prunes: a on the layer's unit grid, inside attention_bounds."""
    least, most = attention_bounds(grain, p)
    units = min(max(math.floor(min(max(float(a), 0.0), 1.0) * grain.attn_units + 0.5), least), most)
    return units / grain.attn_units


def layer_plan(grain: LayerGrain, p: float, layer: int | None = None, a: float | None = None) -> LayerPlan:
    """The plan of `layer` at rate p (the layer matters only to the flap split; a, the attention-unit rate, only to
    the searched split)."""
    p = min(max(float(p), 0.0), 1.0)
    if a is None and grain.unit_order is not None:
        if layer is None:
            raise ValueError("the flap split plans a layer by its index")
        removed_units, removed_ch = _scored_removal(grain, grain.unit_order[layer], p * grain.prunable_params)
    else:  # the units the rule or the attention gene says; MLP channels take the rest of the rate
        removed_units = (round(fit_attention(grain, p, a) * grain.attn_units) if a is not None
                         else min(grain.attn_units, math.floor(p * grain.attn_units + 0.5)))
        rest = p * grain.prunable_params - removed_units * grain.params_per_attn_unit
        removed_ch = min(grain.channels, max(0, round(rest / grain.params_per_channel)))
    kept, m = grain.channels - removed_ch, grain.channel_multiple
    if m > 1 and kept < grain.channels:
        kept = min(grain.channels, m * math.floor(kept / m + 0.5))
    return LayerPlan(grain.attn_units - removed_units, kept)


def _scored_removal(grain: LayerGrain, unit_at: tuple[int, ...], target: float) -> tuple[int, int]:
    """(units, channels) removed by the shortest prefix of the layer's ascending-score order whose parameters are
    nearest `target` (a tie keeps more)."""
    def removed(k: int) -> tuple[int, int]:
        u = bisect_left(unit_at, k)  # units among the first k removals
        return u, k - u

    def params(k: int) -> int:
        u, c = removed(k)
        return u * grain.params_per_attn_unit + c * grain.params_per_channel

    lo, hi = 0, grain.attn_units + grain.channels  # first k with params(k) >= target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if params(mid) < target else (lo, mid)
    k = lo if lo == 0 or params(lo) - target < target - params(lo - 1) else lo - 1
    return removed(k)


def plans(grain: LayerGrain, rates) -> list[LayerPlan]:
    g = Genes.of(rates, "search" if grain.attention_genes else None)
    return [layer_plan(grain, p, i, g.attention[i] if g.attention else None) for i, p in enumerate(g.layers)]


@dataclass(frozen=True)
class Genes:
    """A candidate's genes by meaning: its layer rates and, under --split search only, each layer's attention-unit
    rate. Stored, proposed and repaired as one flat list (the layer rates, then the attention rates); `of` is the one
    place that cuts it, given the split its session ran with."""
    layers: tuple[float, ...]
    attention: tuple[float, ...] | None = None

    @classmethod
    def of(cls, flat, split: str | None) -> "Genes":
        flat = [float(x) for x in flat]
        if split == "search":
            n = len(flat) // 2
            return cls(tuple(flat[:n]), tuple(flat[n:]))
        return cls(tuple(flat))

    @property
    def attention_list(self) -> list[float] | None:
        return None if self.attention is None else list(self.attention)


def scored_unit_order(unit_z, channel_z) -> tuple[int, ...]:
    """Where a layer's attention units come in the ascending merge of its units' and channels' standardised
    scores (LayerGrain.unit_order): a unit ahead of an equal channel, so ties remove attention first."""
    merged = sorted([(float(z), 0) for z in unit_z] + [(float(z), 1) for z in channel_z])
    return tuple(i for i, (_, kind) in enumerate(merged) if kind == 0)


def candidate_key(rates, grain: LayerGrain | None = None, decimals: int = 5) -> tuple:
    """The one identity of a layer-rate candidate, what deduplication, `taken` sets and the fitness cache compare:
    its layer plans (kept units, kept channels) where the layers' grain is known, since rates that differ by
    less than a channel give the same pruned model; else the rates at the precision proposers write."""
    if grain is not None:
        return tuple((pl.attn_units, pl.channels) for pl in plans(grain, rates))
    return tuple(round(float(v), decimals) for v in rates)


def candidate_key_text(key: tuple) -> str:
    """The stored form of candidate_key (the candidates table's `key` column): '3:1024,2:768,...' for plans."""
    return ",".join(f"{k[0]}:{k[1]}" if isinstance(k, tuple) else f"{k:.5f}" for k in key)
