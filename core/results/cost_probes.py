"""Measuring a cost table (core/cost_table.py) on a real engine, with probe models of the dense model's shape.

A probe is the model with random weights and some layers narrowed alike: every layer's MLP to one width (full
attention), or every layer's attention but the last to one unit count (full MLP; at 0 units only every other
layer, so the model keeps some attention). Each probe is timed against the full-width probe (the dense shape through the same
code path) in interleaved rounds, pair by pair, so a drift of the box's load hits both sides of each ratio; a
layer's saving is (dense time - probe time) / narrowed layers. Timing does not depend on the weights' values, so
no probe needs the real ones, and only two probe files exist on disk at a time.

llama.cpp: each probe is written by the GGUF export (core/results/gguf_export.py) in the workload's weight type and
timed by gguf_speed; transformers: each is a pruned_modeling model timed by speed.compare on the dense model's
device and dtype; vLLM: each is saved as an export directory and run by vLLM through selfpruner's plugin.
"""
from __future__ import annotations

import gc
import json
import random
import shutil
import statistics
import tempfile
from pathlib import Path

from ..cost_table import ENGINES, OBJECTIVES, CostTable, Workload, fitted, probe_widths, table_key
from ..errors import UserError
from ..model.models import LoadedModel
from ..model.placement import cache_root, resolve_dtype
from ..plans import LayerPlan
from .gguf_export import ALIGN


class CostTableError(UserError):
    pass


# MLP widths the engine runs: llama.cpp's GGUF export pads channels to multiples of 64 (gguf_export.ALIGN)
ENGINE_PAD = {"llama-cpp": ALIGN, "transformers": 1, "vllm": 1}


def _sizes(lm: LoadedModel, plans: list[LayerPlan]) -> dict[str, list[int]]:
    from .pruned_modeling import PER_LAYER_KEYS
    heads, kv = zip(*(lm.arch.kept_heads(p.attn_units) for p in plans))
    return dict(zip(PER_LAYER_KEYS, (list(heads), list(kv), [p.channels for p in plans])))


def probe_model(lm: LoadedModel, plans: list[LayerPlan], dtype=None):
    """A pruned_modeling model of `lm`'s shape with these layer plans and random weights, on the CPU."""
    import torch

    from .export import pruned_config
    from .pruned_modeling import classes_for

    cfg = pruned_config(lm.model.config, lm.arch, _sizes(lm, plans), {"probe": True})
    cfg.compensation_bias = False
    _, cls = classes_for(cfg.model_type)
    torch.manual_seed(0)
    model = cls(cfg).to(dtype or torch.float32).eval()
    model.generation_config = lm.model.generation_config
    return model


def _dense_plans(lm: LoadedModel) -> list[LayerPlan]:
    a = lm.arch
    return [LayerPlan(a.n_attn_units, a.intermediate)] * a.n_layers


def _probes(lm: LoadedModel, widths: list[int]) -> list[tuple[str, int, list[LayerPlan]]]:
    """(what it measures, narrowed layers, plans) of every probe."""
    a, dense = lm.arch, _dense_plans(lm)
    out = []
    for u in range(a.n_attn_units):
        # the last layer keeps its attention whole: llama.cpp sizes every layer's V cache by the widest layer (it
        # pads the narrower ones), so a saving measured with every layer narrowed alike would not be one in a real
        # allocation, which nearly always keeps some layer whole (measured: generation predicted ~10% too fast)
        layers = [i for i in range(a.n_layers - 1) if u or i % 2 == 0] or [0]  # a 1-layer model: that layer
        out.append((f"attn:{u}", len(layers),
                    [LayerPlan(u, p.channels) if i in layers else p for i, p in enumerate(dense)]))
    for c in widths[:-1]:
        out.append((f"mlp:{c}", a.n_layers, [LayerPlan(p.attn_units, c) for p in dense]))
    return out


class _Engine:
    """Times a probe against the dense-shape probe: (dense (prompt s, token s), probe (prompt s, token s))."""

    def __init__(self, lm: LoadedModel, workload: Workload, rounds: int):
        self.lm, self.w, self.rounds = lm, workload, rounds
        self.env: dict = {}


