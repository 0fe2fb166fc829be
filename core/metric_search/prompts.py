"""The LLM side of the Pruner-Zero metric search: the prompt that asks for new metrics, the reader that
pulls expression lines out of a free-text reply, and a GBNF grammar that lets a base model write only
parseable metrics."""
from __future__ import annotations

import math
import re
from importlib import resources
from string import Template
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the search imports this module
    from .pruner_zero import MetricCandidate, MetricSearchConfig


def _template(name: str) -> Template:
    return Template(resources.files("selfpruner.prompts").joinpath(name).read_text(encoding="utf-8"))


def _by_fitness(c: "MetricCandidate"):
    f = c.fitness
    return (f if f == f else math.inf, c.id)  # NaN sorts last, like inf (the search's ranking)


_OPERAND_TEXT = {"W": "W = the weight", "G": "G = gradient magnitude of the loss w.r.t. the weight (>= 0)",
                 "X": "X = l2 norm of the input feature the weight multiplies (>= 0)"}


def build_metric_prompt(cfg: "MetricSearchConfig", population: list["MetricCandidate"], n: int) -> str:
    """The task text (prompts/metric_task.txt) and the population with fitnesses (prompts/metric_propose.txt)."""
    ops = ", ".join(f"{o}(x)" for o in cfg.unary) + ", " + ", ".join(f"{o}(x, y)" for o in cfg.binary)
    lines = "\n".join(f"{c.fitness:10.2f}  {c.canonical}" for c in sorted(population, key=_by_fitness))
    values = dict(model=cfg.model or "gemma-3-270m", sparsity=f"{round(cfg.sparsity * 100)}%",
                  operands="; ".join(_OPERAND_TEXT[o] for o in cfg.operands), operators=ops,
                  max_depth=cfg.max_depth, n=n, population=lines)
    return _template("metric_task.txt").safe_substitute(values).rstrip() + "\n\n" + \
        _template("metric_propose.txt").safe_substitute(values).rstrip() + "\n"


_LEAD = re.compile(r"^(?:[-*•]\s+|\(?\d+[.)]\s+)?(?:-?\d+(?:\.\d+)?\s+)?")  # bullets, "3.", a fitness value
_HAS_OPERAND = re.compile(r"(?<![A-Za-z0-9_])[WGX](?![A-Za-z0-9_])")


def extract_expressions(reply: str, max_lines: int = 20) -> list[str]:
    """Candidate expression lines of a free-text reply: list markers, code fences, 'name:' / 'x =' prefixes
    and a leading fitness are dropped; lines with neither an operand nor a '(' (prose) are skipped, not
    rejected."""
    out = []
    for raw in reply.splitlines():
        line = raw.strip()
        if not line or line.startswith("```"):
            continue
        line = _LEAD.sub("", line.strip("`").strip())
        for sep in (":", "="):
            if sep in line:
                line = line.rsplit(sep, 1)[1]
        line = line.strip().strip("`").rstrip(".;,").strip()
        if line and (_HAS_OPERAND.search(line) or "(" in line):
            out.append(line)
    return out[:max_lines]


def metric_grammar(cfg: "MetricSearchConfig", n: int) -> str:
    """A GBNF grammar (llama.cpp) for exactly n lines, each a function-form metric of depth <= max_depth
    over the configured primitives, so a base model can only write parseable expressions."""
    alt = lambda xs: " | ".join(f'"{x}"' for x in xs)  # noqa: E731
    rules = [f"root ::= {' '.join(['line'] * n)}", 'line ::= e{} "\\n"'.format(cfg.max_depth),
             f"e1 ::= {alt(cfg.operands)}", f"un ::= {alt(cfg.unary)}", f"bin ::= {alt(cfg.binary)}"]
    for d in range(2, cfg.max_depth + 1):
        rules.append(f'e{d} ::= e{d - 1} | un "(" e{d - 1} ")" | bin "(" e{d - 1} ", " e{d - 1} ")"')
    return "\n".join(rules) + "\n"
