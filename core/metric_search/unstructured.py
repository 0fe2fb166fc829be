"""Apply any metric as unstructured pruning of every decoder projection, on one resident model.

Like Wanda, each output row of a weight matrix is its own comparison group: the `sparsity` fraction of
lowest-scoring weights in every row is zeroed. The pruner keeps a copy of the projection weights only
(not the embeddings), so one loaded model evaluates any number of metrics: `apply()` always scores the
original weights and `restore()` puts them back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Union

import torch

from ..model.calibration import CalibrationStats
from ..model.models import ModelArch
from .expr import Node
from .expr_eval import evaluate
from .expr_parse import parse

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
INPUT_POINT = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in",
               "gate": "mlp_in", "up": "mlp_in", "down": "down_in"}

# A metric is a tree, its text, or any function (W, G, X) -> scores shaped like W.
ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
Metric = Union[Node, str, ScoreFn]


def metric_scores(metric: Metric, W: torch.Tensor, G: torch.Tensor | None, X: torch.Tensor) -> torch.Tensor:
    if isinstance(metric, str):
        metric = parse(metric)
    if isinstance(metric, Node):
        return evaluate(metric, W, G, X)
    return metric(W.float(), G, X.float().reshape(1, -1)).expand_as(W)


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


def _grad(grads, layer: int, name: str):
    return None if grads is None else grads.get(layer, name)


class UnstructuredPruner:
    """Owns a copy of every projection weight of `arch`; `grads` (GradientStats) is needed only by
    metrics that use G."""

    def __init__(self, arch: ModelArch, stats: CalibrationStats, grads=None, projections=PROJECTIONS):
        self.arch, self.stats, self.grads, self.projections = arch, stats, grads, tuple(projections)
        self._orig = {(i, n): getattr(p, n).weight.detach().clone()
                      for i, p in enumerate(arch.layers) for n in self.projections}
        self.pruned = False

    def _linear(self, layer: int, name: str):
        return getattr(self.arch.layers[layer], name)

    def scores(self, metric: Metric, layer: int, name: str) -> torch.Tensor:
        W = self._orig[(layer, name)]
        return metric_scores(metric, W, _grad(self.grads, layer, name), self.stats.norm(layer, INPUT_POINT[name]))

    @torch.no_grad()
    def apply(self, metric: Metric, sparsity: float, pattern: tuple[int, int] | None = None) -> float:
        """Prune (from the original weights) and return the fraction of projection weights now zero;
        an N:M `pattern` replaces the per-row `sparsity`."""
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if isinstance(metric, str):
            metric = parse(metric)
        self.restore()
        self.pruned = True  # set first: a failure half-way still restores on the next call
        zeros = total = 0
        for (i, n), W0 in self._orig.items():
            mask = prune_mask(self.scores(metric, i, n), sparsity, pattern)
            w = self._linear(i, n).weight
            w.copy_(W0)
            w.masked_fill_(mask, 0.0)
            # counted from the shape, not the mask: prune_mask takes exactly this many per row
            zeros += mask.shape[0] * (mask.shape[1] // pattern[1] * (pattern[1] - pattern[0]) if pattern
                                      else int(mask.shape[1] * sparsity))
            total += mask.numel()
        return zeros / max(total, 1)

    def apply_sparsegpt(self, model, windows: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None = None,
                        *, batch_size: int = 1, progress=None) -> float:
        """SparseGPT instead of a metric (weights are updated, not only masked), from the original weights;
        `restore()` undoes it like any metric."""
        from .sparsegpt import sparsegpt_prune

        self.restore()
        self.pruned = True
        return sparsegpt_prune(model, self.arch, windows, sparsity, pattern=pattern, batch_size=batch_size,
                               projections=self.projections, progress=progress)

    @torch.no_grad()
    def restore(self) -> None:
        if not self.pruned:
            return
        for (i, n), W0 in self._orig.items():
            self._linear(i, n).weight.copy_(W0)
        self.pruned = False

    @contextmanager
    def pruned_with(self, metric: Metric, sparsity: float, pattern: tuple[int, int] | None = None):
        try:
            yield self.apply(metric, sparsity, pattern)
        finally:
            self.restore()
