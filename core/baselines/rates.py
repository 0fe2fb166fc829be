"""Layer-rate baselines: uniform rates, OWL (Yin et al. 2023) outlier-weighted layer rates, and FLAP's (An et al.
2024) global adaptive structure as layer rates."""
from __future__ import annotations

import torch

from ..model.calibration import CalibrationStats
from ..model.flap import flap_scores, standardised
from ..model.models import ModelArch

_POINT_OF = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in",
             "gate": "mlp_in", "up": "mlp_in", "down": "down_in"}


def uniform_rates(n_layers: int, beta: float) -> list[float]:
    return [float(beta)] * n_layers


@torch.no_grad()
def outlier_ratios(arch: ModelArch, stats: CalibrationStats, m: float = 5.0) -> list[float]:
    """Layer outlier distribution: the share of a layer's weights whose Wanda score |W|·||X|| exceeds
    m times the layer's mean score."""
    out = []
    for i, parts in enumerate(arch.layers):
        scores = [(getattr(parts, name).weight.abs() * stats.norm(i, point).to(parts.q.weight.device)).flatten()
                  for name, point in _POINT_OF.items()]
        s = torch.cat(scores)
        out.append(float((s > m * s.mean()).float().mean()))
    return out


def owl_rates(arch: ModelArch, stats: CalibrationStats, beta: float, lam: float = 0.08, m: float = 5.0,
              lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Layers with more outliers are pruned less: rates span beta ± lam, with mean exactly beta."""
    d = torch.tensor(outlier_ratios(arch, stats, m), dtype=torch.float64, device="cpu")  # one number per layer
    span = d.max() - d.min()
    scaled = (d - d.min()) / span * 2 * lam if span > 0 else torch.zeros_like(d)
    rates = beta - (scaled - scaled.mean())
    return [min(max(float(r), lo), hi) for r in rates]


def flap_rates(arch: ModelArch, stats: CalibrationStats, beta: float) -> list[float]:
    """FLAP's global adaptive structure: standardise every layer's unit and channel scores separately, remove
    the lowest-scoring units and channels of the whole model until β of the prunable parameters are gone
    (a unit counted by its parameters), and return each layer's removed share. Within a layer the rate is
    then split into heads and channels by the search's --split (core/plans.py): with `flap`, exactly as FLAP
    removed them."""
    units, chans = flap_scores(arch, stats)
    entries = []  # (z, params, layer)
    for i in range(arch.n_layers):
        entries += [(float(z), arch.params_per_attn_unit, i) for z in standardised(units[i])]
        entries += [(float(z), arch.params_per_channel, i) for z in standardised(chans[i])]
    entries.sort(key=lambda e: e[0])
    target = beta * arch.n_layers * arch.prunable_params_per_layer
    removed, done = [0] * arch.n_layers, 0
    for _, params, layer in entries:
        if done >= target:
            break
        removed[layer] += params
        done += params
    return [min(1.0, r / arch.prunable_params_per_layer) for r in removed]
