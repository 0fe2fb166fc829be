"""Per-layer pruning rates of one candidate: a bar per layer with its value, against uniform β.

The bars fill the widget's width, and their scale runs from 0 to a round tenth at or above both 2β and the
largest rate, so β sits mid-scale and a layer's difference from β is drawn as long as the width allows."""
from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ..state import Candidate, fmt_fitness

BLOCKS = " ▏▎▍▌▋▊▉█"
HEADER_LINES = 3
LABEL, VALUES = 6, 15  # "L12   " before a bar, " 0.3479 +0.048" after it
ATTENTION = 11  # --split search: "  attn 0.33" after them, the layer's attention-unit rate


def bar(value: float, width: int) -> str:
    """A left-aligned bar of `value` (0..1) in `width` cells, with eighth-cell resolution."""
    eighths = round(max(0.0, min(1.0, value)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (BLOCKS[part] if part else "")).ljust(width)


def scale_top(rates: list[float], beta: float) -> float:
    """The rate a full bar stands for: the first tenth at or above 2β and every rate, at most 1."""
    top = max([2 * beta, 0.1, *rates])
    return min(1.0, math.ceil(round(top * 10, 6)) / 10)


class RateBars(Widget):
    """Bars for the selected candidate; the β column marks where every bar of the uniform baseline ends."""

    candidate: reactive[Candidate | None] = reactive(None, layout=True)
    beta: reactive[float] = reactive(0.0)

    def show(self, candidate: Candidate | None, beta: float) -> None:
        self.beta = beta
        self.candidate = candidate
        self.refresh(layout=True)

    @property
    def rates(self) -> list[float]:
        return list(self.candidate.rates) if self.candidate else []

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.rates) + HEADER_LINES if self.candidate else 1

    def on_resize(self) -> None:
        self.refresh()  # the bars are as wide as the widget

    def bar_width(self) -> int:
        extra = ATTENTION if self.candidate is not None and self.candidate.attention is not None else 0
        return max(10, self.size.width - LABEL - VALUES - extra)

    def render(self) -> Text:
        c = self.candidate
        if c is None:
            return Text("no candidate selected", style="dim")
        width = self.bar_width()
        top = scale_top(c.rates, self.beta)
        mark = min(width - 1, round(self.beta / top * width))
        title = Text.assemble(("candidate ", "dim"), (f"#{c.id}", "bold"), f" · {c.origin} · gen {c.generation}"
                              " · ppl ", (fmt_fitness(c.fitness), "bold"))
        legend = Text.assemble(f"mean rate {c.mean_rate:.4f} · ", ("┆", "yellow"),
                               f" uniform β = {self.beta:g} · ", ("below", "green"), " / ", ("above", "red"), " β")
        top_label = f"{top:g}"
        axis = Text("layer".ljust(LABEL) + "0".ljust(width - len(top_label)) + top_label + "    rate     Δβ"
                    + ("  attention" if c.attention is not None else ""), style="dim")
        lines = [title, legend, axis]
        for i, r in enumerate(c.rates):
            cells = bar(r / top, width)
            line = Text(f"L{i:<4} ", style="dim")
            colour = "green" if r < self.beta - 1e-9 else "red" if r > self.beta + 1e-9 else "white"
            line.append(cells[:mark], style=colour)
            # The β marker: a dotted line past the bar's end, a shaded cell where the bar covers it.
            if cells[mark] == " ":
                line.append("┆", style="yellow")
            else:
                line.append(cells[mark], style=f"{colour} on grey23")
            line.append(cells[mark + 1:], style=colour)
            line.append(f" {r:7.4f} ")
            line.append(f"{r - self.beta:+.3f}", style=colour)
            if c.attention is not None:  # the share of the layer's heads removed; its MLP channels take the rest
                line.append(f"  attn {c.attention[i]:.2f}", style="cyan")
            lines.append(line)
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
        return Text("\n", no_wrap=True).join(lines)
