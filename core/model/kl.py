"""KL divergence from the dense model as fitness (EvoPress, DarwinLM): KL(dense ‖ pruned) per predicted token.

The dense model's next-token distribution at every position is kept as its top-k log-probabilities plus the
rest of the mass as one bucket, computed once per window set and held on the device of the LM head (k=64 and a
512-token window: 0.4 MB). A pruned candidate's KL is then

    Σ_{i in top-k} p_i (log p_i − log q_i) + p_rest (log p_rest − log q_rest),  q_rest = 1 − Σ_{i in top-k} q_i,

the exact KL between the two distributions coarsened to k+1 outcomes, a lower bound on the full KL that
tightens as k grows (bench/token_budget.py --kl-k compares k with the full vocabulary). All in fp32 whatever
the model's dtype; the head runs in HEAD_CHUNK slices as for perplexity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .evaluate import _plain_head, logit_slices

DEFAULT_K = 64


@dataclass
class KLReference:
    """Dense top-k log-probs [n, T-1, k], their token ids, and log of the remaining mass [n, T-1]."""
    logp: torch.Tensor
    ids: torch.Tensor
    log_rest: torch.Tensor
    k: int


def _log_probs(model, batch: torch.Tensor, split):
    """fp32 log-softmax of the next-token distributions at positions 0..T-2 of a [1, T] window, in head
    slices (the last position predicts nothing in the window)."""
    last = batch.shape[1] - 1
    for i, logits in logit_slices(model, batch, split):
        if i < last:
            yield torch.log_softmax(logits[0, : last - i].float(), dim=-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, kept finite where the top-k holds all the mass."""
    return torch.log(torch.clamp(-torch.expm1(x), min=1e-12))


@torch.no_grad()
def dense_reference(model, windows: torch.Tensor, k: int = DEFAULT_K) -> KLReference:
    """The dense model's coarsened distributions over `windows` ([n, T], token ids)."""
    from .models import input_device

    split, device = _plain_head(model), input_device(model)
    logps, ids, rests = [], [], []
    for w in windows:
        parts = [torch.topk(lp, k, dim=-1) for lp in _log_probs(model, w[None].to(device), split)]
        top = torch.cat([p.values for p in parts])
        logps.append(top)
        ids.append(torch.cat([p.indices for p in parts]))
        rests.append(_log1mexp(torch.logsumexp(top, dim=-1)))
    return KLReference(torch.stack(logps), torch.stack(ids), torch.stack(rests), k)


@torch.no_grad()
def mean_kl(model, windows: torch.Tensor, ref: KLReference, should_stop=None) -> float:
    """Mean per-token KL(dense ‖ model) over `windows`, against `ref` from the same windows."""
    from .models import input_device

    split, device = _plain_head(model), input_device(model)
    total, count = 0.0, 0
    for n, w in enumerate(windows):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        pos = 0
        for lq in _log_probs(model, w[None].to(device), split):
            t = lq.shape[0]
            p_log = ref.logp[n, pos : pos + t].to(lq.device)
            q_top = torch.gather(lq, -1, ref.ids[n, pos : pos + t].to(lq.device))
            p_rest = ref.log_rest[n, pos : pos + t].to(lq.device)
            q_rest = _log1mexp(torch.logsumexp(q_top, dim=-1))
            kl = (p_log.exp() * (p_log - q_top)).sum(-1) + p_rest.exp() * (p_rest - q_rest)
            total += float(kl.sum())
            count += t
            pos += t
    return total / max(1, count)


@torch.no_grad()
def full_kl(model, dense_logps: list[torch.Tensor], windows: torch.Tensor) -> float:
    """Mean per-token KL over the whole vocabulary, against dense log-probs kept in full (for choosing k)."""
    from .models import input_device

    split, device = _plain_head(model), input_device(model)
    total, count = 0.0, 0
    for n, w in enumerate(windows):
        lq = torch.cat(list(_log_probs(model, w[None].to(device), split)))
        lp = dense_logps[n].to(lq.device)
        total += float((lp.exp() * (lp - lq)).sum())
        count += lq.shape[0]
    return total / max(1, count)


@torch.no_grad()
def dense_full(model, windows: torch.Tensor) -> list[torch.Tensor]:
    from .models import input_device

    split, device = _plain_head(model), input_device(model)
    return [torch.cat(list(_log_probs(model, w[None].to(device), split))).cpu() for w in windows]
