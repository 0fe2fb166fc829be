"""What a failing session DB means, in one line a user acts on: StoreError, SQLite's reasons in words, and the
decorator that turns a failed write into that line (SQLite has rolled the write back)."""
from __future__ import annotations

import functools
import sqlite3

from .errors import UserError


class StoreError(UserError, RuntimeError):
    """A session DB that cannot be used; the message is one line for the user."""


def _why(e: sqlite3.Error) -> str:
    """SQLite's reason in words a user acts on."""
    msg = str(e)
    if "disk is full" in msg or "SQLITE_FULL" in msg:
        return "the disk is full (everything stored before this write is kept: free space, then resume)"
    if "readonly" in msg or "read-only" in msg:
        return "it is read-only (copy it somewhere writable, or fix its permissions)"
    if "not a database" in msg:
        return "it is not an SQLite file"
    if "malformed" in msg or "corrupt" in msg:
        return f"it is damaged ({msg}); it was left as it is"
    if "locked" in msg or "busy" in msg:
        return f"it is locked by another program ({msg})"
    return msg


def _writes(method):
    """A write that fails (disk full, read-only, locked) raises one StoreError line; SQLite rolls it back."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"cannot write session DB {self.path}: {_why(e)}") from None
    return wrapper
