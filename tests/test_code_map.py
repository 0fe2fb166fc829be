"""The map of the code in core/__init__.py stays true: each core package imports only the packages listed before
it, but for the five lazy imports the map names."""
import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"
ORDER = ["top", "model", "proposers", "layer_search", "metric_search", "baselines", "results"]
TOP = {"config", "errors", "types", "plans", "cost_table", "events", "store", "store_errors", "session_files",
       "run_lock", "steering"}
LAZY_BACKWARDS = {("config.py", "layer_search.racing"), ("model/models.py", "results"),
                  ("proposers/registry.py", "metric_search.metric_writers"), ("layer_search/workbench.py", "baselines.rates"),
                  ("layer_search/speed_budget.py", "results.cost_probes")}


def imports(path: Path):
    """(target module relative to core, imported inside a function) for every relative import of `path`."""
    here = list(path.relative_to(CORE).parts[:-1])
    for m in re.finditer(r"^(\s*)from (\.+)([\w.]*) import", path.read_text(), re.M):
        dots, name = len(m.group(2)), m.group(3)
        base = here[: len(here) - (dots - 1)] if dots > 1 else here
        yield ".".join(base + ([name] if name else [])), bool(m.group(1))


def package(module: str) -> str:
    first = module.split(".")[0]
    return "top" if first in TOP or first == "" else first


def test_core_packages_import_only_what_the_map_allows():
    assert sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(ORDER[1:])
    wrong = []
    for f in CORE.rglob("*.py"):
        rel = f.relative_to(CORE).as_posix()
        mine = "top" if "/" not in rel else rel.split("/")[0]
        for target, lazy in imports(f):
            theirs = package(target)
            if ORDER.index(theirs) <= ORDER.index(mine):
                continue
            if lazy and (rel, target) in LAZY_BACKWARDS:
                continue
            wrong.append(f"{rel} imports {target}")
    assert wrong == []
