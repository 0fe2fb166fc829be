"""The safe tensor interpreter: a metric tree evaluated on W, G, X gives scores shaped like W, finite
everywhere (every op output is cleaned of NaN/inf and clamped)."""
from __future__ import annotations

import torch

from .expr import Node

EPS = 1e-12  # guard for div/log/normalisers; well below any real |W|, |G| or ||X||
BIG = 1e30  # every op output is clamped to [-BIG, BIG], so no inf/NaN ever reaches the next op
EXP_MAX = 40.0  # exp input clamp: e^40 ~ 2e17 leaves room for a square before float32 overflows


class MetricError(ValueError):
    """A metric that cannot be evaluated with the given operands (e.g. G without gradients)."""


def _safe(t: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(t, nan=0.0, posinf=BIG, neginf=-BIG).clamp_(-BIG, BIG)


def _div(a, b):
    guard = torch.where(b < 0, torch.full_like(b, -EPS), torch.full_like(b, EPS))
    return a / torch.where(b.abs() < EPS, guard, b)


def _unary(op: str, x: torch.Tensor, rows: int) -> torch.Tensor:
    if op == "abs":
        return x.abs()
    if op == "neg":
        return -x
    if op == "sqrt":
        return x.abs().sqrt()
    if op == "square":
        return x * x
    if op == "log":
        return (x.abs() + EPS).log()
    if op == "exp":
        return x.clamp(max=EXP_MAX).exp()
    if op == "sigmoid":
        return torch.sigmoid(x)
    if op == "mms":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo + EPS)
    if op == "zscore":
        return (x - x.mean()) / (x.std(correction=0) + EPS)
    if op == "rownorm":
        return x / (x.abs().sum(1, keepdim=True) + EPS)
    if op == "colnorm":
        # an X-only subtree is held as one broadcast row; its column sum over the real rows is rows * |x|
        return x / (x.abs().sum(0, keepdim=True) * (rows / x.shape[0]) + EPS)
    raise MetricError(f"unknown unary op {op}")


def _binary(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return _div(a, b)
    raise MetricError(f"unknown binary op {op}")


def evaluate(node: Node, W: torch.Tensor, G: torch.Tensor | None = None,
             X: torch.Tensor | None = None) -> torch.Tensor:
    """Scores shaped like W [out, in]; finite everywhere. X is [in] (or [1, in]); G is like W."""
    W = W.float()
    env = {"W": W, "G": None if G is None else G.float(), "X": None if X is None else X.float().reshape(1, -1)}
    if env["X"] is not None and env["X"].shape[1] != W.shape[1]:
        raise MetricError(f"X has {env['X'].shape[1]} entries, W has {W.shape[1]} input columns")
    rows = W.shape[0]

    def ev(n: Node) -> torch.Tensor:
        if not n.args:
            v = env.get(n.op)
            if v is None:
                raise MetricError(f"metric uses {n.op}, which was not provided")
            return v
        if len(n.args) == 1:
            return _safe(_unary(n.op, ev(n.args[0]), rows))
        return _safe(_binary(n.op, ev(n.args[0]), ev(n.args[1])))

    out = ev(node)
    return out.expand_as(W) if out.shape != W.shape else out
