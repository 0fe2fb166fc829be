"""The LLM call log: a table of calls and, for the highlighted one, its prompt, raw reply, what the parser
kept or repaired (with the candidates' raw and repaired numbers when the store has them), latency, errors."""
from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static

from ..state import Call

COLUMNS = [("id", "#"), ("gen", "gen"), ("phase", "phase"), ("proposer", "proposer"), ("try", "try"),
           ("kept", "kept"), ("repaired", "rep."), ("latency", "latency"), ("error", "error")]


def _row(c: Call) -> tuple:
    err = Text((c.error or "").splitlines()[0][:40] if c.error else "", style="red")
    return (str(c.id if c.id is not None else "–"), str(c.generation), c.phase, c.proposer, str(c.attempt),
            Text(str(c.parsed), style="green" if c.parsed else "red"),
            Text(str(c.repaired), style="yellow" if c.repaired else ""), f"{c.latency_s:.2f}s", err)


def describe(c: Call, candidates: list[dict]) -> Text:
    """The detail pane's text for one call; `candidates` = stored rows with this call_id."""
    t = Text()
    t.append(f"call #{c.id}", style="bold")
    t.append(f" · generation {c.generation} · {c.phase} · {c.proposer} · attempt {c.attempt} · {c.latency_s:.2f}s")
    if c.tokens_in or c.tokens_out:
        t.append(f" · tokens {c.tokens_in or 0}→{c.tokens_out or 0}")
    t.append("\n")
    t.append(f"parser kept {c.parsed} candidate(s), repaired {c.repaired}\n",
             style="green" if c.parsed and not c.error else "yellow")
    if c.error:
        t.append(f"error: {c.error}\n", style="bold red")
    if candidates:
        t.append("\n── kept candidates ──\n", style="bold cyan")
        for r in candidates:
            t.append(f"#{r['id']} {r['origin']}" + (f" ← {r['parents']}" if r["parents"] else ""))
            if r["repaired"] and r.get("raw"):
                raw = r["raw"]
                t.append("  repaired", style="yellow")
                t.append(f"\n   raw:   {_nums(raw)}  (mean {sum(raw) / len(raw):.5f})", style="dim")
                t.append(f"\n   kept:  {_nums(r['rates'])}")
            else:
                t.append(f"\n   rates: {_nums(r['rates'])}")
            t.append("\n")
    t.append("\n── prompt ──\n", style="bold cyan")
    t.append(c.prompt or "(empty)")
    t.append("\n\n── raw reply ──\n", style="bold cyan")
    t.append(c.response or "(empty)")
    return t


def _nums(xs) -> str:
    return "[" + ", ".join(f"{x:.5f}" for x in xs) + "]"


class CallLog(Horizontal):
    """`candidates_for` looks up the stored candidates of a call id (live runs read them from the DB)."""

    def __init__(self, candidates_for: Callable[[int], list[dict]] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.candidates_for = candidates_for or (lambda call_id: [])
        self.calls: list[Call] = []

    def compose(self) -> ComposeResult:
        yield DataTable(cursor_type="row", zebra_stripes=True, id="call-table")
        with VerticalScroll(id="call-detail"):
            yield Static("no LLM calls yet", id="call-text")

    def on_mount(self) -> None:
        table = self.query_one("#call-table", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)

    def sync(self, calls: list[Call]) -> None:
        """Show `calls` (a prefix-extension of the current list when live; any list when scrubbing)."""
        table = self.query_one("#call-table", DataTable)
        same_prefix = calls[: len(self.calls)] == self.calls
        if not same_prefix:
            table.clear()
            start = 0
        else:
            start = len(self.calls)
        for i, c in enumerate(calls[start:], start):
            table.add_row(*_row(c), key=str(i))
        self.calls = list(calls)
        if not calls:
            self.query_one("#call-text", Static).update(Text("no LLM calls up to here — the numeric proposer "
                                                             "and the random init write candidates without one",
                                                             style="dim"))
        elif start == 0:
            self._show(table.cursor_row if 0 <= table.cursor_row < len(calls) else 0)

    def _show(self, index: int) -> None:
        c = self.calls[index]
        cands = self.candidates_for(c.id) if c.id is not None else []
        self.query_one("#call-text", Static).update(describe(c, cands))
        self.query_one("#call-detail", VerticalScroll).scroll_home(animate=False)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key is not None and event.row_key.value is not None:
            idx = int(event.row_key.value)
            if idx < len(self.calls):
                self._show(idx)
