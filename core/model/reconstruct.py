"""Least-squares reconstruction of a pruned layer's output projections (ZipLM / OSSCAR style, one shot).

When o_proj keeps the first k of its input features (kept heads' outputs) or down_proj the first k MLP
channels (the pruner keeps prefixes, structured.py), the kept weights are rebuilt so that the layer's output
on the calibration inputs stays as close to the dense one as a linear map of the kept features allows:

    minimise ||(X_K - mu_K) W'_K^T - (X - mu) W^T||^2 + lam ||W'_K - W_K||^2,   bias b' = W mu - W'_K mu_K

over calibration tokens X (N x C), mean mu and centred Gram Gc = X^T X / N - mu mu^T, which gives
W'_K = (W Gc[:, K] + lam W_K)(Gc[K, K] + lam I)^{-1}. The ridge pulls towards the checkpoint's weights, not
towards zero: a layer that keeps everything is returned unchanged, and a huge lam is FLAP's bias compensation.

Cheap per candidate because K is a prefix: with the Cholesky factor L of Gc + lam I, the factor of
Gc[K, K] + lam I is L's leading k x k block, and Y = (W Gc + lam W) L^{-T} taken once per layer has the
prefix property too (L^{-T} is upper triangular), so W'_K = Y[:, :k] L[:k, :k]^{-1}: one triangular solve of
out x k^2 flops per layer, half of a k-wide forward over `out` tokens. Factors are built on first use in float64
and kept in float32 on the layer's device. Solved widths are kept too (least recently used out first, SOLVED_BYTES
in all): crossover children copy their parents' layer widths, and the finals re-score searched candidates.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from ..errors import UserError
from .calibration import CalibrationStats

RIDGE = 1e-2  # lam as a share of Gc's mean diagonal (DESIGN §8's probe); large enough for float32 factors
POINTS = ("o_in", "down_in")  # (which 0: o_proj, 1: down_proj)
SOLVED_BYTES = 256 << 20  # rebuilt weights kept per (layer, projection, width); SmolLM2's are 0.3-3 MB each


class ReconstructionError(UserError, ValueError):
    """Calibration cannot support the solve (too few tokens for the width); one line for the user."""


def check_tokens(n_tokens: int, widths: dict[str, int]) -> None:
    """A Gram matrix of rank below its width gives a solve that fits the calibration noise, not the layer."""
    for name, width in widths.items():
        if n_tokens < width:
            raise ReconstructionError(f"least-squares reconstruction of {name} needs at least {width} calibration "
                                      f"tokens (its input width), got {n_tokens}: raise --calib-tokens")


class LeastSquares:
    """Per-layer factors of the ridge least-squares problem above, for o_proj (which 0) and down_proj (1)."""

    def __init__(self, stats: CalibrationStats, grams: list[dict[str, torch.Tensor]], ridge: float = RIDGE):
        self.stats, self.grams, self.ridge = stats, grams, ridge
        self._factors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._solved: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._solved_bytes = 0

    def _factor(self, i: int, which: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, which)
        if key not in self._factors:
            point = POINTS[which]
            n = self.stats.n_tokens
            mu = self.stats.mean(i, point).double()
            gc = self.grams[i][point].double().to(mu.device) / n - torch.outer(mu, mu)
            lam = self.ridge * float(gc.diagonal().mean().clamp_min(1e-12))
            gc.diagonal().add_(lam)
            chol = torch.linalg.cholesky(gc)
            wd = w.double().to(gc.device)
            y = torch.linalg.solve_triangular(chol, gc @ wd.T, upper=False).T  # (W (Gc + lam I)) L^{-T}
            self._factors[key] = (chol.float().to(w.device), y.float().to(w.device))
        return self._factors[key]

    def solve(self, i: int, which: int, w: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W'_K, b'): the rebuilt [out, kept] weight in w's dtype and the float32 bias b' that keeps the mean
        output. `w` is the layer's full [out, C] projection in the pruner's order."""
        mu = self.stats.mean(i, POINTS[which]).to(w.device, torch.float32)
        full = w.float() @ mu
        if kept == w.shape[1]:
            return w, torch.zeros_like(full)
        if kept == 0:
            return w[:, :0], full
        key = (i, which, kept)
        if key in self._solved:
            self._solved.move_to_end(key)
            return self._solved[key]
        chol, y = self._factor(i, which, w)
        # float32, so its reductions round the last bits by thread count: a one-thread Ray worker's fitness agrees
        # with the driver's to ~1e-7, not bit for bit
        wk = torch.linalg.solve_triangular(chol[:kept, :kept], y[:, :kept], upper=False, left=False)
        out = (wk.to(w.dtype), full - wk @ mu[:kept])
        self._keep(key, out)
        return out

    def _keep(self, key: tuple[int, int, int], out: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in out)
        if size > SOLVED_BYTES:
            return
        self._solved[key] = out
        self._solved_bytes += size
        while self._solved_bytes > SOLVED_BYTES:
            _, old = self._solved.popitem(last=False)
            self._solved_bytes -= sum(t.numel() * t.element_size() for t in old)

    def forget(self, i: int, which: int) -> None:
        """Drop what was built from layer i's statistics for one projection (they were gathered again)."""
        self._factors.pop((i, which), None)
        for key in [k for k in self._solved if k[:2] == (i, which)]:
            out = self._solved.pop(key)
            self._solved_bytes -= sum(t.numel() * t.element_size() for t in out)

    def drop(self) -> None:
        self._factors.clear()
        self._solved.clear()
        self._solved_bytes = 0


# ---- gathering the Gram matrices ------------------------------------------------------------------------
def collect_grams(model, arch, windows: torch.Tensor, progress=None, batch_size: int = 1) -> list[dict]:
    """Sum of x x^T of every layer's o_proj and down_proj inputs over `windows`, on each layer's device.
    Each batch's product is taken in float32 and summed in float64; the result is rounded to float32 once, so a
    freshly collected and a cached set are the same numbers."""
    from .calibration import forward_with_inputs

    grams = [dict() for _ in range(arch.n_layers)]

    def on_input(i, point, x):
        x = x.float()
        g = (x.T @ x).double()
        grams[i][point] = g if point not in grams[i] else grams[i][point] + g
    forward_with_inputs(model, arch, windows, POINTS, on_input, progress, batch_size)
    return [{k: v.float() for k, v in d.items()} for d in grams]


def load_or_collect_grams(model, arch, fingerprint: str, windows: torch.Tensor, progress=None,
                          batch_size: int = 1) -> tuple[list[dict], bool]:
    """(grams, from_cache) in the model's current head/channel order, each layer's on that layer's device."""
    from .calibration import cache_key, cached, to_cpu, to_layers
    from .models import order_digest

    key = cache_key(fingerprint, order_digest(model), windows)
    return cached("grams", key, lambda: collect_grams(model, arch, windows, progress, batch_size),
                  to_cpu, lambda d: to_layers(arch, d))
