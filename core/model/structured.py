"""Structured (head / KV-group / MLP-channel) pruning with Wanda-sp scores on one resident model.

Trick that makes fitness cheap: once, we permute every layer's attention units and MLP channels into
descending score order. The permutation does not change the model's function, and afterwards "remove the
r lowest-scoring units" is "keep a prefix", so applying any rate vector only swaps each projection's
weight for a narrow() view of the full tensor — no copy, no reload, and the forward pass really runs on
the smaller matrices. `restore()` puts the full views back.

The permutation is done in place, so the pruner records it on the model (models.ORDER_ATTR): a loaded
model knows its order, calibration caches key on it, and `reset_order` puts a reused model back in its
checkpoint order. The CalibrationStats it is given are never modified; `pruner.stats` is a copy in the
model's (permuted) order for later users (OWL, symbolic metrics).

Rates → removed counts: see core/plans.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from ..plans import LayerGrain, LayerPlan, plans, scored_unit_order
from .calibration import CalibrationStats
from .flap import flap_scores, standardised
from .models import ORDER_ATTR, ModelArch, decoder_layers, order_digest
from .reconstruct import RIDGE, LeastSquares, check_tokens
from .wanda_sp import wanda_sp_scores

IMPORTANCE = {"wanda-sp": wanda_sp_scores, "flap": flap_scores}
SPLITS = ("rule", "flap", "search")  # how a layer's rate is split between heads and channels (core/plans.py)
RECONSTRUCTIONS = ("none", "bias", "ls")  # what stands in for removed units' output (see StructuredPruner)


def reconstruction(how) -> str:
    """A reconstruction by name; True / False are the older switch (bias compensation on / off)."""
    how = {True: "bias", False: "none"}.get(how, how) if isinstance(how, bool) else how
    if how not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {how!r}")
    return how


class ZeroAttention(nn.Module):
    """Stands in for an attention block whose every head was removed; with compensation it still adds its
    removed heads' mean output (a constant bias)."""

    def __init__(self, bias: torch.Tensor | None = None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, hidden_states, *args, **kwargs):
        out = torch.zeros_like(hidden_states)
        return (out if self.bias is None else out + self.bias), None


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


def _permuted_stats(arch: ModelArch, stats: CalibrationStats, perms, order: str) -> CalibrationStats:
    """A copy of `stats` with the o_proj / down_proj inputs in the permuted order (the others are per hidden
    feature, which no permutation touches)."""
    def permuted(per_layer):
        out = []
        for s, (up, cp) in zip(per_layer, perms):
            s = dict(s)
            s["o_in"] = _rows(s["o_in"], up.to(s["o_in"].device), arch.q_heads_per_unit * arch.head_dim)
            s["down_in"] = s["down_in"][cp.to(s["down_in"].device)]
            out.append(s)
        return out
    return CalibrationStats(permuted(stats.sqsum), stats.n_tokens, order,
                            permuted(stats.xsum) if stats.xsum is not None else None)


def reset_order(model: nn.Module, arch: ModelArch) -> None:
    """Put a model that a StructuredPruner permuted back into its checkpoint (dense) order."""
    perms = getattr(model, ORDER_ATTR, None)
    if perms is None:
        return
    for i, (up, cp) in enumerate(perms):
        _permute_layer(arch, i, torch.argsort(up), torch.argsort(cp))
    delattr(model, ORDER_ATTR)


