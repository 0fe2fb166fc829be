"""A cost table: what one decoder layer costs on a serving engine at each kept attention-unit count and MLP width,
measured once per (model shape, engine, weight type, threads, workload), and what a pruned model's plans are
predicted to cost from it.

The table holds the dense model's time (prompt seconds, seconds per generated token) and, per layer, how much
time a layer saves against dense when its attention keeps u units (at full MLP width) and when its MLP keeps c
channels (at full attention). A model's predicted time is dense - the sum of its layers' two savings: attention
and MLP are taken as additive within a layer and layers as additive within the model, which the check of
measured against predicted speedups (`cost-table --check`, results/cost_probes.check_table) tests.

The savings used are a least-squares line through the measured ones (saving = price × units or channels removed;
no heads or no channels at all keep their measured saving): a probe's saving is a small difference of two noisy
times (two identical files differ by up to 5% on a 2-core box), and the line cut SmolLM2's median prediction error
on llama.cpp from 5.9% to 2.5% (prompt) and 2.9% to 1.9% (a request); the measured savings stay in `measured`. An engine that pads widths (llama.cpp's
GGUF export pads MLP channels to 64) is predicted at the width it runs.
"""
from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, field

from .plans import LayerPlan

ENGINES = ("llama-cpp", "transformers", "vllm")
OBJECTIVES = ("prompt", "generation", "mix")
# bump when the probes or their arithmetic change: a cached table of the old protocol is measured again
PROBE_VERSION = 4


@dataclass(frozen=True)
class Workload:
    """What one measured request is: a prompt of prompt_len tokens, then decode_tokens generated greedily."""
    prompt_len: int = 128
    decode_tokens: int = 32
    threads: int | None = None  # CPU engines; None = every core
    weights: str = "f16"  # llama.cpp: the GGUF type; transformers: the torch dtype

    def seconds(self, prompt_s: float, token_s: float, objective: str) -> float:
        """One request's time under the objective: the prompt, one generated token, or the whole request."""
        return {"prompt": prompt_s, "generation": token_s,
                "mix": prompt_s + self.decode_tokens * token_s}[objective]


