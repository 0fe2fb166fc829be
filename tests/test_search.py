"""Algorithm 1 end to end on tiny models: storage of every step, resume after a crash, replay."""
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import CandidateEvaluated, Control, EventBus
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.proposers.replay import ReplayProposer
from selfpruner.core.store import Store

from conftest import run_search as _run

TINY = dict(beta=0.4, proposer="numeric", population=4, mutations=2, crossovers=2, generations=2,
            budget_tokens=128, seq_len=32, calib_tokens=256, final_tokens=256, data="local")


@pytest.fixture(scope="module")
def bench(tiny_bench):
    return tiny_bench


def test_search_stores_every_step(tmp_path, bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    events = []
    search, res = _run(cfg, bench, subscriber=events.append)
    st = search.store
    cands = st.candidates()
    assert len(cands) == 4 + 2 * (2 + 2)
    assert {c["phase"] for c in cands} == {"init", "mutation", "crossover"}
    fit = st.fitness_by_candidate()
    assert set(fit) == {c["id"] for c in cands}
    for c in cands:
        assert abs(sum(c["rates"]) / len(c["rates"]) - 0.4) < 1e-6
        assert all(0.0 <= r <= 1.0 for r in c["rates"])
    gens = st.generations()
    assert [g["generation"] for g in gens] == [0, 1, 2]
    # elitist selection: the best never gets worse, the population is the K best so far
    assert all(a["best"] >= b["best"] for a, b in zip(gens, gens[1:]))
    upto = {c["id"]: fit[c["id"]] for c in cands}
    assert gens[-1]["population"] == sorted(upto, key=lambda i: (upto[i], i))[:4]
    assert res.status == "finished" and res.best_fitness == min(fit.values())
    s = st.session()
    assert s["status"] == "finished" and s["final_ppl"] == res.final_ppl and res.final_ppl > 1
    assert st.fitness_by_candidate(kind="final")[res.best_id] == res.final_ppl
    assert sum(isinstance(e, CandidateEvaluated) for e in events) == len(cands)
    assert "OPENAI" not in str(s["config"])


class Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, bench, tiny_llama_dir):
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    ref, _ = _run(SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(ref_dir), **TINY), bench)
    seen = []

    def killer(ev):
        if isinstance(ev, CandidateEvaluated):
            seen.append(ev.id)
            if len(seen) == 7:  # mid-generation 1, after its proposals were stored
                raise Crash

    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(crash_dir), **TINY)
    with pytest.raises(Crash):
        _run(cfg, bench, subscriber=killer)
    (path,) = list(crash_dir.glob("*.db"))
    st = Store(path)
    assert st.session()["status"] == "failed" and st.session()["error"].startswith("Crash")
    assert len(st.fitness_by_candidate()) == 7
    st.close()
    resumed, res = _run(cfg, bench, resume=path)
    assert res.status == "finished"
    assert compare_trajectories(ref.store, resumed.store) == []
    # nothing was evaluated twice
    evals = [e["candidate_id"] for e in resumed.store.evaluations() if e["kind"] == "search"]
    assert len(evals) == len(set(evals)) == 12


def test_replay_reproduces_the_stored_trajectory(tmp_path, bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    orig, _ = _run(cfg, bench)
    rcfg = SearchConfig(**{**cfg.to_dict(), "proposer": "replay", "replay_from": str(orig.store.path)})
    replay, res = _run(rcfg, bench)
    assert res.status == "finished"
    assert compare_trajectories(orig.store, replay.store) == []
    assert replay.store.session()["proposer"] == "replay"


def test_ablation_can_start_from_another_runs_initial_population(tmp_path, bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    orig, _ = _run(cfg, bench)
    acfg = SearchConfig(**{**cfg.to_dict(), "seed": 7, "mutations": 0, "crossovers": 4})
    abl = start_search(acfg, bus=EventBus(), control=Control(), bench=bench,
                       init_proposer=ReplayProposer(Store(orig.store.path)))
    assert abl.run().status == "finished"
    init = lambda st: [c["rates"] for c in st.candidates(0)]
    assert init(abl.store) == init(orig.store)
    later = [c for c in abl.store.candidates() if c["generation"] > 0]
    assert len(later) == 8 and {c["phase"] for c in later} == {"crossover"}


def test_stop_keeps_everything_and_resumes(tmp_path, bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    control = Control()
    bus = EventBus()
    n = []

    def stop_after_five(ev):
        if isinstance(ev, CandidateEvaluated):
            n.append(ev.id)
            if len(n) == 5:
                control.stop()

    bus.subscribe(stop_after_five)
    search = start_search(cfg, bus=bus, control=control, bench=bench)
    res = search.run()
    assert res.status == "stopped" and search.store.session()["status"] == "stopped"
    assert len(search.store.fitness_by_candidate()) == 5
    _, res2 = _run(cfg, bench, resume=search.store.path)
    assert res2.status == "finished"


def test_killed_process_resumes_from_cli(tmp_path, tiny_llama_dir):
    """A real SIGKILL in the middle of a CLI search; --resume finishes it without re-evaluating."""
    args = [sys.executable, "-m", "selfpruner.cli", "search", "--model", str(tiny_llama_dir), "--proposer",
            "numeric", "--ratio", "0.4", "-K", "4", "-M", "2", "-S", "2", "-N", "3", "--budget-tokens", "2048",
            "--seq-len", "32", "--calib-tokens", "256", "--final-tokens", "256", "--data", "local",
            "--sessions-dir", str(tmp_path)]
    # a large token budget makes each fitness slow enough to kill the process between two of them
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    n = 0
    while time.time() < deadline and proc.poll() is None:
        dbs = list(tmp_path.glob("*.db"))
        if dbs:
            try:
                con = sqlite3.connect(dbs[0])
                n = con.execute("select count(*) from evaluations").fetchone()[0]
                con.close()
            except sqlite3.Error:
                n = 0
            if n >= 6:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (db,) = list(tmp_path.glob("*.db"))
    before = Store(db).fitness_by_candidate()
    assert len(before) >= 6
    r = subprocess.run([sys.executable, "-m", "selfpruner.cli", "search", "--resume", db.stem,
                        "--sessions-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    st = Store(db)
    after = st.fitness_by_candidate()
    assert len(after) == 4 + 3 * 4 and all(after[k] == v for k, v in before.items())
    assert st.session()["status"] == "finished"
