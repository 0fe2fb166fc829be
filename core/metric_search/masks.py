"""Which weights a per-row or N:M unstructured pruning removes, given their scores: shared by the metric
pruner (unstructured.py) and SparseGPT (sparsegpt.py), so neither imports the other's module for it."""
from __future__ import annotations

import torch

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
INPUT_POINT = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in",
               "gate": "mlp_in", "up": "mlp_in", "down": "down_in"}


def parse_pattern(text: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): N weights kept of every M consecutive inputs of a row (the semi-structured
    sparsity GPUs accelerate); None or '' -> None."""
    if not text:
        return None
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"a pattern is N:M (N kept of every M), e.g. 2:4; got {text!r}") from None
    if not 0 < n < m:
        raise ValueError(f"a pattern N:M needs 0 < N < M, got {text!r}")
    return n, m


def pattern_mask(scores: torch.Tensor, pattern: tuple[int, int]) -> torch.Tensor:
    """True where a weight is pruned under N:M: the M-N lowest scores of each group of M consecutive columns
    (ties: lower column first). Columns past the last whole group are kept."""
    n, m = pattern
    rows, cols = scores.shape
    whole = cols - cols % m
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    s = torch.nan_to_num(scores[:, :whole].float(), nan=float("-inf")).reshape(rows, whole // m, m)
    drop = torch.argsort(s, dim=2, stable=True)[..., : m - n]
    mask[:, :whole] = torch.zeros_like(s, dtype=torch.bool).scatter_(2, drop, True).reshape(rows, whole)
    return mask


def prune_mask(scores: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """True where a weight is pruned: the int(in·sparsity) lowest scores of every row (ties: lower column
    index first, as Wanda's stable sort), or the N:M `pattern`'s choice (which sets the sparsity)."""
    if pattern:
        return pattern_mask(scores, pattern)
    k = int(scores.shape[1] * sparsity)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    s = torch.nan_to_num(scores.float(), nan=float("-inf"))  # a NaN score never protects a weight
    # Same set as the first k of a stable sort, ~4x cheaper: everything below the k-th value, then the
    # lowest-index ties at it until each row has k.
    kth = torch.kthvalue(s, k, dim=1, keepdim=True).values
    mask = s <= kth
    if bool((mask.sum(1) == k).all()):  # no ties at the k-th value (the usual case)
        return mask
    below = s < kth
    tie = s == kth
    return below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))
