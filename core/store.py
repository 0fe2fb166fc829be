"""One SQLite file per session (sqlite-utils, WAL): config, every LLM call, candidate, fitness, result.

Every write commits at once, so a run killed at any point loses at most the evaluation in flight;
`--resume` reads the same tables back. API keys never reach this module: configs are stored as given
by SearchConfig.to_dict(), which holds no secrets.

A DB that cannot be used (newer schema, damaged, not SQLite, read-only, disk full) raises StoreError with
one line for the user, and nothing in it is changed: a failed write is rolled back by SQLite, and a DB is
only written after it passed the checks on opening.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

import sqlite_utils

from .plans import Genes, candidate_key, candidate_key_text
from .store_errors import StoreError, _why, _writes
from .types import CallRecord, Proposal, finite, from_db

# 1: the first format; 2: the `runs` table (who ran the session, core/run_lock.py) and PRAGMA user_version;
# 3: the `controls` table (pause/resume/stop asked from another process, core/steering.py);
# 4: settings an older reader would drop on resume (split, channel_multiple, seed_references), and controls asked
#    of an earlier run marked expired (note) instead of being remembered by each runner;
# 5: `reconstruct` (none | bias | ls) in place of the `compensate` switch, and the calibration text's source;
# 6: --target-speedup, --engine and --objective (a speed budget in place of β), and the measured cost table;
# 7: --sequential (finals and exports rebuilt on the pruned layers' outputs: an older reader would score them one shot).
SCHEMA_VERSION = 7
EXPIRED = "expired: asked of an earlier run"
DEFAULT_DIR = Path("sessions")


def selfpruner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("selfpruner")
    except PackageNotFoundError:
        return "unknown"


def new_session_id(kind: str = "layer") -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{kind}-{uuid.uuid4().hex[:4]}"


class Store:
    def __init__(self, path: Path | str, *, create: bool = False, readonly: bool = False, check: bool = True):
        """`create`: make a new session file; `readonly`: browse without writing (no schema, no WAL switch);
        `check`: run SQLite's quick integrity check on opening (milliseconds for a session DB)."""
        self.path = Path(path)
        self.schema_version = SCHEMA_VERSION  # of a new file; an existing one says its own (_check_version)
        if not create and not self.path.exists():
            raise StoreError(f"session DB not found: {self.path}")
        if not readonly:
            self._check_writable(create)
        try:
            if readonly:
                conn = self._connect_readonly()
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot create the sessions directory {self.path.parent}: {e.strerror}") from None
                conn = sqlite3.connect(str(self.path), timeout=5, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            self.db = sqlite_utils.Database(conn)
            tables = self.db.table_names()
            if create and not tables:
                conn.execute("PRAGMA journal_mode=WAL")
                self._create_schema()
            elif "session" not in tables:
                raise StoreError(f"{self.path} is not a selfpruner session DB")
            else:
                self._check_version()
                if check:
                    self._check_intact()
                if not readonly:
                    conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot use session DB {self.path}: {_why(e)}") from None

    def _connect_readonly(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # a WAL DB in a directory we cannot write (no -shm to create): nobody can be writing it either,
            # so read it as an immutable file
            conn.close()
            if os.access(self.path.parent, os.W_OK):
                raise
            return sqlite3.connect(f"file:{self.path}?immutable=1", uri=True, timeout=5, check_same_thread=False)

    def _check_writable(self, create: bool) -> None:
        """Refuse before SQLite half-opens: a read-only file, or a directory where its journal cannot go."""
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"cannot write session DB {self.path}: the file is read-only "
                             f"(copy it somewhere writable, or fix its permissions)")
        parent = self.path.parent
        if (parent.exists() or not create) and not os.access(parent, os.W_OK):
            raise StoreError(f"cannot write session DB {self.path}: its directory {parent} is read-only "
                             f"(SQLite writes its journal beside the DB; copy it somewhere writable)")

    def _check_version(self) -> None:
        """A DB from a newer selfpruner may hold what this one cannot read or would damage by writing."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        rows = list(self.db["session"].rows)
        if not version and rows:  # schema 1 stored it in the session row only
            version = rows[0].get("schema_version")
        if version and version > SCHEMA_VERSION:
            by = (rows[0].get("selfpruner_version") if rows else None) or "a newer selfpruner"
            raise StoreError(f"session DB {self.path} has schema {version}, written by selfpruner {by}; this "
                             f"selfpruner {selfpruner_version()} reads schema {SCHEMA_VERSION} and older: upgrade "
                             f"selfpruner to use it (the file was not changed)")
        self.schema_version = version or 1

    def _check_intact(self) -> None:
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise StoreError(f"cannot use session DB {self.path}: it is damaged ({problems[0]}); it was left as it is")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def new_session(cls, directory: Path | str, kind: str, config: dict, session_id: str | None = None,
                    **fields) -> Store:
        """A new session: the file `<directory>/<new id>.db` with its session row (status running); a runner
        creates it through run_lock.new_locked_session, which holds the run lock first."""
        sid = session_id or new_session_id(kind)
        store = cls(Path(directory) / f"{sid}.db", create=True)
        try:
            store.create_session(sid, kind, config, **fields)
        except BaseException:
            store.close()
            raise
        return store

    @property
    def session_id(self) -> str:
        return self.session()["id"]

    # ---- schema -------------------------------------------------------------------------------
    def _create_schema(self) -> None:
        db = self.db
        db["session"].create({"id": str, "kind": str, "created": float, "updated": float, "status": str,
                              "config": str, "model_name": str, "model_fingerprint": str, "model_arch": str,
                              "data_source": str, "beta": float, "proposer": str, "best_candidate": int,
                              "best_fitness": float, "final_ppl": float, "error": str,
                              "schema_version": int, "calib_key": str, "bos_token": int}, pk="id")
        db["llm_calls"].create({"id": int, "generation": int, "phase": str, "proposer": str, "attempt": int,
                                "prompt": str, "response": str, "parsed": int, "repaired": int, "error": str,
                                "tokens_in": int, "tokens_out": int, "latency_s": float, "created": float,
                                "asked": int}, pk="id")
        db["candidates"].create({"id": int, "generation": int, "phase": str, "origin": str, "parents": str, "rates": str,
                                 "key": str, "raw": str, "repaired": int, "call_id": int, "created": float},
                                pk="id", foreign_keys=[("call_id", "llm_calls", "id")])
        db["candidates"].create_index(["key"])
        db["candidates"].create_index(["generation"])
        db["evaluations"].create({"id": int, "candidate_id": int, "kind": str, "fitness": float,
                                  "budget_tokens": int, "seq_len": int, "eval_s": float, "cached": int,
                                  "created": float}, pk="id",
                                 foreign_keys=[("candidate_id", "candidates", "id")])
        db["evaluations"].create_index(["candidate_id"])
        db["generations"].create({"generation": int, "best": float, "mean": float, "population": str,
                                  "finished": float}, pk="generation")
        db["selections"].create({"generation": int, "parents": str, "from_llm": int, "call_id": int,
                                 "created": float}, pk="generation")
        db["results"].create({"id": int, "kind": str, "name": str, "payload": str, "created": float}, pk="id")
        db["metric_candidates"].create({"id": int, "iteration": int, "expression": str, "canonical": str,
                                        "origin": str, "parents": str, "fitness": float, "eval_s": float,
                                        "call_id": int, "created": float}, pk="id")
        db["metric_candidates"].create_index(["canonical"])
        self._create_runs()
        self._create_controls()
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _create_runs(self) -> None:
        self.db["runs"].create({"id": int, "pid": int, "host": str, "command": str, "selfpruner_version": str,
                                "started": float, "ended": float, "outcome": str}, pk="id", if_not_exists=True)

    def _create_controls(self) -> None:
        self.db["controls"].create({"id": int, "command": str, "requested_by": str, "requested": float,
                                    "obeyed": float, "run_id": int, "note": str}, pk="id", if_not_exists=True)

    # ---- session --------------------------------------------------------------------------------
    @_writes
    def create_session(self, session_id: str, kind: str, config: dict, **fields) -> None:
        now = time.time()
        self.db["session"].insert({"id": session_id, "kind": kind, "created": now, "updated": now,
                                   "status": "running", "config": json.dumps(config),
                                   "schema_version": SCHEMA_VERSION, "selfpruner_version": selfpruner_version(),
                                   **fields}, alter=True)

    def session(self) -> dict:
        rows = list(self.db["session"].rows)
        if not rows:
            raise StoreError(f"{self.path} holds no session")
        row = rows[0]
        row["config"] = json.loads(row["config"] or "{}")
        return row

    def mark_failed(self, e: BaseException) -> None:
        """The session ended on an error: say which, where it can still be written."""
        try:
            self.update_session(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
        except StoreError:
            pass  # the DB itself failed (a full disk): its own error is the one to report

    @_writes
    def update_session(self, **fields) -> None:
        sid = self.session()["id"]
        if isinstance(fields.get("config"), dict):
            fields["config"] = json.dumps(fields["config"])
        self.db["session"].update(sid, {**fields, "updated": time.time()}, alter=True)

    # ---- writes ---------------------------------------------------------------------------------
    @_writes
    def add_call(self, rec: CallRecord) -> int:
        d = rec.to_dict()
        d["created"] = time.time()
        return self.db["llm_calls"].insert(d, alter=True).last_pk

    @_writes
    def add_candidates(self, generation: int, phase: str, proposals: list[Proposal],
                       keys: list[str] | None = None) -> list[int]:
        """All of a phase's proposals in one transaction, so a phase is stored whole or not at all. `keys`:
        each candidate's identity for the fitness cache (plans.candidate_key_text); default its 5-decimal rates."""
        ids = []
        keys = keys or [candidate_key_text(candidate_key(p.rates)) for p in proposals]
        with self.db.conn:
            self.db.conn.execute("BEGIN")
            for p, k in zip(proposals, keys):
                ids.append(self.db["candidates"].insert({
                    "generation": generation, "phase": phase, "origin": p.origin, "parents": json.dumps(p.parents),
                    "rates": json.dumps(p.rates), "key": k,
                    "raw": json.dumps(p.raw) if p.raw is not None else None, "repaired": int(p.repaired),
                    "call_id": p.call_id, "created": time.time()}).last_pk)
        return ids

    @_writes
    def add_evaluation(self, candidate_id: int, fitness: float, *, kind: str = "search", budget_tokens: int,
                       seq_len: int, eval_s: float, cached: bool = False) -> int:
        return self.db["evaluations"].insert({
            "candidate_id": candidate_id, "kind": kind, "fitness": finite(fitness),
            "budget_tokens": budget_tokens, "seq_len": seq_len, "eval_s": eval_s, "cached": int(cached),
            "created": time.time()}).last_pk

    @_writes
    def add_generation(self, generation: int, best: float, mean: float, population: list[int]) -> None:
        self.db["generations"].upsert({"generation": generation, "best": finite(best), "mean": finite(mean),
                                       "population": json.dumps(population), "finished": time.time()},
                                      pk="generation")

    @_writes
    def add_selection(self, generation: int, parents: list[int], from_llm: int, call_id: int | None) -> None:
        if "selections" not in self.db.table_names():  # a session DB from before the selection step
            self.db["selections"].create({"generation": int, "parents": str, "from_llm": int, "call_id": int,
                                          "created": float}, pk="generation")
        self.db["selections"].upsert({"generation": generation, "parents": json.dumps(parents),
                                      "from_llm": from_llm, "call_id": call_id, "created": time.time()},
                                     pk="generation")

    def selection(self, generation: int) -> dict | None:
        if "selections" not in self.db.table_names():
            return None
        rows = list(self.db["selections"].rows_where("generation = ?", [generation]))
        if not rows:
            return None
        rows[0]["parents"] = json.loads(rows[0]["parents"])
        return rows[0]

    def selections(self) -> list[dict]:
        if "selections" not in self.db.table_names():
            return []
        rows = self.db["selections"].rows_where(order_by="generation")
        return [r | {"parents": json.loads(r["parents"])} for r in rows]

    @_writes
    def add_result(self, kind: str, name: str, payload: dict) -> int:
        return self.db["results"].insert({"kind": kind, "name": name, "payload": json.dumps(payload),
                                          "created": time.time()}).last_pk

    @_writes
    def add_metric_candidate(self, **row) -> int:
        row.setdefault("created", time.time())
        if isinstance(row.get("parents"), list):
            row["parents"] = json.dumps(row["parents"])
        if "fitness" in row:
            row["fitness"] = finite(row["fitness"])
        return self.db["metric_candidates"].insert(row, alter=True).last_pk

    # ---- runs (core/run_lock.py) ---------------------------------------------------------------------
    @_writes
    def begin_run(self, pid: int, host: str, command: str, locked_at: float | None = None) -> int:
        """Called under the run lock (taken at `locked_at`): earlier runs still open died without a word (their
        lock is free), and commands asked before the lock was taken were for them."""
        if self.schema_version < SCHEMA_VERSION:  # an older DB gains the newer tables on its first run by this one
            self._create_runs()
            self._create_controls()
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.schema_version = SCHEMA_VERSION
        now = time.time()
        with self.db.conn:
            self.db.conn.execute("BEGIN")
            self.db.execute("update runs set outcome = 'died' where ended is null and outcome is null")
            self.db.execute("update controls set note = ? where obeyed is null and (note is null or note = '') "
                            "and requested < ?", [EXPIRED, locked_at if locked_at is not None else now])
            run_id = self.db["runs"].insert({"pid": pid, "host": host, "command": command,
                                             "selfpruner_version": selfpruner_version(), "started": now}).last_pk
        return run_id

    # ---- controls (core/steering.py) ---------------------------------------------------------------------
    @_writes
    def request_control(self, command: str, requested_by: str) -> int:
        if "controls" not in self.db.table_names():  # a run of an older version holds it: it would never look
            raise StoreError(f"session {self.session()['id']} is run by an older selfpruner, which takes no "
                             f"commands from other processes")
        return self.db["controls"].insert({"command": command, "requested_by": requested_by,
                                           "requested": time.time()}).last_pk

    def controls(self, pending: bool = False) -> list[dict]:
        if "controls" not in self.db.table_names():
            return []
        where = " where obeyed is null and (note is null or note = '')" if pending else ""
        return [dict(r) for r in self.db.query(f"select * from controls{where} order by id")]

    @_writes
    def obey_control(self, control_id: int, run_id: int | None, note: str = "") -> None:
        self.db["controls"].update(control_id, {"obeyed": time.time(), "run_id": run_id, "note": note})

    @_writes
    def end_run(self, run_id: int, outcome: str) -> None:
        self.db["runs"].update(run_id, {"ended": time.time(), "outcome": outcome})

    def runs(self) -> list[dict]:
        if "runs" not in self.db.table_names():
            return []
        return list(self.db["runs"].rows_where(order_by="id"))

    def open_run(self) -> dict | None:
        """The run that has not ended (the lock holder, or one that died: the lock tells which)."""
        open_runs = [r for r in self.runs() if r["ended"] is None and r["outcome"] is None]
        return open_runs[-1] if open_runs else None

    # ---- reads ----------------------------------------------------------------------------------
    def candidates(self, generation: int | None = None) -> list[dict]:
        where, args = ("generation = ?", [generation]) if generation is not None else (None, None)
        out, split = [], self._split()
        for r in self.db["candidates"].rows_where(where, args, order_by="id"):
            r["parents"] = json.loads(r["parents"] or "[]")
            r["rates"] = json.loads(r["rates"])
            r["genes"] = Genes.of(r["rates"], split)
            r["raw"] = json.loads(r["raw"]) if r["raw"] else None
            out.append(r)
        return out

    def genes(self, flat) -> Genes:
        """A stored or proposed candidate's flat genes by meaning, under the split this session ran with."""
        return Genes.of(flat, self._split())

    def _split(self) -> str | None:
        rows = list(self.db.query("select config from session limit 1"))
        return json.loads(rows[0]["config"] or "{}").get("split") if rows else None

    def fitness_by_candidate(self, kind: str = "search", budget_tokens: int | None = None) -> dict[int, float]:
        where, args = "kind = ?", [kind]
        if budget_tokens is not None:
            where += " and budget_tokens = ?"
            args.append(budget_tokens)
        return {r["candidate_id"]: from_db(r["fitness"])
                for r in self.db["evaluations"].rows_where(where, args, order_by="id")}

    def evaluations(self) -> list[dict]:
        return list(self.db["evaluations"].rows_where(order_by="id"))

    def cached_fitness(self, key: str, budget_tokens: int, seq_len: int) -> float | None:
        rows = list(self.db.query(
            "select e.fitness from evaluations e join candidates c on c.id = e.candidate_id "
            "where c.key = ? and e.kind = 'search' and e.budget_tokens = ? and e.seq_len = ? limit 1",
            [key, budget_tokens, seq_len]))
        return from_db(rows[0]["fitness"]) if rows else None

    def generations(self) -> list[dict]:
        out = []
        for r in self.db["generations"].rows_where(order_by="generation"):
            r["population"] = json.loads(r["population"])
            r["best"], r["mean"] = from_db(r["best"]), from_db(r["mean"])
            out.append(r)
        return out

    def calls(self, phase: str | None = None) -> list[dict]:
        where, args = ("phase = ?", [phase]) if phase else (None, None)
        return list(self.db["llm_calls"].rows_where(where, args, order_by="id"))

    def results(self, kind: str | None = None) -> list[dict]:
        where, args = ("kind = ?", [kind]) if kind else (None, None)
        out = []
        for r in self.db["results"].rows_where(where, args, order_by="id"):
            r["payload"] = json.loads(r["payload"])
            out.append(r)
        return out

    def metric_candidates(self) -> list[dict]:
        out = []
        for r in self.db["metric_candidates"].rows_where(order_by="id"):
            r["parents"] = json.loads(r["parents"] or "[]")
            r["fitness"] = from_db(r["fitness"])
            out.append(r)
        return out

    def close(self) -> None:
        self.db.conn.close()
