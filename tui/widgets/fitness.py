"""Best and mean fitness per generation (sparklines; a braille plot with every evaluation when the terminal has
room) and the current generation's progress."""
from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline

from ..state import fmt_fitness
from .plot import PLOT_MIN_COLUMNS, PLOT_MIN_ROWS, FitnessPlot

CELLS_PER_GENERATION = 3


def _plottable(values: list[float]) -> list[float]:
    """Sparklines cannot draw inf (a diverged model): clamp it to the worst finite value."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    return [v if v is not None and math.isfinite(v) else top for v in values]


class FitnessPanel(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="spark-row"):
            yield Label("best ppl ", classes="spark-label")
            yield Sparkline([], id="best-spark")
            yield Label("", id="best-value", classes="spark-value")
        with Horizontal(classes="spark-row"):
            yield Label("mean ppl ", classes="spark-label")
            yield Sparkline([], id="mean-spark")
            yield Label("", id="mean-value", classes="spark-value")
        with Horizontal(classes="spark-row"):
            yield Label("generation", id="gen-label", classes="spark-label")
            yield ProgressBar(total=None, show_eta=False, id="gen-progress")
            yield Label("", id="gen-count", classes="spark-value")
        yield FitnessPlot(id="fitness-plot")

    def on_mount(self) -> None:
        self._fit_plot()

    def on_resize(self) -> None:
        self._fit_plot()

    def _fit_plot(self) -> None:
        size = self.app.size
        self.query_one(FitnessPlot).display = size.height >= PLOT_MIN_ROWS and size.width >= PLOT_MIN_COLUMNS

    def show_series(self, best: list[float], mean: list[float], points: list[tuple[int, float]] = ()) -> None:
        """`points`: (generation, fitness) of every evaluation so far, for the plot."""
        self.best, self.mean = list(best), list(mean)
        self.query_one(FitnessPlot).plot(best, mean, list(points))
        for key, values in (("best", best), ("mean", mean)):
            spark = self.query_one(f"#{key}-spark", Sparkline)
            spark.data = _plottable(values)
            # A few cells per generation: stretched over the whole width, 3 points read as 3 blocks.
            spark.styles.width = max(CELLS_PER_GENERATION, CELLS_PER_GENERATION * len(values))
        self.query_one("#best-value", Label).update(self._summary(best))
        self.query_one("#mean-value", Label).update(self._summary(mean))

    @staticmethod
    def _summary(values: list[float]) -> str:
        if not values:
            return "–"
        return f"{fmt_fitness(values[-1])}  (gen 0: {fmt_fitness(values[0])}, {len(values)} gens)"

    def show_progress(self, generation: int | None, of: int | None, done: float, total: int) -> None:
        label = "generation –" if generation is None else f"gen {generation}" + (f"/{of}" if of is not None else "")
        self.query_one("#gen-label", Label).update(label.ljust(10))
        bar = self.query_one("#gen-progress", ProgressBar)
        bar.update(total=total or None, progress=done)
        self.query_one("#gen-count", Label).update(f"{int(done)}/{total} evaluated" if total else "")
        self.done, self.total = done, total
