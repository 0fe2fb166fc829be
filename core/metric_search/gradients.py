"""The G operand: per-weight l2 norm over calibration windows of the LM-loss gradient, as Pruner-Zero
(following GBLM-Pruner) uses, G = sqrt(sum_windows (dL_w/dW)^2), with L_w the mean next-token loss of
window w. Only the decoder projections get gradients: the 168M-parameter (tied) embedding of
gemma-3-270m never has requires_grad, so memory is the model plus two projection-sized float32 buffers
(~0.4 GB each for the 100M projection weights). Cached on disk per model fingerprint and windows; the sums of
squares are float32 on each projection's own device, the cache holds them on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.calibration import cached, to_cpu, to_layers
from ..model.models import ModelArch
from .unstructured import PROJECTIONS


@dataclass
class GradientStats:
    norms: list[dict[str, torch.Tensor]]  # per layer: projection -> [out, in] float32, >= 0
    n_windows: int

    def get(self, layer: int, name: str) -> torch.Tensor:
        return self.norms[layer][name]


def _window_loss(model, window: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=window[None], use_cache=False).logits[0]
    targets = torch.full_like(window, -100)
    targets[:-1] = window[1:]  # shift targets, not the [T, vocab] logits (no copy of a 262k-wide tensor)
    return F.cross_entropy(logits.float(), targets.to(logits.device), ignore_index=-100)


def collect_gradients(model, arch: ModelArch, windows: torch.Tensor, progress=None,
                      should_stop=None) -> GradientStats:
    """One forward+backward per window ([n, seq]); restores every requires_grad flag afterwards."""
    from ..model.models import input_device

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    lins = {(i, n): getattr(parts, n) for i, parts in enumerate(arch.layers) for n in PROJECTIONS}
    sq = {k: torch.zeros_like(lin.weight, dtype=torch.float32) for k, lin in lins.items()}
    try:
        for p in params:
            p.requires_grad_(False)
        for lin in lins.values():
            lin.weight.requires_grad_(True)
            lin.weight.grad = None
        with torch.enable_grad():
            for b in range(windows.shape[0]):
                if should_stop is not None and should_stop():
                    raise InterruptedError("gradient collection stopped")
                _window_loss(model, windows[b].to(input_device(model))).backward()
                for k, lin in lins.items():
                    g = lin.weight.grad.float()
                    sq[k].addcmul_(g, g)
                    lin.weight.grad = None
                if progress:
                    progress(b + 1, windows.shape[0])
    finally:
        for lin in lins.values():
            lin.weight.grad = None
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    norms = [dict() for _ in range(arch.n_layers)]
    for (i, n), s in sq.items():
        norms[i][n] = s.sqrt_()
    return GradientStats(norms, int(windows.shape[0]))


def load_or_collect_gradients(model, arch: ModelArch, fingerprint: str, windows: torch.Tensor,
                              progress=None, should_stop=None) -> tuple[GradientStats, bool]:
    """Returns (gradients, from_cache)."""
    from ..model.calibration import cache_key
    from ..model.models import order_digest

    return cached("gradients", cache_key(fingerprint, order_digest(model), windows),
                  lambda: collect_gradients(model, arch, windows, progress, should_stop),
                  lambda g: {"norms": to_cpu(g.norms), "n_windows": g.n_windows},
                  lambda d: GradientStats(to_layers(arch, d["norms"]), d["n_windows"]))
