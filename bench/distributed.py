"""Evaluations per minute in this process and on 1 and 2 Ray workers (--workers), on this box.

The same --candidates rate vectors are scored by each: in-process (the search's own workbench), then through
RayWorkbench.evaluate_many with 1 and 2 workers, each worker holding its own model (load time is reported
apart; it is paid once per search). The values must be identical whichever path scored them. On a CPU box
the workers share its cores (2 workers x 1 thread against 1 x 2), so no speed-up is expected here: what this
measures is Ray's overhead. It also times the driver's share of one evaluation (a Ray round trip plus the
SQLite write), which bounds scaling on a GPU box; without one, the 8-GPU figure is an estimate from it.
Each path scores the candidates --repeats times after a warm-up; rates are the median with min-max (the paths
run one after another, not interleaved: each one's Ray workers hold the box's CPUs while they live).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time

import ray

from selfpruner.core.config import SearchConfig
from selfpruner.core.layer_search.distributed import RayWorkbench
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.proposers.repair import random_vector
from selfpruner.core.store import Store
from selfpruner.core.types import EvalJob, Problem, Proposal

from bench_args import add, conditions, spread  # bench/ is on sys.path when run as a script


def score(bench, jobs) -> tuple[dict, float]:
    out, t0 = {}, time.perf_counter()
    bench.evaluate_many(jobs, done=lambda j, f, s: out.__setitem__(j.key, f))
    return out, time.perf_counter() - t0


def rates(bench, jobs, repeats: int) -> tuple[dict, list[float]]:
    """(values, evaluations/min of each repeat) after one warm-up pass (first forwards allocate)."""
    score(bench, jobs[:1])
    runs = [score(bench, jobs) for _ in range(repeats)]
    assert all(v == runs[0][0] for v, _ in runs), "a path scored the same candidates differently"
    return runs[0][0], [len(jobs) / secs * 60 for _, secs in runs]


@ray.remote
class Echo:
    def ping(self, x):
        return x


def driver_overhead_s(n: int = 200) -> float:
    """A Ray round trip with an EvalJob-sized payload plus one stored evaluation, per evaluation."""
    a = Echo.remote()
    job = EvalJob(0, [0.3] * 80, 2048)
    ray.get(a.ping.remote(job))
    st = Store(os.path.join(tempfile.mkdtemp(), "o.db"), create=True)
    st.create_session("x", "layer", {})
    (cid,) = st.add_candidates(0, "init", [Proposal([0.3] * 80, "llm")])
    t0 = time.perf_counter()
    for _ in range(n):
        ray.get(a.ping.remote(job))
        st.add_evaluation(cid, 1.0, budget_tokens=2048, seq_len=2048, eval_s=0.1)
    ray.kill(a)
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", ratio=0.3, candidates=16, budget_tokens=512, seq_len=512, calib_tokens=8192, repeats=5)
    ap.add_argument("--gpu-eval-s", type=float, default=0.25,
                    help="for the 8-GPU estimate: seconds of one 2,048-token fitness of a 7B model on one H100")
    args = ap.parse_args(argv)
    cfg = SearchConfig(model=args.model, beta=args.ratio, seq_len=args.seq_len, calib_tokens=args.calib_tokens,
                       budget_tokens=args.budget_tokens, data="local")
    local = Workbench.from_config(cfg)
    n = local.lm.arch.n_layers
    rng, prob = random.Random(0), Problem("bench", n, args.ratio)
    jobs = [EvalJob(i, random_vector(prob, rng), args.budget_tokens) for i in range(args.candidates)]
    print(f"model {local.lm.name}; {len(jobs)} evaluations of {args.budget_tokens} tokens; {os.cpu_count()} CPU "
          f"cores, {local.lm.model.device.type}, {conditions()}; median (min-max) of {args.repeats} passes")
    ref, runs = rates(local, jobs, args.repeats)
    base = statistics.median(runs)
    print(f"{'where':<22} {'load s':>7} {'evals/min':>22} {'x in-process':>13} {'same values':>12}")
    print(f"{'in-process':<22} {'-':>7} {spread(runs, '.1f'):>22} {1.0:>13.2f} {'-':>12}")
    del local
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    per_worker = {}
    for w in (1, 2):
        t0 = time.perf_counter()
        rb = RayWorkbench(SearchConfig(**{**cfg.to_dict(), "workers": w}))
        load = time.perf_counter() - t0
        score(rb, jobs[:w])  # each worker's first forward (allocations) outside the timing
        got, runs = rates(rb, jobs, args.repeats)
        rate = per_worker[w] = statistics.median(runs)
        print(f"{f'Ray, {w} worker(s)':<22} {load:>7.1f} {spread(runs, '.1f'):>22} {rate / base:>13.2f} "
              f"{str(got == ref):>12}", flush=True)
        rb.close()
    print(f"2 workers / 1 worker: {per_worker[2] / per_worker[1]:.2f} (both share {os.cpu_count()} cores)")
    over = driver_overhead_s()
    ray.shutdown()
    # 8 GPUs, one worker each: a generation's M+S = 20 offspring go out in ceil(20/8) rounds, and the driver
    # handles results one at a time, so it saturates at 1/over evaluations per second.
    t, offspring = args.gpu_eval_s, 20
    rounds = math.ceil(offspring / 8)
    util = offspring / (rounds * 8)
    driver_cap = t / (8 * over)
    eff = util * min(1.0, driver_cap) * t / (t + over)
    print(f"driver per evaluation (Ray round trip + SQLite write): {over * 1e3:.2f} ms")
    print(f"8-GPU estimate (not measured: no GPU box): one fitness {t:.2f} s on one GPU; M+S={offspring} offspring in "
          f"{rounds} rounds = {util:.2f} busy; driver capacity {driver_cap:.0f}x the 8 workers' need; throughput "
          f"≈ {eff:.2f} × 8 × one worker's (target ≥ 0.8)")


if __name__ == "__main__":
    main()