class StructuredPruner:
    """Owns the resident model's reordering and swaps in any layer-rate vector in milliseconds.

    `stats` must be in the model's current order (a model permuted by an earlier pruner is permuted again,
    and the composed permutation is recorded). `self.stats` holds them in the new model order.
    """

    def __init__(self, model: nn.Module, arch: ModelArch, stats: CalibrationStats, *, reconstruct: str | bool = "none",
                 importance: str = "wanda-sp", channel_multiple: int = 1, split: str = "rule"):
        if stats.order != order_digest(model):
            raise ValueError(f"calibration statistics are in head/channel order {stats.order}, the model is in "
                             f"{order_digest(model)}")
        self.model, self.arch = model, arch
        self.channel_multiple = channel_multiple  # MLP channels are kept in multiples of it (plans.LayerGrain)
        self.importance = importance  # which score orders the units and channels: wanda-sp | flap
        units, chans = IMPORTANCE[importance](arch, stats)
        self.unit_scores, self.chan_scores, perms = [], [], []
        before = getattr(model, ORDER_ATTR, None)
        composed = []
        for i in range(arch.n_layers):
            up = torch.argsort(units[i], descending=True, stable=True)
            cp = torch.argsort(chans[i], descending=True, stable=True)
            _permute_layer(arch, i, up, cp)
            perms.append((up, cp))
            composed.append((before[i][0][up], before[i][1][cp]) if before else (up, cp))
            self.unit_scores.append(units[i][up])
            self.chan_scores.append(chans[i][cp])
        setattr(model, ORDER_ATTR, composed)
        self.stats = _permuted_stats(arch, stats, perms, order_digest(model))
        self._full = [{name: getattr(p, name).weight for name in ("q", "k", "v", "o", "gate", "up", "down")}
                      | {"_bias": {n: getattr(p, n).bias for n in ("q", "k", "v", "gate", "up")}}
                      for p in arch.layers]
        self._groups = [p.attn.num_key_value_groups if hasattr(p.attn, "num_key_value_groups") else None
                        for p in arch.layers]
        self._layers = list(decoder_layers(model))
        self.current: list[LayerPlan] | None = None
        # What replaces a removed head's or channel's output (RECONSTRUCTIONS): nothing; FLAP's bias
        # compensation, its mean over the calibration tokens, W[:, removed] @ E[x_removed], as a bias of o_proj /
        # down_proj; or least squares, the kept columns rebuilt against the dense output (reconstruct.py).
        self._orig_bias = [(p.o.bias, p.down.bias) for p in arch.layers]
        self._means = None
        self.grams: list[dict] | None = None  # o_in / down_in Gram sums in the model's order, for "ls"
        self._ls: LeastSquares | None = None
        self._sequential: dict[tuple, LeastSquares] = {}  # factors gathered for one allocation (sequential.py)
        self.reconstruct = reconstruction(reconstruct)
        self._unit_order = None
        self._attention_genes = False
        self.split = split

    @property
    def split(self) -> str:
        """How a layer's rate is split between its attention units and MLP channels (plans.py): rule | flap |
        search (rate vectors also carry each layer's attention-unit rate)."""
        return "search" if self._attention_genes else "rule" if self._unit_order is None else "flap"

    @split.setter
    def split(self, how: str) -> None:
        if how not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {how!r}")
        self._attention_genes = how == "search"
        if how != "flap":
            self._unit_order = None
        elif self._unit_order is None:  # FLAP's scores of the dense model, whatever orders the removal
            if self.current is not None:
                raise RuntimeError("the split is chosen on the dense model (restore it first)")
            units, chans = flap_scores(self.arch, self.stats)
            self._unit_order = tuple(scored_unit_order(standardised(u), standardised(c)) for u, c in zip(units, chans))

    @property
    def reconstruct(self) -> str:
        return "ls" if self._ls is not None else "bias" if self._means is not None else "none"

    @reconstruct.setter
    def reconstruct(self, how) -> None:
        """Switch the reconstruction (takes effect at the next apply); "ls" needs `grams` set first."""
        how = reconstruction(how)
        if how != "none" and self.stats.xsum is None:
            raise ValueError("reconstruction needs the calibration's input means (collect them again)")
        if how == "ls" and self.grams is None:
            raise ValueError("least-squares reconstruction needs the Gram matrices "
                             "(Workbench.set_pruning gathers them)")
        if how == "ls":
            a = self.arch
            check_tokens(self.stats.n_tokens, {"o_proj": a.n_heads * a.head_dim, "down_proj": a.intermediate})
        self._means = [(self.stats.mean(i, "o_in"), self.stats.mean(i, "down_in"))
                       for i in range(self.arch.n_layers)] if how != "none" else None
        if how != "ls":
            self._ls = None
            self._sequential = {}
        elif self._ls is None:
            self._ls = LeastSquares(self.stats, self.grams)

    ls_ridge = RIDGE

    def swap_factors(self, ls: LeastSquares | None) -> LeastSquares | None:
        """Put other least-squares factors in place (the next layers applied use them); returns the previous."""
        old, self._ls = self._ls, ls
        return old

    def use_factors(self, rates, ls: LeastSquares) -> None:
        """Apply `rates` with these factors from now on (sequential calibration's, built for that vector only);
        any other vector keeps the one-shot factors."""
        if self._ls is None:
            raise ValueError("factors for one allocation need least-squares reconstruction (reconstruct ls)")
        self._sequential = {_key(rates): ls}

    def forget_factors(self) -> None:
        """Back to the one-shot factors for every vector."""
        self._sequential = {}

    def has_factors(self, rates) -> bool:
        """Whether `rates` has factors of its own (use_factors)."""
        return _key(rates) in self._sequential

    @property
    def compensate(self) -> bool:
        """Whether pruned layers carry an output bias (any reconstruction but none)."""
        return self._means is not None

    # ---- rates -> counts -------------------------------------------------------------------
    def plan(self, rates) -> list[LayerPlan]:
        n = self.arch.n_layers * (2 if self._attention_genes else 1)
        if len(rates) != n:
            raise ValueError(f"expected {n} rates, got {len(rates)}")
        return plans(self.grain, rates)

    @property
    def grain(self) -> LayerGrain:
        """The layers' grain with this pruner's channel multiple and split."""
        return replace(self.arch.grain, channel_multiple=self.channel_multiple, unit_order=self._unit_order,
                       attention_genes=self._attention_genes)

    def layer_params(self, plan: LayerPlan) -> int:
        a = self.arch
        q, kv = a.kept_heads(plan.attn_units)
        return 2 * (q + kv) * a.head_dim * a.hidden + plan.channels * a.params_per_channel

    def achieved_sparsity(self, plans: list[LayerPlan]) -> float:
        kept = sum(self.layer_params(p) for p in plans)
        return 1.0 - kept / (self.arch.prunable_params_per_layer * self.arch.n_layers)

    # ---- apply / restore -------------------------------------------------------------------
    def apply(self, rates) -> list[LayerPlan]:
        plans = self.plan(rates)
        own = self._sequential.get(_key(rates))
        one_shot = self.swap_factors(own) if own is not None else None
        try:
            for i, pl in enumerate(plans):
                self.apply_layer(i, pl)
        finally:
            if own is not None:
                self.swap_factors(one_shot)
        self.current = plans
        return plans

    def restore(self) -> None:
        full = LayerPlan(self.arch.n_attn_units, self.arch.intermediate)
        for i, parts in enumerate(self.arch.layers):
            self.apply_layer(i, full)
            _set_bias(parts.o, self._orig_bias[i][0])  # the dense model has no compensation bias
            _set_bias(parts.down, self._orig_bias[i][1])
        self.current = None

    @contextmanager
    def applied(self, rates):
        try:
            yield self.apply(rates)
        finally:
            self.restore()

    def apply_layer(self, i: int, pl: LayerPlan) -> None:
        a, parts, full, layer = self.arch, self.arch.layers[i], self._full[i], self._layers[i]
        hd = a.head_dim
        nq, nkv = a.kept_heads(pl.attn_units)
        o_w, o_bias = self._output(i, full["o"], nq * hd, 0)
        down_w, down_bias = self._output(i, full["down"], pl.channels, 1)
        if nq == 0:
            if not isinstance(layer.self_attn, ZeroAttention) or self.compensate:
                layer.self_attn = ZeroAttention(o_bias)
        else:
            layer.self_attn = parts.attn
            _set(parts.q, full["q"][: nq * hd], full["_bias"]["q"], nq * hd)
            _set(parts.k, full["k"][: nkv * hd], full["_bias"]["k"], nkv * hd)
            _set(parts.v, full["v"][: nkv * hd], full["_bias"]["v"], nkv * hd)
            _set(parts.o, o_w, None, None)
            _set_bias(parts.o, o_bias)
            if self._groups[i] is not None:
                parts.attn.num_key_value_groups = nq // nkv
        c = pl.channels
        _set(parts.gate, full["gate"][:c], full["_bias"]["gate"], c)
        _set(parts.up, full["up"][:c], full["_bias"]["up"], c)
        _set(parts.down, down_w, None, None)
        _set_bias(parts.down, down_bias)

    def _output(self, i: int, w: torch.Tensor, kept: int, which: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """o_proj's (which 0) or down_proj's (1) weight and bias with `kept` input columns: the prefix view and
        the checkpoint's bias; with bias compensation plus W[:, kept:] @ E[x[kept:]] (a matrix-vector product:
        nothing next to a forward); with least squares the rebuilt columns and the bias that keeps the mean."""
        orig = self._orig_bias[i][which]
        if self._ls is not None:
            weight, comp = self._ls.solve(i, which, w, kept)
        else:
            weight = w[:, :kept]
            if not self.compensate:
                return weight, orig  # (compensated, a layer that keeps everything gets zeros: every layer has one)
            mu = self._means[i][which]
            comp = w[:, kept:].float() @ mu[kept:].to(w.device, torch.float32)
        comp = comp.to(w.dtype)
        return weight, comp if orig is None else orig + comp


def _key(rates) -> tuple:
    return tuple(round(float(r), 12) for r in rates)


def _set_bias(lin: nn.Linear, bias: torch.Tensor | None) -> None:
    lin.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)


def _set(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, n_out: int | None) -> None:
    lin.weight = nn.Parameter(weight, requires_grad=False)
    lin.out_features, lin.in_features = weight.shape
    if bias is not None:
        lin.bias = nn.Parameter(bias[:n_out], requires_grad=False)