class _LlamaCpp(_Engine):
    def __init__(self, lm, workload, rounds):
        super().__init__(lm, workload, rounds)
        self.dir = Path(tempfile.mkdtemp(prefix="selfpruner-probes-"))
        self.dense = self._write("dense", _dense_plans(lm))

    def _write(self, name: str, plans) -> Path:
        from .gguf_export import write_gguf
        path = self.dir / f"{name}.gguf"
        write_gguf(probe_model(self.lm, plans), self.lm.tokenizer, path, source_gguf=self.lm.gguf_path,
                   outtype=self.w.weights)
        return path

    def pair(self, plans):
        from .gguf_speed import compare_gguf
        path = self._write("probe", plans)
        try:
            r = compare_gguf({"dense": self.dense, "probe": path}, threads=self.w.threads,
                             prompt_len=self.w.prompt_len, decode_tokens=self.w.decode_tokens, repeats=self.rounds,
                             memory=False)
        finally:
            path.unlink(missing_ok=True)
        self.env = r["env"]
        t = {n: (self.w.prompt_len / x["prompt_tok_s"]["median"], 1 / x["gen_tok_s"]["median"])
             for n, x in r["results"].items()}
        return t["dense"], t["probe"]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class _Transformers(_Engine):
    def __init__(self, lm, workload, rounds):
        super().__init__(lm, workload, rounds)
        self.dtype = resolve_dtype(workload.weights)  # the session's or the model's dtype, by name
        self.device = next(lm.model.parameters()).device
        self.dense = probe_model(lm, _dense_plans(lm), self.dtype).to(self.device)

    def pair(self, plans):
        import torch

        from .speed import compare
        if self.w.threads:
            torch.set_num_threads(self.w.threads)
        probe = probe_model(self.lm, plans, self.dtype).to(self.device)
        r = compare({"dense": self.dense, "probe": probe}, prefill_len=self.w.prompt_len, prompt_len=16,
                    decode_tokens=self.w.decode_tokens, repeats=self.rounds)
        self.env = r["env"]
        t = {n: (x["prefill_s"], 1 / x["decode_tok_s"]) for n, x in r["results"].items()}
        return t["dense"], t["probe"]

    def close(self):
        pass


class _VLLM(_Engine):
    """vLLM: each probe saved as an export directory (loaded through selfpruner's plugin, as `vllm serve` loads an
    export) and timed by vllm_runs.throughput against the dense-shape probe's engine, which stays loaded. A
    request is one prompt (Workload), so the table prices latency; its seconds are the engine's, batch of one."""

    def __init__(self, lm, workload, rounds):
        super().__init__(lm, workload, rounds)
        from .vllm_runs import vllm_available
        ok, why = vllm_available()
        if not ok:
            raise CostTableError(why)
        if lm.tokenizer is None:
            raise CostTableError("a vLLM cost table needs the model's tokenizer to save its probe models")
        import torch
        import vllm
        self.env = {"engine": f"vllm {vllm.__version__}"}
        self.dir = Path(tempfile.mkdtemp(prefix="selfpruner-probes-"))
        self.dense = self._load(self._write("dense", _dense_plans(lm)))
        vocab = min(len(lm.tokenizer), lm.model.config.vocab_size)
        g = torch.Generator().manual_seed(0)
        self.prompts = [torch.randint(10, vocab - 1, (workload.prompt_len,), generator=g).tolist()]

    def _write(self, name: str, plans) -> Path:
        d = self.dir / name
        probe_model(self.lm, plans).save_pretrained(d)
        self.lm.tokenizer.save_pretrained(d)
        return d

    def _load(self, d: Path):
        from .vllm_runs import load
        return load(str(d), dtype=self.w.weights, max_model_len=self.w.prompt_len + self.w.decode_tokens + 8)

    def pair(self, plans):
        from .vllm_runs import throughput
        d = self._write("probe", plans)
        probe = self._load(d)
        try:
            r = throughput({"dense": self.dense, "probe": probe}, self.prompts, self.w.decode_tokens, self.rounds)
        finally:
            del probe  # the last reference: the next probe's engine must not find this one's parallel state
            gc.collect()
            shutil.rmtree(d, ignore_errors=True)
        t = {n: (self.w.prompt_len / x["prefill_tok_s"]["median"], 1 / x["gen_tok_s"]["median"])
             for n, x in r.items()}
        return t["dense"], t["probe"]

    def close(self):
        self.dense = None
        gc.collect()
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_engine(name: str) -> None:
    if name not in ENGINES:
        raise CostTableError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")


def _engine(name: str, lm: LoadedModel, workload: Workload, rounds: int) -> _Engine:
    _check_engine(name)
    if name == "llama-cpp":
        if lm.gguf_path is None and lm.tokenizer is None:
            raise CostTableError("a llama.cpp cost table needs the model's tokenizer to write its probe GGUFs")
        return _LlamaCpp(lm, workload, rounds)
    return (_VLLM if name == "vllm" else _Transformers)(lm, workload, rounds)


def _cache_path(key: str) -> Path:
    return cache_root() / "cost-tables" / f"{key}.json"


