"""The screen a layer-rate search is watched on. Live runs and replays share it; they differ only in where
the `SearchState` comes from (events vs the DB) and which generation `current_view` shows."""
from __future__ import annotations

import math
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from selfpruner.core.results.session_summary import candidate_shares

from ..rates_file import output_dir, save_best_rates
from ..state import SearchState, View, baseline_options, fmt_fitness, session_options, workers_text
from ..widgets.calls import CallLog
from ..widgets.fitness import FitnessPanel
from ..widgets.population import PopulationTable
from ..widgets.rates import RateBars

ALL_PARTS = frozenset({"status", "table", "fitness", "progress", "calls"})


class SearchScreen(Screen):
    BINDINGS = [
        Binding("l", "toggle_calls", "LLM calls"),
        Binding("t", "top", "Top row", show=False),
        Binding("e", "save_rates", "Save best rates"),
        Binding("v", "screenshot", "SVG"),
        Binding("ctrl+e", "export_history", "CSV/JSON"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, state: SearchState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.note = ""  # last saved file or message, shown in the status line
        self._store = None  # read connection for call details (live: the search thread writes its own)

    # ---- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="status")
        yield from self.compose_top()
        yield FitnessPanel(id="fitness")
        with TabbedContent(id="tabs", initial="tab-population"):
            with TabPane("Population", id="tab-population"):
                with Horizontal(id="main"):
                    yield PopulationTable(id="population")
                    with VerticalScroll(id="rates-box"):
                        yield RateBars(id="rates")
            with TabPane("LLM calls", id="tab-calls"):
                yield CallLog(self._candidates_for_call, id="calls")
        yield Footer()

    def compose_top(self) -> ComposeResult:
        return iter(())

    def on_unmount(self) -> None:
        if self._store is not None:
            self._store.close()

    # ---- what is shown ------------------------------------------------------------------------
    def current_view(self) -> View:
        return self.state.view()

    def render_view(self, parts=ALL_PARTS) -> None:
        view = self.current_view()
        if "table" in parts:
            self.query_one(PopulationTable).sync(view.rows)
            self._show_rates()
        if "fitness" in parts:
            upto = view.generation if view.generation is not None else math.inf
            points = [(c.generation, c.fitness) for c in self.state.cands.values()
                      if c.fitness is not None and c.generation <= upto]
            self.query_one(FitnessPanel).show_series(view.best, view.mean, points)
        if "progress" in parts:
            self.show_progress(view)
        if "calls" in parts:
            self.query_one(CallLog).sync(view.calls)
            self.query_one(TabbedContent).get_tab("tab-calls").label = f"LLM calls ({len(view.calls)})"
        if "status" in parts:
            self.query_one("#status", Static).update(self.status_text())
            self.sub_title = self.state.session_id

    def show_progress(self, view: View) -> None:
        st, g = self.state, view.generation
        todo = [c for c in st.cands.values() if c.generation == g]
        done = sum(c.fitness is not None for c in todo)
        of = st.config.get("generations") if st.kind == "layer" else None  # a baseline has no generations to come
        self.query_one(FitnessPanel).show_progress(g, of, done, len(todo))

    def status_text(self) -> Text:
        st, cfg = self.state, self.state.config
        t = Text()
        t.append(st.session_id or "new session", style="bold")
        model = st.model or cfg.get("model") or "bundled gemma-3-270m"
        if st.kind == "baseline":  # one rate vector evaluated once: no population, generations or proposer
            t.append(f" · {model} · β {st.beta:g}")
            for part in baseline_options(cfg, st.proposer):
                t.append(f" · {part}")
            return self._outcome(t)
        speed = (f" · {cfg['target_speedup']:g}x on {cfg.get('engine')} ({cfg.get('objective')}), uniform β "
                 f"{st.beta:g}" if cfg.get("target_speedup") else f" · β {st.beta:g}")
        t.append(f" · {model}{speed} · {st.proposer}")
        if cfg:
            t.append(f" · K={cfg.get('population')} M={cfg.get('mutations')} S={cfg.get('crossovers')} "
                     f"N={cfg.get('generations')} · {cfg.get('budget_tokens')} tok/fitness")
            for part in session_options(cfg):
                t.append(f" · {part}")
        if st.workers:
            t.append("\nworkers: ")
            t.append_text(workers_text(st.workers))
        return self._outcome(t)

    def _outcome(self, t: Text) -> Text:
        """The status line's second row: where the run stands and what it found."""
        st = self.state
        t.append("\n")
        colour = {"running": "green", "paused": "yellow", "stopping": "yellow", "stopped": "yellow",
                  "finished": "bold green", "failed": "bold red", "unreadable": "red"}.get(st.status, "")
        t.append(st.status, style=colour)
        best = st.best()
        if best is not None:
            t.append(f" · search ppl {fmt_fitness(best.fitness)}" if st.kind == "baseline" else
                     f" · best #{best.id} ppl {fmt_fitness(best.fitness)}")
        if st.final_ppl is not None:
            t.append(f" · final ppl {fmt_fitness(st.final_ppl)}", style="bold")
        sh = candidate_shares(st.proposer, [c.origin for c in st.cands.values()])
        if sh:
            t.append(f" · LLM wrote {sh['llm']}/{sh['asked']}", style="bold red" if sh["weak"] else "")
            if sh["fallback"]:
                t.append(f" ({sh['fallback']} fallback" + (": mostly numeric GA" if sh["weak"] else "") + ")",
                         style="bold red" if sh["weak"] else "yellow")
        if st.stage and st.status in ("starting", "running"):
            t.append(f" · {st.stage}")
            if st.stage_total:
                t.append(f" {st.stage_done}/{st.stage_total}")
        if st.error:
            t.append(f" · {st.error}", style="red")
        if self.note:
            t.append(f" · {self.note}", style="cyan")
        return t

    def _show_rates(self) -> None:
        cid = self.query_one(PopulationTable).selected_id
        cand = self.state.cands.get(cid) if cid is not None else None
        self.query_one(RateBars).show(cand, self.state.beta)

    def on_population_table_selected(self, msg: PopulationTable.Selected) -> None:
        self._show_rates()

    def _candidates_for_call(self, call_id: int) -> list[dict]:
        if not self.state.path:
            return []
        try:
            if self._store is None:
                from selfpruner.core.store import Store
                self._store = Store(self.state.path, readonly=True)
            return [c for c in self._store.candidates() if c["call_id"] == call_id]
        except Exception:  # a detail pane is not worth an error: show the call without them
            return []

    # ---- actions ------------------------------------------------------------------------------
    def action_top(self) -> None:
        """Follow the top row (the best, in rank order) again."""
        self.query_one(PopulationTable).follow()

    def action_toggle_calls(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "tab-population" if tabs.active == "tab-calls" else "tab-calls"

    def action_save_rates(self) -> None:
        try:
            path = save_best_rates(self.state)
        except (ValueError, OSError) as e:
            self.notify(str(e), severity="warning")
            return
        self.note = f"best rates → {path}"
        self.notify(f"best rates written to {path}", title="save rates")
        self.render_view({"status"})

    def screenshot_name(self) -> str:
        return f"{self.state.session_id or 'selfpruner'}-{time.strftime('%Y%m%d-%H%M%S')}.svg"

    def action_screenshot(self) -> None:
        self.app.clear_notifications()  # the picture is of the screen, not of earlier toasts
        path = self.app.save_screenshot(self.screenshot_name(), path=str(output_dir(self.state)))
        self.note = f"screenshot → {path}"
        self.notify(f"SVG screenshot written to {path}", title="export")
        self.render_view({"status"})

    def action_export_history(self) -> None:
        """Every candidate so far (generation, origin, parents, fitness, rates) as CSV and JSON beside the DB."""
        from selfpruner.core.results.session_summary import write_history
        from selfpruner.core.store import Store
        if not self.state.path:
            self.notify("nothing stored yet", severity="warning")
            return
        try:
            with Store(self.state.path, readonly=True) as st:
                csv_path, _ = write_history(st, output_dir(self.state))
        except OSError as e:
            self.notify(str(e), severity="warning")
            return
        self.note = f"candidates → {csv_path} (+ .json)"
        self.notify(f"candidate history written to {csv_path} and .json", title="export")
        self.render_view({"status"})

    def action_back(self) -> None:
        self.dismiss(None)
