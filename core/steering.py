"""Steering a run from another process: pause, resume, stop after this generation, stop now.

A TUI attached to a search that runs elsewhere, or `selfpruner control ID CMD`, writes a row to the session's
`controls` table (who asked, when). The runner polls the table at every checkpoint of its Control (between
evaluations, and every Control.poll_s while paused), applies each new row to its Control and stores when it obeyed, so
a command takes effect at the next evaluation boundary and the log says who paused a run and when it paused.
"""
from __future__ import annotations

import getpass
import os
import socket

from .config import ConfigError
from .events import Control
from .run_lock import is_live, shown_status
from .store import Store

COMMANDS = ("pause", "resume", "stop", "stop-after-generation")


def requester(tool: str) -> str:
    """Who asks: the tool, the user and where they ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{tool} ({user}@{socket.gethostname()}, pid {os.getpid()})"


def request(store: Store, command: str, tool: str = "selfpruner control") -> int:
    """Ask the process running `store`'s session to obey `command`; refused in one line when nothing runs it."""
    if command not in COMMANDS:
        raise ConfigError(f"control command must be one of {', '.join(COMMANDS)}, got {command!r}")
    s = store.session()
    if not is_live(store.path):
        raise ConfigError(f"session {s['id']} is not running ({shown_status(store.path, s['status'])}): nothing to "
                          f"{command}" + ("; continue it with selfpruner search --resume " + s["id"]
                                          if s["status"] in ("stopped", "failed", "running") else ""))
    return store.request_control(command, requester(tool))


class ControlPoller:
    """Installed as a Control's poll hook by the runner: applies the commands other processes stored. Every
    pending row is for this run: the run lock makes `request` accept a command, and taking the lock expired the
    rows asked of earlier runs (Store.begin_run), so one sent while the model still loads is obeyed too."""

    def __init__(self, store: Store, control: Control, run_id: int | None = None):
        self.store, self.control, self.run_id = store, control, run_id

    def __call__(self) -> None:
        for row in self.store.controls(pending=True):
            getattr(self.control, {"pause": "pause", "resume": "resume", "stop": "stop",
                                   "stop-after-generation": "stop_after_generation"}[row["command"]])()
            self.store.obey_control(row["id"], self.run_id)
