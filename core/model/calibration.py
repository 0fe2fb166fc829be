"""Activation statistics from ONE pass over the calibration tokens.

For every decoder layer we keep the per-input-feature sum of squares of the activations entering the
attention projections (q/k/v share it), o_proj, the MLP (gate/up share it) and down_proj. Square roots
of these are the ||X_j||_2 of Wanda / Wanda-sp. Statistics are cached on disk under a key that covers the
checkpoint's fingerprint, the head/channel order the model is in, and the exact token windows (shape
and bytes), so a resumed or repeated run skips the pass and no entry can be read for another model state.

The sums accumulate in float64 whatever the model's dtype, on the device of the layer they belong to (with
--device-map auto, spread like the layers); the disk cache holds them on the CPU and a load puts each
layer's back on that layer's device.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from .models import ModelArch, cache_root

POINTS = ("attn_in", "o_in", "mlp_in", "down_in")


SUM_POINTS = ("o_in", "down_in")  # inputs whose mean a removed unit's output is compensated with (FLAP)


@dataclass
class CalibrationStats:
    sqsum: list[dict[str, torch.Tensor]]  # per layer: point -> [in_features] float64 sum of x_j^2
    n_tokens: int
    order: str = "dense"  # the model's head/channel order the o_in/down_in entries are in (models.order_digest)
    xsum: list[dict[str, torch.Tensor]] | None = None  # per layer: SUM_POINTS -> [in_features] float64 sum of x_j

    def norm(self, layer: int, point: str) -> torch.Tensor:
        """||X_j||_2 over the calibration tokens, float32."""
        return self.sqsum[layer][point].sqrt().float()

    def mean(self, layer: int, point: str) -> torch.Tensor:
        """E[x_j] over the calibration tokens, float64 (o_in and down_in only)."""
        return self.xsum[layer][point] / self.n_tokens


def point_module(parts, point):
    """The projection whose input is calibration point `point` of a layer."""
    return {"attn_in": parts.q, "o_in": parts.o, "mlp_in": parts.gate, "down_in": parts.down}[point]


def layer_device(arch: ModelArch, layer: int) -> torch.device:
    return arch.layers[layer].q.weight.device


def to_layers(arch: ModelArch, per_layer: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Each layer's tensors on that layer's device (a no-op where they already are)."""
    return [{k: v.to(layer_device(arch, i)) for k, v in d.items()} for i, d in enumerate(per_layer)]


def to_cpu(per_layer: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.cpu() for k, v in d.items()} for d in per_layer]


def _decoder_only(model):
    """The decoder without the LM head when the model is a plain head-on-decoder (the hooks are all inside
    the decoder: the head's logits would only cost time and memory), else the model."""
    from .evaluate import _plain_head
    split = _plain_head(model)
    return split[0] if split else model


@torch.no_grad()
def forward_with_inputs(model, arch: ModelArch, windows: torch.Tensor, points, on_input, progress=None,
                        batch_size: int = 1) -> None:
    """Forward `windows` ([n, seq]) through the decoder `batch_size` windows at a time, calling
    on_input(layer, point, x) with every calibration point's input as a [tokens, features] tensor."""
    from .models import input_device

    hooks = []
    for i, parts in enumerate(arch.layers):
        for point in points:
            def hook(mod, args, i=i, point=point):
                on_input(i, point, args[0].detach().reshape(-1, args[0].shape[-1]))
            hooks.append(point_module(parts, point).register_forward_pre_hook(hook))
    forward, device, n = _decoder_only(model), input_device(model), windows.shape[0]
    try:
        for b in range(0, n, batch_size):
            forward(input_ids=windows[b : b + batch_size].to(device), use_cache=False)
            if progress:
                progress(min(b + batch_size, n), n)
    finally:
        for h in hooks:
            h.remove()


def _add(acc: dict, key, value: torch.Tensor) -> None:
    acc[key] = value if key not in acc else acc[key] + value


def collect_stats(model, arch: ModelArch, windows: torch.Tensor, progress=None,
                  batch_size: int = 1) -> CalibrationStats:
    """Forward `windows` once with input hooks on the projections: per-feature sums of squares and (o_in,
    down_in) sums, in float64."""
    from .models import order_digest

    sqsum = [dict() for _ in range(arch.n_layers)]
    xsum = [dict() for _ in range(arch.n_layers)]

    def on_input(i, point, x):
        x = x.double()
        _add(sqsum[i], point, (x * x).sum(0))
        if point in SUM_POINTS:
            _add(xsum[i], point, x.sum(0))
    forward_with_inputs(model, arch, windows, POINTS, on_input, progress, batch_size)
    return CalibrationStats(sqsum, int(windows.numel()), order_digest(model), xsum)


def cache_key(fingerprint: str, order: str, windows: torch.Tensor) -> str:
    """Checkpoint, head/channel order, window shape and tokens: 256- and 512-token windows over the same
    text, or a permuted and a dense model, never share an entry."""
    h = hashlib.sha256(f"{fingerprint}|{order}|{tuple(windows.shape)}|".encode())
    h.update(windows.cpu().numpy().tobytes())
    return f"{fingerprint}-{h.hexdigest()[:16]}"


def cached(kind: str, key: str, compute, pack, unpack):
    """(value, from_cache): a result kept under cache_root()/kind/key.pt. A corrupt entry is recomputed and a
    read-only cache only costs time."""
    from .gguf_cache import code_version
    path = cache_root() / kind / f"{key}-{code_version()}.pt"  # a new writer never reads an old entry
    if path.exists():
        try:
            return unpack(torch.load(path, weights_only=True, map_location="cpu")), True
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
                    progress=None, batch_size: int = 1) -> tuple[CalibrationStats, bool, str]:
    """Returns (stats, from_cache, key). The statistics are in the model's current head/channel order, each
    layer's on that layer's device."""
    from .models import order_digest

    order = order_digest(model)
    key = cache_key(fingerprint, order, windows)
    stats, hit = cached("calibration", key, lambda: collect_stats(model, arch, windows, progress, batch_size),
                        lambda st: {"sqsum": to_cpu(st.sqsum), "xsum": to_cpu(st.xsum), "n_tokens": st.n_tokens},
                        # an entry from before xsum was kept raises KeyError here and is collected again
                        lambda d: CalibrationStats(to_layers(arch, d["sqsum"]), d["n_tokens"], order,
                                                   to_layers(arch, d["xsum"])))
    return stats, hit, key
