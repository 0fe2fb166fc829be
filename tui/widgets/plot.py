"""A real fitness plot on a braille canvas (2×4 dots per cell): best and mean ppl per generation as lines, every
evaluation as a dot, log-scaled ppl. The fitness panel shows it when the terminal has room for it
(PLOT_MIN_ROWS × PLOT_MIN_COLUMNS); narrower or shorter terminals keep the sparklines alone."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from ..state import fmt_fitness

PLOT_MIN_ROWS, PLOT_MIN_COLUMNS = 52, 100
AXIS = 9  # cells of y labels on the left
# braille dot bits by (row 0..3, column 0..1) within a cell
BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
LAYERS = (("points", "grey50"), ("mean", "yellow"), ("best", "bold green"))  # later layers win a shared cell


def _finite(xs) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x) and x > 0]


class Canvas:
    """Dots on a width×height cell grid, each dot in one named layer ((name, colour), later ones win a cell)."""

    def __init__(self, width: int, height: int, layers=LAYERS):
        self.w, self.h, self.layers = width, height, tuple(layers)
        self.bits = {name: [[0] * width for _ in range(height)] for name, _ in self.layers}

    def dot(self, layer: str, x: float, y: float) -> None:
        """(x, y) in dot coordinates, y = 0 at the top."""
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < 2 * self.w and 0 <= yi < 4 * self.h:
            self.bits[layer][yi // 4][xi // 2] |= BITS[yi % 4][xi % 2]

    def line(self, layer: str, x0: float, y0: float, x1: float, y1: float) -> None:
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for k in range(steps + 1):
            t = k / steps
            self.dot(layer, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)

    def rows(self) -> list[Text]:
        out = []
        for r in range(self.h):
            line = Text()
            for c in range(self.w):
                bits, style = 0, ""
                for name, colour in self.layers:
                    if self.bits[name][r][c]:
                        bits |= self.bits[name][r][c]
                        style = colour
                line.append(chr(0x2800 + bits) if bits else " ", style=style)
            out.append(line)
        return out


def _log_range(values: list[float]) -> tuple[float, float]:
    lo, hi = math.log(min(values)), math.log(max(values))
    return (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)


def _polyline(canvas: Canvas, layer: str, pts: list[tuple[float, float]]) -> None:
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        canvas.line(layer, x0, y0, x1, y1)
    for x, y in pts[:1]:
        canvas.dot(layer, x, y)


def _framed(canvas: Canvas, lo: float, hi: float, gens: int) -> list[Text]:
    """The canvas's rows with the ppl range on the y axis, then the generation axis."""
    lines = []
    for r, row in enumerate(canvas.rows()):
        label = fmt_fitness(math.exp(hi)) if r == 0 else fmt_fitness(math.exp(lo)) if r == canvas.h - 1 else ""
        lines.append(Text(label.rjust(AXIS - 1)[: AXIS - 1] + "│", style="dim") + row)
    lines.append(Text(" " * (AXIS - 1) + "└" + "gen 0".ljust(canvas.w - len(f"gen {gens - 1}")) + f"gen {gens - 1}",
                      style="dim"))
    return lines


def render_plot(best: list[float], mean: list[float], points: list[tuple[int, float]], width: int,
                height: int) -> list[Text]:
    """The plot as `height` lines of `width` cells (y labels included)."""
    values = _finite([*best, *mean, *(f for _, f in points)])
    if not values or width <= AXIS + 4 or height < 3:
        return [Text("no evaluations yet", style="dim")]
    lo, hi = _log_range(values)
    gens = max(len(best), 1 + max((g for g, _ in points), default=0), 2)
    canvas = Canvas(width - AXIS, height - 2)
    dx = (2 * canvas.w - 1) / (gens - 1)
    dy = 4 * canvas.h - 1

    def y_of(f: float) -> float:
        return (hi - math.log(f)) / (hi - lo) * dy

    # A generation's offspring are drawn in evaluation order between the previous generation and theirs.
    per_gen: dict[int, list[float]] = {}
    for g, f in points:
        per_gen.setdefault(g, []).append(f)
    for g, fs in per_gen.items():
        for k, f in enumerate(fs):
            if f is not None and math.isfinite(f) and f > 0:
                canvas.dot("points", (g - 1 + (k + 1) / len(fs)) * dx if g else 0, y_of(f))
    for name, series in (("mean", mean), ("best", best)):
        _polyline(canvas, name, [(g * dx, y_of(f)) for g, f in enumerate(series)
                                 if f is not None and math.isfinite(f) and f > 0])
    legend = Text("  ")
    for name, colour in LAYERS[::-1]:
        legend.append(f"⣿ {name if name != 'points' else 'every evaluation'}  ", style=colour)
    return _framed(canvas, lo, hi, gens) + [legend]


