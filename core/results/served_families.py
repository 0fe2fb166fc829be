"""Which exported families vLLM serves through selfpruner's plugin (core/results/vllm_model.py), and why not the
others: imported without vLLM, so an export can say whether `vllm serve` will run it."""
from __future__ import annotations

# base model_type -> why vLLM's LLaMA layers would run it wrong (the plugin refuses these in one line)
NOT_SERVED = {
    "gemma3_text": "Gemma3's layers (sandwich norms, scaled embeddings, local/global attention) are not LLaMA's",
    "qwen3": "Qwen3's per-head q/k norms are not part of LLaMA's attention layer",
}


def refusal(base_type: str, config) -> str | None:
    """None where the plugin serves a `base_type` export with this config exactly, else the reason."""
    if base_type in NOT_SERVED:
        return NOT_SERVED[base_type]
    if base_type not in ("llama", "mistral", "qwen2"):
        return f"no vLLM layers for model type {base_type}"
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        return f"its MLP uses {act}, vLLM's gated MLP here is SiLU's"
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", base_type != "qwen2")  # Qwen2 switches it on explicitly
    if window and uses_window and window < getattr(config, "max_position_embeddings", 0):
        return f"its sliding window ({window} tokens) is not applied by these layers"
    return None
