"""Perplexity with the LM head run in slices equals the model's own full forward pass."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfpruner.core.model import evaluate as ev

from conftest import make_tiny


def _reference_nll(model, window):
    logits = model(input_ids=window[None]).logits[0, :-1]
    return float(F.cross_entropy(logits.float(), window[1:], reduction="sum"))


@pytest.mark.parametrize("kind,softcap", [("llama", None), ("gemma", None), ("gemma", 0.3)])
def test_sliced_head_matches_full_forward(kind, softcap, monkeypatch):
    model = make_tiny(kind)
    if softcap:
        model.config.final_logit_softcapping = softcap
    assert ev._plain_head(model) is not None
    monkeypatch.setattr(ev, "HEAD_CHUNK", 5)  # 32 positions -> 7 slices, the last one short
    windows = torch.randint(0, 1000, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = [_reference_nll(model, w) for w in windows]
    got = ev.window_nlls(model, windows)
    assert got == pytest.approx(ref, rel=1e-5)
    assert ev.perplexity(model, windows) == pytest.approx(math.exp(sum(ref) / (3 * 31)), rel=1e-5)
    # with soft-capping on, leaving it out would change the loss: the check above can fail
    if softcap:
        model.config.final_logit_softcapping = None
        assert ev.window_nlls(model, windows) != pytest.approx(ref, rel=1e-3)


def test_unknown_architectures_use_the_full_forward():
    class Wrapper(torch.nn.Module):  # not one of the plain-head classes: no slicing
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.lm_head

        def forward(self, **kw):
            return self.inner(**kw)

    model = Wrapper(make_tiny("llama"))
    assert ev._plain_head(model) is None
    windows = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = [_reference_nll(model.inner, w) for w in windows]
    assert ev.window_nlls(model, windows) == pytest.approx(ref, rel=1e-5)
