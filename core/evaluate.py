"""Perplexity of the (pruned) resident model over token windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, *, batch_size: int = 1, progress=None, should_stop=None) -> float:
    """exp(mean next-token NLL) over [n, seq] windows; each window is scored independently."""
    total_nll, total_tokens = 0.0, 0
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        batch = windows[start : start + batch_size]
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += targets.numel()
        if progress:
            progress(min(start + batch_size, n), n)
    mean = total_nll / total_tokens
    return math.exp(mean) if mean < 700 else float("inf")
