"""SparseGPT (Frantar & Alistarh, 2023): prune each projection and update the weights it keeps so that the
layer's output on calibration inputs moves as little as possible.

Per projection W [rows, cols] with H = Σ x xᵀ over its calibration inputs, columns are visited left to
right; a pruned weight's error is spread over the row's later columns through the inverse Hessian of the
columns still unvisited (Optimal Brain Surgeon). Those inverses are the rows of the upper Cholesky factor
of H⁻¹, so one factorisation serves every column; blocks of columns batch the updates. The mask is chosen
per block of columns (the paper's adaptive selection, saliency w² / [H_F⁻¹]_jj) or, for an N:M pattern,
per group of M columns when the group is reached.

The decoder is pruned layer by layer: each layer's Hessians come from the inputs the already-pruned layers
before it produce, as in the paper; within a layer all projections see the dense layer's activations.
"""
from __future__ import annotations

import torch

from ..model.calibration import POINTS, point_module
from ..model.models import ModelArch, decoder_layers, input_device
from .masks import INPUT_POINT, PROJECTIONS, pattern_mask


def _block_mask(W1: torch.Tensor, d2: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured: the `sparsity` share of the block with the lowest saliency w² / d² (ties: lower flat
    index first)."""
    sal = (W1 * W1) / d2.unsqueeze(0)
    k = int(sal.numel() * sparsity)
    mask = torch.zeros_like(W1, dtype=torch.bool)
    if k:
        idx = torch.argsort(sal.flatten(), stable=True)[:k]
        mask.view(-1)[idx] = True
    return mask


def obs_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, *, pattern: tuple[int, int] | None = None,
              blocksize: int = 128, percdamp: float = 0.01, mask: torch.Tensor | None = None) -> torch.Tensor:
    """W pruned to `sparsity` (or to N kept of every M with `pattern=(N, M)`) with the OBS update, float32.
    A given `mask` (True = pruned, chosen beforehand, e.g. by a searched metric) replaces SparseGPT's own choice;
    the update still rebuilds the kept weights.

    H is Σ x xᵀ over the calibration inputs ([cols, cols]); its scale does not matter. Columns that never
    saw a nonzero input are zeroed (nothing downstream depends on them). Under N:M the groups are
    `pattern_mask`'s (M columns from column 0, a ragged tail kept) and `blocksize` rounds up to a multiple of M."""
    W = W.detach().to(torch.float32).clone()
    H = H.detach().to(torch.float32).clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += torch.eye(cols, dtype=H.dtype, device=H.device) * (percdamp * torch.diag(H).mean())
    # upper Cholesky factor of H^-1: row j holds (H_F^-1)[j, j:] / sqrt((H_F^-1)[j, j]) for F = {j, ..., cols-1}
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    fixed = mask
    if fixed is not None:
        pattern = None
    m = pattern[1] if pattern else 0
    if pattern:  # whole groups per block: a group's mask needs weights the lazy update has already reached
        blocksize = -(-blocksize // m) * m
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        d = torch.diag(U1)
        err = torch.zeros_like(W1)
        # N:M fills its mask group by group below; unstructured chooses the whole block now
        if fixed is not None:
            mask = fixed[:, b0:b1].to(W1.device)
        else:
            mask = torch.zeros_like(W1, dtype=torch.bool) if pattern else _block_mask(W1, d * d, sparsity)
        for j in range(b1 - b0):
            if pattern and (b0 + j) % m == 0:  # pattern_mask's groups, tie rule and kept ragged tail
                sal = W1[:, j:j + m] ** 2 / (d[j:j + m] ** 2).unsqueeze(0)
                mask[:, j:j + m] = pattern_mask(sal, pattern)
            w = W1[:, j]
            q = torch.where(mask[:, j], torch.zeros_like(w), w)
            e = (w - q) / d[j]
            W1[:, j:] -= e.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            W1[:, j] = q  # exactly zero where pruned (the update above leaves rounding residue)
            err[:, j] = e
        W[:, b0:b1] = W1
        W[:, b1:] -= err @ U[b0:b1, b1:]
    return W


class _Stop(Exception):
    pass


def _capture_layer_calls(model, layers, windows: torch.Tensor, batch_size: int):
    """Per batch: the first layer's input hidden states and, for every layer, the keyword arguments the model
    passes it (masks and rotary embeddings may differ between layers, e.g. gemma's sliding ones)."""
    calls = [[None] * len(layers) for _ in range(0, windows.shape[0], batch_size)]
    first = []
    batch = {"i": 0}

    def pre(idx):
        def hook(mod, args, kwargs):
            kw = dict(kwargs)
            hidden = args[0] if args else kw.pop("hidden_states")
            kw.pop("past_key_values", None)
            kw.pop("past_key_value", None)
            kw["use_cache"] = False
            calls[batch["i"]][idx] = kw
            if idx == 0:
                first.append(hidden.detach())
            if idx == len(layers) - 1:
                raise _Stop  # the rest of the model is not needed
        return hook

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = input_device(model)
    try:
        for b0 in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[b0:b0 + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
            batch["i"] += 1
    finally:
        for h in handles:
            h.remove()
    return first, calls


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sparsegpt_prune(model, arch: ModelArch, windows: torch.Tensor, sparsity: float, *,
                    pattern: tuple[int, int] | None = None, batch_size: int = 1, blocksize: int = 128,
                    percdamp: float = 0.01, projections=PROJECTIONS, progress=None, masks=None) -> float:
    """Prune every decoder projection of `model` in place with SparseGPT on the calibration `windows`;
    returns the fraction of projection weights now zero. `masks(layer, name)` (True = pruned) chooses the mask
    instead of SparseGPT (Pruner-Zero's metric with SparseGPT's update)."""
    layers = decoder_layers(model)
    hidden, calls = _capture_layer_calls(model, layers, windows, batch_size)
    zeros = total = 0
    for i, (layer, parts) in enumerate(zip(layers, arch.layers)):
        dev = parts.q.weight.device
        H: dict[str, torch.Tensor] = {}

        def make_hook(point):
            def hook(mod, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
                H[point] = H[point] + x.T @ x if point in H else x.T @ x
            return hook

        handles = [point_module(parts, p).register_forward_pre_hook(make_hook(p)) for p in POINTS]
        try:
            for b, h in enumerate(hidden):
                layer(h.to(dev), **calls[b][i])
        finally:
            for hd in handles:
                hd.remove()
        for name in projections:
            lin = getattr(parts, name)
            new = obs_prune(lin.weight, H[INPUT_POINT[name]], sparsity, pattern=pattern, blocksize=blocksize,
                            percdamp=percdamp, mask=masks(i, name) if masks else None)
            lin.weight.copy_(new.to(lin.weight.dtype))
            zeros += int((lin.weight == 0).sum())
            total += lin.weight.numel()
        hidden = [_hidden(layer(h.to(dev), **calls[b][i])) for b, h in enumerate(hidden)]  # pruned outputs
        if progress:
            progress(i + 1, len(layers))
    return zeros / max(total, 1)
