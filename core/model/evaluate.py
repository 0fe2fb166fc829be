"""Perplexity of the (pruned) resident model over token windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Causal LMs whose forward is exactly `lm_head(decoder(x))` (then Gemma's optional logit soft-capping).
PLAIN_HEAD = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
              "Gemma2ForCausalLM", "Gemma3ForCausalLM")
# Positions per LM-head slice. A 512-token window is one slice: 256-position slices measured 6% slower on
# the 2-core box. Longer contexts (--seq-len 2048 or more) stay at 0.5 GB of fp32 logits with a 262k
# vocabulary, plus the loss's log-softmax of the same size, instead of growing with the context.
HEAD_CHUNK = 512


def _plain_head(model):
    """(decoder, lm_head, softcap) when the head can be run in slices, else None."""
    plain = any(c.__name__ in PLAIN_HEAD and c.__module__.startswith("transformers.") for c in type(model).__mro__)
    decoder, head = getattr(model, "model", None), model.get_output_embeddings()
    if not plain or decoder is None or head is None:
        return None
    return decoder, head, getattr(model.config, "final_logit_softcapping", None)


def logit_slices(model, batch: torch.Tensor, split, step: int | None = None):
    """(start position, logits) of a [b, seq] batch: the whole logits when the head cannot be sliced (`split`
    None), else the LM head (and Gemma's soft-cap) over `step` positions at a time, so the logits and what is
    computed from them never exist for a whole long window at once."""
    if split is None:
        yield 0, model(input_ids=batch, use_cache=False).logits
        return
    decoder, head, cap = split
    hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
    step = step or HEAD_CHUNK  # read at call time: tests shrink it
    for i in range(0, batch.shape[1], step):
        logits = head(hidden[:, i : i + step])
        yield i, (torch.tanh(logits / cap) * cap if cap else logits)


# Positions per cross-entropy call. The fp32 copy of a slice's logits and its log-softmax then stay in the CPU's
# cache instead of streaming through memory: on the 2-core box a 256-position bf16 slice of a 32k (128k)
# vocabulary took 24 (91) ms in one call and 4 (16) ms in calls of 16 positions, with the same sum.
LOSS_CHUNK = 16


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed fp32 next-token NLL of [n, vocab] logits against [n] targets (-100: not scored)."""
    total = 0.0
    for i in range(0, logits.shape[0], LOSS_CHUNK):
        total += float(F.cross_entropy(logits[i : i + LOSS_CHUNK].float(), targets[i : i + LOSS_CHUNK],
                                       reduction="sum", ignore_index=-100))
    return total


def _shifted_targets(batch: torch.Tensor) -> torch.Tensor:
    targets = torch.full_like(batch, -100)  # shift the targets, not the (huge) logits
    targets[:, :-1] = batch[:, 1:]
    return targets


def _window_nll(model, batch: torch.Tensor, split) -> float:
    """Summed next-token NLL of one [1, seq] window, over head slices (logit_slices). The targets follow the
    logits (with --device-map the head may sit on another GPU than the embedding)."""
    targets = _shifted_targets(batch)
    total = 0.0
    for i, logits in logit_slices(model, batch, split):
        n = logits.shape[1]
        total += _nll_sum(logits.reshape(-1, logits.shape[-1]), targets[:, i : i + n].reshape(-1).to(logits.device))
    return total


def _batch_nlls(model, batch: torch.Tensor, split) -> list[float]:
    """Summed NLL of each window of a [b, seq] batch, b > 1, from one forward pass. The head runs over
    HEAD_CHUNK // b positions of every window at a time, so the logits stay the size batch 1 gives;
    each window's loss is its own fp32 log-softmax sum, as in _window_nll."""
    b = batch.shape[0]
    targets = _shifted_targets(batch)
    totals = [0.0] * b
    for i, logits in logit_slices(model, batch, split, max(1, HEAD_CHUNK // b)):
        tgt = targets[:, i : i + logits.shape[1]]
        for j in range(b):
            totals[j] += _nll_sum(logits[j], tgt[j].to(logits.device))
    return totals


# Windows per forward on the CPU when --batch-size is auto. Measured on the 2-core box (load ~6, 4 windows of
# 512 tokens, best of 4 interleaved runs): gemma-3-270m 22.2 s at batch 1, 24.9 s at 2, 21.2 s at 4 (no gain:
# its 262k-entry head dominates); SmolLM2-135M 12.8 s, 11.2 s, 10.1 s (20% at 4). Search-time fitness is one
# window by default, so batching only speeds the final evaluation: the CPU default stays 1, which keeps every
# stored float32 perplexity bit-identical; pass --batch-size 4 for a multi-window budget on a small-vocab model.
CPU_BATCH = 1
MAX_BATCH = 64


def auto_batch_size(model, windows: torch.Tensor, *, headroom: float = 0.7) -> int:
    """Windows per forward: CPU_BATCH on the CPU; on CUDA as many as `headroom` of the free memory of every
    GPU the model sits on holds, from the peak one window's forward (and head slices) takes there."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    n = windows.shape[0]
    if not devices:
        return max(1, min(CPU_BATCH, n))
    for d in devices:
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    before = {d: torch.cuda.memory_allocated(d) for d in devices}
    window_nlls(model, windows[:1], batch_size=1)
    fits = []
    for d in devices:
        per_window = max(torch.cuda.max_memory_allocated(d) - before[d], 1)
        free, _ = torch.cuda.mem_get_info(d)
        fits.append(int(headroom * free / per_window))
    return max(1, min(n, MAX_BATCH, *fits))


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, *, progress=None, should_stop=None,
                batch_size: int | None = 1) -> list[float]:
    """Summed next-token NLL of each [seq] window (seq - 1 predictions each), scored independently,
    `batch_size` windows per forward (None: auto_batch_size). Windows go to the model's input device;
    the sums are fp32 log-softmax NLLs whatever the model's dtype."""
    from .models import input_device

    out = []
    n = windows.shape[0]
    split = _plain_head(model)
    device = input_device(model)
    b = batch_size or auto_batch_size(model, windows)
    for i in range(0, n, b):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        batch = windows[i : i + b].to(device)
        if batch.shape[0] == 1:
            out.append(_window_nll(model, batch, split))
        else:
            out.extend(_batch_nlls(model, batch, split))
        if progress:
            progress(len(out), n)
    return out


def ppl_from_nlls(nlls: list[float], seq_len: int) -> float:
    mean = sum(nlls) / (len(nlls) * (seq_len - 1))
    return math.exp(mean) if mean < 700 else float("inf")


def perplexity(model, windows: torch.Tensor, *, progress=None, should_stop=None, batch_size: int | None = 1) -> float:
    """exp(mean next-token NLL) over [n, seq] windows."""
    return ppl_from_nlls(window_nlls(model, windows, progress=progress, should_stop=should_stop,
                                     batch_size=batch_size), windows.shape[1])
