"""After the search, from the session screen: speed (dense against pruned, on the engine the export runs on),
zero-shot accuracy (lm-eval), LoRA recovery and the HTML report, each a background job with a progress bar and
a cancel key. A job is the same `selfpruner` command a user would type, run as a child process: cancelling
ends it (nothing half-stored: the command stores its result only when it is done, in this session, where the
browser and `show` find it too)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from selfpruner.core.store import Store

JOBS = {"speed": "speed: dense against pruned", "zero-shot": "zero-shot accuracy (lm-eval)",
        "lora": "LoRA recovery (HF directory)", "report": "HTML report"}


def latest_export(db_path: Path) -> str | None:
    """The path of the session's most recent export (a GGUF file or an HF directory), if any."""
    with Store(db_path, readonly=True) as st:
        rows = st.results("export")
    return rows[-1]["name"] if rows else None


def source_model(db_path: Path) -> str:
    """The dense model the session pruned, as `search --model` took it (None there: the bundled gemma)."""
    with Store(db_path, readonly=True) as st:
        return (st.session().get("config") or {}).get("model") or "bundled"


def job_command(job: str, db_path: Path, export: str | None, *, tasks: str = "piqa", data_dir: str = "",
                limit: str = "") -> list[str]:
    """The `selfpruner` command line of a job (without the interpreter)."""
    sessions = ["--sessions-dir", str(db_path.parent)]
    if job == "report":
        return ["report", db_path.stem, "--out", str(db_path.with_name(db_path.stem + "-report")), *sessions]
    if export is None:
        raise ValueError("export the best candidate first (x)")
    if job == "speed":
        return ["speed", export, "--dense", source_model(db_path), *sessions]
    if job == "zero-shot":
        return ["eval", export, "--tasks", tasks or "piqa", *(["--data-dir", data_dir] if data_dir else []),
                *(["--limit", limit] if limit else []), *sessions]
    if job == "lora":
        if export.endswith(".gguf"):
            raise ValueError("LoRA recovery trains an HF directory: export one (x, format HF)")
        return ["lora", export, "--out", export.rstrip("/") + "-lora", *sessions]
    raise ValueError(f"unknown job {job!r}")


class JobsScreen(ModalScreen):
    """Dismissed with {"job", "command", "output"} after a job that succeeded, or None."""
    BINDINGS = [Binding("escape", "cancel", "Cancel / close")]

    def __init__(self, db_path: Path | str) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.export = latest_export(self.db_path)
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self.lines: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="jobs-box"):
            yield Static(Text("Measure the pruned model", style="bold"))
            yield Static(Text(f"export: {self.export or 'none yet (x exports the best candidate)'}", style="dim"))
            with Horizontal(classes="form-row"):
                yield Label("job", classes="form-label")
                yield Select([(v, k) for k, v in JOBS.items()], value="speed", allow_blank=False, compact=True,
                             id="job")
            with Horizontal(classes="form-row"):
                yield Label("tasks", classes="form-label")
                yield Input("piqa", compact=True, id="tasks")
            with Horizontal(classes="form-row"):
                yield Label("data dir", classes="form-label")
                yield Input("", placeholder="local PIQA files (empty: the hub)", compact=True, id="data_dir")
            with Horizontal(classes="form-row"):
                yield Label("limit", classes="form-label")
                yield Input("", placeholder="items per task (empty: all)", compact=True, id="limit")
            yield Static("", id="job-status")
            yield ProgressBar(total=None, show_eta=False, id="job-progress")
            with Horizontal(id="jobs-buttons"):
                yield Button("Run", id="run", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#job-progress").display = False

    def _status(self, text: str, style: str = "dim") -> None:
        self.query_one("#job-status", Static).update(Text(text, style=style))

    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        if self.proc is not None:
            return
        job = str(self.query_one("#job", Select).value)
        try:
            args = job_command(job, self.db_path, self.export, tasks=self.query_one("#tasks", Input).value.strip(),
                               data_dir=self.query_one("#data_dir", Input).value.strip(),
                               limit=self.query_one("#limit", Input).value.strip())
        except ValueError as e:
            self._status(f"✗ {e}", "bold red")
            return
        self.cancelled = False
        self.lines = []
        self.query_one("#job-progress").display = True
        self.query_one("#run", Button).disabled = True
        self._status("selfpruner " + " ".join(args))
        # its own process group: cancelling ends the command and anything it started (llama.cpp, lm-eval)
        self.proc = subprocess.Popen([sys.executable, "-m", "selfpruner.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._watch, args=(job, args, self.proc), daemon=True).start()

    def _watch(self, job: str, args: list[str], proc: subprocess.Popen) -> None:
        t0 = time.monotonic()
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                self.lines.append(line)
                self.app.call_from_thread(self._status, f"{time.monotonic() - t0:5.0f} s  {line[-120:]}")
        rc = proc.wait()
        self.app.call_from_thread(self._done, job, args, rc)

    def _done(self, job: str, args: list[str], rc: int) -> None:
        self.proc = None
        self.query_one("#job-progress").display = False
        self.query_one("#run", Button).disabled = False
        if self.cancelled:
            self._status("cancelled", "yellow")
            return
        if rc != 0:
            last = next((ln for ln in reversed(self.lines) if ln.startswith("error")), self.lines[-1] if self.lines
                        else f"exit status {rc}")
            self._status(f"✗ {last}", "bold red")
            return
        self.dismiss({"job": job, "command": args, "output": self.lines})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if self.proc is not None:  # first press ends the job, the next closes the dialog
            self.cancelled = True
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return
        self.dismiss(None)
