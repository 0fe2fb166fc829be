"""The resident model with its data, calibration statistics and pruner: built once, used by every search."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .calibration import CalibrationStats, load_or_collect
from .data import TokenData, load_token_data
from .evaluate import perplexity
from .events import EventBus, Stage
from .models import LoadedModel, load_model
from .structured import StructuredPruner, reset_order


@dataclass
class Workbench:
    lm: LoadedModel
    data: TokenData
    stats: CalibrationStats  # in the resident model's (permuted) order
    pruner: StructuredPruner
    seq_len: int
    calib_key: str  # identifies checkpoint, order and calibration windows; stored with every session

    @classmethod
    def build(cls, model: str | None, *, seq_len: int = 512, calib_tokens: int = 16384, data: str = "auto",
              bos: str = "auto", bus: EventBus | None = None, lm: LoadedModel | None = None) -> "Workbench":
        emit = bus.emit if bus else (lambda e: None)
        torch.manual_seed(0)
        if lm is None:
            emit(Stage("load", f"loading {model or 'bundled gemma-3-270m'}"))
            lm = load_model(model)
        # A reused model may carry an earlier pruner's permutation: statistics, keys and the new order are
        # all taken from the checkpoint order, exactly as for a fresh load.
        reset_order(lm.model, lm.arch)
        emit(Stage("data", "tokenising WikiText-2"))
        td = load_token_data(lm.tokenizer, calib_tokens=calib_tokens, source=data, bos=bos)
        windows = td.windows("calib", seq_len)
        emit(Stage("calibrate", f"calibration pass over {windows.numel()} tokens", 0, windows.shape[0]))
        stats, cached, key = load_or_collect(lm.model, lm.arch, lm.fingerprint, windows,
                                             progress=lambda d, t: emit(Stage("calibrate", "", d, t)))
        emit(Stage("calibrate", "calibration statistics " + ("read from cache" if cached else "collected"),
                   windows.shape[0], windows.shape[0]))
        pruner = StructuredPruner(lm.model, lm.arch, stats)
        return cls(lm, td, pruner.stats, pruner, seq_len, key)

    def windows(self, which: str, max_tokens: int | None) -> torch.Tensor:
        return self.data.windows(which, self.seq_len, max_tokens)

    def fitness(self, rates, budget_tokens: int, *, which: str = "search", should_stop=None,
                progress=None) -> tuple[float, float]:
        """(ppl, seconds) of the model pruned by `rates`; the resident model is restored afterwards."""
        windows = self.windows(which, budget_tokens)
        t0 = time.perf_counter()
        with self.pruner.applied(rates):
            ppl = perplexity(self.lm.model, windows, should_stop=should_stop, progress=progress)
        return ppl, time.perf_counter() - t0

    def dense_ppl(self, budget_tokens: int | None, which: str = "search") -> float:
        return perplexity(self.lm.model, self.windows(which, budget_tokens))
