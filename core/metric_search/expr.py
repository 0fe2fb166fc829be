"""Symbolic pruning metrics (Pruner-Zero): the expression tree and the primitives it is built from.

Operands, per weight matrix W [out, in] of a projection:
  W  the weight;  G  the l2 norm over calibration windows of dLoss/dW (>= 0, same shape);
  X  ||X_j||_2, the norm of input channel j over the calibration tokens (>= 0), broadcast along rows.

Text forms: expr_parse (text -> tree), expr_print (tree -> text). Simplification: expr_simplify. Tensor
interpreter: expr_eval. Genetic operators: expr_gp.
"""
from __future__ import annotations

from dataclasses import dataclass

OPERANDS = ("W", "G", "X")
NONNEG_OPERANDS = frozenset({"G", "X"})  # both are norms
UNARY = ("abs", "sqrt", "square", "log", "exp", "sigmoid", "neg", "mms", "zscore", "rownorm", "colnorm")
BINARY = ("add", "sub", "mul", "div")
COMMUTATIVE = frozenset({"add", "mul"})
NONNEG_OPS = frozenset({"abs", "sqrt", "square", "exp", "sigmoid", "mms"})
ALIASES = {"sqr": "square", "pow2": "square", "zsn": "zscore", "minmax": "mms", "sig": "sigmoid"}


@dataclass(frozen=True, slots=True)
class Node:
    """An operand (op in OPERANDS, no args) or an operator applied to its args. Immutable and hashable."""
    op: str
    args: tuple["Node", ...] = ()

    def __str__(self) -> str:
        from .expr_print import to_text  # the printer imports Node

        return to_text(self)


MAGNITUDE = Node("abs", (Node("W"),))
WANDA = Node("mul", (MAGNITUDE, Node("X")))
KNOWN_METRICS = {  # published metrics that live in this space (usable as seeds or baselines)
    "magnitude": "abs(W)",
    "wanda": "mul(abs(W), X)",
    "pruner-zero": "mul(mms(G), square(W))",  # Dong et al. 2024, the metric their GP found for LLaMA
    "ria": "mul(add(colnorm(abs(W)), rownorm(abs(W))), sqrt(X))",  # Zhang et al. 2024, a = 0.5
}


# ---- shape ------------------------------------------------------------------------------------
def depth(node: Node) -> int:
    """Tree levels: `W` is 1, `abs(W)` 2."""
    return 1 + max((depth(a) for a in node.args), default=0)


def size(node: Node) -> int:
    return 1 + sum(size(a) for a in node.args)


def operands_used(node: Node) -> set[str]:
    if not node.args:
        return {node.op}
    return set().union(*(operands_used(a) for a in node.args))
