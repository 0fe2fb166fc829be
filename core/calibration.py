"""Activation statistics from ONE pass over the calibration tokens.

For every decoder layer we keep the per-input-feature sum of squares of the activations entering the
attention projections (q/k/v share it), o_proj, the MLP (gate/up share it) and down_proj. Square roots
of these are the ||X_j||_2 of Wanda / Wanda-sp. Statistics are cached on disk per model fingerprint and
calibration tokens, so a resumed or repeated run skips the pass.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from .models import CACHE_ROOT, ModelArch

POINTS = ("attn_in", "o_in", "mlp_in", "down_in")


@dataclass
class CalibrationStats:
    sqsum: list[dict[str, torch.Tensor]]  # per layer: point -> [in_features] float64 sum of x_j^2
    n_tokens: int

    def norm(self, layer: int, point: str) -> torch.Tensor:
        """||X_j||_2 over the calibration tokens, float32."""
        return self.sqsum[layer][point].sqrt().float()


def _module_for(parts, point):
    return {"attn_in": parts.q, "o_in": parts.o, "mlp_in": parts.gate, "down_in": parts.down}[point]


@torch.no_grad()
def collect_stats(model, arch: ModelArch, windows: torch.Tensor, progress=None) -> CalibrationStats:
    """Forward `windows` ([n, seq]) once through the model with input hooks on the projections."""
    sqsum = [dict() for _ in range(arch.n_layers)]
    hooks = []
    for i, parts in enumerate(arch.layers):
        for point in POINTS:
            def hook(mod, args, i=i, point=point):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                acc = sqsum[i].get(point)
                sq = (x * x).sum(0)
                sqsum[i][point] = sq if acc is None else acc + sq
            hooks.append(_module_for(parts, point).register_forward_pre_hook(hook))
    try:
        for b in range(windows.shape[0]):
            model(input_ids=windows[b : b + 1])
            if progress:
                progress(b + 1, windows.shape[0])
    finally:
        for h in hooks:
            h.remove()
    return CalibrationStats(sqsum, int(windows.numel()))


def cached(kind: str, fingerprint: str, windows: torch.Tensor, compute, pack, unpack):
    """(value, from_cache): a per-model, per-token-windows result kept under CACHE_ROOT/kind/. A corrupt
    entry is recomputed and a read-only cache only costs time."""
    key = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:12]
    path = CACHE_ROOT / kind / f"{fingerprint}-{key}.pt"
    if path.exists():
        try:
            return unpack(torch.load(path, weights_only=True)), True
        except Exception:
            pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(pack(value), tmp)
        tmp.replace(path)
    except OSError:
        pass
    return value, False


def load_or_collect(model, arch: ModelArch, fingerprint: str, windows: torch.Tensor,
                    progress=None) -> tuple[CalibrationStats, bool]:
    """Returns (stats, from_cache)."""
    return cached("calibration", fingerprint, windows, lambda: collect_stats(model, arch, windows, progress),
                  lambda st: {"sqsum": st.sqsum, "n_tokens": st.n_tokens},
                  lambda d: CalibrationStats(d["sqsum"], d["n_tokens"]))
