"""One process runs a session at a time.

The runner holds an OS lock (flock) on the session DB file for as long as it runs. The kernel drops it when
the process ends, however it ends (kill -9 included), so a lock whose process is gone is simply free and the
next run takes it without asking. flock is independent of SQLite's own POSIX locks, so readers (`show`,
`report`, the TUI browser, `export`) keep reading while a run holds it.

Who holds it (pid, host, command, since) is a row of the DB's `runs` table, which also keeps every earlier
run of the session and how it ended ('died' for one whose process vanished without a word).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from .store import Store, StoreError

# A reader probing whether a session is live holds a shared lock for microseconds; a runner that meets one
# retries this long before it concludes that another runner holds the session.
PROBE_GRACE_S = 1.0


class SessionBusy(StoreError):
    """Another live process runs this session."""


def _try_flock(path: Path, mode: int) -> int | None:
    """An fd holding `mode` on the file, or None when another open file holds a conflicting lock."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if isinstance(e, BlockingIOError):
            return None
        raise
    return fd


def is_live(path: Path | str) -> bool:
    """True while some process runs the session (holds its lock). Never blocks that process for long."""
    try:
        fd = _try_flock(Path(path), fcntl.LOCK_SH)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def holder_text(store: Store) -> str:
    """'pid 123 on host box (selfpruner search, since 02:13:05)' from the open run row, if it has been written."""
    run = store.open_run()
    if run is None:
        return "another process (starting up)"
    since = time.strftime("%H:%M:%S", time.localtime(run["started"]))
    return f"pid {run['pid']} on host {run['host']} ({run['command']}, since {since})"


def busy_error(store: Store) -> SessionBusy:
    return SessionBusy(f"session {store.path.stem} is being run by {holder_text(store)}: wait for it to end, or "
                       f"stop it (meanwhile show, report, export and the TUI browser read it)")


def refuse_if_live(path: Path | str) -> None:
    """For a caller with slow work before it takes the lock (a UI loading its model): refuse early."""
    if is_live(path):
        with Store(path, readonly=True, check=False) as store:
            raise busy_error(store)


class RunLock:
    """Held by the process that runs a session; `release` records how the run ended. `command` names the
    program in the holder line (default: this process's, from its argv)."""

    def __init__(self, store: Store, command: str | None = None):
        self.store, self.command = store, command or run_command()
        self.fd: int | None = None
        self.run_id: int | None = None

    def acquire(self) -> RunLock:
        path = self.store.path
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                self.fd = _try_flock(path, fcntl.LOCK_EX)
            except OSError as e:
                raise StoreError(f"cannot lock session DB {path}: {e.strerror or e}") from None
            if self.fd is not None:
                break
            if time.monotonic() > deadline:
                raise busy_error(self.store)
            time.sleep(0.05)
        try:
            self.run_id = self.store.begin_run(os.getpid(), socket.gethostname(), self.command)
        except BaseException:
            self._unlock()
            raise
        return self

    def release(self, outcome: str) -> None:
        if self.fd is None:
            return
        try:
            if self.run_id is not None:
                self.store.end_run(self.run_id, outcome)
        except StoreError:
            pass  # a full disk may refuse this last line; the lock itself still goes, and the row reads 'died'
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only fd of this open file drops the flock
            self.fd = None


def run_command() -> str:
    """Which program runs the session, for the holder line ('selfpruner search', 'selfpruner-tui')."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    name = "selfpruner" if name in ("cli.py", "__main__.py") else name  # python -m selfpruner.cli
    return " ".join([name] + [a for a in sys.argv[1:2] if not a.startswith("-")])[:80]


def shown_status(path: Path | str, status: str | None) -> str | None:
    """A stored 'running' is true only while a process holds the session's lock; else that process died
    (killed, or its machine went down) and the session is resumable."""
    return "died" if status == "running" and not is_live(path) else status
