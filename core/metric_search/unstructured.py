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
from .masks import INPUT_POINT, PROJECTIONS, parse_pattern, pattern_mask, prune_mask  # noqa: F401 - re-exported

# A metric is a tree, its text, or any function (W, G, X) -> scores shaped like W.
ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
Metric = Union[Node, str, ScoreFn]


def metric_scores(metric: Metric, W: torch.Tensor, G: torch.Tensor | None, X: torch.Tensor) -> torch.Tensor:
    if isinstance(metric, str):
        metric = parse(metric)
    if isinstance(metric, Node):
        return evaluate(metric, W, G, X)
    return metric(W.float(), G, X.float().reshape(1, -1)).expand_as(W)


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
                        *, batch_size: int = 1, progress=None, metric: Metric | None = None) -> float:
        """SparseGPT instead of a metric (weights are updated, not only masked), from the original weights;
        with a `metric`, the metric chooses each mask (from the dense weights and statistics) and SparseGPT's
        update rebuilds the kept weights. `restore()` undoes it like any metric."""
        from .sparsegpt import sparsegpt_prune

        if isinstance(metric, str):
            metric = parse(metric)
        masks = None if metric is None else (lambda i, n: prune_mask(self.scores(metric, i, n), sparsity, pattern))
        self.restore()
        self.pruned = True
        return sparsegpt_prune(model, self.arch, windows, sparsity, pattern=pattern, batch_size=batch_size,
                               projections=self.projections, progress=progress, masks=masks)

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
