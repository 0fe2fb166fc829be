"""cost-table: a model's per-layer costs on a serving engine, measured once and cached (what --target-speedup
predicts with)."""
from __future__ import annotations

import json

from .common import out


def cmd_cost_table(args) -> int:
    from selfpruner.core.cost_table import Workload, prediction_errors
    from selfpruner.core.model.models import load_model
    from selfpruner.core.results.cost_probes import check_table, cost_table, save_table

    def progress(done: int, total: int, what: str) -> None:
        out.print(f"[dim]{args.engine}: {what} ({done + 1}/{total})[/]", highlight=False)

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    weights = "f16" if args.engine == "llama-cpp" else str(lm.model.dtype).removeprefix("torch.")
    workload = Workload(prompt_len=args.prompt_len, decode_tokens=args.decode_tokens, threads=args.threads,
                        weights=weights)
    table = cost_table(lm, args.engine, workload, rounds=args.rounds, points=args.points, refresh=args.refresh,
                       progress=progress)
    fresh = None
    if args.check:
        fresh = check_table(lm, table, args.check, seed=args.check_seed, rounds=args.rounds, progress=progress)
        save_table(table)
    out.print(json.dumps(table.to_dict(), indent=1) if args.json else table.text(), highlight=False)
    for what, checks in (("", None), (" just checked", fresh)):
        if what and (not fresh or len(fresh) == len(table.checks)):
            continue  # the table's checks are this run's: said once
        for objective, (median, worst, n) in prediction_errors(table, checks).items():
            out.print(f"{objective}: prediction error over {n}{what} allocations: median {100 * median:.1f}%, max "
                      f"{100 * worst:.1f}%", highlight=False)
    return 0
