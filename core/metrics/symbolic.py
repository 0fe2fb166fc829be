"""Symbolic pruning metrics (Pruner-Zero): expression trees over W, G, X, their text forms, a safe tensor
interpreter, canonical forms, and the genetic operators.

Operands, per weight matrix W [out, in] of a projection:
  W  the weight;  G  the l2 norm over calibration windows of dLoss/dW (>= 0, same shape);
  X  ||X_j||_2, the norm of input channel j over the calibration tokens (>= 0), broadcast along rows.

Text is parsed by a hand-written tokenizer and recursive-descent parser (never eval/ast): function form
`mul(abs(W), X)` and infix `|W| * X`, `-W`, `(W + G) / X`, `W^2`, `W^0.5` can be mixed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

EPS = 1e-12  # guard for div/log/normalisers; well below any real |W|, |G| or ||X||
BIG = 1e30  # every op output is clamped to [-BIG, BIG], so no inf/NaN ever reaches the next op
EXP_MAX = 40.0  # exp input clamp: e^40 ~ 2e17 leaves room for a square before float32 overflows

OPERANDS = ("W", "G", "X")
NONNEG_OPERANDS = frozenset({"G", "X"})  # both are norms
UNARY = ("abs", "sqrt", "square", "log", "exp", "sigmoid", "neg", "mms", "zscore", "rownorm", "colnorm")
BINARY = ("add", "sub", "mul", "div")
COMMUTATIVE = frozenset({"add", "mul"})
NONNEG_OPS = frozenset({"abs", "sqrt", "square", "exp", "sigmoid", "mms"})
ALIASES = {"sqr": "square", "pow2": "square", "zsn": "zscore", "minmax": "mms", "sig": "sigmoid"}

MAX_LEN = 500  # characters of one expression
MAX_PARSE_DEPTH = 12  # tree levels accepted by the parser (the search applies its own, lower, limit)
MAX_NODES = 64


@dataclass(frozen=True, slots=True)
class Node:
    """An operand (op in OPERANDS, no args) or an operator applied to its args. Immutable and hashable."""
    op: str
    args: tuple["Node", ...] = ()

    def __str__(self) -> str:
        return to_text(self)


MAGNITUDE = Node("abs", (Node("W"),))
WANDA = Node("mul", (MAGNITUDE, Node("X")))
KNOWN_METRICS = {  # published metrics that live in this space (usable as seeds or baselines)
    "magnitude": "abs(W)",
    "wanda": "mul(abs(W), X)",
    "pruner-zero": "mul(mms(G), square(W))",  # Dong et al. 2024, the metric their GP found for LLaMA
    "ria": "mul(add(colnorm(abs(W)), rownorm(abs(W))), sqrt(X))",  # Zhang et al. 2024, a = 0.5
}


class ParseError(ValueError):
    """`reason` is one of: empty, too_long, bad_char, syntax, unknown_op, unknown_operand, arity, number,
    too_deep, too_big. The message says where."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


# ---- text -> tree ------------------------------------------------------------------------------
_SYMBOLS = set("(),+-*/^|")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, position) with kind in name | num | sym."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isascii() and (c.isalpha() or c == "_"):
            j = i
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.append(("name", text[i:j], i))
            i = j
        elif c.isascii() and c.isdigit():
            j = i
            while j < n and text[j].isascii() and (text[j].isdigit() or text[j] == "."):
                j += 1
            out.append(("num", text[i:j], i))
            i = j
        elif c == "*" and text[i + 1 : i + 2] == "*":  # Python's power operator, read as ^
            out.append(("sym", "^", i))
            i += 2
        elif c in _SYMBOLS:
            out.append(("sym", c, i))
            i += 1
        else:
            raise ParseError("bad_char", f"unexpected character {c!r} at {i}")
    return out


