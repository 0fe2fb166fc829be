"""Errors whose one-line message tells the user what to fix (shown inline, never as a traceback)."""
from __future__ import annotations

from dataclasses import dataclass

from selfpruner.core.config import ConfigError
from selfpruner.core.models import ModelLoadError
from selfpruner.core.proposers.base import ProposerError
from selfpruner.core.store import StoreError

# ValueError: e.g. a calibration budget larger than the text; FileNotFoundError: no offline WikiText.
USER_ERRORS = (ConfigError, ModelLoadError, ProposerError, StoreError, FileNotFoundError, ValueError)


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
