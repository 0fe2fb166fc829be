"""Wanda-sp (structured Wanda, as in FLAP): scores of attention units and MLP channels."""
from __future__ import annotations

import torch

from .calibration import CalibrationStats
from .models import ModelArch


def wanda_sp_scores(arch: ModelArch, stats: CalibrationStats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: attention-unit scores [n_units] and MLP-channel scores [intermediate].

    Column score s_j = sum_r |W_rj| * ||X_j||; a head sums its o_proj columns, a KV group its heads.
    `stats` must be in the model's current head/channel order.
    """
    unit_scores, chan_scores = [], []
    for i, parts in enumerate(arch.layers):
        col = parts.o.weight.detach().abs().sum(0) * stats.norm(i, "o_in").to(parts.o.weight.device)
        per_head = col.view(arch.n_heads, arch.head_dim).sum(1)
        unit_scores.append(per_head.view(arch.n_attn_units, arch.q_heads_per_unit).sum(1))
        chan_scores.append(parts.down.weight.detach().abs().sum(0) * stats.norm(i, "down_in").to(
            parts.down.weight.device))
    return unit_scores, chan_scores
