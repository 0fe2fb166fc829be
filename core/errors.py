"""UserError: the base of every error whose message alone, one line, tells the user what to fix. The CLI prints
it as `error: ...` (exit 2) and the TUI as a notification; anything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    pass


class ConfigError(UserError, ValueError):
    """Bad user input; the message is one line."""


class TaskUnavailable(UserError, RuntimeError):
    """A zero-shot task whose definition or data cannot be loaded; the message is one line for the user."""
