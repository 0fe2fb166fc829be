"""Export a session's best candidate from its screen: an HF directory or a GGUF for llama.cpp / Ollama, with its
options, run in a background thread (the model is rebuilt and calibrated as `selfpruner export` does). The result
is stored in the session, so the browser and `show` list it too."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, LoadingIndicator, Select, Static

from selfpruner.core.results.gguf_export import FORMATS, OUTTYPES

from ..errors import USER_ERRORS, one_line


def default_out(db_path: Path, fmt: str) -> str:
    """Beside the session DB: <session>.gguf, or the directory <session>-pruned/."""
    return str(db_path.with_name(db_path.stem + (".gguf" if fmt == "gguf" else "-pruned")))


class ExportScreen(ModalScreen):
    """Dismissed with the stored export record, or None when cancelled."""
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, db_path: Path | str) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box"):
            yield Static(Text("Export the best candidate", style="bold"))
            with Horizontal(classes="form-row"):
                yield Label("format", classes="form-label")
                yield Select([("GGUF (llama.cpp, Ollama)", "gguf"), ("HF directory (transformers, vllm serve)", "hf")],
                             value="gguf", allow_blank=False, compact=True, id="format")
            with Horizontal(classes="form-row"):
                yield Label("GGUF type", classes="form-label")
                yield Select([(t, t) for t in OUTTYPES], value="f16", allow_blank=False, compact=True, id="outtype")
            with Horizontal(classes="form-row"):
                yield Label("to", classes="form-label")
                yield Input(default_out(self.db_path, "gguf"), compact=True, id="out")
            yield Static("", id="export-status")
            yield LoadingIndicator(id="export-busy")
            with Horizontal(id="export-buttons"):
                yield Button("Export", id="export", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#export-busy").display = False

    @on(Select.Changed, "#format")
    def _format(self, event: Select.Changed) -> None:
        fmt = str(event.value)
        self.query_one("#outtype", Select).disabled = fmt != "gguf"
        out = self.query_one("#out", Input)
        if out.value in [default_out(self.db_path, f) for f in FORMATS]:
            out.value = default_out(self.db_path, fmt)

    @on(Button.Pressed, "#export")
    def action_export(self) -> None:
        if self.busy:
            return
        self.busy = True
        self.query_one("#export-busy").display = True
        self.query_one("#export", Button).disabled = True
        self.query_one("#export-status", Static).update(Text("rebuilding the model and writing the export…",
                                                             style="dim"))
        self._run(str(self.query_one("#format", Select).value), str(self.query_one("#outtype", Select).value),
                  self.query_one("#out", Input).value.strip())

    @work(thread=True, exclusive=True)
    def _run(self, fmt: str, outtype: str, out: str) -> None:
        from selfpruner.core.results.session_export import export_session_candidate
        try:
            info = export_session_candidate(str(self.db_path), out, sessions_dir=str(self.db_path.parent),
                                            fmt=fmt, outtype=outtype)
        except USER_ERRORS as e:
            self.app.call_from_thread(self._failed, one_line(e))
            return
        self.app.call_from_thread(self.dismiss, info)

    def _failed(self, message: str) -> None:
        self.busy = False
        self.query_one("#export-busy").display = False
        self.query_one("#export", Button).disabled = False
        self.query_one("#export-status", Static).update(Text(f"✗ {message}", style="bold red"))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if not self.busy:  # an export in flight finishes (its file is written whole or not at all)
            self.dismiss(None)
