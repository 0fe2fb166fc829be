"""A Pruner-Zero session (symbolic pruning metrics), read-only: the expressions ranked by fitness and the
best-so-far fitness per iteration."""
from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Sparkline, Static

from selfpruner.core.store import Store

from ..state import fmt_fitness

COLUMNS = [("rank", "rank"), ("id", "#"), ("iteration", "iter"), ("origin", "origin"), ("fitness", "ppl"),
           ("expression", "expression (canonical)")]


def best_so_far(rows: list[dict]) -> list[float]:
    """Lowest finite fitness seen up to each iteration, in iteration order."""
    out, best = [], math.inf
    for it in sorted({r["iteration"] for r in rows}):
        for r in rows:
            f = r["fitness"]
            if r["iteration"] == it and f is not None and math.isfinite(f):
                best = min(best, f)
        if math.isfinite(best):
            out.append(best)
    return out


class MetricScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        with Store(path, readonly=True) as store:
            self.session = store.session()
            self.rows = store.metric_candidates()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="status")
        with Horizontal(classes="spark-row", id="metric-spark-row"):
            yield Label("best ppl ", classes="spark-label")
            yield Sparkline(best_so_far(self.rows), id="metric-spark", classes="narrow")
            yield Label("", id="metric-best", classes="spark-value")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="metric-table")
        yield Footer()

    def on_mount(self) -> None:
        s = self.session
        self.sub_title = s["id"]
        series = best_so_far(self.rows)
        self.query_one("#status", Static).update(Text.assemble(
            (s["id"], "bold"), f" · Pruner-Zero metric search · {s['model_name'] or ''} · status ",
            (s["status"] or "?", "green" if s["status"] == "finished" else "yellow"),
            f" · {len(self.rows)} expressions (read-only)"))
        self.query_one("#metric-spark", Sparkline).styles.width = max(3, 3 * len(series))
        self.query_one("#metric-best", Label).update(
            f"{fmt_fitness(series[-1])}  ({len(series)} iterations)" if series else "–")
        table = self.query_one("#metric-table", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        ranked = sorted(self.rows, key=lambda r: (r["fitness"] is None, r["fitness"] or 0.0, r["id"]))
        for i, r in enumerate(ranked, 1):
            table.add_row(str(i), str(r["id"]), str(r["iteration"]), r["origin"] or "",
                          Text(fmt_fitness(r["fitness"]), justify="right"),
                          r["canonical"] or r["expression"] or "", key=str(r["id"]))

    def action_back(self) -> None:
        self.dismiss(None)
