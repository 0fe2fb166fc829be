"""metric-search and prune: Pruner-Zero's symbolic metric search and applying one metric."""
from __future__ import annotations

from selfpruner.core.errors import UserError

from .common import ProgressRenderer, _f, _placement, _run_with_signals, out


def cmd_metric_search(args) -> int:
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.metric_search.pruner_zero import MetricSearchConfig
    from selfpruner.core.metric_search.session import MetricRun, run_metric_session

    cfg = MetricSearchConfig(model=args.model, population=args.population, iterations=args.iterations,
                             top_k=args.top_k, p_mutation=args.p_mutation, init_min_depth=args.min_depth,
                             init_max_depth=args.max_depth, max_depth=args.max_depth, sparsity=args.sparsity,
                             budget_tokens=args.budget_tokens, seq_len=args.seq_len, grad_tokens=args.grad_tokens,
                             operands=("W", "X") if args.no_gradients else ("W", "G", "X"),
                             llm_every=args.llm_every, race_top=args.race_top, race_tokens=args.race_tokens,
                             seed=args.seed)
    run = MetricRun(calib_tokens=args.calib_tokens, final_tokens=args.final_tokens, data=args.data,
                    sessions_dir=args.sessions_dir, proposer=args.proposer, proposer_model=args.proposer_model,
                    base_url=args.base_url, update=args.update, **_placement(args))
    bus, control = EventBus(), Control()
    with ProgressRenderer(args.verbose) as renderer:
        bus.subscribe(renderer)
        res = _run_with_signals(lambda: run_metric_session(cfg, run, bus=bus, control=control,
                                                           resume=args.resume, typed=args.typed), control)
    out.print(f"[bold]{res['status']}[/]: session {res['session_id']}, {res['evaluated']} metrics evaluated")
    out.print(f"best metric: {res['best']}  (search ppl {_f(res['best_fitness'])})")
    if res.get("raced") and res["raced"] != res["best"]:
        out.print(f"best after the race on more tokens: {res['raced']}")
    for name, r in res.get("final", {}).items():
        out.print(f"  final {name:<11} ppl {r['ppl']:10.3f}  {r['metric']}")
    return 0 if res["status"] == "finished" else 3


def cmd_prune(args) -> int:
    from selfpruner.core.metric_search.expr_parse import ParseError
    from selfpruner.core.metric_search.session import prune_with_metric
    from selfpruner.core.metric_search.unstructured import parse_pattern

    if not 0 < args.sparsity < 1:
        raise UserError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    if args.method == "metric" and not args.metric:
        raise UserError("--metric is needed with --method metric (e.g. --metric \"mul(abs(W), X)\"), "
                        "or use --method sparsegpt")
    try:
        parse_pattern(args.pattern)
    except ValueError as e:
        raise UserError(f"--pattern: {e}") from None
    try:
        r = prune_with_metric(args.model, args.metric, args.sparsity, tokens=args.tokens,
                              calib_tokens=args.calib_tokens, seq_len=args.seq_len, data=args.data,
                              out_dir=args.out, method=args.method, pattern=args.pattern, update=args.update,
                              **_placement(args))
    except ParseError as e:
        raise UserError(f"bad metric {args.metric!r}: {e}") from None
    how = f"pattern {r['pattern']}" if r["pattern"] else "sparsity"
    out.print(f"{r['metric']} at {how} {r['sparsity']:.4f}: ppl {r['dense_ppl']:.3f} → {r['pruned_ppl']:.3f} "
              f"({r['tokens']} test tokens)" + (f"; saved to {r['out_dir']}" if r["out_dir"] else ""))
    return 0
