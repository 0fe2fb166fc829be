"""Optional LoRA recovery of a pruned model (peft): a few steps on local text, ppl before and after.

The adapters (rank 8 by default) go on every kept q/k/v/o and gate/up/down projection; projections that
pruning emptied (0 channels) get none. After training the adapters are merged, so the result is an
ordinary model of the same (pruned) shapes that `save_pretrained` writes like the export did.
Training windows come from the calibration stream of core/model/data.py and perplexity from the search stream,
so the reported "after" is not measured on the training tokens.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.evaluate import perplexity

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraResult:
    ppl_before: float
    ppl_after: float
    losses: list[float]  # training loss per step
    steps: int
    trainable_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def lora_targets(model: nn.Module) -> list[str]:
    """Full names of the non-empty projection Linears."""
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTIONS
            and mod.in_features > 0 and mod.out_features > 0]


def lora_recover(model: nn.Module, train_windows: torch.Tensor, eval_windows: torch.Tensor, *, steps: int = 20,
                 lr: float = 2e-4, r: int = 8, alpha: int = 16, seed: int = 0, batch_size: int = 1,
                 progress=None) -> tuple[nn.Module, LoraResult]:
    """Train LoRA adapters on `train_windows` ([n, seq], `batch_size` windows per step, cycling), merge them.

    Returns (merged model, result). The passed model is modified in place (peft injects into it). Windows go
    to the model's input device; the adapters sit beside the layers they adapt.
    """
    from peft import LoraConfig, get_peft_model

    from ..model.models import input_device

    device, n = input_device(model), len(train_windows)
    ppl_before = perplexity(model, eval_windows, batch_size=batch_size)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model),
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    peft_model.train()
    losses = []
    for step in range(steps):
        batch = train_windows[[(step * batch_size + j) % n for j in range(batch_size)]].to(device)
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress:
            progress(step + 1, steps)
    merged = peft_model.merge_and_unload().eval().requires_grad_(False)
    ppl_after = perplexity(merged, eval_windows, batch_size=batch_size)
    return merged, LoraResult(ppl_before, ppl_after, losses, steps, sum(p.numel() for p in params))


def recover_dir(path, out_dir, *, steps: int = 20, seq_len: int = 128, eval_tokens: int = 4096,
                data_source: str = "auto", device: str | None = None, dtype: str | None = None,
                device_map: str | None = None, **kwargs) -> LoraResult:
    """LoRA-recover a saved model directory and save the merged model (+ tokenizer) to `out_dir`; the model
    loads as export.load_pruned places it."""
    from ..model.data import load_token_data
    from .export import load_pruned

    model, tokenizer = load_pruned(path, dtype=dtype, device=device, device_map=device_map)
    data = load_token_data(tokenizer, calib_tokens=max(steps * seq_len, 4 * seq_len), source=data_source)
    train, held_out = data.windows("calib", seq_len), data.windows("search", seq_len, eval_tokens)
    merged, result = lora_recover(model, train, held_out, steps=steps, **kwargs)
    out = Path(out_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    code = Path(path) / "pruned_modeling.py"
    if code.exists():  # keep the trust_remote_code route of an export working
        shutil.copy(code, out / code.name)
    return result
