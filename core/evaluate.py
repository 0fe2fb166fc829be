"""Perplexity of the (pruned) resident model over token windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, *, progress=None, should_stop=None) -> list[float]:
    """Summed next-token NLL of each [seq] window (seq - 1 predictions each), scored independently."""
    out = []
    n = windows.shape[0]
    for i in range(n):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        batch = windows[i : i + 1]
        logits = model(input_ids=batch).logits
        # Shift the targets, not the logits: slicing [B, T, vocab] logits would copy them (0.5 GB per
        # 512-token window with Gemma's 262k vocabulary).
        targets = torch.full_like(batch, -100)
        targets[:, :-1] = batch[:, 1:]
        out.append(float(F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1),
                                         reduction="sum", ignore_index=-100)))
        if progress:
            progress(i + 1, n)
    return out


def ppl_from_nlls(nlls: list[float], seq_len: int) -> float:
    mean = sum(nlls) / (len(nlls) * (seq_len - 1))
    return math.exp(mean) if mean < 700 else float("inf")


def perplexity(model, windows: torch.Tensor, *, progress=None, should_stop=None) -> float:
    """exp(mean next-token NLL) over [n, seq] windows."""
    return ppl_from_nlls(window_nlls(model, windows, progress=progress, should_stop=should_stop), windows.shape[1])
