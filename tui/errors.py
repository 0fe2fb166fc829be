"""Errors whose one-line message tells the user what to fix (shown inline, never as a traceback)."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from selfpruner.core.errors import UserError

# The core's UserError (config, model, proposer, store, ...) and, as the CLI: a path that is not there and a
# session DB damaged where it was not read on opening; ValueError: e.g. a calibration budget larger than the text.
USER_ERRORS = (UserError, FileNotFoundError, sqlite3.Error, ValueError)


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class RunError:
    """Why a run screen closed without starting a session: `kind` is the exception's class name."""
    message: str
    kind: str

    @classmethod
    def of(cls, e: BaseException) -> "RunError":
        return cls(one_line(e), type(e).__name__)
