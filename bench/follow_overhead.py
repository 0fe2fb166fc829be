"""What a follower costs the run it follows: the same SmolLM2 numeric search with and without another process
re-reading its session DB every second (what `selfpruner-tui` does on a session that runs elsewhere: the whole
SearchState rebuilt from the DB), alternated --repeats times; evaluations per minute of each run, and the ratio
of the medians.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

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
d = Path(sys.argv[1]); reads = 0
while True:
    for p in d.glob("*.db"):
        try:
            with Store(p, readonly=True) as st:
                SearchState.from_store(st)
            reads += 1
        except Exception:
            pass
    time.sleep(FOLLOW_S)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", K=6, M=2, S=2, N=6, budget_tokens=512, seq_len=512, calib_tokens=8192, repeats=3)
    args = ap.parse_args(argv)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    rates = {"alone": [], "followed": []}
    for rep in range(args.repeats):
        for mode in ("alone", "followed"):
            sessions = tempfile.mkdtemp(prefix="selfpruner-follow-")
            follower = subprocess.Popen([sys.executable, "-c", FOLLOWER, sessions]) if mode == "followed" else None
            try:
                cfg = SearchConfig(model=args.model, beta=0.3, proposer="numeric", population=args.K,
                                   mutations=args.M, crossovers=args.S, generations=args.N,
                                   budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                                   calib_tokens=args.calib_tokens, final_eval=False, data="local", seed=rep,
                                   sessions_dir=sessions)
                search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
                t0 = time.perf_counter()
                search.run()
                wall = time.perf_counter() - t0
                n = len([e for e in search.store.evaluations() if e["kind"] == "search"])
            finally:
                if follower:
                    follower.kill()
            rates[mode].append(60 * n / wall)
            print(f"repeat {rep} {mode:>8}: {n} evaluations in {wall:.1f} s = {rates[mode][-1]:.1f} /min", flush=True)
    a, f = statistics.median(rates["alone"]), statistics.median(rates["followed"])
    print(f"\nmedian evaluations/min: alone {a:.1f} (min-max {min(rates['alone']):.1f}-{max(rates['alone']):.1f}), "
          f"followed {f:.1f} ({min(rates['followed']):.1f}-{max(rates['followed']):.1f}); followed/alone {f / a:.3f}")


if __name__ == "__main__":
    main()
