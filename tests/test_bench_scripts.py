"""bench/gpu_check.py is run blind, on a lent GPU with minutes of budget, so its CPU smoke run (a tiny random
LLaMA) must get through every step here first: a bench helper's changed signature once broke its fitness-vs-
physical step without any test noticing."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_gpu_check_smoke_run_on_the_cpu_runs_every_step():
    r = subprocess.run([sys.executable, "gpu_check.py", "--shape", "tiny", "--device", "cpu", "--dtype", "float32"],
                       cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "every step ran" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    for step in ("fitness", "search", "export"):
        assert any(line.split("] ", 1)[-1].startswith(step) for line in r.stdout.splitlines()), step
