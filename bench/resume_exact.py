"""A killed and resumed LLM search against the uninterrupted one, through the CLI as a user runs it.

Runs `selfpruner search` with the llama.cpp proposer (SmolLM2 proposing for SmolLM2) once to the end, then again,
kills that second run with SIGKILL as soon as generation 2's first LLM call is stored, shows what `sessions` says of
it, resumes it with `--resume`, and compares the two sessions candidate by candidate (rates, parents, fitness),
selection by selection and generation by generation, plus their final ppl. Prints what the one-writer lock
recorded (the runs table). Seconds are this machine's and vary; the comparison does not.

    python bench/resume_exact.py [-N 3] [--seed 7]
"""
from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.store import Store

from bench_args import add  # bench/ is on sys.path when run as a script


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "selfpruner.cli", *args], capture_output=True, text=True, **kw)


def calls_in(db: Path, generation: int) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from llm_calls where generation = ?", [generation]).fetchone()[0]
    except sqlite3.Error:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    add(ap, N=3, seed=7)
    ap.add_argument("--kill-in", type=int, default=2, help="generation whose first LLM call triggers the kill")
    args = ap.parse_args()
    search = ["search", "--model", "smollm2", "--proposer", "llama-cpp", "--proposer-model", "smollm2",
              "--ratio", "0.3", "-K", "4", "-M", "2", "-S", "2", "-N", str(args.N), "--calib-tokens", "4096",
              "--final-tokens", "2048", "--data", "local", "--seed", str(args.seed)]
    root = Path(tempfile.mkdtemp(prefix="resume-exact-"))
    t0 = time.perf_counter()
    r = cli(*search, "--sessions-dir", str(root / "ref"))
    assert r.returncode == 0, r.stderr
    print(f"uninterrupted run: {time.perf_counter() - t0:.0f} s")

    cut_dir = root / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "selfpruner.cli", *search, "--sessions-dir", str(cut_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        dbs = list(cut_dir.glob("*.db"))
        if dbs and calls_in(dbs[0], args.kill_in) >= 1:
            break
        if proc.poll() is not None:
            raise SystemExit("the second run ended before it could be killed")
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    db = dbs[0]
    print(f"killed (SIGKILL) during generation {args.kill_in}, after its first LLM call was stored")
    listed = [ln for ln in cli("sessions", "--sessions-dir", str(cut_dir)).stdout.splitlines() if db.stem[:15] in ln]
    print("selfpruner sessions says:", listed[0].split("│")[3].strip() if listed else "?")  # id │ kind │ status
    t0 = time.perf_counter()
    r = cli("search", "--resume", db.stem, "--sessions-dir", str(cut_dir))
    assert r.returncode == 0, r.stderr
    print(f"resumed run: {time.perf_counter() - t0:.0f} s")

    with Store(next((root / "ref").glob("*.db")), readonly=True) as a, Store(db, readonly=True) as b:
        diffs = compare_trajectories(a, b)
        print(f"trajectory differences: {len(diffs)}" + (": " + "; ".join(diffs[:5]) if diffs else " (identical)"))
        print("| run | generation means | best | search fitness | final ppl | runs table |")
        print("|---|---|---|---|---|---|")
        for name, st in (("uninterrupted", a), ("killed + resumed", b)):
            s = st.session()
            means = ", ".join(f"{g['mean']:.3f}" for g in st.generations())
            print(f"| {name} | {means} | #{s['best_candidate']} | {s['best_fitness']:.3f} | {s['final_ppl']:.3f} | "
                  f"{', '.join(r['outcome'] for r in st.runs())} |")
        same_final = a.session()["final_ppl"] == b.session()["final_ppl"]
    print(f"final ppl identical: {same_final}")


if __name__ == "__main__":
    main()
