"""The resident model with its data, calibration statistics and pruner: built once, used by every search."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..config import ConfigError, Data, Placement, Pruning
from ..events import EventBus, Stage
from ..model.calibration import CalibrationStats, load_or_collect
from ..model.data import TokenData, load_token_data
from ..model.evaluate import auto_batch_size, perplexity
from ..model.kl import DEFAULT_K, KLReference, dense_reference, mean_kl
from ..model.models import LoadedModel, dtype_name, load_model
from ..model.reconstruct import check_tokens, load_or_collect_grams
from ..model.sequential import sequential_least_squares
from ..model.structured import StructuredPruner, reconstruction, reset_order
from .evaluator import Evaluator


@dataclass
class Workbench(Evaluator):
    lm: LoadedModel
    data: TokenData
    stats: CalibrationStats  # in the resident model's (permuted) order, each layer's on that layer's device
    pruner: StructuredPruner
    seq_len: int
    calib_key: str  # identifies checkpoint, order and calibration windows; stored with every session
    batch_size: int = 1  # windows per forward in every perplexity (resolved from 'auto' at build)
    _kl_refs: dict = field(default_factory=dict, repr=False)  # (which, tokens, k) -> dense KLReference
    bus: EventBus | None = field(default=None, repr=False)  # where later calibration passes report progress
    sequential: bool = False  # finals and exports rebuilt layer by layer (prepare_final)

    @classmethod
    def build(cls, model: str | None, *, seq_len: int = 512, calib_tokens: int = 16384, data: str = "auto",
              bos: str = "auto", calib_data: str | None = None, bus: EventBus | None = None, lm: LoadedModel | None = None,
              device: str = "auto", dtype: str = "auto", device_map: str | None = None,
              batch_size: int | None = None, reconstruct: str | bool = "none",
              importance: str = Pruning.importance) -> "Workbench":
        """Load `model` onto `device` in `dtype` (or spread it with `device_map`; see models.load_model),
        tokenise WikiText-2 and calibrate. A given `lm` is used as it is, wherever it sits."""
        emit = bus.emit if bus else (lambda e: None)
        torch.manual_seed(0)
        if lm is None:
            emit(Stage("load", f"loading {model or 'bundled gemma-3-270m'}"))
            lm = load_model(model, device=device, dtype=dtype, device_map=device_map)
        emit(Stage("data", "tokenising WikiText-2"))
        td = load_token_data(lm.tokenizer, calib_tokens=calib_tokens, source=data, bos=bos, calib_data=calib_data)
        return cls.from_parts(lm, td, seq_len=seq_len, bus=bus, batch_size=batch_size, reconstruct=reconstruct,
                              importance=importance)

    @classmethod
    def from_parts(cls, lm: LoadedModel, td: TokenData, *, seq_len: int = 512, bus: EventBus | None = None,
                   batch_size: int | None = None, reconstruct: str | bool = "none",
                   importance: str = Pruning.importance) -> "Workbench":
        """Calibrate an in-memory model on token data it was given (e.g. random ids, bench/scale.py). Every
        tensor made from here on is made on the device of the layer it belongs to."""
        emit = bus.emit if bus else (lambda e: None)
        # A reused model may carry an earlier pruner's permutation: statistics, keys and the new order are
        # all taken from the checkpoint order, exactly as for a fresh load.
        reset_order(lm.model, lm.arch)
        windows = td.windows("calib", seq_len)
        batch = batch_size or auto_batch_size(lm.model, td.windows("search", seq_len))
        emit(Stage("calibrate", f"calibration pass over {windows.numel()} tokens", 0, windows.shape[0]))
        stats, cached, key = load_or_collect(lm.model, lm.arch, lm.fingerprint, windows,
                                             progress=lambda d, t: emit(Stage("calibrate", "", d, t)),
                                             batch_size=batch)
        emit(Stage("calibrate", "calibration statistics " + ("read from cache" if cached else "collected"),
                   windows.shape[0], windows.shape[0]))
        pruner = StructuredPruner(lm.model, lm.arch, stats, importance=importance)
        bench = cls(lm, td, pruner.stats, pruner, seq_len, key, batch, bus=bus)
        bench.set_pruning(reconstruct)
        return bench

    @classmethod
    def from_config(cls, cfg, bus: EventBus | None = None, data: str | None = None) -> "Workbench":
        """The model, data and calibration of a SearchConfig, on its device, in its dtype."""
        parts = asdict(cfg.part(Placement)) | asdict(cfg.part(Data)) | {"data": data or cfg.data}
        bench = cls.build(cfg.model, **parts, bus=bus, importance=cfg.importance)
        # set once, as a search would
        bench.set_pruning(cfg.reconstruct, cfg.channel_multiple, cfg.split, cfg.sequential)
        return bench

    @property
    def dtype(self) -> str:
        """The resident model's dtype by name, as a session stores it."""
        return dtype_name(self.lm.dtype)

    def pin_dtype(self, cfg) -> None:
        """Write the dtype this workbench runs in into `cfg` ('auto' resolves per box; a resume must not)."""
        if cfg.dtype not in ("auto", self.dtype):
            raise ConfigError(f"--dtype {cfg.dtype} asked, but the model given to the search is in {self.dtype}")
        cfg.dtype = self.dtype

    def windows(self, which: str, max_tokens: int | None) -> torch.Tensor:
        """Token windows on the CPU; each perplexity moves its batch to the model's input device."""
        return self.data.windows(which, self.seq_len, max_tokens)

    def fitness(self, rates, budget_tokens: int, *, which: str = "search", should_stop=None,
                progress=None, measure: str = "ppl", kl_k: int | None = None) -> tuple[float, float]:
        """(fitness, seconds) of the model pruned by `rates`: its ppl, or (measure 'kl') its mean per-token
        KL from the dense model (core/model/kl.py); the resident model is restored afterwards."""
        if which == "test":
            self.prepare_final(rates)
        windows = self.windows(which, budget_tokens)
        ref = self.kl_reference(which, budget_tokens, kl_k) if measure == "kl" else None
        t0 = time.perf_counter()
        with self.pruner.applied(rates):
            if ref is not None:
                value = mean_kl(self.lm.model, windows, ref, should_stop=should_stop)
            else:
                value = perplexity(self.lm.model, windows, should_stop=should_stop, progress=progress,
                                   batch_size=self.batch_size)
        return value, time.perf_counter() - t0

    def evaluate_many(self, jobs: list, *, done, before=None, should_stop=None, progress=None) -> None:
        """Run EvalJobs one after another, calling done(job, fitness, seconds) after each; `before()` is asked
        before each job (it blocks while paused, True = stop: InterruptedError). Ray's pool has the same call."""
        for job in jobs:
            if before is not None and before():
                raise InterruptedError
            fit, secs = self.fitness(job.rates, job.budget_tokens, which=job.which, measure=job.measure,
                                     kl_k=job.kl_k, should_stop=should_stop,
                                     progress=(lambda d, t, k=job.key: progress(k, d, t)) if progress else None)
            done(job, fit, secs)

    def test_tokens(self, max_tokens: int | None) -> int:
        """Tokens a final evaluation on `max_tokens` of the test stream scores."""
        return self.windows("test", max_tokens).numel()

    def reference_rates(self, beta: float, lo: float, hi: float) -> dict:
        """Uniform, OWL and FLAP rates at β: what reports draw a searched profile against and what
        --seed-references puts into the initial population (OWL/FLAP None on OOM)."""
        from ..baselines.rates import flap_rates, owl_rates
        n = self.lm.arch.n_layers
        refs = {"uniform": [beta] * n}
        for name, fn in (("owl", lambda: owl_rates(self.lm.arch, self.stats, beta, lo=lo, hi=hi)),
                         ("flap", lambda: flap_rates(self.lm.arch, self.stats, beta))):
            try:
                refs[name] = fn()
            except RuntimeError:  # out of memory on a huge model: go without
                refs[name] = None
        return refs

    def set_pruning(self, reconstruct="none", channel_multiple: int = 1, split: str = "rule",
                    sequential: bool = False) -> None:
        """A shared workbench serves searches with any reconstruction (none | bias | ls; True / False: bias
        compensation on / off), at any channel multiple and either split of a layer's rate. Least squares
        gathers its Gram matrices on first use (one more pass over the calibration windows, cached on disk);
        `sequential` rebuilds finals and exports layer by layer (prepare_final)."""
        if reconstruction(reconstruct) == "ls" and self.pruner.grams is None:
            self.pruner.grams = self._grams()
        self.pruner.reconstruct = reconstruct
        self.pruner.channel_multiple = channel_multiple
        self.pruner.split = split
        self.sequential = sequential

    def prepare_final(self, rates) -> None:
        """Before a final evaluation or an export of `rates`: with sequential calibration, its own least-squares
        factors, gathered on its pruned layers' outputs (kept for that vector; any other keeps the one-shot)."""
        if not self.sequential or self.pruner.reconstruct != "ls" or self.pruner.has_factors(rates):
            return
        windows = self.windows("calib", None)
        emit = self.bus.emit if self.bus else (lambda e: None)
        emit(Stage("calibrate", f"sequential least squares over {windows.numel()} tokens", 0, 1))
        ls = sequential_least_squares(self.pruner, rates, windows, self.batch_size or 1)
        self.pruner.use_factors(rates, ls)
        emit(Stage("calibrate", "sequential least squares done", 1, 1))

    def _grams(self) -> list[dict]:
        if self.pruner.current is not None:
            raise RuntimeError("the Gram matrices are gathered on the dense model (restore it first)")
        windows = self.windows("calib", None)
        check_tokens(windows.numel(), {"down_proj": self.lm.arch.intermediate})
        emit = self.bus.emit if self.bus else (lambda e: None)
        emit(Stage("calibrate", f"Gram matrices for least squares over {windows.numel()} tokens", 0, windows.shape[0]))
        grams, hit = load_or_collect_grams(self.lm.model, self.lm.arch, self.lm.fingerprint, windows,
                                           progress=lambda d, t: emit(Stage("calibrate", "", d, t)),
                                           batch_size=self.batch_size)
        emit(Stage("calibrate", "Gram matrices " + ("read from cache" if hit else "collected"),
                   windows.shape[0], windows.shape[0]))
        return grams

    def layer_grain(self):
        """How coarse the layers are under the current pruning settings: what deduplication compares."""
        return self.pruner.grain

    def close(self) -> None:
        """Nothing to release in-process (Ray's pool stops its workers)."""

    def kl_reference(self, which: str, budget_tokens: int, k: int | None = None) -> KLReference:
        """The dense model's top-k distributions over these windows, computed once and kept on its device."""
        key = (which, budget_tokens, k or DEFAULT_K)
        if key not in self._kl_refs:
            self._kl_refs[key] = dense_reference(self.lm.model, self.windows(which, budget_tokens), k or DEFAULT_K)
        return self._kl_refs[key]

    def dense_ppl(self, budget_tokens: int | None, which: str = "search") -> float:
        return perplexity(self.lm.model, self.windows(which, budget_tokens), batch_size=self.batch_size)
