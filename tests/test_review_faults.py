"""Faults a review found (issue 37), each pinned where it is born: what a resume takes from the command line, the
run lock beside (not on) the SQLite file, commands sent while a run starts, 'live' while a baseline computes, the
schema that says new settings are stored, and the API key that only goes to a server named in this run."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from selfpruner.cli import build_parser
from selfpruner.commands.options import typed_settings
from selfpruner.commands.search import SEARCH_PARTS
from selfpruner.core.config import ConfigError, Placement, SearchConfig
from selfpruner.core.events import Control, EventBus, Stage
from selfpruner.core.layer_search import session as layer_session
from selfpruner.core.layer_search.session import resume_config, start_search
from selfpruner.core.metric_search.session import MetricRun, resumed_run
from selfpruner.core.run_lock import RunLock, is_live, shown_status
from selfpruner.core.steering import request
from selfpruner.core.store import SCHEMA_VERSION, Store

from conftest import SECRET, cli, run_search

TINY = dict(beta=0.4, population=4, mutations=2, crossovers=2, budget_tokens=128, seq_len=32, calib_tokens=256,
            final_tokens=128, data="local", proposer="numeric")


@pytest.fixture
def stored(tmp_path, tiny_bench, tiny_llama_dir):
    """A finished one-generation session on the tiny LLaMA (two offspring a generation, so that extending it to
    20 generations takes seconds); `edit` rewrites its stored config as another run (a GPU box, a Ray cluster, an
    OpenAI-compatible server) would have stored it."""
    search, _ = run_search(SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), generations=1,
                                        **TINY | dict(population=2, mutations=1, crossovers=1)), tiny_bench)
    path = search.store.path
    search.store.close()

    def edit(**changes):
        conn = sqlite3.connect(path)
        cfg = json.loads(conn.execute("select config from session").fetchone()[0]) | changes
        conn.execute("update session set config = ?", [json.dumps(cfg)])
        conn.commit()
        conn.close()
    return path, edit


def _typed(*argv):
    return typed_settings(build_parser().parse_args(["search", *argv]), *SEARCH_PARTS, Placement)


# ---- 1. a resume takes what the user typed, also where it equals the parser's default -------------------------
def test_typed_means_typed_whatever_the_value():
    assert _typed() == {}
    assert _typed("-N", "20", "--workers", "0", "--device", "auto") == {"generations": 20, "workers": 0,
                                                                         "device": "auto"}
    args = build_parser().parse_args(["search", "-N", "20"])
    assert args.population == 30 and args.device == "auto"  # the untyped ones still read their defaults


def test_resume_extends_to_the_default_generations_and_runs_where_told(stored):
    path, edit = stored
    edit(generations=10, workers=2, device="cuda:0", device_map=None)
    cfg, _ = resume_config(path.stem, str(path.parent), _typed("-N", "20", "--workers", "0", "--device", "auto"))
    assert (cfg.generations, cfg.workers, cfg.device) == (20, 0, "auto")


def test_resume_through_the_cli_extends_a_session_to_twenty_generations(stored):
    path, edit = stored
    edit(generations=1)
    code, out, err = cli("search", "--resume", path.stem, "-N", "20", "--sessions-dir", path.parent)
    assert code == 0, err
    st = Store(path, readonly=True)
    assert st.session()["config"]["generations"] == 20 and len(st.generations()) == 21


def test_metric_resume_takes_a_typed_device_even_when_it_is_auto():
    stored = {**MetricRun(device="cuda:0", dtype="float32").__dict__}
    assert resumed_run(stored, MetricRun(device="auto"), "m", frozenset({"device"})).device == "auto"
    assert resumed_run(stored, MetricRun(device="auto"), "m", frozenset()).device == "cuda:0"


# ---- 2. the run lock never closes an fd of the DB file ---------------------------------------------------------
WRITE_AND_CLOSE = ("import sqlite3, sys\n"
                   "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                   "c.execute(\"insert into results (kind, name, payload, created) values ('other', 'x', '{}', 0)\")\n"
                   "c.close()\n")
COUNT = ("import sqlite3, sys\n"
         "print(sqlite3.connect(sys.argv[1]).execute('select count(*) from results').fetchone()[0])\n")


def _probe_then_write(path, probe) -> int:
    """This process holds the DB open (WAL) and probes the lock; another process writes and closes (the last
    connection it can see: it checkpoints and deletes -wal/-shm where our locks are gone); then this process
    writes. Returns the rows a fresh reader sees (3 when nothing was lost)."""
    st = Store(path)
    st.add_result("mine", "a", {})
    probe(path)
    subprocess.run([sys.executable, "-c", WRITE_AND_CLOSE, str(path)], check=True, timeout=60)
    st.add_result("mine", "b", {})
    seen = int(subprocess.run([sys.executable, "-c", COUNT, str(path)], capture_output=True, text=True,
                              check=True, timeout=60).stdout)
    st.close()
    return seen


def _raw_fd_probe(path):  # what the lock did before: an fd of the DB file itself, opened and closed
    os.close(os.open(path, os.O_RDONLY))


def test_probing_and_releasing_the_lock_loses_no_write_of_an_open_store(tmp_path):
    def lock_probe(path):
        assert not is_live(path)
        with Store(path) as st:
            RunLock(st, "test").acquire().release("finished")
        assert not is_live(path)

    for name, probe in (("lock", lock_probe), ("raw", _raw_fd_probe)):
        path = tmp_path / f"{name}.db"
        Store(path, create=True).create_session(name, "layer", {})
        seen = _probe_then_write(path, probe)
        if name == "lock":
            assert seen == 3
        else:  # the hazard itself, shown on this machine: the same sequence with an fd of the DB loses a write
            assert seen < 3
    assert (tmp_path / "lock.db.lock").exists()


# ---- 3. a command sent while the run starts is obeyed; 'live' has one source -------------------------------------
def test_a_stop_sent_while_the_model_loads_is_obeyed(stored, tiny_bench, monkeypatch):
    path, edit = stored
    edit(generations=3)
    loading, go = threading.Event(), threading.Event()

    def slow_workbench(cfg, s, bus=None):
        loading.set()
        assert go.wait(60)
        return tiny_bench
    monkeypatch.setattr(layer_session, "session_workbench", slow_workbench)
    cfg, _ = resume_config(path.stem, str(path.parent), {"generations": 3})
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("search", start_search(cfg, bus=EventBus(), control=Control(),
                                                                               resume=path)))
    t.start()
    assert loading.wait(60)
    with Store(path) as st:
        assert is_live(path) and shown_status(path, st.session()["status"]) != "died"
        request(st, "stop")  # accepted: the lock is held
    go.set()
    t.join(60)
    n_before = len(Store(path, readonly=True).evaluations())
    result = box["search"].run()
    assert result.status == "stopped" and len(Store(path, readonly=True).evaluations()) == n_before
    (row,) = Store(path, readonly=True).controls()
    assert row["obeyed"] is not None


def test_a_command_left_by_a_dead_run_expires_when_the_next_run_starts(tmp_path):
    st = Store(tmp_path / "s.db", create=True)
    st.create_session("s", "layer", {})
    lock = RunLock(st, "first").acquire()
    request(st, "stop")
    lock._unlock()  # the first run dies before obeying
    RunLock(st, "second").acquire()
    (row,) = st.controls()
    assert row["obeyed"] is None and row["note"].startswith("expired") and st.controls(pending=True) == []


def test_a_baseline_is_live_while_it_computes(tmp_path, tiny_bench, tiny_llama_dir):
    from selfpruner.core.baselines.run import run_baseline
    seen = []

    def watch(ev):
        if isinstance(ev, Stage) and ev.name == "final":
            (path,) = tmp_path.glob("*.db")
            with Store(path, readonly=True) as st:
                seen.append(shown_status(path, st.session()["status"]))
    bus = EventBus()
    bus.subscribe(watch)
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    res = run_baseline(cfg, "uniform", bus=bus, bench=tiny_bench)
    (path,) = tmp_path.glob("*.db")
    assert seen == ["running"] and not is_live(path)
    st = Store(path, readonly=True)
    assert st.session()["status"] == "finished" and [r["outcome"] for r in st.runs()] == ["finished"]
    assert st.session()["calib_key"] == tiny_bench.calib_key and res["session_id"] == st.session()["id"]


# ---- 6. new stored settings come with a new schema ---------------------------------------------------------------
def test_sessions_that_store_the_newer_settings_say_so(stored):
    path, _ = stored
    st = Store(path, readonly=True)
    assert SCHEMA_VERSION >= 4 and st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"split", "channel_multiple", "seed_references"} <= set(st.session()["config"])


# ---- 9. the API key only goes to a server this run names ----------------------------------------------------------
def test_a_stored_base_url_is_not_called_with_the_key_unless_named(stored, fake_openai):
    path, edit = stored
    url = os.environ["OPENAI_BASE_URL"]
    elsewhere = url.replace("127.0.0.1", "localhost")  # the same fake server under a name this run did not give
    edit(proposer="openai", base_url=elsewhere, generations=2)
    code, _, err = cli("search", "--resume", path.stem, "--sessions-dir", path.parent,
                       env={"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": url})
    assert code == 2 and f"--base-url {elsewhere}" in err and fake_openai.requests == []
    with pytest.raises(ConfigError, match="only sent to a server named in this run"):
        resume_config(path.stem, str(path.parent))
    cfg, _ = resume_config(path.stem, str(path.parent), {"base_url": elsewhere})  # named: allowed
    assert cfg.base_url == elsewhere
    resume_config(path.stem, str(path.parent), calls_proposer=False)  # a replay calls nobody
