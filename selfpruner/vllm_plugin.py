"""vLLM's `vllm.general_plugins` entry point (pyproject.toml): with selfpruner installed, `vllm serve DIR` and
`LLM(model=DIR)` load a selfpruner export through its registered classes, with no trust_remote_code (nothing from
the export directory is run)."""
from __future__ import annotations

MODEL_CLASS = "selfpruner.core.results.vllm_model:SelfPrunerForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    from selfpruner.core.results import pruned_modeling

    pruned_modeling.register()  # vLLM reads config.json through AutoConfig, which must know selfpruner_* types
    for _, model_cls in pruned_modeling.CLASSES.values():  # families it cannot serve refuse in one line at load
        if model_cls.__name__ not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(model_cls.__name__, MODEL_CLASS)
