"""Candidate evaluations on a Ray cluster (`--workers N`, `--ray-address ADDR|auto`).

Each worker is a Ray actor holding one resident Workbench (model, data, calibration statistics), built once
from the session's SearchConfig. The driver keeps no model: RayWorkbench stands in for a Workbench in the
search (same calls: evaluate_many, fitness, dense_ppl, ...), hands jobs to idle workers and passes each
result back as it arrives. The search stores it and ranks by (fitness, id), so the trajectory does not
depend on the number of workers or on the order in which evaluations finish.

A worker that dies mid-evaluation (killed, out of memory, node lost) is marked dead and its job goes to
another worker; nothing was stored for it, so it is stored once. Ray is an optional extra (.[distributed]).
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from types import SimpleNamespace

from ..config import ConfigError, SearchConfig
from ..events import EventBus, Stage, WorkerState
from ..types import EvalJob
from .evaluator import Evaluator


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--workers/--ray-address need Ray: pip install 'selfpruner[distributed]'") from None
    return ray


class _Worker:
    """The actor: one resident workbench (wrapped by ray.remote in RayWorkbench)."""

    def __init__(self, cfg: dict, data: str, threads: int | None):
        import torch

        from .workbench import Workbench
        if threads:
            torch.set_num_threads(threads)
        self.bench = Workbench.from_config(SearchConfig.from_dict(cfg), data=data)

    def describe(self) -> dict:
        import torch
        b = self.bench
        dev = next(b.lm.model.parameters()).device
        where = f"{os.uname().nodename}:{dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
        return {"name": b.lm.name, "fingerprint": b.lm.fingerprint, "arch": replace(b.lm.arch, layers=[]),
                "source": b.data.source, "bos": b.data.bos, "calib_key": b.calib_key, "dtype": b.dtype,
                "importance": b.pruner.importance, "where": where}

    def fitness(self, job: EvalJob) -> tuple[float, float]:
        return self.bench.fitness(job.rates, job.budget_tokens, which=job.which, measure=job.measure, kl_k=job.kl_k)

    def call(self, method: str, *args):
        return getattr(self.bench, method)(*args)


class RayWorkbench(Evaluator):
    """The driver's view of N remote workbenches."""

    def __init__(self, cfg: SearchConfig, bus: EventBus | None = None, data: str | None = None):
        ray = self.ray = _ray()
        self.emit = bus.emit if bus else (lambda e: None)
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            self.emit(Stage("ray", f"joining Ray at {cfg.ray_address}" if cfg.ray_address else "starting a local Ray"))
            _reachable(cfg.ray_address)
            try:
                ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True, **({} if cfg.ray_address else {"num_cpus": os.cpu_count()}))
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot reach Ray at {cfg.ray_address}: {str(e).splitlines()[0]}") from None
        res = ray.cluster_resources()
        gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1 if res.get("GPU", 0) else 0)
        n = cfg.workers or (int(res.get("GPU", 0) // gpus) if gpus else 1) or 1
        threads = 1 if gpus else max(1, int(res.get("CPU", 1)) // n)
        wcfg = cfg.to_dict() | {"workers": 0, "ray_address": None}
        if gpus and cfg.device.startswith("cuda:"):  # Ray shows each worker only its own GPUs, from cuda:0
            wcfg["device"] = "cuda"
        if gpus > 1 and not cfg.device_map:  # a worker owning several GPUs spreads the model over them
            wcfg |= {"device": "auto", "device_map": "auto"}
        # A CPU worker's OpenMP threads must not spin-wait: beside Ray's own threads, spinning made a 2-thread
        # fitness 7x slower than in-process (bench/distributed.py); passive waiting brings it level.
        env = {} if gpus else {"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
        actor = ray.remote(_Worker).options(num_cpus=threads if not gpus else 1, num_gpus=gpus, max_restarts=0, **env)
        self.actors = [actor.remote(wcfg, data or cfg.data, threads) for _ in range(n)]
        self.alive = list(range(n))
        self.requeued: list[int] = []  # job keys re-run after their worker died
        for i in range(n):
            self.emit(WorkerState(i, "loading"))
        self.emit(Stage("ray", f"loading the model on {n} worker(s)", 0, n))
        infos = []
        for i, a in enumerate(self.actors):
            try:
                infos.append(ray.get(a.describe.remote()))
            except ray.exceptions.RayError as e:
                self.close()
                raise ConfigError(f"Ray worker {i} could not load the model: {_cause(e)}") from None
        first = infos[0]
        for i, info in enumerate(infos[1:], 1):
            if (info["fingerprint"], info["calib_key"]) != (first["fingerprint"], first["calib_key"]):
                self.close()
                raise ConfigError(f"Ray worker {i} ({info['where']}) loaded another model or calibration than worker "
                                  f"0 ({first['where']}): check that every node has the same checkpoint and data")
        for i, info in enumerate(infos):
            self.emit(WorkerState(i, "idle", where=info["where"]))
        self.where = [info["where"] for info in infos]
        self.lm = SimpleNamespace(name=first["name"], fingerprint=first["fingerprint"], arch=first["arch"])
        self.data = SimpleNamespace(source=first["source"], bos=first["bos"])
        self.pruner = SimpleNamespace(importance=first["importance"])
        self.calib_key, self.dtype, self.seq_len = first["calib_key"], first["dtype"], cfg.seq_len

    # ---- what the search calls on a workbench --------------------------------------------------------------
    def pin_dtype(self, cfg) -> None:
        if cfg.dtype not in ("auto", self.dtype):
            raise ConfigError(f"--dtype {cfg.dtype} asked, but the workers run the model in {self.dtype}")
        cfg.dtype = self.dtype

    def evaluate_many(self, jobs: list[EvalJob], *, done, before=None, should_stop=None, progress=None) -> None:
        """Jobs to idle workers, results to done(job, fitness, seconds) as they arrive. `before()` is asked
        before each dispatch (blocks while paused; True = stop). Per-window progress stays on the workers."""
        ray, queue, running = self.ray, deque(jobs), {}  # ref -> (worker, job)
        idle = deque(self.alive)
        while queue or running:
            while queue and idle:
                if before is not None and before():
                    raise InterruptedError
                w, job = idle.popleft(), queue.popleft()
                running[self.actors[w].fitness.remote(job)] = (w, job)
                self.emit(WorkerState(w, "evaluating", job.key, self.where[w]))
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            if should_stop is not None and should_stop():
                raise InterruptedError
            for ref in ready:
                w, job = running.pop(ref)
                try:
                    fit, secs = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as e:
                    self._dead(w, e)
                    queue.appendleft(job)
                    self.requeued.append(job.key)
                    continue
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                idle.append(w)
                self.emit(WorkerState(w, "idle", where=self.where[w]))
                done(job, fit, secs)
            if queue and not self.alive:
                raise RuntimeError("every Ray worker died; the session is stored: continue it with --resume")

    def fitness(self, rates, budget_tokens: int, *, which: str = "search", should_stop=None, progress=None,
                measure: str = "ppl", kl_k: int | None = None) -> tuple[float, float]:
        out = []
        self.evaluate_many([EvalJob(-1, list(rates), budget_tokens, which, measure, kl_k)],
                           done=lambda j, f, s: out.append((f, s)), should_stop=should_stop)
        return out[0]

    def dense_ppl(self, budget_tokens: int | None, which: str = "search") -> float:
        return self._call("dense_ppl", budget_tokens, which)

    def test_tokens(self, max_tokens: int | None) -> int:
        return self._call("test_tokens", max_tokens)

    def reference_rates(self, beta: float, lo: float, hi: float) -> dict:
        return self._call("reference_rates", beta, lo, hi)

    def layer_grain(self):
        return self._call("layer_grain")

    def set_pruning(self, reconstruct="none", channel_multiple: int = 1, split: str = "rule",
                    sequential: bool = False) -> None:
        for w in list(self.alive):
            try:
                self.ray.get(self.actors[w].call.remote("set_pruning", reconstruct, channel_multiple, split,
                                                        sequential))
            except self.ray.exceptions.RayActorError as e:
                self._dead(w, e)

    def close(self) -> None:
        """Stop the workers, and Ray itself where this object started it."""
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already gone
                pass
        self.alive = []
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    # ---- internals --------------------------------------------------------------------------------------
    def _call(self, method: str, *args):
        """A workbench call on the first live worker, moving on when one dies."""
        while self.alive:
            w = self.alive[0]
            try:
                return self.ray.get(self.actors[w].call.remote(method, *args))
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as e:
                self._dead(w, e)
        raise RuntimeError("every Ray worker died; the session is stored: continue it with --resume")

    def _dead(self, w: int, err: Exception) -> None:
        if w in self.alive:
            self.alive.remove(w)
        self.emit(WorkerState(w, "dead", where=self.where[w] if hasattr(self, "where") else "",))
        self.emit(Stage("ray", f"worker {w} died ({_cause(err)}); its evaluation goes to another worker"))


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """A HOST:PORT that answers nothing fails here in seconds (ray.init would retry for minutes)."""
    import socket
    if not address or address == "auto" or ":" not in address:
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot reach Ray at {address}: {e}") from None


def _cause(err: Exception) -> str:
    text = str(getattr(err, "cause", None) or err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__
