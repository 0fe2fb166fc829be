"""The session browser: every DB in the sessions dir, newest first; unreadable files are listed as such."""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from selfpruner.core.session_files import list_sessions

from ..state import fmt_fitness, session_options

# short tags for the proposer column (the run screen spells them out)
OPTION_TAGS = {"KL fitness": "KL", "FLAP importance": "flap", "flap split": "split", "bias compensation": "+comp",
               "least-squares reconstruction": "+ls"}

COLUMNS = [("id", "session"), ("status", "status"), ("created", "created"), ("kind", "kind"), ("model", "model"),
           ("beta", "β"), ("proposer", "proposer"), ("best", "best ppl"), ("final", "final ppl"), ("gens", "gens")]
STATUS_STYLE = {"finished": "green", "running": "cyan", "stopped": "yellow", "died": "magenta", "failed": "red",
                "unreadable": "bold red"}


LIVE_REFRESH_S = 3.0  # while a listed session runs elsewhere, its row follows it


def _cells(r: dict) -> tuple:
    status = Text(r["status"], style=STATUS_STYLE.get(r["status"], ""))
    if r.get("runner"):
        status.append(f" · {r['runner']}", style="dim")
    if r.get("error"):
        # The message repeats the file's path; the session column already names it.
        err = r["error"].replace(f" {r['path']}", "").replace(r["path"], Path(r["path"]).name)
        return (r["id"], status, "", r.get("kind") or "?", Text(err[:40], style="red"), "", "", "", "", "")
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])) if r.get("created") else ""
    return (r["id"], status, created, r["kind"], (r["model"] or "")[:36],
            f"{r['beta']:g}" if r["beta"] is not None else "",
            " ".join([r["proposer"] or ""] + [OPTION_TAGS.get(o, o.split()[0])
                                              for o in session_options(r.get("config") or {})]),
            fmt_fitness(r["best_fitness"]) if r["best_fitness"] is not None else "",
            fmt_fitness(r["final_ppl"]) if r["final_ppl"] is not None else "", str(r["generations"]))


class SessionBrowser(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("r", "resume", "Resume"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("n", "new", "New search"),
        Binding("f5", "refresh", "Refresh"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, sessions_dir: Path | str) -> None:
        super().__init__()
        self.sessions_dir = Path(sessions_dir)
        self.rows: list[dict] = []
        self.marked: set[str] = set()  # paths of the sessions picked for a comparison

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="browser-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="sessions")
        yield Static(id="browser-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "sessions"
        table = self.query_one("#sessions", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.action_refresh()
        self.set_interval(LIVE_REFRESH_S, self._refresh_live)

    def _refresh_live(self) -> None:
        if any(r.get("runner") for r in self.rows) and self.is_current:
            self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()  # a resumed or new run may have changed the list

    def action_refresh(self) -> None:
        table = self.query_one("#sessions", DataTable)
        current = self._current()
        self.rows = list_sessions(self.sessions_dir)
        table.clear()
        for i, r in enumerate(self.rows):
            cells = list(_cells(r))
            if r["path"] in self.marked:
                cells[0] = Text("✓ " + r["id"], style="bold")
            table.add_row(*cells, key=str(i))
        # Keep the cursor on the same session across refreshes (the list is ordered by mtime).
        paths = [r["path"] for r in self.rows]
        if current is not None and current["path"] in paths:
            table.move_cursor(row=paths.index(current["path"]), animate=False)
        self.query_one("#browser-title", Static).update(
            Text.assemble(("sessions in ", "dim"), (str(self.sessions_dir), "bold"), (f" — {len(self.rows)}", "dim")))
        self.query_one("#browser-hint", Static).update(
            "no sessions yet — press n to start a search" if not self.rows else
            "enter opens a session (replay with a generation scrubber); r resumes a stopped or interrupted one; "
            "space marks sessions, c compares them")
        table.focus()

    def _current(self) -> dict | None:
        table = self.query_one("#sessions", DataTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def action_open(self) -> None:
        r = self._current()
        if r is None:
            return
        if r.get("error"):
            self.notify(r["error"], title="unreadable session", severity="error", timeout=8)
            return
        from ..errors import USER_ERRORS, one_line
        try:
            if r["kind"] == "metric":
                from .metric import MetricScreen
                self.app.push_screen(MetricScreen(r["path"]))
            else:
                from .replay import ReplayScreen
                self.app.push_screen(ReplayScreen(r["path"]))
        except USER_ERRORS as e:
            self.notify(one_line(e), title="cannot open", severity="error")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_resume(self) -> None:
        r = self._current()
        if r is None or r.get("error"):
            return
        from selfpruner.core.layer_search.session import resume_config

        from ..errors import USER_ERRORS, one_line
        from .run import RunScreen
        if r["status"] not in ("running", "died", "stopped", "failed"):
            self.notify(f"session {r['id']} is {r['status']}: nothing to resume", severity="warning")
            return
        try:
            cfg, path = resume_config(r["path"], str(self.sessions_dir))
        except USER_ERRORS as e:
            self.notify(one_line(e), title="cannot resume", severity="error")
            return
        self.app.push_screen(RunScreen(cfg, resume=path), self._after_run)

    def _after_run(self, error) -> None:
        if error is not None:
            self.notify(error.message, title="cannot resume", severity="error", timeout=10)
        self.action_refresh()

    def action_mark(self) -> None:
        """Pick the session under the cursor for a comparison (again: unpick it)."""
        r = self._current()
        if r is None or r.get("error") or r.get("kind") != "layer":
            self.notify("only layer-rate sessions can be compared", severity="warning")
            return
        self.marked ^= {r["path"]}
        row = self.query_one("#sessions", DataTable).cursor_row
        self.action_refresh()
        self.query_one("#sessions", DataTable).move_cursor(row=min(row + 1, len(self.rows) - 1), animate=False)

    def action_compare(self) -> None:
        from .compare import CompareScreen
        paths = [r["path"] for r in self.rows if r["path"] in self.marked]
        if len(paths) < 2:
            self.notify("mark two or more sessions with space first", severity="warning")
            return
        self.app.push_screen(CompareScreen(paths))

    def action_new(self) -> None:
        self.app.show_start()

    def action_back(self) -> None:
        self.app.show_start()