OVERLAY_COLOURS = ("bold green", "bold cyan", "bold magenta", "bold yellow", "bold red", "bold blue")


def render_overlay(series: list[tuple[str, list[float]]], width: int, height: int) -> list[Text]:
    """Several sessions' best ppl per generation on one log-scaled braille plot, one colour each."""
    values = _finite([f for _, ys in series for f in ys])
    if not values or width <= AXIS + 4 or height < 3:
        return [Text("no finished generations to compare", style="dim")]
    lo, hi = _log_range(values)
    gens = max(2, *(len(ys) for _, ys in series))
    layers = [(f"s{i}", OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]) for i in range(len(series))]
    canvas = Canvas(width - AXIS, height - 2, layers)
    dx, dy = (2 * canvas.w - 1) / (gens - 1), 4 * canvas.h - 1
    for (layer, _), (_, ys) in zip(layers, series):
        _polyline(canvas, layer, [(g * dx, (hi - math.log(f)) / (hi - lo) * dy) for g, f in enumerate(ys)
                                  if f is not None and math.isfinite(f) and f > 0])
    legend = Text("  ")
    for (_, colour), (label, _) in zip(layers, series):
        legend.append(f"⣿ {label}  ", style=colour)
    return _framed(canvas, lo, hi, gens) + [legend]


class FitnessPlot(Widget):
    DEFAULT_CSS = "FitnessPlot { height: 12; }"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.best: list[float] = []
        self.mean: list[float] = []
        self.points: list[tuple[int, float]] = []

    def plot(self, best: list[float], mean: list[float], points: list[tuple[int, float]]) -> None:
        self.best, self.mean, self.points = list(best), list(mean), list(points)
        self.refresh()

    def render(self) -> Text:
        return Text("\n").join(render_plot(self.best, self.mean, self.points, self.size.width, self.size.height))


def render_costs(widths: list[int], measured: list[float], fitted: list[float], width: int, height: int,
                 unit: str = "ms") -> list[Text]:
    """A cost table's per-layer MLP savings against the kept width: the measured points and the fitted line."""
    values = [*measured, *fitted]
    if len(widths) < 2 or width <= AXIS + 4 or height < 3:
        return [Text("no cost table", style="dim")]
    top = max(max(values), 1e-12)
    canvas = Canvas(width - AXIS, height - 2, (("measured", "grey70"), ("fitted", "bold green")))
    dx, dy = (2 * canvas.w - 1) / widths[-1], 4 * canvas.h - 1

    def y_of(v: float) -> float:
        return (1 - max(v, 0.0) / top) * dy

    _polyline(canvas, "fitted", [(w * dx, y_of(v)) for w, v in zip(widths, fitted)])
    for w, v in zip(widths, measured):
        canvas.dot("measured", w * dx, y_of(v))
    lines = []
    for r, row in enumerate(canvas.rows()):
        label = f"{top:.3g}{unit}" if r == 0 else f"0{unit}" if r == canvas.h - 1 else ""
        lines.append(Text(label.rjust(AXIS - 1)[: AXIS - 1] + "│", style="dim") + row)
    lines.append(Text(" " * (AXIS - 1) + "└" + "0 channels".ljust(canvas.w - len(str(widths[-1]))) +
                      str(widths[-1]), style="dim"))
    return lines + [Text("  ⣿ fitted line  ", style="bold green") + Text("⣿ measured", style="grey70")]
