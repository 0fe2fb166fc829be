"""Bad input gets one clear error line (exit 2) and nothing is lost."""
import sqlite3

import pytest
import torch

from selfpruner.core.config import SearchConfig
from selfpruner.core.layer_search.session import build_proposer
from selfpruner.core.store import Store, StoreError

from conftest import cli, cli_process


def _one_error_line(stderr):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_ratio_outside_unit_interval(ratio, tmp_path):
    code, _, err = cli("search", "--ratio", ratio, "--proposer", "numeric", "--sessions-dir", str(tmp_path))
    assert code == 2 and "ratio" in _one_error_line(err)
    assert not list(tmp_path.glob("*.db"))


def test_llm_threads_must_be_positive(tmp_path):
    code, _, err = cli("search", "--llm-threads", "0", "--sessions-dir", str(tmp_path))
    assert code == 2 and "--llm-threads" in _one_error_line(err)


def test_llm_threads_reach_the_llama_cpp_backend():
    assert build_proposer(SearchConfig(llm_threads=1)).backend.n_threads == 1
    assert build_proposer(SearchConfig()).backend.n_threads == torch.get_num_threads()


def test_missing_model_path(tmp_path):
    code, _, err = cli("search", "--model", str(tmp_path / "nope"), "--proposer", "numeric",
                       "--sessions-dir", str(tmp_path))
    assert code == 2 and "not found" in _one_error_line(err)


def test_missing_api_key_hints_offline_proposer(tmp_path):
    code, _, err = cli("search", "--proposer", "openai", "--sessions-dir", str(tmp_path))
    line = _one_error_line(err)
    assert code == 2 and "OPENAI_API_KEY" in line and "llama-cpp" in line


def test_corrupt_db_is_reported_and_kept(tmp_path):
    bad = tmp_path / "20250101-000000-layer-dead.db"
    bad.write_bytes(b"this is not a database" * 100)
    code, _, err = cli("show", bad.stem, "--sessions-dir", str(tmp_path))
    assert code == 2 and "cannot use session DB" in _one_error_line(err)
    assert bad.read_bytes().startswith(b"this is not a database")  # nothing overwritten
    code, out, _ = cli("sessions", "--sessions-dir", str(tmp_path))
    assert code == 0 and "unreadable" in out


def test_locked_db_is_reported(tmp_path):
    path = tmp_path / "locked.db"
    Store(path, create=True).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            Store(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_unknown_session(tmp_path):
    code, _, err = cli("replay", "nothing-here", "--sessions-dir", str(tmp_path))
    assert code == 2 and "no session" in _one_error_line(err)


@pytest.mark.parametrize("args,needle", [
    (["--race", "512:all,256:1"], "--race budgets must grow"),
    (["--race", "512:all,2048:1", "--budget-tokens", "1024"], "--race's last budget"),
    (["--workers", "-1"], "--workers must be 0"),
    (["--ray-address", "127.0.0.1:1"], "Ray"),  # nothing listens there: fails in seconds, not minutes
])
def test_race_and_workers_errors_are_one_line(tmp_path, args, needle):
    run = cli_process if "--ray-address" in args else cli  # Ray's client is left half-started in the process
    code, _, err = run("search", "--proposer", "numeric", "--sessions-dir", str(tmp_path), *args)
    assert code == 2 and needle in _one_error_line(err)
    assert not list(tmp_path.glob("*.db"))


def test_workers_without_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "noray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('ray is not installed')\n")
    code, _, err = cli_process("search", "--proposer", "numeric", "--workers", "2", "--sessions-dir", str(tmp_path),
                               env={"PYTHONPATH": str(fake)})  # a process of its own: a module path
    assert code == 2 and "selfpruner[distributed]" in _one_error_line(err)
    assert not list(tmp_path.glob("*.db"))


def test_a_kl_search_reports_kl_not_ppl(tmp_path, tiny_llama_dir):
    code, out, err = cli("search", "--model", str(tiny_llama_dir), "--proposer", "numeric", "--fitness", "kl",
                         "--ratio", "0.4", "-K", "3", "-M", "1", "-S", "1", "-N", "1", "--budget-tokens", "64",
                         "--seq-len", "32", "--calib-tokens", "256", "--final-tokens", "64", "--data", "local",
                         "--sessions-dir", str(tmp_path))
    assert code == 0, err
    assert "generation 1: best kl " in err and "best ppl" not in err
    assert "search kl " in out and "search ppl" not in out
    code, out, _ = cli("show", next(tmp_path.glob("*.db")).stem, "--sessions-dir", str(tmp_path))
    assert code == 0 and "best kl" in out and "search kl" in out and "best ppl" not in out
