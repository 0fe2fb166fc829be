"""A GGUF checkpoint as transformers weights: dequantised once (about a minute for gemma-3-270m) and cached as
safetensors under cache_root(), keyed by the file's content and the code that dequantises it."""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .placement import cache_root, dtype_name, placement

# What the cached files were written by: bump when this code changes what it writes (the dequantised checkpoint,
# the calibration statistics); transformers' version is part of the key too, as it does the dequantising.
CACHE_FORMAT = 2


def code_version() -> str:
    import transformers
    return f"{CACHE_FORMAT}-{transformers.__version__}"


@functools.lru_cache(maxsize=16)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes (~0.3 s for a 250 MB GGUF), once per process and file version."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    return _content_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)


def gguf_cache_dir(gguf: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Keyed by the GGUF's content and the code that dequantises it: the same file anywhere (another checkout,
    another venv, a CI run's fresh clone on the same machine) reuses one entry, and a new writer never reads an
    old one."""
    key = hashlib.sha256(f"{file_digest(gguf)}|{code_version()}".encode()).hexdigest()[:16]
    suffix = "" if dtype == torch.float32 else f"-{dtype_name(dtype)}"
    return cache_root() / "dequantised" / f"{gguf.stem}-{key}{suffix}"


def _place(model: nn.Module, device: torch.device, device_map: str | None) -> nn.Module:
    """Move a model built on the CPU (a freshly dequantised GGUF) to where it will run."""
    if device_map:
        from accelerate import dispatch_model, infer_auto_device_map
        return dispatch_model(model, infer_auto_device_map(model, no_split_module_classes=model._no_split_modules))
    return model if device.type == "cpu" else model.to(device)


_GGUF_PATCH = threading.Lock()


@contextmanager
def _gguf_parsed_once():
    """transformers reads a GGUF's header three times (config, weights, tokenizer), and parsing gemma's 262k-token
    vocabulary takes ~23 s each on this CPU: within the block, each file is parsed once and its reader reused. The
    reader is swapped process-wide, so blocks are serialised: a second thread (the TUI loads models in workers)
    waits instead of restoring the original under the first one's feet."""
    import gguf
    with _GGUF_PATCH:
        original, readers = gguf.GGUFReader, {}

        def reader(path, *args, **kwargs):
            key = (str(path), args, tuple(sorted(kwargs.items())))
            if key not in readers:
                readers[key] = original(path, *args, **kwargs)
            return readers[key]
        gguf.GGUFReader = reader
        try:
            yield
        finally:
            gguf.GGUFReader = original


def load_gguf(gguf: Path, dtype: torch.dtype, device: torch.device = torch.device("cpu"),
               device_map: str | None = None):
    """Dequantising a GGUF takes ~1 min; the result is cached as safetensors for later loads. A float32 cache
    serves every dtype (each tensor is cast as it is read, so the model never exists whole in float32);
    without one, the GGUF is dequantised into `dtype` and cached under that dtype's name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = placement(device, device_map)
    for cache in dict.fromkeys((gguf_cache_dir(gguf, dtype), gguf_cache_dir(gguf))):
        if (cache / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype, **where)
            tok = AutoTokenizer.from_pretrained(cache)
            return model, tok
    cache = gguf_cache_dir(gguf, dtype)
    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain dequantised tensors now; drop the GGUF quantiser so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # two processes may dequantise the same file at once
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cache)
    except OSError:  # a read-only cache only costs time; where another process won the race, its copy is kept
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return _place(model, device, device_map), tok
