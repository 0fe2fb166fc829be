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


def test_chunked_loss_sums_what_one_cross_entropy_call_does():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 500, generator=g).to(torch.bfloat16)  # not a multiple of the chunk
    targets = torch.randint(0, 500, (300,), generator=g)
    targets[-1] = -100  # the last position has nothing to predict
    whole = float(F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=-100))
    assert ev._nll_sum(logits, targets) == pytest.approx(whole, rel=1e-6)


def test_a_frozen_model_folds_the_head_input_and_keeps_its_logits():
    """models.frozen: the head sees a 2-D input (a [:, -1:] slice of a 3-D one takes torch's batched matmul,
    which copies the whole head weight per call when it does not require grad); the logits are unchanged."""
    from selfpruner.core.model.models import frozen
    model = make_tiny("llama")
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids, logits_to_keep=1).logits
    seen = []
    frozen(model)
    frozen(model)  # idempotent: one fold, not two
    model.get_output_embeddings().register_forward_pre_hook(lambda mod, args: seen.append(args[0].dim()))
    with torch.no_grad():
        after = model(input_ids=ids, logits_to_keep=1).logits
    assert seen == [2] and after.shape == before.shape == (2, 1, 1000)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-6)  # another matmul path: rounding only
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
