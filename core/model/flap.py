"""FLAP (An et al. 2024): the fluctuation importance of attention units and MLP channels (its global
adaptive structure, as layer rates, is a baseline: core/baselines/rates.py).

Column score s_j = Var(X_j) · ||W[:, j]||² over the calibration tokens (an input that barely fluctuates can be
replaced by its mean, which bias compensation then does); a head sums its o_proj columns, a KV group its
heads, an MLP channel is its down_proj column. `stats` must be in the model's current head/channel order and
carry the input sums (CalibrationStats.xsum).
"""
from __future__ import annotations

import torch

from .calibration import CalibrationStats
from .models import ModelArch


def _variance(stats: CalibrationStats, layer: int, point: str) -> torch.Tensor:
    mean = stats.mean(layer, point)
    return (stats.sqsum[layer][point] / stats.n_tokens - mean * mean).clamp_min(0).float()


def flap_scores(arch: ModelArch, stats: CalibrationStats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: attention-unit scores [n_units] and MLP-channel scores [intermediate]."""
    if stats.xsum is None:
        raise ValueError("FLAP importance needs the calibration's input sums (collect the statistics again)")
    unit_scores, chan_scores = [], []
    for i, parts in enumerate(arch.layers):
        wo, wd = parts.o.weight.detach().float(), parts.down.weight.detach().float()
        col = _variance(stats, i, "o_in").to(wo.device) * (wo * wo).sum(0)
        per_head = col.view(arch.n_heads, arch.head_dim).sum(1)
        unit_scores.append(per_head.view(arch.n_attn_units, arch.q_heads_per_unit).sum(1))
        chan_scores.append(_variance(stats, i, "down_in").to(wd.device) * (wd * wd).sum(0))
    return unit_scores, chan_scores


def standardised(s: torch.Tensor) -> torch.Tensor:
    """(s - mean) / sd in float64 on the CPU (zeros where s does not vary): FLAP compares heads with channels,
    and layers with layers, on this scale."""
    s = s.double().cpu()
    sd = s.std() if s.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    return (s - s.mean()) / sd if sd > 0 else torch.zeros_like(s)