def measure_table(lm: LoadedModel, engine: str, workload: Workload = Workload(), *, rounds: int = 5,
                  points: int = 12, progress=None) -> CostTable:
    """Measure the table now (minutes: one timed pair per probe). progress(done, total, what) is told each step."""
    pad = ENGINE_PAD[engine]
    widths = probe_widths(lm.arch.intermediate, pad, points)
    eng = _engine(engine, lm, workload, rounds)
    probes = _probes(lm, widths)
    dense_p, dense_t, attn, mlp = [], [], {}, {}
    try:
        for k, (what, narrowed, plans) in enumerate(probes):
            if progress:
                progress(k, len(probes), what)
            (dp, dt), (pp, pt) = eng.pair(plans)
            dense_p.append(dp)
            dense_t.append(dt)
            kind, size = what.split(":")
            (attn if kind == "attn" else mlp)[int(size)] = ((dp - pp) / narrowed, (dt - pt) / narrowed)
    finally:
        eng.close()
    units = list(range(lm.arch.n_attn_units + 1))
    attn[units[-1]] = mlp[widths[-1]] = (0.0, 0.0)
    raw = {"attn": {"prompt": [attn[u][0] for u in units], "token": [attn[u][1] for u in units]},
           "mlp": {"prompt": [mlp[c][0] for c in widths], "token": [mlp[c][1] for c in widths]}}
    return CostTable(engine=engine, model=lm.name, fingerprint=lm.fingerprint, workload=workload,
                     n_layers=lm.arch.n_layers, units=units, widths=widths,
                     dense={"prompt": statistics.median(dense_p), "token": statistics.median(dense_t)},
                     attn_saving={k: fitted(units, v) for k, v in raw["attn"].items()},
                     mlp_saving={k: fitted(widths, v) for k, v in raw["mlp"].items()},
                     pad_to=pad, measured=raw, env={**eng.env, "rounds": rounds, "probes": len(probes)})


def cost_table(lm: LoadedModel, engine: str, workload: Workload = Workload(), *, rounds: int = 5, points: int = 12,
               refresh: bool = False, progress=None) -> CostTable:
    """The table for these settings: from the cache when it was measured before, else measured and cached."""
    _check_engine(engine)
    widths = probe_widths(lm.arch.intermediate, ENGINE_PAD.get(engine, 1), points)
    path = _cache_path(table_key(engine, lm.fingerprint, workload, widths, ENGINE_PAD.get(engine, 1)))
    if path.is_file() and not refresh:
        return CostTable.from_dict(json.loads(path.read_text()))
    if getattr(lm, "model", None) is None:  # a Ray session's stand-in: the model lives on the workers
        raise CostTableError(f"no {engine} cost table for {lm.name} yet: measure it first with `selfpruner cost-table "
                             f"MODEL --engine {engine}`")
    table = measure_table(lm, engine, workload, rounds=rounds, points=points, progress=progress)
    save_table(table, path)
    return table


def save_table(table: CostTable, path: Path | None = None) -> Path:
    if path is None:
        path = _cache_path(table_key(table.engine, table.fingerprint, table.workload, table.widths, table.pad_to))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table.to_dict(), indent=1))
    tmp.replace(path)
    return path


def check_table(lm: LoadedModel, table: CostTable, allocations: int = 10, *, seed: int = 0, rounds: int = 5,
                progress=None) -> list[dict]:
    """Measured against predicted speedups (prompt, generation, mix) of `allocations` random layer plans (each layer:
    a random attention count and a random MLP width on the engine's grid); appended to table.checks."""
    rng = random.Random(seed)
    a, w = lm.arch, table.workload
    eng = _engine(table.engine, lm, w, rounds)
    out = []
    try:
        for k in range(allocations):
            if progress:
                progress(k, allocations, f"allocation {k + 1}")
            keep = rng.uniform(0.3, 0.95)  # how much of the model this allocation keeps, on average
            plans = [LayerPlan(min(a.n_attn_units, max(0, round(rng.gauss(keep, 0.25) * a.n_attn_units))),
                               table.run_width(max(0, min(a.intermediate,
                                                          round(rng.gauss(keep, 0.2) * a.intermediate)))))
                     for _ in range(a.n_layers)]
            (dp, dt), (pp, pt) = eng.pair(plans)
            out.append({"name": f"random {k + 1}" + (f" of seed {seed}" if seed else ""), "plans": [[p.attn_units, p.channels] for p in plans],
                        "measured": {o: w.seconds(dp, dt, o) / w.seconds(pp, pt, o) for o in OBJECTIVES},
                        "predicted": {o: table.speedup(plans, o) for o in OBJECTIVES}})
    finally:
        eng.close()
    table.checks.extend(out)
    return out