@dataclass
class CostTable:
    engine: str
    model: str  # the dense model's name
    fingerprint: str
    workload: Workload
    n_layers: int
    units: list[int]  # attention units a dense layer has are units[-1]; savings per count in attn_saving
    widths: list[int]  # measured MLP widths, ascending, the dense width last
    dense: dict  # {"prompt": s, "token": s}
    attn_saving: dict  # {"prompt": [s per layer at units[k]], "token": [...]}
    mlp_saving: dict  # {"prompt": [s per layer at widths[k]], "token": [...]}
    pad_to: int = 1  # widths the engine runs: MLP channels rounded up to a multiple of this
    measured: dict = field(default_factory=dict)  # {"attn": {...}, "mlp": {...}}: the savings as measured
    env: dict = field(default_factory=dict)  # engine version, load average, rounds: how it was measured
    checks: list = field(default_factory=list)  # measured vs predicted speedups of whole allocations

    # ---- prediction ----------------------------------------------------------------------------------------
    def run_width(self, channels: int) -> int:
        if channels <= 0:
            return 0
        return min(self.widths[-1], -(-channels // self.pad_to) * self.pad_to)

    def _mlp(self, kind: str, channels: int) -> float:
        w, s = self.widths, self.mlp_saving[kind]
        c = self.run_width(channels)
        k = bisect_left(w, c)
        if k < len(w) and w[k] == c:
            return s[k]
        if k == 0:  # below the narrowest measured width: extrapolate the first segment
            k = 1
        k = min(k, len(w) - 1)
        a, b = w[k - 1], w[k]
        return s[k - 1] + (s[k] - s[k - 1]) * (c - a) / (b - a)

    def layer_saving(self, plan: LayerPlan, kind: str) -> float:
        return self.attn_saving[kind][self.units.index(plan.attn_units)] + self._mlp(kind, plan.channels)

    def times(self, plans: list[LayerPlan]) -> tuple[float, float]:
        """(prompt seconds, seconds per generated token) predicted for a model with these layer plans."""
        return tuple(max(1e-12, self.dense[k] - sum(self.layer_saving(p, k) for p in plans))
                     for k in ("prompt", "token"))

    def seconds(self, plans: list[LayerPlan], objective: str) -> float:
        return self.workload.seconds(*self.times(plans), objective)

    def dense_seconds(self, objective: str) -> float:
        return self.workload.seconds(self.dense["prompt"], self.dense["token"], objective)

    def speedup(self, plans: list[LayerPlan], objective: str) -> float:
        return self.dense_seconds(objective) / self.seconds(plans, objective)

    def step_savings(self, objective: str) -> tuple[float, int, float]:
        """(seconds one layer saves by losing one attention unit, the last probed MLP step in channels, seconds that
        step saves): the prices the prompts quote."""
        sec = self.workload.seconds
        attn = sec(self.attn_saving["prompt"][-2], self.attn_saving["token"][-2], objective) if len(self.units) > 1 \
            else 0.0
        mlp = sec(self.mlp_saving["prompt"][-2], self.mlp_saving["token"][-2], objective)
        return attn, self.widths[-1] - self.widths[-2], mlp

    # ---- storage -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CostTable:
        return cls(**{**d, "workload": Workload(**d["workload"])})

    def text(self) -> str:
        """The table as the CLI prints it: dense times, then per layer what each attention count and MLP width
        saves (ms), prompt and per generated token."""
        w = self.workload
        lines = [f"cost table: {self.model} on {self.engine} ({w.weights}, {w.threads or 'all'} threads, "
                 f"{w.prompt_len}-token prompt, {w.decode_tokens} generated), {self.n_layers} layers",
                 f"dense: prompt {1e3 * self.dense['prompt']:.1f} ms, {1e3 * self.dense['token']:.2f} ms per token",
                 "saved per layer (ms)      prompt   per token"]
        raw = self.measured or {"attn": self.attn_saving, "mlp": self.mlp_saving}
        lines[-1] += "   (as measured: prompt, per token)"
        for u, k in zip(self.units, range(len(self.units))):
            lines.append(f"  attention {u:>3} units  {1e3 * self.attn_saving['prompt'][k]:8.2f}  "
                         f"{1e3 * self.attn_saving['token'][k]:9.3f}   ({1e3 * raw['attn']['prompt'][k]:.2f}, "
                         f"{1e3 * raw['attn']['token'][k]:.3f})")
        for c, k in zip(self.widths, range(len(self.widths))):
            lines.append(f"  MLP {c:>6} channels  {1e3 * self.mlp_saving['prompt'][k]:8.2f}  "
                         f"{1e3 * self.mlp_saving['token'][k]:9.3f}   ({1e3 * raw['mlp']['prompt'][k]:.2f}, "
                         f"{1e3 * raw['mlp']['token'][k]:.3f})")
        for ck in self.checks:
            lines.append(f"  check {ck['name']}: " + ", ".join(
                f"{o} measured {ck['measured'][o]:.3f}x predicted {ck['predicted'][o]:.3f}x" for o in OBJECTIVES))
        return "\n".join(lines)


def fitted(sizes: list[int], savings: list[float]) -> list[float]:
    """The least-squares line through the origin at the dense size (the last), saving = price × size removed, fitted
    to the sizes above 0; size 0 keeps its measured saving, since removing every head or channel skips more than
    their price (transformers skips the module, llama.cpp the attention)."""
    full = sizes[-1]
    pts = [(full - x, s) for x, s in zip(sizes, savings) if x > 0]
    price = sum(r * s for r, s in pts) / max(1e-30, sum(r * r for r, _ in pts))
    return [s if x == 0 else price * (full - x) for x, s in zip(sizes, savings)]


def prediction_errors(table: CostTable, checks: list[dict] | None = None) -> dict[str, tuple[float, float, int]]:
    """Per objective, (median, max, count) of |predicted / measured - 1| over `checks` (default: the table's)."""
    out, checks = {}, table.checks if checks is None else checks
    for o in OBJECTIVES:
        errs = sorted(abs(c["predicted"][o] / c["measured"][o] - 1) for c in checks)
        if errs:
            out[o] = (errs[len(errs) // 2], errs[-1], len(errs))
    return out


def table_key(engine: str, fingerprint: str, workload: Workload, widths: list[int], pad_to: int) -> str:
    """What a cached table depends on: the model's weights' identity (its shape with them), the engine, how requests
    look and run, the widths probed, and the protocol's version."""
    raw = json.dumps([PROBE_VERSION, engine, fingerprint, asdict(workload), widths, pad_to], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def probe_widths(channels: int, multiple: int, points: int = 12) -> list[int]:
    """The MLP widths probed: 0, then about `points` steps up to the dense width, each a multiple of `multiple`."""
    step = max(multiple, multiple * math.ceil(channels / points / multiple))
    return sorted({0, *range(step, channels, step), channels})


def uniform_rate_for(speedup_of, target: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """The smallest uniform rate whose predicted speedup reaches `target` (bisection; `speedup_of(rate)`); hi when
    none does."""
    if speedup_of(hi) < target:
        return hi
    a, b = lo, hi
    for _ in range(40):
        m = (a + b) / 2
        a, b = (m, b) if speedup_of(m) < target else (a, m)
    return b


@dataclass(frozen=True, eq=False)
class SpeedBudget:
    """--target-speedup: a candidate is valid when its plans' predicted time on the table's engine is at most the
    dense time / target (under the objective); repair puts every vector on that budget as it puts one on a mean."""
    table: CostTable
    target: float
    objective: str = "mix"

    @property
    def budget_seconds(self) -> float:
        return self.table.dense_seconds(self.objective) / self.target

    def fits(self, plans: list[LayerPlan]) -> bool:
        return self.table.seconds(plans, self.objective) <= self.budget_seconds * (1 + 1e-9)

    def speedup(self, plans: list[LayerPlan]) -> float:
        return self.table.speedup(plans, self.objective)
