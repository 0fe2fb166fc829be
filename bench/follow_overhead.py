"""What a follower costs the run it follows: the same SmolLM2 numeric search with and without another process
re-reading its session DB every second (what `selfpruner-tui` does on a session that runs elsewhere: the whole
SearchState rebuilt from the DB), alternated --repeats times; evaluations per minute of each run, and the ratio
of the medians.

Wall-clock rates on a shared 2-core VM spread by several percent between identical runs, more than the 2% the
follower must stay under, so the run also accounts for CPU: the follower's own CPU seconds over the followed run's
wall time bound what it can take from the run (WAL readers never block the writer, so CPU is all it can take),
and the run's CPU seconds per evaluation, alone and followed, show whether its work grew.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench

from bench_args import add  # bench/ is on sys.path when run as a script

FOLLOWER = """
import sys, time
from pathlib import Path
from selfpruner.core.store import Store
from selfpruner.tui.screens.replay import FOLLOW_S
from selfpruner.tui.state import SearchState
d, report = Path(sys.argv[1]), Path(sys.argv[2]); reads = 0
while True:
    for p in d.glob("*.db"):
        try:
            with Store(p, readonly=True) as st:
                SearchState.from_store(st)
            reads += 1
        except Exception:
            pass
    report.write_text(f"{reads} {time.process_time()}")  # what it read and what it cost, so far
    time.sleep(FOLLOW_S)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", K=6, M=2, S=2, N=6, budget_tokens=512, seq_len=512, calib_tokens=8192, repeats=3)
    args = ap.parse_args(argv)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    rates = {"alone": [], "followed": []}
    cpu = {"alone": [], "followed": []}  # the run's CPU seconds per evaluation
    share = []  # follower CPU seconds / followed run's wall seconds
    print(f"torch threads {torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.2f}")
    for rep in range(args.repeats):
        for mode in ("alone", "followed"):
            sessions = tempfile.mkdtemp(prefix="selfpruner-follow-")
            report = Path(sessions) / "follower.txt"
            follower = (subprocess.Popen([sys.executable, "-c", FOLLOWER, sessions, str(report)])
                        if mode == "followed" else None)
            try:
                cfg = SearchConfig(model=args.model, beta=0.3, proposer="numeric", population=args.K,
                                   mutations=args.M, crossovers=args.S, generations=args.N,
                                   budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                                   calib_tokens=args.calib_tokens, final_eval=False, data="local", seed=rep,
                                   sessions_dir=sessions)
                search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
                if follower:
                    reads0, cpu0 = _follower(report)  # its start-up (imports) is not the run's cost
                t0, c0 = time.perf_counter(), time.process_time()
                search.run()
                wall, run_cpu = time.perf_counter() - t0, time.process_time() - c0
                n = len([e for e in search.store.evaluations() if e["kind"] == "search"])
                note = ""
                if follower:
                    reads1, cpu1 = _follower(report)
                    share.append((cpu1 - cpu0) / wall)
                    note = (f"; follower: {reads1 - reads0} reads, {cpu1 - cpu0:.2f} CPU s = {100 * share[-1]:.2f}% "
                            f"of the wall")
            finally:
                if follower:
                    follower.kill()
            rates[mode].append(60 * n / wall)
            cpu[mode].append(run_cpu / n)
            print(f"repeat {rep} {mode:>8}: {n} evaluations in {wall:.1f} s = {rates[mode][-1]:.1f} /min, "
                  f"{cpu[mode][-1]:.3f} CPU s each{note}", flush=True)
    a, f = statistics.median(rates["alone"]), statistics.median(rates["followed"])
    print(f"\nmedian evaluations/min: alone {a:.1f} (min-max {min(rates['alone']):.1f}-{max(rates['alone']):.1f}), "
          f"followed {f:.1f} ({min(rates['followed']):.1f}-{max(rates['followed']):.1f}); followed/alone {f / a:.3f}")
    ca, cf = statistics.median(cpu["alone"]), statistics.median(cpu["followed"])
    print(f"median CPU s per evaluation: alone {ca:.3f} ({min(cpu['alone']):.3f}-{max(cpu['alone']):.3f}), followed "
          f"{cf:.3f} ({min(cpu['followed']):.3f}-{max(cpu['followed']):.3f}); followed/alone {cf / ca:.3f}")
    print(f"follower CPU / run wall: median {100 * statistics.median(share):.2f}% (max {100 * max(share):.2f}%): "
          f"the most a follower can take from the run")


def _follower(report: Path, timeout: float = 60.0) -> tuple[int, float]:
    """(reads, CPU seconds) the follower has reported, once it has reported at all."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            reads, secs = report.read_text().split()
            return int(reads), float(secs)
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise SystemExit("the follower never reported")


if __name__ == "__main__":
    main()
