"""Zero-shot accuracy through lm-eval's Python API, on an in-memory model (resident, exported or reloaded).

`evaluate_tasks(model, tokenizer, tasks)` wraps the model in lm-eval's `HFLM(pretrained=<model object>)` so
our custom `selfpruner_*` classes (and the masked resident model) are evaluated as they are, with no reload
by name. A task is one of:
  * an lm-eval task name, e.g. the paper's seven (`PAPER_TASKS`); their data comes from the HF hub (or
    its local cache), so offline they fail with one `TaskUnavailable` line naming the task;
  * a path to an lm-eval task YAML for local data (`dataset_path: json`, `dataset_kwargs.data_files`);
    relative data_files are resolved against the YAML's directory (see tests/data/tiny_facts.yaml);
  * a task config dict, as lm-eval accepts.
Results are `{task: {metric: value}}`, metric names without lm-eval's ",none" filter suffix.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError

PAPER_TASKS = ("winogrande", "hellaswag", "boolq", "arc_easy", "arc_challenge", "openbookqa", "piqa")


class TaskUnavailable(UserError, RuntimeError):
    """A task whose definition or data cannot be loaded; the message is one line for the user."""


def local_task_config(yaml_path) -> dict:
    """An lm-eval task dict from a YAML file, with relative `data_files` made absolute.

    Only plain YAML is supported here (no `!function` tags): local tasks are data + templates.
    """
    import yaml

    path = Path(yaml_path).expanduser().resolve()
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        def absolute(f):
            return str(f) if Path(f).is_absolute() else str(path.parent / f)
        if isinstance(files, dict):
            files = {split: ([absolute(x) for x in f] if isinstance(f, list) else absolute(f))
                     for split, f in files.items()}
        elif isinstance(files, list):
            files = [absolute(f) for f in files]
        else:
            files = absolute(files)
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": files}
    return cfg


def _spec(task):
    if isinstance(task, dict):
        return task, task.get("task", "custom")
    text = str(task)
    if text.endswith((".yaml", ".yml")):
        cfg = local_task_config(text)
        return cfg, cfg.get("task", Path(text).stem)
    return text, text


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__


def load_tasks(tasks: Sequence, *, include_path=None):
    """({name: lm-eval Task}, TaskManager): each task (and its data) is loaded separately so a failure
    names its task."""
    from lm_eval.tasks import TaskManager

    specs = [_spec(t) for t in tasks]
    # Indexing lm-eval's ~10k built-in task YAMLs takes seconds; skip it when every task is local.
    needs_index = include_path is not None or any(isinstance(spec, str) for spec, _ in specs)
    manager = TaskManager(include_path=[str(p) for p in include_path] if include_path else None,
                          include_defaults=needs_index)
    loaded = {}
    for spec, name in specs:
        try:
            got = manager.load([spec])["tasks"]
        except Exception as e:  # datasets raises many types (offline, not found, connection)
            raise TaskUnavailable(
                f"lm-eval task {name!r}: cannot load its definition or data ({_first_line(e)})") from None
        if not got:
            raise TaskUnavailable(f"lm-eval task {name!r}: unknown task")
        loaded.update(got)
    return loaded, manager


def _metrics(task_result: dict) -> dict[str, float]:
    out = {}
    for key, value in task_result.items():
        if key == "alias" or not isinstance(value, (int, float)):
            continue
        key = key.split(",")[0]
        out["n" if key == "sample_len" else key] = float(value)
    return out


def evaluate_tasks(model, tokenizer, tasks: Sequence, *, limit: int | float | None = None, batch_size: int = 1,
                   num_fewshot: int = 0, include_path=None, max_length: int | None = None,
                   quiet: bool = True) -> dict[str, dict[str, float]]:
    """Zero-shot (by default) lm-eval metrics of `model` on `tasks`; see the module docstring."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if quiet:
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.WARNING)
    loaded, manager = load_tasks(tasks, include_path=include_path)
    # backend="causal": lm-eval cannot tell from a custom model_type that it is a causal LM.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(loaded.values()), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=1000)
    return {name: _metrics(res["results"][name]) for name in loaded if name in res["results"]}


def evaluate_dir(path, tasks: Sequence, *, device: str | None = None, dtype: str | None = None,
                 device_map: str | None = None, **kwargs) -> dict[str, dict[str, float]]:
    """Metrics of a saved (exported or stock) model directory, loaded as export.load_pruned places it."""
    from .export import load_pruned

    model, tokenizer = load_pruned(path, dtype=dtype, device=device, device_map=device_map)
    return evaluate_tasks(model, tokenizer, tasks, **kwargs)
