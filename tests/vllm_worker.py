"""The vLLM tests' jobs, run in the vLLM venv by one process for the whole test session: importing vLLM takes
~13 s on two cores, which every test paid again in a process of its own. Started by tests/test_vllm.py's
`vllm_worker` fixture as `VLLM_PYTHON tests/vllm_worker.py`.

A job is one JSON line on stdin: {"kind": "cli" | "runs" | "choices", "args": [...], "env": {...}, "reply": PATH};
its result ({"code", "out", "err", "value"}) is written to PATH when it ends. vLLM's own log lines go to this
process's stdout and stderr (the fixture sends them to a file), never into a job's captured output. Job kinds are
a fixed table of functions: nothing read from stdin is evaluated."""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import sys
import traceback


def cli(*argv: str) -> int:
    """`selfpruner ARGV` as the console script runs it, in this process."""
    from selfpruner.cli import main
    return main(list(argv))


def runs(spec: str, out: str) -> int:
    """Greedy tokens and first-token log-probs of each model in SPEC (vllm_runs's format), written to OUT."""
    from selfpruner.core.results.vllm_runs import main
    return main([spec, out])


def choices(model_dir: str, piqa: str, limit: str) -> dict:
    """lm-eval's vLLM model on PIQA's first `limit` items: the answer chosen for each item and the metrics."""
    from selfpruner.core.results.lm_eval_bridge import evaluate_dir, resolve_tasks
    chosen: dict = {}
    metrics = evaluate_dir(model_dir, resolve_tasks(["piqa"], piqa), engine="vllm", limit=int(limit), choices=chosen)
    return {"choices": chosen, "metrics": metrics}


JOBS = {"cli": cli, "runs": runs, "choices": choices}


def run(job: dict) -> dict:
    saved = dict(os.environ)
    os.environ.update(job.get("env") or {})
    out, err = io.StringIO(), io.StringIO()
    value, code = None, 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                value = JOBS[job["kind"]](*job.get("args", []))
                code = value if isinstance(value, int) else 0
            except SystemExit as e:  # argparse's usage errors, as a process would exit
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        gc.collect()  # a job's engines go before the next job's start (vLLM keeps one parallel state per process)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(),
            "value": None if isinstance(value, int) else value}


def main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        result = run(job)
        tmp = job["reply"] + ".part"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, job["reply"])  # the fixture waits for this name: it appears whole


if __name__ == "__main__":
    main()
