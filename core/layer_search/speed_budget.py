"""--target-speedup: the session's speed budget, from the engine's cost table (stored with the session, so a resume
and a replay, which copies its source's, predict with the very table the search began with), and the uniform rate
that meets it."""
from __future__ import annotations

from ..config import SearchConfig
from ..cost_table import CostTable, SpeedBudget, Workload, uniform_rate_for
from ..events import EventBus, Stage
from ..plans import LayerGrain, plans
from ..store import Store


def workload_for(cfg: SearchConfig) -> Workload:
    """The requests the table times: llama.cpp runs the f16 GGUF export, transformers the session's dtype (which a
    session pins before this is asked)."""
    return Workload(weights="f16" if cfg.engine == "llama-cpp" else cfg.dtype, threads=cfg.engine_threads)


def session_speed(cfg: SearchConfig, store: Store, bench, bus: EventBus | None = None) -> SpeedBudget | None:
    """The budget of a --target-speedup session: its stored table, or one measured now (cached per settings)."""
    if cfg.target_speedup is None:
        return None
    stored = store.results("cost-table")
    if not stored and cfg.replay_from:  # a replay predicts with its source's table, wherever it runs
        with Store(cfg.replay_from, readonly=True) as src:
            stored = src.results("cost-table")
        if stored:
            store.add_result("cost-table", cfg.engine, stored[0]["payload"])
    if stored:
        table = CostTable.from_dict(stored[0]["payload"])
    else:
        from ..results.cost_probes import cost_table  # measuring runs the engine

        def progress(done: int, total: int, what: str) -> None:
            if bus is not None:
                bus.emit(Stage("cost table", f"{cfg.engine}: probe {what}", done, total))

        table = cost_table(bench.lm, cfg.engine, workload_for(cfg), progress=progress)
        store.add_result("cost-table", cfg.engine, table.to_dict())
    return SpeedBudget(table, cfg.target_speedup, cfg.objective)


def nominal_beta(speed: SpeedBudget, grain: LayerGrain, n_layers: int, lo: float, hi: float, decimals: int) -> float:
    """The uniform rate (at `decimals`) whose plans meet the budget: where references, random vectors and the
    prompts' mean centre."""
    genes = 2 if grain.attention_genes else 1
    rate = uniform_rate_for(lambda r: speed.speedup(plans(grain, [r] * (n_layers * genes))), speed.target, lo, hi)
    return min(hi, round(rate + 0.5 * 10 ** -decimals, decimals))
