"""Sessions as users have them on disk still work: tests/data/sessions holds one of each kind (numeric GA,
llama.cpp proposer, racing, Ray workers, Pruner-Zero), written by make.py beside them on the bundled SmolLM2
before the code was regrouped. Each still shows, a layer-rate session replays from its stored answers (the same
candidates, selections and populations, and fitness within 1e-4 relative: the files were written on another
machine, whose CPU kernels round the last bits differently), and each resumes (extended by a generation, or a
finished metric search evaluating nothing again)."""
from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from selfpruner.core.store import Store

from conftest import cli

pytestmark = pytest.mark.slow

STORED = Path(__file__).parent / "data" / "sessions"
LAYER = ["numeric", "llama-cpp", "racing", "ray"]
OTHER_MACHINE = 1e-4  # measured: another CPU moved these sessions' fitness by up to 7e-6 relative


@pytest.fixture
def stored(tmp_path):
    """A copy of a stored session in a fresh sessions dir. Its data source names the WikiText-2 copy of the
    machine that wrote it; the same text (same sha256) lies elsewhere here, so the path is pointed at it."""
    from selfpruner.core.model.data import local_wikitext_path

    def copy(name: str) -> tuple[str, Path]:
        src = STORED / f"{name}.db"
        sid = Store(src, readonly=True).session()["id"]
        d = tmp_path / "sessions"
        d.mkdir(exist_ok=True)
        db = d / f"{sid}.db"
        shutil.copyfile(src, db)
        conn = sqlite3.connect(db)
        (source,) = conn.execute("select data_source from session").fetchone()
        here = re.sub(r"^local:.* sha256=", f"local:{local_wikitext_path()} sha256=", source)
        conn.execute("update session set data_source = ?", [here])
        conn.commit()
        conn.close()
        return sid, d
    return copy


@pytest.mark.parametrize("name", LAYER + ["metric"])
def test_a_stored_session_shows(stored, name):
    sid, d = stored(name)
    code, out, err = cli("show", sid, "--sessions-dir", str(d))
    assert code == 0 and sid in out and "finished" in out, err


@pytest.mark.parametrize("name", ["numeric", "llama-cpp", "racing"])
def test_a_stored_session_replays(stored, name):
    sid, d = stored(name)
    code, out, err = cli("replay", sid, "--sessions-dir", str(d), "--no-final",
                         "--rel-tol", str(OTHER_MACHINE))
    assert code == 0 and "replay reproduced" in out, out + err


def test_a_stored_ray_session_replays_in_process(stored):
    """Where evaluations run may change on replay: the Ray session's trajectory comes back without Ray."""
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.self_pruner import compare_trajectories
    from selfpruner.core.layer_search.session import replay_session
    sid, d = stored("ray")
    search, path = replay_session(sid, str(d), bus=EventBus(), control=Control(), final_eval=False,
                                  overrides={"workers": 0})
    assert search.run().status == "finished"
    with Store(path, readonly=True) as source:
        assert source.session()["config"]["workers"] == 1 and compare_trajectories(source, search.store, OTHER_MACHINE) == []


@pytest.mark.parametrize("name", LAYER)
def test_a_stored_session_resumes(stored, name):
    sid, d = stored(name)
    extra = ["--workers", "0"] if name == "ray" else []  # where it runs may change on resume: here, in-process
    code, out, err = cli("search", "--resume", sid, "-N", "2", "--sessions-dir", str(d), *extra)
    assert code == 0, err
    st = Store(d / f"{sid}.db", readonly=True)
    assert [g["generation"] for g in st.generations()] == [0, 1, 2] and st.session()["status"] == "finished"
    evals = [(e["candidate_id"], e["budget_tokens"]) for e in st.evaluations() if e["kind"] == "search"]
    assert len(evals) == len(set(evals))


def test_a_stored_metric_session_resumes(stored):
    sid, d = stored("metric")
    n = len(Store(d / f"{sid}.db", readonly=True).metric_candidates())
    code, out, err = cli("metric-search", "--resume", sid, "--sessions-dir", str(d))
    assert code == 0, err
    assert len(Store(d / f"{sid}.db", readonly=True).metric_candidates()) == n
