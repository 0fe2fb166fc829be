"""One process runs a session at a time.

The runner holds an OS lock (flock) on the session's sidecar file `<id>.db.lock` for as long as it runs. The
kernel drops it when the process ends, however it ends (kill -9 included), so a lock whose process is gone is
simply free and the next run takes it without asking. The lock is never taken on the DB file itself: closing any
fd of a file drops every POSIX lock the process holds on it, SQLite's WAL locks included (SQLite's "How To Corrupt
An SQLite Database File", 2.2), so probing or releasing a lock there would pull SQLite's locks from under an open
connection of the same process.

Who holds it (pid, host, command, since) is a row of the DB's `runs` table, which also keeps every earlier
run of the session and how it ended ('died' for one whose process vanished without a word). "Live" has one
source of truth, the lock: a stored status 'running' without it reads 'died' (shown_status).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from .store import Store, StoreError, new_session_id

# A reader probing whether a session is live holds a shared lock for microseconds; a runner that meets one
# retries this long before it concludes that another runner holds the session.
PROBE_GRACE_S = 1.0


class SessionBusy(StoreError):
    """Another live process runs this session."""


def lock_path(db: Path | str) -> Path:
    """The sidecar file whose flock says that a process runs the session stored in `db`."""
    db = Path(db)
    return db.with_name(db.name + ".lock")


def _try_flock(path: Path, mode: int) -> int | None:
    """An fd holding `mode` on the session's sidecar (created for an exclusive lock), or None when another open
    file holds a conflicting lock."""
    flags = os.O_RDWR | os.O_CREAT if mode == fcntl.LOCK_EX else os.O_RDONLY
    fd = os.open(lock_path(path), flags | os.O_CLOEXEC, 0o644)
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
    except OSError:  # no sidecar: no run has held it since it was last created
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
    program in the holder line (default: this process's, from its argv). Built on a Store (an existing session),
    or on the path of a session about to be created (new_locked_session), whose Store is attached once written."""

    def __init__(self, store: Store | None, command: str | None = None, path: Path | None = None):
        self.store, self.command = store, command or run_command()
        self.path = Path(path) if path is not None else store.path
        self.fd: int | None = None
        self.run_id: int | None = None
        self.locked_at: float | None = None

    def acquire(self) -> RunLock:
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                self.fd = _try_flock(self.path, fcntl.LOCK_EX)
            except OSError as e:
                why = ("it is read-only (copy it somewhere writable, or fix its permissions)"
                       if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else e.strerror or str(e))
                raise StoreError(f"cannot lock session DB {self.path}: {why}") from None
            if self.fd is not None:
                break
            if time.monotonic() > deadline:
                raise busy_error(self.store) if self.store else SessionBusy(f"session {self.path.stem} is being run "
                                                                            f"by another process")
            time.sleep(0.05)
        self.locked_at = time.time()  # a command asked from now on is for this run (core/steering.py)
        if self.store is not None:
            self.attach(self.store)
        return self

    def attach(self, store: Store) -> None:
        """Record this run in `store` (under the lock)."""
        self.store = store
        try:
            self.run_id = store.begin_run(os.getpid(), socket.gethostname(), self.command, self.locked_at)
        except BaseException:
            self._unlock()
            raise

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
            os.close(self.fd)  # the sidecar's only fd in this process: the flock goes with it
            self.fd = None


def new_locked_session(directory: Path | str, kind: str, config: dict, command: str | None = None,
                       **fields) -> tuple[Store, RunLock]:
    """A new session whose run lock is held before its row says 'running', so it never reads 'died' while it
    starts. On any failure the lock goes again."""
    sid = new_session_id(kind)
    Path(directory).mkdir(parents=True, exist_ok=True)
    lock = RunLock(None, command, path=Path(directory) / f"{sid}.db").acquire()
    try:
        store = Store.new_session(directory, kind, config, session_id=sid, **fields)
        lock.attach(store)
    except BaseException:
        lock.release("refused")
        raise
    return store, lock


def run_command() -> str:
    """Which program runs the session, for the holder line ('selfpruner search', 'selfpruner-tui')."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    name = "selfpruner" if name in ("cli.py", "__main__.py") else name  # python -m selfpruner.cli
    return " ".join([name] + [a for a in sys.argv[1:2] if not a.startswith("-")])[:80]


def shown_status(path: Path | str, status: str | None) -> str | None:
    """A stored 'running' is true only while a process holds the session's lock; else that process died
    (killed, or its machine went down) and the session is resumable."""
    return "died" if status == "running" and not is_live(path) else status
