"""search, baseline and replay: the commands that run a layer-rate search (or its one-shot peers)."""
from __future__ import annotations

import json

from selfpruner.core.config import Cluster, Data, Evolution, Fitness, Placement, Proposing, Pruning, SpeedTarget
from selfpruner.core.errors import UserError

from .common import ProgressRenderer, _print_shares, _run_with_signals, _typed_placement, out
from .options import settings_from, typed_settings

# The parts a search takes from its own options (Placement comes with every command that loads a model).
SEARCH_PARTS = (Pruning, Data, Fitness, Evolution, Proposing, Cluster, SpeedTarget)
# A baseline takes what is pruned (but the decimals of an LLM's answers), the text and these two budgets.
BASELINE_FITNESS = ("budget_tokens", "final_tokens")


def cmd_search(args) -> int:
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import resume_config, start_search

    if args.no_mutation and args.no_crossover:
        raise UserError("--no-mutation and --no-crossover together leave no operator")
    settings = _search_settings(args)
    if args.resume:
        # only what the user typed counts as a change (whatever its value); the rest comes from the session
        typed = typed_settings(args, *SEARCH_PARTS, Placement)
        if args.no_mutation or args.no_crossover:
            typed["ablation"] = settings["ablation"]
        cfg, resume = resume_config(args.resume, args.sessions_dir, typed)
    else:
        resume = None
        cfg = SearchConfig(**settings, sessions_dir=args.sessions_dir)
    bus, control = EventBus(), Control()
    with ProgressRenderer(args.verbose) as renderer:
        bus.subscribe(renderer)
        search = start_search(cfg, bus=bus, control=control, resume=resume)
        result = _run_with_signals(search.run, control)
    _print_result(search.store, result)
    return 0 if result.status == "finished" else 3


def _search_settings(args) -> dict:
    ablation = "no-mutation" if args.no_mutation else "no-crossover" if args.no_crossover else "none"
    return settings_from(args, *SEARCH_PARTS, Placement) | {"ablation": ablation}


def _print_result(store, result) -> None:
    s = store.session()
    out.print(f"[bold]{result.status}[/]: session {s['id']} ({store.path})")
    _print_shares(store)
    if result.best_rates is not None:
        fit = s["config"].get("fitness") or "ppl"
        out.print(f"best candidate #{result.best_id}: search {fit} {result.best_fitness:.3f}"
                  + (f", final ppl {result.final_ppl:.3f}" if result.final_ppl is not None else ""))
        g = store.genes(result.best_rates)
        out.print("rates: " + json.dumps([round(r, 5) for r in g.layers]))
        if g.attention is not None:
            out.print("attention: " + json.dumps([round(a, 5) for a in g.attention]))
    if result.status == "stopped":
        out.print(f"resume with: selfpruner search --resume {s['id']}")


def cmd_baseline(args) -> int:
    from selfpruner.core.baselines.run import run_baseline
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import EventBus

    settings = settings_from(args, Pruning, Data, Placement, skip=("decimals",))
    settings |= settings_from(args, Fitness, only=BASELINE_FITNESS)
    cfg = SearchConfig(**settings, proposer="numeric", sessions_dir=args.sessions_dir).validate()
    bus = EventBus()
    with ProgressRenderer() as renderer:
        bus.subscribe(renderer)
        res = run_baseline(cfg, args.method, bus=bus, lam=args.owl_lambda, m=args.owl_m)
    out.print(f"{args.method} at ratio {cfg.beta}: search ppl {res['search_ppl']:.3f}, "
              f"final ppl {res['final_ppl']:.3f} ({res['final_tokens']} tokens), session {res['session_id']}")
    out.print("rates: " + json.dumps([round(r, 5) for r in res["rates"]]))
    return 0


def cmd_replay(args) -> int:
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.self_pruner import compare_trajectories
    from selfpruner.core.layer_search.session import replay_session
    from selfpruner.core.store import Store

    bus, control = EventBus(), Control()
    with ProgressRenderer(args.verbose) as renderer:
        bus.subscribe(renderer)
        search, path = replay_session(args.session, args.sessions_dir, bus=bus, control=control,
                                      final_eval=not args.no_final, overrides=_typed_placement(args))
        result = _run_with_signals(search.run, control)
    diffs = compare_trajectories(Store(path, readonly=True), search.store, rel_tol=args.rel_tol)
    _print_result(search.store, result)
    if diffs:
        out.print(f"[red]replay diverged[/] from {path.stem}: " + "; ".join(diffs[:10]))
        return 4
    same = "bit-identical fitness" if not args.rel_tol else f"fitness within {args.rel_tol:g} relative"
    out.print(f"[green]replay reproduced[/] the stored trajectory of {path.stem} "
              f"({len(search.store.candidates())} candidates re-read from the stored replies, {same})")
    return 0
