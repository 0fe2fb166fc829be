"""A --target-speedup session's cost table: what one layer saves on the engine at each kept MLP width (measured
points and the fitted line the search predicted with, prompt and per generated token) and per attention count."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from selfpruner.core.cost_table import CostTable

from ..widgets.plot import render_costs

PLOT_WIDTH, PLOT_HEIGHT = 64, 10


def cost_lines(table: CostTable) -> list[Text]:
    raw = table.measured or {"attn": table.attn_saving, "mlp": table.mlp_saving}
    out = [Text(table.text().splitlines()[0], style="bold"), Text(table.text().splitlines()[1])]
    for kind, name, scale, unit in (("prompt", "prompt", 1e3, "ms"), ("token", "per generated token", 1e3, "ms")):
        out.append(Text(f"\nMLP: saved per layer, {name} (kept channels →)", style="bold"))
        out += render_costs(table.widths, [scale * v for v in raw["mlp"][kind]],
                            [scale * v for v in table.mlp_saving[kind]], PLOT_WIDTH, PLOT_HEIGHT, unit)
    out.append(Text("\nattention: saved per layer (prompt ms, per token ms)", style="bold"))
    for k, u in enumerate(table.units):
        out.append(Text(f"  {u} units kept: {1e3 * table.attn_saving['prompt'][k]:.2f}, "
                        f"{1e3 * table.attn_saving['token'][k]:.3f}"))
    return out


class CostTableScreen(ModalScreen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Close"), Binding("c", "app.pop_screen", "Close")]

    def __init__(self, table: CostTable) -> None:
        super().__init__()
        self.table = table

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="cost-box"):
            yield Static(Text("\n").join(cost_lines(self.table)), id="cost-table")
