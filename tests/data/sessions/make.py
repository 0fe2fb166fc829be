"""Writes the stored sessions that guard the session format (tests/test_stored_sessions.py): one of each kind a
user has on disk, made by the CLI on the bundled SmolLM2 with small budgets. Run from the repository root:

    python tests/data/sessions/make.py [numeric llama-cpp racing ray metric]

Re-run only when the format changes on purpose (then the guard test says which sessions no longer read)."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
LAYER = ["--model", "smollm2", "--ratio", "0.3", "-K", "4", "-M", "2", "-S", "2", "-N", "1", "--budget-tokens", "128",
         "--seq-len", "128", "--calib-tokens", "1024", "--final-tokens", "256", "--data", "local", "--seed", "1"]
SESSIONS = {
    "numeric": ["search", *LAYER, "--proposer", "numeric"],
    "llama-cpp": ["search", *LAYER, "--proposer", "llama-cpp", "--proposer-model", "smollm2"],
    "racing": ["search", *LAYER, "--proposer", "numeric", "--budget-tokens", "256", "--race", "128:all,256:2"],
    "ray": ["search", *LAYER, "--proposer", "numeric", "--workers", "1"],
    "metric": ["metric-search", "--model", "smollm2", "--population", "4", "--iterations", "3", "--top-k", "2",
               "--grad-tokens", "64", "--budget-tokens", "128", "--seq-len", "128", "--calib-tokens", "1024",
               "--final-tokens", "256", "--data", "local"],
}


def main(names: list[str]) -> None:
    for name, args in SESSIONS.items():
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "selfpruner.cli", *args, "--sessions-dir", d], check=True)
            (db,) = Path(d).glob("*.db")
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the repository
            conn.close()
            target = HERE / f"{name}.db"
            shutil.copyfile(db, target)
            print(f"{name}: {db.stem} -> {target} ({target.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])  # names to write again; none: all
