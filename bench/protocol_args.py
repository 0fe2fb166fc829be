"""Command-line options the small-scale protocol benches share: the model, the paper's K:(M+S) = 30:20 at
K=6, M=S=2 (N=6: what fits 2 CPU cores), one 512-token window per fitness and 8,192 calibration tokens."""
from __future__ import annotations

import argparse


def add_protocol_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("-K", type=int, default=6)
    ap.add_argument("-M", type=int, default=2)
    ap.add_argument("-S", type=int, default=2)
    ap.add_argument("-N", type=int, default=6)
    ap.add_argument("--budget-tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=8192)
