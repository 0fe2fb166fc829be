"""The population table: one row per candidate of the pool, updated in place (cells change, rows come
and go) so the cursor and the user's sort order survive a stream of evaluations."""
from __future__ import annotations

import math

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from ..state import Row, fmt_fitness

ORIGIN_STYLE = {"init": "cyan", "mutation": "magenta", "crossover": "yellow", "repair": "red",
                "fallback": "red", "random": "blue"}
STATUS_STYLE = {"alive": "", "new": "italic", "dropped": "dim strike"}

# (key, label, sort value of a Row); unevaluated candidates sort last whichever the direction.
COLUMNS = [
    ("rank", "rank", lambda r: r.rank if r.rank is not None else math.inf),
    ("id", "#", lambda r: r.cand.id),
    ("fitness", "ppl", lambda r: r.cand.fitness if r.cand.fitness is not None else math.inf),
    ("origin", "origin", lambda r: r.cand.origin),
    ("gen", "gen", lambda r: r.cand.generation),
    ("parents", "parents", lambda r: tuple(r.cand.parents)),
    ("mean", "mean rate", lambda r: r.cand.mean_rate),
    ("status", "", lambda r: r.status),
]
SORT_KEY = {k: f for k, _, f in COLUMNS}


def _cells(r: Row) -> tuple:
    c, style = r.cand, STATUS_STYLE[r.status]
    fit = (c.raced if c.fitness is None and c.raced else fmt_fitness(c.fitness)) + (" ⚡" if c.cached else "")
    mark = {"alive": "", "new": "new", "dropped": "dropped"}[r.status]
    return (Text(str(r.rank) if r.rank else "–", style=style, justify="right"),
            Text(str(c.id), style=style, justify="right"),
            Text(fit, style=style + (" bold" if r.rank == 1 else ""), justify="right"),
            Text(c.origin, style=f"{ORIGIN_STYLE.get(c.origin, '')} {style}"),
            Text(str(c.generation), style=style, justify="right"),
            Text(",".join(map(str, c.parents)) or "–", style=style),
            Text(f"{c.mean_rate:.4f}", style=style, justify="right"),
            Text(mark, style="dim"))


class PopulationTable(DataTable):
    """Rows keyed by candidate id; click a header to sort by it (again to reverse)."""

    class Selected(Message):
        """The highlighted candidate changed (None: table empty)."""

        def __init__(self, candidate_id: int | None) -> None:
            super().__init__()
            self.candidate_id = candidate_id

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.rows_by_id: dict[int, Row] = {}
        self._shown: dict[int, tuple] = {}
        self.sort_column = "rank"
        self.sort_reverse = False
        # Until the user moves the cursor, it stays on the top row (the best so far) as ranks change.
        self.follow_top = True

    def on_mount(self) -> None:
        for key, label, _ in COLUMNS:
            self.add_column(label, key=key)

    def sync(self, rows: list[Row]) -> None:
        """Make the table show `rows`: update changed cells, add new rows, remove gone ones."""
        keep = None if self.follow_top else self.selected_id
        want = {r.cand.id: r for r in rows}
        for cid in [c for c in self._shown if c not in want]:
            self.remove_row(str(cid))
            del self._shown[cid]
        for cid, r in want.items():
            cells = _cells(r)
            old = self._shown.get(cid)
            if old is None:
                self.add_row(*cells, key=str(cid))
            else:
                for (key, _, _), new, prev in zip(COLUMNS, cells, old):
                    # Text equality ignores the base style, so compare text and style explicitly.
                    if (new.plain, str(new.style)) != (prev.plain, str(prev.style)):
                        self.update_cell(str(cid), key, new, update_width=True)
            self._shown[cid] = cells
        self.rows_by_id = want
        self._apply_sort(keep)

    def _apply_sort(self, keep: int | None) -> None:
        if not self.rows_by_id:
            return
        f = SORT_KEY[self.sort_column]
        self.sort("id", key=lambda cell: f(self.rows_by_id[int(cell.plain)]), reverse=self.sort_reverse)
        if keep in self.rows_by_id:
            self.move_cursor(row=self.get_row_index(str(keep)), animate=False)
        elif self.follow_top:
            self.move_cursor(row=0, animate=False)

    def follow(self) -> None:
        """Back to following the top row."""
        self.follow_top = True
        self.move_cursor(row=0, animate=False)

    # Any cursor move by the user pins the cursor to that candidate.
    def action_cursor_up(self) -> None:
        self.follow_top = False
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self.follow_top = False
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self.follow_top = False
        super().action_page_up()

    def action_page_down(self) -> None:
        self.follow_top = False
        super().action_page_down()

    async def _on_click(self, event) -> None:
        self.follow_top = False
        await super()._on_click(event)

    @property
    def selected_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # cursor outside the rows (table just emptied)
            return None

    def sort_by(self, key: str) -> None:
        """Sort by a column; the same column again reverses the order."""
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self._apply_sort(None if self.follow_top else self.selected_id)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(event.column_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(self.Selected(int(event.row_key.value) if event.row_key else None))
