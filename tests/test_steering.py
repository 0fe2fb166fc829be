"""Steering a search that runs in another process (core/steering.py): `selfpruner control ID pause|resume|
stop-after-generation|stop` is stored, obeyed at the next evaluation boundary, and the run resumes to the same
trajectory as an uninterrupted one."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_one_writer import CLI_TINY, db_count, only_session, running, spawn, wait_for

from selfpruner.core.config import ConfigError
from selfpruner.core.events import Control
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.run_lock import RunLock
from selfpruner.core.session_files import list_sessions
from selfpruner.core.steering import ControlPoller, request
from selfpruner.core.store import Store

from conftest import cli


def evaluations(path: Path) -> int:
    return db_count(path, "select count(*) from evaluations")


# another process asking through the public API, as a TUI attached to a run elsewhere does: DB, tool, commands
ASK = ("import sys\n"
       "from selfpruner.core.steering import request\n"
       "from selfpruner.core.store import Store\n"
       "with Store(sys.argv[1]) as st:\n"
       "    for command in sys.argv[3:]:\n"
       "        request(st, command, tool=sys.argv[2])\n")


def test_commands_reach_the_control_of_the_process_that_runs_the_session(tmp_path):
    """This process runs the session (its run lock, its Control's poller); the commands come from other processes:
    a script through the public API, then `selfpruner control` while the runner waits paused in its checkpoint."""
    st = Store(tmp_path / "s.db", create=True)
    st.create_session("s", "layer", {})
    with pytest.raises(ConfigError, match="session s is not running .*nothing to pause"):
        request(st, "pause")
    lock = RunLock(st, "test").acquire()
    control = Control()
    control.poll = ControlPoller(st, control, lock.run_id)
    other = subprocess.Popen([sys.executable, "-c", ASK, str(tmp_path / "s.db"), "selfpruner-tui", "pause",
                              "stop-after-generation"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = other.communicate(timeout=120)
    assert other.returncode == 0 and other.pid != os.getpid(), err
    with pytest.raises(ConfigError, match="must be one of pause, resume, stop, stop-after-generation"):
        request(st, "halt")
    assert not control.paused  # stored by the other process; the runner takes it at its next checkpoint
    control.poll()
    assert control.paused and control.stopping_after_generation and not control.stopped
    rows = st.controls()
    assert [r["command"] for r in rows] == ["pause", "stop-after-generation"]
    assert all(r["obeyed"] and r["run_id"] == lock.run_id for r in rows)
    assert all(r["requested_by"].startswith("selfpruner-tui (") and r["requested_by"].endswith(f", pid {other.pid})")
               for r in rows)  # who asked: the other process
    t0 = time.time()
    resumer = subprocess.Popen([sys.executable, "-m", "selfpruner.cli", "control", "s", "resume", "--wait", "60",
                                "--sessions-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:  # paused, the runner waits in its checkpoint until the resume arrives from the CLI's process
        assert control.checkpoint() is False and not control.paused and time.time() - t0 < 60
        out, err = resumer.communicate(timeout=60)
    finally:
        resumer.kill()
    assert resumer.returncode == 0 and "obeyed after" in out, err
    (resume,) = st.controls()[2:]
    assert resume["command"] == "resume" and resume["run_id"] == lock.run_id
    assert t0 < resume["requested"] <= resume["obeyed"]  # asked while the runner waited
    assert resume["requested_by"].startswith("selfpruner control (") and resume["requested_by"].endswith(
        f", pid {resumer.pid})")
    lock.release("stopped")


def test_pause_resume_and_stop_after_generation_from_the_cli(tmp_path, tiny_llama_dir):
    """Paused at once (a tiny search is quick), then the CLI's commands: stop-after-generation is taken while
    paused, resume lets the generation in flight finish, and the run stops there."""
    sd = str(tmp_path / "s")
    search = ["search", "--model", str(tiny_llama_dir), *CLI_TINY, "-N", "25"]
    code, _, err = cli(*search, "--sessions-dir", str(tmp_path / "ref"))  # the uninterrupted reference
    assert code == 0, err
    ref = Store(only_session(tmp_path / "ref"), readonly=True)

    run = spawn(*search, "--sessions-dir", sd)
    try:
        # paused as soon as it runs: 25 tiny generations take ~2 s, so waiting for one first raced the run's end
        wait_for(lambda: running(Path(sd)), what="the run")
        path = only_session(Path(sd))
        with Store(path) as st:
            request(st, "pause", tool="test")
        wait_for(lambda: Store(path, readonly=True).controls()[-1]["obeyed"] is not None, what="the pause")
        paused_at = evaluations(path)
        time.sleep(1.5)
        assert evaluations(path) == paused_at  # nothing evaluated while paused
        code, out, err = cli("control", path.stem, "stop-after-generation", "--wait", "60", "--sessions-dir", sd)
        assert code == 0 and "obeyed after" in out, err  # taken while paused
        code, out, err = cli("control", path.stem, "resume", "--wait", "60", "--sessions-dir", sd)
        assert code == 0, err
        assert run.wait(timeout=300) == 3  # stopped once its generation was complete
    finally:
        run.kill()
    st = Store(path, readonly=True)
    gens = st.generations()
    assert st.session()["status"] == "stopped" and 1 <= len(gens) < 26
    assert all(st.fitness_by_candidate().get(c["id"]) is not None for c in st.candidates())  # whole generations
    assert [r["command"] for r in st.controls()] == ["pause", "stop-after-generation", "resume"]
    assert all(r["obeyed"] for r in st.controls()) and st.controls()[0]["requested_by"].startswith("test (")
    code, out, err = cli("control", path.stem, "stop", "--sessions-dir", sd)
    assert code == 2 and "is not running (stopped)" in err and "--resume" in err
    code, _, err = cli("search", "--resume", path.stem, "--sessions-dir", sd)
    assert code == 0, err
    assert compare_trajectories(ref, Store(path, readonly=True)) == []


async def test_tui_follows_a_run_elsewhere_steers_it_and_sees_it_die(tmp_path, tiny_llama_dir):
    """The TUI opened on a session another process runs: generations arrive live, its pause key reaches that
    process, and a kill -9 shows as died within seconds."""
    from selfpruner.tui.app import SelfPrunerApp
    from selfpruner.tui.screens.replay import ReplayScreen

    sd = tmp_path / "s"
    # a run that cannot end before the test kills it: 400 tiny generations took 34 s, less than a loaded CI box
    # took to open the TUI and press p (the run finished, the pause stayed unobeyed)
    run = spawn("search", "--model", str(tiny_llama_dir), *CLI_TINY, "-N", "1000000", "--sessions-dir", str(sd))
    try:
        wait_for(lambda: only_session(sd) is not None and db_count(
            only_session(sd), "select count(*) from generations") >= 1, what="a first generation")
        path = only_session(sd)
        (row,) = list_sessions(sd)  # the browser's rows: live, with who runs it
        assert row["status"] == "running" and row["runner"].startswith(f"pid {run.pid} on ")
        app = SelfPrunerApp(sd, open_session=path.stem)
        async with app.run_test(size=(150, 44)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ReplayScreen) and screen.following
            first = screen.state.last_generation
            for _ in range(120):
                await pilot.pause(0.25)
                if screen.state.last_generation >= first + 2:
                    break
            assert screen.state.last_generation >= first + 2  # at least two generations arrived
            assert screen.generation == screen.state.last_generation  # the view stays on the newest
            await pilot.press("p")
            for _ in range(120):
                await pilot.pause(0.25)
                rows = Store(path, readonly=True).controls()
                if rows and rows[-1]["obeyed"]:
                    break
            assert rows[-1]["command"] == "pause" and rows[-1]["requested_by"].startswith("selfpruner-tui")
            assert rows[-1]["obeyed"] is not None
            run.kill()  # kill -9 while paused
            run.wait()
            for _ in range(40):
                await pilot.pause(0.25)
                if not screen.following:
                    break
            assert not screen.following and screen.state.status == "died"
    finally:
        run.kill()
