"""Two or more layer sessions side by side (marked with space in the browser, then c): their best-fitness
curves on one plot, a table of what each reached (search and final ppl, evaluations, what was measured on its
export), and the best candidates' rate profiles layer by layer against uniform β and, where the session stored
them (--seed-references), OWL's and FLAP's. `w` writes the same selection as `selfpruner report A B ...`."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Header, Static

from selfpruner.core.results.session_summary import results_line
from selfpruner.core.store import Store

from ..state import SearchState, fmt_fitness
from ..widgets.plot import OVERLAY_COLOURS, render_overlay


class SessionSummary:
    """What the comparison needs of one session, read once."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        with Store(self.path, readonly=True) as st:
            self.state = SearchState.from_store(st)
            self.measured = results_line(st)
        s = self.state
        view = s.view(s.last_generation)
        self.best_curve = view.best
        evaluated = [c for c in s.cands.values() if c.fitness is not None]
        best = s.cands.get(s.best_id) if s.best_id is not None else min(evaluated, key=lambda c: c.fitness,
                                                                          default=None)
        self.best = best
        self.references = {c.origin.split(":", 1)[1]: c.rates for c in s.cands.values()
                           if c.origin.startswith("reference:")}
        self.evaluations = len(evaluated)


class OverlayPlot(Widget):
    DEFAULT_CSS = "OverlayPlot { height: 14; }"

    def __init__(self, series, **kw) -> None:
        super().__init__(**kw)
        self.series = series

    def render(self) -> Text:
        return Text("\n").join(render_overlay(self.series, self.size.width, self.size.height))


class CompareScreen(Screen):
    BINDINGS = [Binding("w", "write_report", "Write report"), Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, paths: list[Path | str]) -> None:
        super().__init__()
        self.sessions = [SessionSummary(p) for p in paths]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text(f"comparing {len(self.sessions)} sessions", style="bold"), id="compare-title")
        yield OverlayPlot([(s.state.session_id, s.best_curve) for s in self.sessions], id="compare-plot")
        yield DataTable(cursor_type="row", id="compare-summary")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="compare-profiles")
        yield Static("", id="compare-note")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "compare"
        summary = self.query_one("#compare-summary", DataTable)
        for col in ("session", "model", "β", "proposer", "evaluations", "best search ppl", "final ppl", "measured"):
            summary.add_column(col)
        for i, s in enumerate(self.sessions):
            st = s.state
            summary.add_row(Text(st.session_id, style=OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]), st.model[:28],
                            f"{st.beta:g}", st.proposer, str(s.evaluations),
                            fmt_fitness(s.best.fitness) if s.best and s.best.fitness is not None else "",
                            fmt_fitness(st.final_ppl) if st.final_ppl is not None else "", s.measured)
        profiles = self.query_one("#compare-profiles", DataTable)
        refs = sorted({name for s in self.sessions for name in s.references})
        profiles.add_column("layer")
        for i, s in enumerate(self.sessions):
            profiles.add_column(Text(s.state.session_id[-4:], style=OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]))
        betas = sorted({s.state.beta for s in self.sessions})
        for b in betas:
            profiles.add_column(f"uniform {b:g}")
        for name in refs:
            profiles.add_column(name)
        n = max((len(s.best.rates) for s in self.sessions if s.best), default=0)
        first_ref = {name: next(s.references[name] for s in self.sessions if name in s.references) for name in refs}
        for layer in range(n):
            row = [f"L{layer}"]
            for s in self.sessions:
                rates = s.best.rates if s.best else []
                row.append(f"{rates[layer]:.3f}" if layer < len(rates) else "")
            row += [f"{b:.3f}" for b in betas]
            row += [f"{first_ref[name][layer]:.3f}" if layer < len(first_ref[name]) else "" for name in refs]
            profiles.add_row(*row)

    def action_write_report(self) -> None:
        from selfpruner.core.results.report import build_report

        from ..errors import USER_ERRORS, one_line
        first = self.sessions[0].path
        out = first.with_name("compare-" + "-".join(s.state.session_id[-4:] for s in self.sessions))
        try:
            page = build_report([s.path for s in self.sessions], out)
        except USER_ERRORS as e:
            self.notify(one_line(e), severity="error")
            return
        self.query_one("#compare-note", Static).update(Text(f"report → {page}", style="cyan"))
        self.notify(f"report → {page}", title="report", timeout=10)
