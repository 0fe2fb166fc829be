"""lm-eval bridge on the offline local task (tests/data/tiny_facts.yaml + .jsonl)."""
import json
from pathlib import Path

import pytest
import torch

from selfpruner.core.model.calibration import collect_stats
from selfpruner.core.model.models import LoadedModel, describe_model
from selfpruner.core.model.structured import StructuredPruner
from selfpruner.core.results.export import build_pruned
from selfpruner.core.results.lm_eval_bridge import PAPER_TASKS, TaskUnavailable, evaluate_tasks, local_task_config

from conftest import make_tiny

TASK = Path(__file__).parent / "data" / "tiny_facts.yaml"
N_ITEMS = sum(1 for line in (TASK.parent / "tiny_facts.jsonl").read_text().splitlines() if line.strip())


def test_local_task_config_makes_data_files_absolute():
    cfg = local_task_config(TASK)
    path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert path.is_absolute() and path.is_file()
    assert cfg["dataset_path"] == "json" and cfg["task"] == "selfpruner_tiny_facts"
    assert len(PAPER_TASKS) == 7


def _check(metrics):
    m = metrics["selfpruner_tiny_facts"]
    assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["acc_norm"] <= 1.0
    assert m["n"] == N_ITEMS
    return m


def test_tiny_dense_and_pruned_models_get_metrics(tiny_tokenizer):
    model = make_tiny("llama", tiny_tokenizer)
    arch = describe_model(model)
    windows = torch.randint(0, len(tiny_tokenizer), (4, 32), generator=torch.Generator().manual_seed(1))
    pruner = StructuredPruner(model, arch, collect_stats(model, arch, windows))
    small = build_pruned(LoadedModel(model, tiny_tokenizer, arch, "tiny", "t"), pruner, [0.9] * 4)
    dense = _check(evaluate_tasks(model, tiny_tokenizer, [TASK]))
    pruned = _check(evaluate_tasks(small, tiny_tokenizer, [str(TASK)]))
    # the masked resident model goes through the same path as an exported one
    with pruner.applied([0.9] * 4):
        masked = _check(evaluate_tasks(model, tiny_tokenizer, [local_task_config(TASK)]))
    assert masked == pruned
    assert set(dense) == set(pruned)


def test_unreachable_task_fails_with_one_line(tiny_tokenizer):
    model = make_tiny("llama", tiny_tokenizer)
    bad = {**local_task_config(TASK), "task": "unreachable_task", "dataset_path": "selfpruner-test/no-such-dataset",
           "dataset_kwargs": None}
    with pytest.raises(TaskUnavailable) as e:
        evaluate_tasks(model, tiny_tokenizer, [bad])
    msg = str(e.value)
    assert "unreachable_task" in msg and "\n" not in msg


@pytest.mark.slow
def test_bundled_dense_beats_heavily_pruned(bundled):
    from selfpruner.core.model.data import load_token_data

    data = load_token_data(bundled.tokenizer, calib_tokens=2048, source="local")
    stats = collect_stats(bundled.model, bundled.arch, data.windows("calib", 128, 256))
    pruner = StructuredPruner(bundled.model, bundled.arch, stats)
    dense = _check(evaluate_tasks(bundled.model, bundled.tokenizer, [TASK], batch_size=8))
    with pruner.applied([0.9] * bundled.arch.n_layers):
        pruned = _check(evaluate_tasks(bundled.model, bundled.tokenizer, [TASK], batch_size=8))
    print(f"tiny_facts acc: dense {dense['acc']:.3f}, 90% pruned {pruned['acc']:.3f}")
    assert dense["acc"] > pruned["acc"]


PIQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "piqa"


def test_piqa_task_joins_items_with_their_labels(tmp_path):
    from selfpruner.core.results.lm_eval_bridge import piqa_task, resolve_tasks
    cfg = piqa_task(PIQA, limit_items=5)
    rows = [json.loads(x) for x in Path(cfg["dataset_kwargs"]["data_files"]["validation"]).read_text().splitlines()]
    golds = [int(x) for x in (PIQA / "valid-labels.lst").read_text().split()[:5]]
    assert [r["label"] for r in rows] == golds and rows[0]["goal"].startswith("How do I ready a guinea pig cage")
    assert cfg["doc_to_text"] == "Question: {{goal}}\nAnswer:" and cfg["doc_to_choice"] == "{{[sol1, sol2]}}"
    assert resolve_tasks(["piqa", "winogrande"], None) == ["piqa", "winogrande"]  # the hub task by default
    assert resolve_tasks(["piqa", "winogrande"], PIQA)[1] == "winogrande"
    with pytest.raises(TaskUnavailable, match="PIQA data not found") as e:
        piqa_task(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_piqa_offline_on_smollm2_by_name():
    """`eval smollm2 --tasks piqa --data-dir` in process: the model by its search name, PIQA from local files
    (a 50-item slice; the dense instruct model is well above chance on it)."""
    from selfpruner.core.results.lm_eval_bridge import evaluate_dir, resolve_tasks
    res = evaluate_dir("smollm2", resolve_tasks(["piqa"], PIQA), limit=50, device="cpu")
    assert res["piqa"]["n"] == 50 and 0.55 <= res["piqa"]["acc"] <= 0.85 and "acc_norm" in res["piqa"]
