"""Genetic-programming operators on metric trees: the primitive set, subtree paths and replacement,
random trees (grow / full), subtree crossover and mutation."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .expr import BINARY, OPERANDS, UNARY, Node, depth


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
