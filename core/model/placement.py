"""Where and in what precision a model lives: the device and dtype a user names, resolved once, the loading
keywords that put weights there, and where dequantised models and statistics are cached."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import DTYPES, valid_device
from ..errors import UserError


def cache_root() -> Path:
    """Read at each use, so tests (and users) can point $SELFPRUNER_CACHE elsewhere at any time."""
    return Path(os.environ.get("SELFPRUNER_CACHE") or Path.home() / ".cache" / "selfpruner")


class ModelLoadError(UserError, RuntimeError):
    """A model path/id that cannot be loaded; the message is one line meant for the user."""


# ---- where and in what precision a model lives ----------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto': the first CUDA device when one is visible, else the CPU. A CUDA request without a visible
    device fails in one line instead of deep inside the first forward."""
    if isinstance(device, torch.device):
        return device
    device = device or "auto"
    if not valid_device(device):
        raise ModelLoadError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {device}: no CUDA device is visible (use --device cpu or auto)")
        d = torch.device(device)
        index = d.index or 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str | None = None) -> torch.dtype:
    """'auto': bfloat16 on a GPU, float32 on the CPU (where the numbers of every stored session were taken)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    return getattr(torch, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def placement(device: torch.device, device_map: str | None) -> dict:
    """from_pretrained kwargs that put the weights where they will run while they load: no CPU copy of a
    GPU model. The CPU path passes nothing, exactly as before devices existed."""
    if device_map:
        return {"device_map": device_map}
    return {} if device.type == "cpu" else {"device_map": str(device)}
