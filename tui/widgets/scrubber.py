"""Generation scrubber for replays: ← → (or [ ]) step one generation, home/end jump, a click picks one."""
from __future__ import annotations

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

PREFIX = 22  # width of the "generation  g / N  " label before the track


class GenerationScrubber(Widget, can_focus=True):
    BINDINGS = [
        Binding("left", "step(-1)", "earlier", show=False),
        Binding("right", "step(1)", "later", show=False),
        Binding("home", "jump(0)", "first", show=False),
        Binding("end", "jump(-1)", "last", show=False),
    ]

    value: reactive[int] = reactive(0)
    maximum: reactive[int] = reactive(0)

    class Changed(Message):
        def __init__(self, value: int) -> None:
            super().__init__()
            self.value = value

    def set_range(self, maximum: int, value: int) -> None:
        self.maximum = max(0, maximum)
        self.value = max(0, min(value, self.maximum))

    def validate_value(self, value: int) -> int:
        return max(0, min(value, self.maximum))

    def watch_value(self, old: int, new: int) -> None:
        if old != new:
            self.post_message(self.Changed(new))

    def action_step(self, delta: int) -> None:
        self.value = self.value + delta

    def action_jump(self, where: int) -> None:
        self.value = self.maximum if where < 0 else where

    def _track_width(self) -> int:
        return max(4, self.size.width - PREFIX - 2)

    def render(self) -> Text:
        width, n = self._track_width(), self.maximum
        pos = round(self.value / n * (width - 1)) if n else 0
        t = Text()
        t.append(f"generation {self.value:>3} / {n:<3}".ljust(PREFIX), style="bold")
        t.append("━" * pos, style="cyan")
        t.append("●", style="bold cyan")
        t.append("─" * (width - 1 - pos), style="dim")
        return t

    def on_click(self, event: events.Click) -> None:
        x = event.x - PREFIX
        width = self._track_width()
        if 0 <= x < width and self.maximum:
            self.value = round(x / (width - 1) * self.maximum)