class _Parser:
    def __init__(self, tokens, operands, max_depth):
        self.toks, self.pos, self.operands = tokens, 0, operands
        self.nesting_limit = 4 * max_depth + 8  # bounds the recursion itself, before any tree exists
        self.nesting = 0

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else ("end", "", -1)

    def take(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def expect(self, sym: str):
        kind, val, at = self.take()
        if (kind, val) != ("sym", sym):
            where = f"at {at}" if at >= 0 else "at the end"
            got = f", got {val!r}" if val else ""
            raise ParseError("syntax", f"expected {sym!r} {where}{got}")

    def nest(self):
        self.nesting += 1
        if self.nesting > self.nesting_limit:
            raise ParseError("too_deep", "expression nests too deeply")

    def expr(self) -> Node:  # expr := term (('+'|'-') term)*
        self.nest()
        node = self.term()
        while self.peek()[:2] in (("sym", "+"), ("sym", "-")):
            op = "add" if self.take()[1] == "+" else "sub"
            node = Node(op, (node, self.term()))
        self.nesting -= 1
        return node

    def term(self) -> Node:  # term := unary (('*'|'/') unary)*
        node = self.unary()
        while self.peek()[:2] in (("sym", "*"), ("sym", "/")):
            op = "mul" if self.take()[1] == "*" else "div"
            node = Node(op, (node, self.unary()))
        return node

    def unary(self) -> Node:  # unary := '-' unary | power
        if self.peek()[:2] == ("sym", "-"):
            self.take()
            self.nest()
            node = Node("neg", (self.unary(),))
            self.nesting -= 1
            return node
        return self.power()

    def power(self) -> Node:  # power := atom ('^' 2 | '^' 0.5)?  -- the only constants in the space
        node = self.atom()
        if self.peek()[:2] == ("sym", "^"):
            self.take()
            kind, val, at = self.take()
            if kind != "num":
                raise ParseError("syntax", f"expected an exponent after '^' at {at}")
            try:
                e = float(val)
            except ValueError:
                raise ParseError("number", f"bad number {val!r} at {at}") from None
            if e == 2:
                return Node("square", (node,))
            if e == 0.5:
                return Node("sqrt", (node,))
            raise ParseError("number", f"only ^2 and ^0.5 are allowed, got ^{val} at {at}")
        return node

    def atom(self) -> Node:
        kind, val, at = self.take()
        if kind == "end":
            raise ParseError("syntax", "unexpected end of expression")
        if kind == "num":
            raise ParseError("number", f"constants are not part of the metric space ({val!r} at {at})")
        if (kind, val) == ("sym", "("):
            node = self.expr()
            self.expect(")")
            return node
        if (kind, val) == ("sym", "|"):
            node = Node("abs", (self.expr(),))
            self.expect("|")
            return node
        if kind == "sym":
            raise ParseError("syntax", f"unexpected {val!r} at {at}")
        if self.peek()[:2] == ("sym", "("):
            return self.call(val, at)
        name = val.upper() if len(val) == 1 else val
        if name in self.operands:
            return Node(name)
        if name in OPERANDS:
            raise ParseError("unknown_operand",
                             f"operand {name} is not available here (allowed: {', '.join(self.operands)})")
        raise ParseError("unknown_operand", f"unknown operand {val!r} at {at} (allowed: {', '.join(self.operands)})")

    def call(self, name: str, at: int) -> Node:
        op = ALIASES.get(name.lower(), name.lower())
        if op not in UNARY and op not in BINARY:
            raise ParseError("unknown_op", f"unknown function {name!r} at {at}")
        self.take()  # '('
        args = []
        if self.peek()[:2] != ("sym", ")"):
            args.append(self.expr())
            while self.peek()[:2] == ("sym", ","):
                self.take()
                args.append(self.expr())
        self.expect(")")
        want = 1 if op in UNARY else 2
        if len(args) != want:
            plural = "s" if want > 1 else ""
            raise ParseError("arity", f"{op} takes {want} argument{plural}, got {len(args)} (at {at})")
        return Node(op, tuple(args))


def parse(text: str, *, operands=OPERANDS, max_depth: int = MAX_PARSE_DEPTH, max_nodes: int = MAX_NODES,
          max_len: int = MAX_LEN) -> Node:
    """Text -> tree, or ParseError with a reason code. Depth counts levels: `W` is 1, `abs(W)` 2."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty", "no expression")
    if len(text) > max_len:
        raise ParseError("too_long", f"{len(text)} characters (limit {max_len})")
    p = _Parser(_tokenize(text), tuple(operands), max_depth)
    node = p.expr()
    if p.pos != len(p.toks):
        _, val, at = p.peek()
        raise ParseError("syntax", f"unexpected {val!r} at {at} after a complete expression")
    if depth(node) > max_depth:
        raise ParseError("too_deep", f"depth {depth(node)} exceeds {max_depth}")
    if size(node) > max_nodes:
        raise ParseError("too_big", f"{size(node)} nodes exceed {max_nodes}")
    return node


# ---- tree -> text ------------------------------------------------------------------------------
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


# ---- shape ------------------------------------------------------------------------------------
def depth(node: Node) -> int:
    return 1 + max((depth(a) for a in node.args), default=0)


def size(node: Node) -> int:
    return 1 + sum(size(a) for a in node.args)


def operands_used(node: Node) -> set[str]:
    if not node.args:
        return {node.op}
    return set().union(*(operands_used(a) for a in node.args))


def subtrees(node: Node, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Node]]:
    """(path, subtree) in preorder; a path is the child indices from the root."""
    out = [(path, node)]
    for i, a in enumerate(node.args):
        out.extend(subtrees(a, path + (i,)))
    return out


def replace(node: Node, path: tuple[int, ...], new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    args = node.args[:i] + (replace(node.args[i], path[1:], new),) + node.args[i + 1 :]
    return Node(node.op, args)


# ---- canonical form ---------------------------------------------------------------------------
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


# ---- interpreter ------------------------------------------------------------------------------
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


# ---- genetic operators -------------------------------------------------------------------------
@dataclass(frozen=True)
class Primitives:
    """The search space: which operands and operators random trees are built from."""
    operands: tuple[str, ...] = OPERANDS
    unary: tuple[str, ...] = UNARY
    binary: tuple[str, ...] = BINARY
    p_binary: float = 0.5  # chance an inner node is binary (else unary), so trees are not unary chains
    p_leaf: float = 0.3  # 'grow': chance a non-root node above the depth limit is a leaf


def random_tree(rng: random.Random, max_depth: int, prims: Primitives, method: str = "grow") -> Node:
    """`full`: every branch reaches max_depth; `grow`: branches may stop early. The root is never a leaf
    (when max_depth > 1)."""

    def build(level: int) -> Node:
        if level >= max_depth or (level > 1 and method == "grow" and rng.random() < prims.p_leaf):
            return Node(rng.choice(prims.operands))
        if prims.binary and (not prims.unary or rng.random() < prims.p_binary):
            return Node(rng.choice(prims.binary), (build(level + 1), build(level + 1)))
        return Node(rng.choice(prims.unary), (build(level + 1),))

    return build(1)


def crossover(rng: random.Random, a: Node, b: Node, max_depth: int) -> Node | None:
    """Replace a random subtree of a by a random subtree of b that keeps the result within max_depth."""
    path, _ = rng.choice(subtrees(a))
    room = max_depth - len(path)
    donors = [s for _, s in subtrees(b) if depth(s) <= room]
    if not donors:
        return None
    return replace(a, path, rng.choice(donors))


def mutate(rng: random.Random, t: Node, max_depth: int, prims: Primitives, max_subtree_depth: int = 3) -> Node:
    """Subtree mutation (a fresh random subtree) or point mutation (another op of the same arity / another
    operand), with equal chance."""
    path, old = rng.choice(subtrees(t))
    if rng.random() < 0.5:
        room = max(1, min(max_subtree_depth, max_depth - len(path)))
        return replace(t, path, random_tree(rng, rng.randint(1, room), prims, "grow"))
    pool = prims.operands if not old.args else prims.unary if len(old.args) == 1 else prims.binary
    choices = [p for p in pool if p != old.op] or list(pool)
    return replace(t, path, Node(rng.choice(choices), old.args))
