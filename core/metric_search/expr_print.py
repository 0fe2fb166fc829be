"""Tree -> text: function form (`mul(abs(W), X)`) and readable infix (`|W| * X`); both parse back to the
same tree."""
from __future__ import annotations

from .expr import Node


def to_text(node: Node) -> str:
    """Function form, e.g. `mul(abs(W), X)`; parse(to_text(t)) == t."""
    if not node.args:
        return node.op
    return f"{node.op}({', '.join(to_text(a) for a in node.args)})"


_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2)}


def _prec(node: Node) -> int:
    if node.op in _INFIX:
        return _INFIX[node.op][1]
    return 3 if node.op == "neg" else 4


def to_infix(node: Node) -> str:
    """Readable form, e.g. `|W| * X`; parse(to_infix(t)) == t (right operands of equal precedence keep
    their parentheses so the tree shape survives)."""
    if not node.args:
        return node.op
    if node.op == "abs":
        return f"|{to_infix(node.args[0])}|"
    if node.op == "neg":
        a = node.args[0]
        s = to_infix(a)
        return f"-{s}" if _prec(a) >= 3 else f"-({s})"
    if node.op in _INFIX:
        sym, p = _INFIX[node.op]
        a, b = node.args
        sa, sb = to_infix(a), to_infix(b)
        if _prec(a) < p:
            sa = f"({sa})"
        if _prec(b) <= p:
            sb = f"({sb})"
        return f"{sa} {sym} {sb}"
    return f"{node.op}({to_infix(node.args[0])})"
