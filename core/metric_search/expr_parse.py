"""Text -> tree: a hand-written tokenizer and recursive-descent parser (never eval/ast). Function form
`mul(abs(W), X)` and infix `|W| * X`, `-W`, `(W + G) / X`, `W^2`, `W^0.5` can be mixed."""
from __future__ import annotations

from .expr import ALIASES, BINARY, OPERANDS, UNARY, Node, depth, size

MAX_LEN = 500  # characters of one expression
MAX_PARSE_DEPTH = 12  # tree levels accepted by the parser (the search applies its own, lower, limit)
MAX_NODES = 64


class ParseError(ValueError):
    """`reason` is one of: empty, too_long, bad_char, syntax, unknown_op, unknown_operand, arity, number,
    too_deep, too_big. The message says where."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


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
