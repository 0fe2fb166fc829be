"""Sequential calibration for least squares (SparseGPT / ZipLM): layer i's o_proj and down_proj are rebuilt on
the inputs that the already pruned and rebuilt layers 0..i-1 produce, not on the dense model's.

One-shot least squares (reconstruct.py) solves every layer against the dense model's activations, so each layer
is fitted to inputs it will never see once the layers before it are pruned. Here the calibration windows are
carried through the decoder one layer at a time: the hidden states entering layer i are kept (tokens x hidden, a
few MB per thousand tokens), layer i is run on them dense to gather o_proj's input, its attention is pruned and
rebuilt, it is run again to gather down_proj's input (which the pruned attention changes), its MLP is pruned and
rebuilt, and a last run gives the next layer's input: three runs of each layer, about three forward passes. The
target stays the dense layer's output on the inputs the layer now gets (SparseGPT's); asking instead for the dense
model's output there (taking back upstream error) measured far worse on held-out text (bench/RESULTS.md). The
result depends on the whole rate vector, so it is built for one allocation (a final, an export), never per
candidate: the search's fitness keeps the one-shot factors.

Within a layer the kept heads' and channels' activations do not depend on the removed ones, so o_proj's input
gathered with the layer's own attention still dense has the columns the pruned layer sees.
"""
from __future__ import annotations

import torch

from .calibration import CalibrationStats, layer_device
from .models import decoder_layers, input_device
from .reconstruct import POINTS, LeastSquares


class _Reached(Exception):
    """Raised by a hook to end a forward once the inputs it needs are taken."""


@torch.no_grad()
def _layer_calls(model, windows: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, list[dict]]]:
    """Per batch of windows: the hidden states entering the first decoder layer and the keyword arguments the
    model passes each layer (masks, rotary tables: per layer, since Gemma's local and global layers differ)."""
    from .calibration import _decoder_only

    layers = decoder_layers(model)
    calls, current = [], {}

    def hook(mod, args, kwargs, i):
        if i == 0:
            current["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
        current["kwargs"][i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        if i == len(layers) - 1:
            raise _Reached
    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: hook(m, a, k, i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    forward, device = _decoder_only(model), input_device(model)
    try:
        for b in range(0, windows.shape[0], batch_size):
            current = {"kwargs": [None] * len(layers)}
            try:
                forward(input_ids=windows[b : b + batch_size].to(device), use_cache=False)
            except _Reached:
                pass
            calls.append((current["hidden"], current["kwargs"]))
    finally:
        for h in handles:
            h.remove()
    return calls


def _run(layer, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def sequential_least_squares(pruner, rates, windows: torch.Tensor, batch_size: int = 1) -> LeastSquares:
    """The least-squares factors for `rates`, each layer's gathered on the pruned model's own activations.
    Leaves the model restored (dense); apply `rates` with them through StructuredPruner.use_factors."""
    from ..plans import LayerPlan

    arch, n = pruner.arch, pruner.arch.n_layers
    plans = pruner.plan(rates)
    pruner.restore()
    stats = CalibrationStats([dict() for _ in range(n)], int(windows.numel()), pruner.stats.order,
                             [dict() for _ in range(n)])
    grams = [dict() for _ in range(n)]
    ls = LeastSquares(stats, grams, pruner.ls_ridge)
    calls = _layer_calls(pruner.model, windows, batch_size)
    layers = decoder_layers(pruner.model)
    one_shot = pruner.swap_factors(ls)
    try:
        for i, pl in enumerate(plans):
            device, parts = layer_device(arch, i), arch.layers[i]

            def gather(points):
                """Run layer i on every batch; its o_proj / down_proj inputs' Gram and sums become its statistics."""
                acc = {}

                def hook(mod, args, point):
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                    g, s = (x.T @ x).double(), x.double().sum(0)
                    acc[point] = (g, s) if point not in acc else (acc[point][0] + g, acc[point][1] + s)
                mods = {"o_in": parts.o, "down_in": parts.down}
                handles = [mods[p].register_forward_pre_hook(lambda m, a, p=p: hook(m, a, p)) for p in points]
                try:
                    for hidden, kwargs in calls:
                        _run(layers[i], hidden, kwargs[i])
                finally:
                    for h in handles:
                        h.remove()
                for p, (g, s) in acc.items():
                    grams[i][p], stats.xsum[i][p] = g.float().to(device), s.to(device)
                    ls.forget(i, POINTS.index(p))

            gather(("o_in", "down_in"))  # down_in only so a whole MLP has a mean; gathered again below
            pruner.apply_layer(i, LayerPlan(pl.attn_units, arch.intermediate))
            gather(("down_in",))
            pruner.apply_layer(i, pl)
            calls = [(_run(layers[i], hidden, kwargs[i]), kwargs) for hidden, kwargs in calls]
    finally:
        pruner.swap_factors(one_shot)
        pruner.restore()
    return ls
