"""Canonical forms: opposing-operation simplification plus commutative ordering (`canonical`), the
per-row ranking form that also identifies e.g. sqrt(|W|*X) with Wanda (`ranking_form`), and the
de-duplication key built from them (`metric_key`)."""
from __future__ import annotations

from .expr import COMMUTATIVE, NONNEG_OPERANDS, NONNEG_OPS, Node, depth, size
from .expr_print import to_text


def nonneg(node: Node) -> bool:
    """True when the node's value is >= 0 everywhere, by construction."""
    if not node.args:
        return node.op in NONNEG_OPERANDS
    if node.op in NONNEG_OPS:
        return True
    if node.op in ("rownorm", "colnorm"):
        return nonneg(node.args[0])
    if node.op in ("add", "mul", "div"):
        return all(nonneg(a) for a in node.args)
    return False


def _order(node: Node):
    return (-size(node), to_text(node))


def _combine(op: str, items: list[Node]) -> Node:
    """A canonical tree for op over a multiset of operands: always join the two shallowest (ties by text),
    which gives the minimum depth, so canonicalising never makes a tree deeper."""
    pool = sorted(items, key=lambda n: (depth(n), to_text(n)))
    while len(pool) > 1:
        a, b = sorted(pool[:2], key=_order)
        pool = sorted(pool[2:] + [Node(op, (a, b))], key=lambda n: (depth(n), to_text(n)))
    return pool[0]


def _flatten(node: Node, op: str) -> list[Node]:
    if node.op != op:
        return [node]
    return [x for a in node.args for x in _flatten(a, op)]


_IDEMPOTENT = {  # outer(inner(x)) -> outer(x): normalisations absorb positive affine maps / themselves
    ("mms", "mms"), ("mms", "zscore"), ("zscore", "zscore"), ("zscore", "mms"),
    ("rownorm", "rownorm"), ("colnorm", "colnorm"),
}


def _rewrite(n: Node) -> Node:
    """One rule at the root of n (children are already canonical); returns n itself when none applies."""
    op, args = n.op, n.args
    if not args:
        return n
    if len(args) == 1:
        x = args[0]
        if op == "abs" and nonneg(x):
            return x  # abs(abs x), abs(square x), abs(X)...
        if op == "neg" and x.op == "neg":
            return x.args[0]
        if op == "neg" and x.op == "sub":
            return Node("sub", (x.args[1], x.args[0]))
        if op in ("abs", "square", "sqrt", "log") and x.op in ("neg", "abs"):
            return Node(op, x.args)  # these ignore the sign of their input
        if (op, x.op) in (("exp", "log"), ("sqrt", "square"), ("square", "sqrt")):
            return Node("abs", x.args)  # log, sqrt take |x|, so the round trip gives |x| (exp(log) up to eps)
        if (op, x.op) == ("log", "exp"):
            return x.args[0]
        if (op, x.op) in _IDEMPOTENT:
            return Node(op, x.args)
        return n
    a, b = args
    if op == "mul" and a == b:
        return Node("square", (a,))
    if op in ("mul", "div") and a.op == "neg" and b.op == "neg":
        return Node(op, (a.args[0], b.args[0]))
    if op == "add" and b.op == "neg":
        return Node("sub", (a, b.args[0]))
    if op == "add" and a.op == "neg":
        return Node("sub", (b, a.args[0]))
    if op == "sub" and b.op == "neg":
        return Node("add", (a, b.args[0]))
    if op in COMMUTATIVE:
        return _combine(op, _flatten(n, op))
    return n


def _simplify(n: Node) -> Node:
    # Every rule shrinks the tree except the commutative reordering, which is idempotent: this terminates.
    if n.args:
        n = Node(n.op, tuple(_simplify(a) for a in n.args))
    m = _rewrite(n)
    return n if m == n else _simplify(m)


def canonical(node: Node) -> Node:
    """Opposing-operation simplification plus commutative ordering, to a fixpoint. Never deeper or larger."""
    for _ in range(16):
        nxt = _simplify(node)
        if nxt == node:
            break
        node = nxt
    return node


def canonical_text(node: Node) -> str:
    return to_text(canonical(node))


_RANK_STRIP_ANY = frozenset({"mms", "zscore", "rownorm"})  # positive affine, globally or per row
_RANK_STRIP_NONNEG = frozenset({"sqrt", "square", "log", "abs"})  # increasing on x >= 0


def ranking_form(node: Node) -> Node:
    """Strip root wrappers that are increasing within a row: unstructured pruning compares scores per
    output row, so `sqrt(mul(abs(W), X))` prunes exactly what Wanda prunes (up to float rounding).
    Only valid for per-row pruning, not for structured sums."""
    node = canonical(node)
    while node.args and (node.op in _RANK_STRIP_ANY or (node.op in _RANK_STRIP_NONNEG and nonneg(node.args[0]))):
        node = node.args[0]
    return node


def metric_key(node: Node, by_ranking: bool = True) -> str:
    """De-duplication key: the canonical text, or that of the ranking form."""
    return to_text(ranking_form(node) if by_ranking else canonical(node))
