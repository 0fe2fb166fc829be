"""Candidate evaluations on a local 2-worker Ray (CPU, bundled SmolLM2): the worker count does not change the
trajectory, a worker killed mid-evaluation loses nothing and stores nothing twice, a killed driver resumes."""
import pytest

ray = pytest.importorskip("ray", reason="the distributed extra is not installed: pip install '.[distributed]'")

from selfpruner.core.config import SearchConfig  # noqa: E402
from selfpruner.core.events import CandidateEvaluated, Control, EventBus, WorkerState  # noqa: E402
from selfpruner.core.layer_search.distributed import RayWorkbench  # noqa: E402
from selfpruner.core.layer_search.self_pruner import compare_trajectories  # noqa: E402
from selfpruner.core.layer_search.session import start_search  # noqa: E402

pytestmark = pytest.mark.slow
# Bias compensation, so the trajectories are bit-exact: a worker runs one thread, and the least-squares solve
# (the default) rounds its last bits by thread count (fitness then agrees to ~1e-7: compare with rel_tol).
SMALL = dict(model="smollm2", beta=0.3, proposer="numeric", population=4, mutations=2, crossovers=2,
             generations=2, seq_len=128, calib_tokens=2048, final_tokens=256, data="local", reconstruct="bias")


class Crash(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same search in this process, no Ray."""
    search = start_search(SearchConfig(sessions_dir=str(tmp_path_factory.mktemp("local")), **SMALL),
                          bus=EventBus(), control=Control())
    assert search.run().status == "finished"
    return search.store


def _run(cfg, bus=None, bench=None, resume=None):
    search = start_search(cfg, bus=bus or EventBus(), control=Control(), bench=bench, resume=resume)
    return search, search.run()


def _search_evals(store):
    return [e["candidate_id"] for e in store.evaluations() if e["kind"] == "search"]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_count_does_not_change_the_trajectory(tmp_path, reference, workers):
    bus, states = EventBus(), []
    bus.subscribe(lambda ev: states.append(ev) if isinstance(ev, WorkerState) else None)
    search, res = _run(SearchConfig(sessions_dir=str(tmp_path), workers=workers, **SMALL), bus)
    assert res.status == "finished"
    assert compare_trajectories(reference, search.store) == []
    assert search.store.session()["final_ppl"] == reference.session()["final_ppl"]
    busy = {ev.worker for ev in states if ev.state == "evaluating"}
    assert busy == set(range(workers))  # every worker took evaluations
    assert not search.bench.alive  # the search stopped the workers it started


def test_a_killed_worker_loses_nothing_and_stores_nothing_twice(tmp_path, reference):
    cfg = SearchConfig(sessions_dir=str(tmp_path), workers=2, **SMALL)
    bus, killed, dead = EventBus(), [], []
    bench = RayWorkbench(cfg, bus)

    def kill_worker_0(ev):
        if isinstance(ev, WorkerState) and ev.worker == 0 and ev.state == "evaluating" and not killed \
                and ev.candidate_id is not None and ev.candidate_id > 4:  # mid-generation 1
            killed.append(ev.candidate_id)
            ray.kill(bench.actors[0], no_restart=True)
        if isinstance(ev, WorkerState) and ev.state == "dead":
            dead.append(ev.worker)

    bus.subscribe(kill_worker_0)
    try:
        search, res = _run(cfg, bus, bench)
    finally:
        bench.close()
    assert res.status == "finished" and dead == [0]
    assert bench.requeued == killed  # its candidate was re-run on worker 1
    evals = _search_evals(search.store)
    assert len(evals) == len(set(evals)) == 4 + 2 * 4  # 0 lost, 0 stored twice
    assert compare_trajectories(reference, search.store) == []


def test_a_killed_driver_resumes_on_new_workers(tmp_path, reference):
    cfg = SearchConfig(sessions_dir=str(tmp_path), workers=2, **SMALL)
    bus, n = EventBus(), []

    def crash(ev):
        if isinstance(ev, CandidateEvaluated):
            n.append(ev.id)
            if len(n) == 6:
                raise Crash

    bus.subscribe(crash)
    with pytest.raises(Crash):
        _run(cfg, bus)
    (path,) = list(tmp_path.glob("*.db"))
    resumed, res = _run(cfg, resume=path)
    assert res.status == "finished"
    evals = _search_evals(resumed.store)
    assert len(evals) == len(set(evals)) == 12
    assert compare_trajectories(reference, resumed.store) == []
