"""Symbolic pruning metrics (Pruner-Zero), as one import: re-exports the expr* modules, where the code lives.

  expr           Node, the primitive tables (OPERANDS, UNARY, BINARY, ...), known metrics, depth/size
  expr_parse     text -> tree (tokenizer, recursive-descent parser, ParseError)
  expr_print     tree -> text (to_text, to_infix)
  expr_simplify  canonical form, ranking form, de-duplication key
  expr_eval      the safe tensor interpreter (evaluate, MetricError)
  expr_gp        genetic operators (Primitives, random_tree, crossover, mutate, subtrees, replace)

New code should import from those modules directly.
"""
from __future__ import annotations

from .expr import (ALIASES, BINARY, COMMUTATIVE, KNOWN_METRICS, MAGNITUDE, NONNEG_OPERANDS, NONNEG_OPS, OPERANDS,
                   UNARY, WANDA, Node, depth, operands_used, size)
from .expr_eval import BIG, EPS, EXP_MAX, MetricError, evaluate
from .expr_gp import Primitives, crossover, mutate, random_tree, replace, subtrees
from .expr_parse import MAX_LEN, MAX_NODES, MAX_PARSE_DEPTH, ParseError, parse
from .expr_print import to_infix, to_text
from .expr_simplify import canonical, canonical_text, metric_key, nonneg, ranking_form

__all__ = [
    "ALIASES", "BINARY", "BIG", "COMMUTATIVE", "EPS", "EXP_MAX", "KNOWN_METRICS", "MAGNITUDE", "MAX_LEN", "MAX_NODES",
    "MAX_PARSE_DEPTH", "NONNEG_OPERANDS", "NONNEG_OPS", "OPERANDS", "UNARY", "WANDA", "MetricError", "Node",
    "ParseError", "Primitives", "canonical", "canonical_text", "crossover", "depth", "evaluate", "metric_key",
    "mutate", "nonneg", "operands_used", "parse", "random_tree", "ranking_form", "replace", "size", "subtrees",
    "to_infix", "to_text",
]
