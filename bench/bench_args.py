"""The command-line options the bench scripts share, declared once. Each script names the ones it takes with its
own defaults (`add(ap, model="smollm2", K=6, ...)`), so what it measures by default is unchanged; its own options
stay in the script. `add_protocol_args` is the small-scale protocol: the paper's K:(M+S) = 30:20 at K=6, M=S=2
(N=6: what fits 2 CPU cores), one 512-token window per fitness and 8,192 calibration tokens."""
from __future__ import annotations

import argparse

# name -> (flags, type, help)
OPTIONS = {
    "model": (["--model"], str, "model spec: smollm2, bundled, a GGUF, an HF dir or hub id (None: bundled gemma)"),
    "ratio": (["--ratio"], float, "β, the mean pruning rate"),
    "ratios": (["--ratios"], str, "comma-separated β values"),
    "K": (["-K"], int, "population"),
    "M": (["-M"], int, "mutations per generation"),
    "S": (["-S"], int, "crossovers per generation"),
    "N": (["-N"], int, "generations"),
    "budget_tokens": (["--budget-tokens"], int, "search-time fitness tokens"),
    "seq_len": (["--seq-len"], int, "window length"),
    "calib_tokens": (["--calib-tokens"], int, "calibration tokens"),
    "final_tokens": (["--final-tokens"], int, "held-out test tokens of the final evaluation"),
    "seed": (["--seed"], int, "seed"),
    "candidates": (["--candidates"], int, "random candidates to score"),
    "repeats": (["--repeats"], int, "repeats of each timing"),
    "sessions_dir": (["--sessions-dir"], str, "where the searches' sessions go (default: a temporary dir)"),
}


def add(ap: argparse.ArgumentParser, **defaults) -> None:
    """Declare the shared options named in `defaults`, with those defaults."""
    for name, default in defaults.items():
        flags, typ, text = OPTIONS[name]
        ap.add_argument(*flags, type=typ, default=default, help=text)


def add_protocol_args(ap: argparse.ArgumentParser) -> None:
    add(ap, model="smollm2", K=6, M=2, S=2, N=6, budget_tokens=512, seq_len=512, calib_tokens=8192)


def spread(values, fmt: str = ".3f") -> str:
    """A timing as issue 25's protocol reports it: the median and the min-max of the repeats."""
    import statistics
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def conditions() -> str:
    """What a speed figure was measured under: torch's threads and the load average at start."""
    import os

    import torch
    return f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at start"
