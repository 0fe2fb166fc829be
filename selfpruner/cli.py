"""`selfpruner` command line: the headless face of the core, rendering its events with rich."""
from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)  # one error = one line, however long
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes get whole rows, not 80-col wraps


class UserError(Exception):
    """Anything whose message alone tells the user what to fix."""


def _user_errors():
    from selfpruner.core.config import ConfigError
    from selfpruner.core.models import ModelLoadError
    from selfpruner.core.proposers.base import ProposerError
    from selfpruner.core.store import StoreError
    # sqlite3.Error: a session DB that passed the checks on opening and failed later (damaged in a page not read then)
    return (UserError, ConfigError, ModelLoadError, ProposerError, StoreError, FileNotFoundError, sqlite3.Error)


# ---- rendering of core events ---------------------------------------------------------------------
class ProgressRenderer:
    """Subscribes to the core's events and draws progress bars plus one line per notable event."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 transient=True)
        self.gen_task = self.progress.add_task("setup", total=None, info="")
        self.eval_task = self.progress.add_task("fitness", total=None, info="", visible=False)
        self.best = math.inf

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, ev) -> None:
        from selfpruner.core import events as E
        p = self.progress
        if isinstance(ev, E.Stage):
            p.update(self.gen_task, description=ev.name, total=ev.total or None, completed=ev.done,
                     info=ev.message[:60] if ev.message else p.tasks[0].fields.get("info", ""))
        elif isinstance(ev, E.SessionStarted):
            console.print(f"session [bold]{ev.session_id}[/] → {ev.path}" + (" (resumed)" if ev.resumed else ""))
        elif isinstance(ev, E.GenerationStarted):
            p.update(self.gen_task, description=f"generation {ev.generation}", total=ev.n_candidates,
                     completed=0, info="")
        elif isinstance(ev, E.EvalProgress):
            p.update(self.eval_task, visible=True, total=ev.total, completed=ev.done,
                     description=f"candidate {ev.candidate_id}")
        elif isinstance(ev, E.CandidateEvaluated):
            if ev.final:  # an early --race stage scores on fewer tokens: not comparable
                self.best = min(self.best, ev.fitness)
            p.advance(self.gen_task)
            p.update(self.gen_task, info=f"best {self.best:.4g}")
            if self.verbose:
                console.print(f"  #{ev.id} {ev.origin:<9} {ev.fitness:10.3f} on {ev.budget_tokens} tokens "
                              f"({ev.eval_s:.1f}s" + (", cached)" if ev.cached else ")"))
        elif isinstance(ev, E.WorkerState):
            if ev.state == "dead" or (self.verbose and ev.state != "evaluating"):
                console.print(f"  worker {ev.worker} {ev.state}" + (f" on {ev.where}" if ev.where else ""))
        elif isinstance(ev, E.LLMCall):
            r = ev.record
            status = f"[red]{r.error}[/]" if r.error else f"kept {r.parsed}, repaired {r.repaired}"
            console.print(f"  LLM {r.proposer} {r.phase} try {r.attempt}: {status} ({r.latency_s:.1f}s)")
        elif isinstance(ev, E.GenerationFinished):
            console.print(f"generation {ev.generation}: best ppl {ev.best:.3f}, mean {ev.mean:.3f}")
        elif isinstance(ev, E.MetricEvaluated):
            self.best = min(self.best, ev.fitness)
            p.advance(self.gen_task)
            p.update(self.gen_task, info=f"best ppl {self.best:.2f}")
            if self.verbose:
                console.print(f"  {ev.origin:<9} ppl {ev.fitness:10.3f} {ev.canonical}")


def _run_with_signals(run, control):
    """Ctrl-C or SIGTERM asks the search to stop cleanly at the next evaluation or LLM-call boundary (everything
    stays stored, the session is marked stopped and resumes exactly); a second one aborts."""
    import signal

    def handler(signum, frame):
        if control.stopped:
            raise KeyboardInterrupt
        console.print("[yellow]stopping after the evaluation in flight... (Ctrl-C again to abort)[/]")
        control.stop()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# ---- commands -----------------------------------------------------------------------------------
def cmd_search(args) -> int:
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.session import resume_config, start_search

    if args.no_mutation and args.no_crossover:
        raise UserError("--no-mutation and --no-crossover together leave no operator")
    settings = _search_settings(args)
    if args.resume:
        # only what the user typed counts as a change; every other setting comes from the session
        defaults = _search_settings(build_parser().parse_args(["search"]))
        typed = {k: v for k, v in settings.items() if v != defaults[k]}
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
    return dict(model=args.model, beta=args.ratio, proposer=args.proposer, proposer_model=args.proposer_model,
                replay_from=args.replay_from, population=args.population, mutations=args.mutations,
                crossovers=args.crossovers, generations=args.generations, lo=args.lo, hi=args.hi,
                budget_tokens=args.budget_tokens, seq_len=args.seq_len, calib_tokens=args.calib_tokens,
                final_tokens=args.final_tokens, final_eval=not args.no_final, init=args.init,
                ablation="no-mutation" if args.no_mutation else "no-crossover" if args.no_crossover else "none",
                selection=args.selection, max_retries=args.max_retries, temperature=args.temperature,
                llm_threads=args.llm_threads, seed=args.seed, data=args.data, bos=args.bos, base_url=args.base_url,
                llm_concurrency=args.llm_concurrency, decimals=args.decimals, compensate=args.compensate,
                prompt_sensitivity=args.prompt_sensitivity, prompt_fitness=args.prompt_fitness,
                fitness=args.fitness, kl_k=args.kl_k, importance=args.importance,
                vllm_gpu_share=args.vllm_gpu_share, race=args.race, workers=args.workers,
                ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker, **_placement(args))


def _placement(args) -> dict:
    """--device/--dtype/--device-map/--batch-size as SearchConfig / MetricRun fields."""
    return dict(device=args.device, dtype=args.dtype, device_map=args.device_map, batch_size=args.batch_size)


def _typed_placement(args) -> dict:
    """The placement options the user gave (what a replay or export may take over the session's)."""
    return {k: v for k, v in _placement(args).items() if v not in ("auto", None)}


def _print_shares(store) -> None:
    from selfpruner.core.session_summary import proposal_shares, shares_line
    sh = proposal_shares(store)
    if sh:
        out.print(("[yellow]" if sh["weak"] else "") + shares_line(sh) + ("[/]" if sh["weak"] else ""),
                  highlight=False)


def _print_result(store, result) -> None:
    s = store.session()
    out.print(f"[bold]{result.status}[/]: session {s['id']} ({store.path})")
    _print_shares(store)
    if result.best_rates is not None:
        out.print(f"best candidate #{result.best_id}: search ppl {result.best_fitness:.3f}"
                  + (f", final ppl {result.final_ppl:.3f}" if result.final_ppl is not None else ""))
        out.print("rates: " + json.dumps([round(r, 5) for r in result.best_rates]))
    if result.status == "stopped":
        out.print(f"resume with: selfpruner search --resume {s['id']}")


def cmd_baseline(args) -> int:
    from selfpruner.core.baseline_run import run_baseline
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import EventBus

    cfg = SearchConfig(model=args.model, beta=args.ratio, proposer="numeric", budget_tokens=args.budget_tokens,
                       seq_len=args.seq_len, calib_tokens=args.calib_tokens, final_tokens=args.final_tokens,
                       lo=args.lo, hi=args.hi, data=args.data, bos=args.bos, compensate=args.compensate,
                       importance=args.importance,
                       **_placement(args), sessions_dir=args.sessions_dir).validate()
    bus = EventBus()
    with ProgressRenderer() as renderer:
        bus.subscribe(renderer)
        res = run_baseline(cfg, args.method, bus=bus, lam=args.owl_lambda, m=args.owl_m)
    out.print(f"{args.method} at ratio {cfg.beta}: search ppl {res['search_ppl']:.3f}, "
              f"final ppl {res['final_ppl']:.3f} ({res['final_tokens']} tokens), session {res['session_id']}")
    out.print("rates: " + json.dumps([round(r, 5) for r in res["rates"]]))
    return 0


def cmd_sessions(args) -> int:
    from selfpruner.core.store import list_sessions
    rows = list_sessions(args.sessions_dir)
    if not rows:
        out.print(f"no sessions in {args.sessions_dir}/")
        return 0
    t = Table("id", "kind", "status", "model", "β", "proposer", "best", "final", "gens", "created")
    for r in rows:
        if r["error"]:
            t.add_row(r["id"], "?", "[red]unreadable[/]", r["error"][:50], "", "", "", "", "", "")
            continue
        t.add_row(r["id"], r["kind"], r["status"], (r["model"] or "")[:28], _f(r["beta"], 2), r["proposer"] or "",
                  _f(r["best_fitness"]), _f(r["final_ppl"]), str(r["generations"]),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])))
    out.print(t)
    return 0


def _f(x, nd=3) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _status_line(st, status: str) -> str:
    from selfpruner.core.run_lock import holder_text, shown_status
    shown = shown_status(st.path, status)
    if shown == "running":
        return f"running (by {holder_text(st)})"
    if shown == "died":
        return f"died (its process is gone; continue it with: selfpruner search --resume {st.path.stem})"
    return shown


def cmd_show(args) -> int:
    from selfpruner.core.store import Store, resolve_session
    st = Store(resolve_session(args.session, args.sessions_dir), readonly=True)
    s = st.session()
    out.print(f"[bold]{s['id']}[/] {s['kind']} search, status {_status_line(st, s['status'])}")
    out.print(f"model {s['model_name']} (fingerprint {s['model_fingerprint']}), data {s['data_source']}")
    if s.get("calib_key"):
        bos = s.get("bos_token")
        out.print(f"calibration {s['calib_key']}, " + (f"BOS token {bos} at every window" if bos is not None
                                                        else "no BOS token"))
    cfg = s["config"]
    if s["kind"] in ("layer", "baseline"):
        out.print(f"fitness {cfg.get('fitness', 'ppl')}, importance {cfg.get('importance', 'wanda-sp')}, "
                  f"bias compensation {'on' if cfg.get('compensate') else 'off'}"
                  + (f", race {cfg['race']}" if cfg.get("race") else ""))
    out.print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    gens = st.generations()
    if gens:
        t = Table("generation", "best ppl", "mean ppl", "population")
        for g in gens:
            t.add_row(str(g["generation"]), _f(g["best"]), _f(g["mean"]), str(len(g["population"])))
        out.print(t)
    calls = st.calls()
    if calls:
        errs = sum(1 for c in calls if c["error"])
        lat = sum(c["latency_s"] or 0 for c in calls)
        out.print(f"LLM calls: {len(calls)} ({errs} with errors), {lat:.1f}s in total")
    _print_shares(st)
    for r in st.results():
        out.print(f"result {r['kind']}/{r['name']}: " + json.dumps(r["payload"])[:400])
    if s["best_candidate"] is not None:
        best = next(c for c in st.candidates() if c["id"] == s["best_candidate"])
        out.print(f"best candidate #{best['id']} ({best['origin']}, gen {best['generation']}): search ppl "
                  f"{_f(s['best_fitness'])}, final ppl {_f(s['final_ppl'])}")
        out.print("rates: " + json.dumps(best["rates"]))
    if args.json:
        out.print_json(json.dumps({"session": s, "generations": gens}, default=str))
    st.close()
    return 0


def cmd_report(args) -> int:
    from selfpruner.core.report import build_report
    from selfpruner.core.store import resolve_session

    page = build_report([resolve_session(ref, args.sessions_dir) for ref in args.session], args.out)
    out.print(f"report of {len(args.session)} session(s): {page}")
    return 0


def cmd_replay(args) -> int:
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.search.self_pruner import compare_trajectories
    from selfpruner.core.session import replay_session
    from selfpruner.core.store import Store

    bus, control = EventBus(), Control()
    with ProgressRenderer(args.verbose) as renderer:
        bus.subscribe(renderer)
        search, path = replay_session(args.session, args.sessions_dir, bus=bus, control=control,
                                      final_eval=not args.no_final, overrides=_typed_placement(args))
        result = _run_with_signals(search.run, control)
    diffs = compare_trajectories(Store(path, readonly=True), search.store)
    _print_result(search.store, result)
    if diffs:
        out.print(f"[red]replay diverged[/] from {path.stem}: " + "; ".join(diffs[:10]))
        return 4
    out.print(f"[green]replay reproduced[/] the stored trajectory of {path.stem} "
              f"({len(search.store.candidates())} candidates re-read from the stored replies, bit-identical fitness)")
    return 0


def cmd_export(args) -> int:
    from selfpruner.core.session_export import export_session_candidate

    with ProgressRenderer():
        where = _typed_placement(args)
        info = export_session_candidate(args.session, args.out, sessions_dir=args.sessions_dir,
                                        candidate=args.candidate, dtype=args.dtype, overwrite=args.overwrite,
                                        device=args.device if {"device", "device_map"} & set(where) else None,
                                        device_map=args.device_map)
    out.print(f"exported candidate #{info['candidate']} of {info['session']} to {info['out_dir']}: "
              f"{info['params']:,} parameters (dense {info['dense_params']:,}), prunable sparsity "
              f"{info['achieved_sparsity']:.4f}")
    out.print("load it with: import selfpruner.core.export; AutoModelForCausalLM.from_pretrained(DIR) "
              "(or trust_remote_code=True without selfpruner)")
    return 0


def cmd_eval(args) -> int:
    from selfpruner.core.lm_eval_bridge import PAPER_TASKS, TaskUnavailable, evaluate_dir
    from selfpruner.core.session_summary import record_for_model_dir

    tasks = args.tasks.split(",") if args.tasks else list(PAPER_TASKS)
    try:
        res = evaluate_dir(args.model_dir, tasks, limit=args.limit, batch_size=args.batch_size or _auto_batch(args),
                           num_fewshot=args.num_fewshot, include_path=args.include_path, device=args.device,
                           dtype=args.dtype, device_map=args.device_map)
    except TaskUnavailable as e:
        raise UserError(str(e)) from None
    t = Table("task", "metric", "value")
    for task, metrics in res.items():
        for m, v in metrics.items():
            t.add_row(task, m, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)
    payload = {"model_dir": str(args.model_dir), "tasks": tasks, "limit": args.limit,
               "num_fewshot": args.num_fewshot, "results": res}
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "lm_eval", ",".join(tasks), payload)
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def cmd_speed(args) -> int:
    import torch
    from selfpruner.core.export import load_pruned
    from selfpruner.core.models import load_model
    from selfpruner.core.session_summary import record_for_model_dir
    from selfpruner.core.speed import benchmark_vllm, compare, to_markdown, vllm_status

    if args.threads:
        torch.set_num_threads(args.threads)
    dense = load_model(args.dense, device=args.device, dtype=args.dtype, device_map=args.device_map).model
    pruned, _ = load_pruned(args.model_dir, dtype=args.dtype, device=args.device, device_map=args.device_map)
    report = compare({"dense": dense, "pruned": pruned}, baseline="dense", repeats=args.repeats,
                     clock=args.clock, prefill_len=args.prefill_len, decode_tokens=args.decode_tokens,
                     batch=args.batch_size or 1)
    out.print(to_markdown(report))
    if args.vllm:
        ok, why = vllm_status()
        if not ok:
            raise UserError(why)
        report["vllm"] = benchmark_vllm(args.model_dir)
        out.print_json(json.dumps(report["vllm"], default=str))
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "speed", str(args.model_dir),
                             json.loads(json.dumps(report, default=str)))
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def cmd_lora(args) -> int:
    from selfpruner.core.lora import recover_dir
    from selfpruner.core.session_summary import record_for_model_dir

    res = recover_dir(args.model_dir, args.out, steps=args.steps, seq_len=args.seq_len, lr=args.lr,
                      device=args.device, dtype=args.dtype, device_map=args.device_map, batch_size=args.batch_size or 1)
    out.print(f"LoRA r=8, {res.steps} steps: ppl {res.ppl_before:.3f} → {res.ppl_after:.3f}; saved to {args.out}")
    record_for_model_dir(args.model_dir, args.sessions_dir, "lora", str(args.out), res.to_dict())
    return 0


def cmd_metric_search(args) -> int:
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.metric_session import MetricRun, run_metric_session
    from selfpruner.core.search.pruner_zero import MetricSearchConfig

    cfg = MetricSearchConfig(model=args.model, population=args.population, iterations=args.iterations,
                             top_k=args.top_k, p_mutation=args.p_mutation, init_min_depth=args.min_depth,
                             init_max_depth=args.max_depth, max_depth=args.max_depth, sparsity=args.sparsity,
                             budget_tokens=args.budget_tokens, seq_len=args.seq_len, grad_tokens=args.grad_tokens,
                             operands=("W", "X") if args.no_gradients else ("W", "G", "X"),
                             llm_every=args.llm_every, seed=args.seed)
    run = MetricRun(calib_tokens=args.calib_tokens, final_tokens=args.final_tokens, data=args.data,
                    sessions_dir=args.sessions_dir, proposer=args.proposer, **_placement(args))
    bus, control = EventBus(), Control()
    with ProgressRenderer(args.verbose) as renderer:
        bus.subscribe(renderer)
        res = _run_with_signals(lambda: run_metric_session(cfg, run, bus=bus, control=control,
                                                           resume=args.resume), control)
    out.print(f"[bold]{res['status']}[/]: session {res['session_id']}, {res['evaluated']} metrics evaluated")
    out.print(f"best metric: {res['best']}  (search ppl {_f(res['best_fitness'])})")
    for name, r in res.get("final", {}).items():
        out.print(f"  final {name:<9} ppl {r['ppl']:10.3f}  {r['metric']}")
    return 0 if res["status"] == "finished" else 3


def cmd_prune(args) -> int:
    from selfpruner.core.metric_session import prune_with_metric
    from selfpruner.core.metrics.symbolic import ParseError

    if not 0 < args.sparsity < 1:
        raise UserError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    try:
        r = prune_with_metric(args.model, args.metric, args.sparsity, tokens=args.tokens,
                              calib_tokens=args.calib_tokens, seq_len=args.seq_len, data=args.data,
                              out_dir=args.out, **_placement(args))
    except ParseError as e:
        raise UserError(f"bad metric {args.metric!r}: {e}") from None
    out.print(f"{r['metric']} at sparsity {r['sparsity']:.4f}: ppl {r['dense_ppl']:.3f} → {r['pruned_ppl']:.3f} "
              f"({r['tokens']} test tokens)" + (f"; saved to {r['out_dir']}" if r["out_dir"] else ""))
    return 0


# ---- parser -------------------------------------------------------------------------------------
def _common(p):
    p.add_argument("--model", default=None, help="HF dir, hub id or .gguf (default: bundled gemma-3-270m)")
    p.add_argument("--ratio", "--beta", dest="ratio", type=float, default=0.3, help="mean pruning rate β in (0,1)")
    p.add_argument("--budget-tokens", type=int, default=None,
                   help="tokens per search-time fitness (default: one --seq-len window)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--final-tokens", type=int, default=None, help="final evaluation tokens (default: all)")
    p.add_argument("--importance", choices=["wanda-sp", "flap"], default="wanda-sp",
                   help="what orders a layer's heads and channels for removal (flap: Var(X)·||W||²)")
    p.add_argument("--compensate", action="store_true",
                   help="FLAP bias compensation: removed heads/channels leave their mean output as a bias")
    p.add_argument("--lo", type=float, default=0.0, help="lowest per-layer rate")
    p.add_argument("--hi", type=float, default=1.0, help="highest per-layer rate")
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    _bos(p)


def _auto_batch(args):
    """lm-eval's batch size for --batch-size auto: its own search on a GPU, one sequence on the CPU."""
    import torch
    return "auto" if args.device != "cpu" and (args.device_map or torch.cuda.is_available()) else 1


def _batch(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, not {text!r}")
    return int(text)


def _device_options() -> argparse.ArgumentParser:
    """Every command that loads a model: where it runs, in what precision, how many windows per forward."""
    from selfpruner.core.config import DEVICE_MAPS, DTYPES

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when visible, else CPU)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="weights (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--device-map", choices=DEVICE_MAPS, default=None,
                   help="spread a model larger than one GPU over all visible GPUs (accelerate)")
    g.add_argument("--batch-size", type=_batch, default=None, metavar="N|auto",
                   help="windows per forward (auto: as many as free GPU memory holds; 1 on the CPU)")
    return p


def _bos(p):
    p.add_argument("--bos", choices=["auto", "on", "off"], default="auto",
                   help="BOS token at the start of every window (auto: as the model's tokenizer does)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfpruner", description="LLM-driven structured pruning search")
    sessions = argparse.ArgumentParser(add_help=False)  # every command that reads or writes sessions
    sessions.add_argument("--sessions-dir", default=os.environ.get("SELFPRUNER_SESSIONS", "sessions"))
    device = _device_options()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("search", parents=[sessions, device], help="Self-Pruner layer-rate search")
    _common(p)
    p.add_argument("--proposer", default="llama-cpp", choices=["openai", "llama-cpp", "vllm", "numeric", "replay"])
    p.add_argument("--proposer-model", default=None, help="GGUF / OpenAI model / vLLM model for the proposer")
    p.add_argument("--replay-from", default=None, help="session to replay (with --proposer replay)")
    p.add_argument("-K", "--population", type=int, default=30)
    p.add_argument("-M", "--mutations", type=int, default=10)
    p.add_argument("-S", "--crossovers", type=int, default=10)
    p.add_argument("-N", "--generations", type=int, default=20)
    p.add_argument("--init", choices=["llm", "random"], default="llm", help="random = paper's ablation")
    p.add_argument("--no-mutation", action="store_true", help="ablation: M+S crossovers, no mutation")
    p.add_argument("--no-crossover", action="store_true", help="ablation: M+S mutations, no crossover")
    p.add_argument("--selection", choices=["llm", "inline"], default="llm",
                   help="llm: the LLM selects M parents first (Algorithm 1); inline: it cites parents as it writes")
    p.add_argument("--no-final", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--llm-threads", type=int, default=None, metavar="N",
                   help="llama-cpp threads (default: as many as torch uses; 1 on a box busy with other jobs)")
    p.add_argument("--fitness", choices=["ppl", "kl"], default="ppl",
                   help="search fitness: ppl, or KL from the dense model (EvoPress); the final score is ppl")
    p.add_argument("--kl-k", type=int, default=64, help="dense top-k log-probs kept for --fitness kl")
    p.add_argument("--race", default=None, metavar="TOKENS:N,...",
                   help="racing, e.g. 512:all,2048:4,8192:1: offspring on 512 tokens, the best 4 on 2048, the best 1 "
                        "on 8192 (joins the population); the last budget is the search budget")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="evaluate candidates on N Ray workers, each holding the model (pip install "
                        "'selfpruner[distributed]'); 0 = in this process")
    p.add_argument("--ray-address", default=None, metavar="ADDR|auto",
                   help="join a running Ray cluster instead of starting a local one")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs each Ray worker owns (default 1 where the cluster has GPUs); above 1 it spreads the "
                        "model over them with a device map")
    p.add_argument("--decimals", type=int, default=5, help="decimals of every rate (prompts and repair)")
    p.add_argument("--prompt-fitness", choices=["ppl", "rank"], default="ppl",
                   help="what the LLM sees of each population member: its ppl or its rank")
    p.add_argument("--prompt-sensitivity", action="store_true",
                   help="measure each layer's sensitivity once (n_layers evaluations) and show it in the prompts")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="--proposer openai against any OpenAI-compatible server (vllm serve, llama-cpp-python's "
                        "server, Ollama), e.g. http://127.0.0.1:8000/v1; no API key needed")
    p.add_argument("--llm-concurrency", type=int, default=4, metavar="N",
                   help="openai: requests in flight at once (a generation's mutation and crossover calls)")
    p.add_argument("--vllm-gpu-share", type=float, default=0.3, metavar="F",
                   help="vllm: fraction of the GPU's memory the proposer takes (the pruned model shares the rest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, metavar="SESSION", help="continue a stopped or killed session")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("baseline", parents=[sessions, device], help="evaluate uniform or OWL layer rates")
    _common(p)
    p.add_argument("--method", choices=["uniform", "owl", "flap"], default="uniform",
                   help="flap: FLAP's global adaptive structure (standardised fluctuation scores)")
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.set_defaults(fn=cmd_baseline)

    p = sub.add_parser("sessions", parents=[sessions], help="list stored sessions")
    p.set_defaults(fn=cmd_sessions)

    p = sub.add_parser("show", parents=[sessions],
                       help="a session's best config and per-generation fitness")
    p.add_argument("session")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("report", parents=[sessions],
                       help="an HTML page with plots (PNG and SVG) of one or more sessions, offline")
    p.add_argument("session", nargs="+")
    p.add_argument("--out", required=True, help="directory for index.html and its figures")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("replay", parents=[sessions, device],
                       help="re-run a session with its stored proposer answers and compare")
    p.add_argument("session")
    p.add_argument("--no-final", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("metric-search", parents=[sessions, device],
                       help="Pruner-Zero: evolve a symbolic pruning metric")
    p.add_argument("--model", default=None)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--p-mutation", type=float, default=0.5)
    p.add_argument("--min-depth", type=int, default=3)
    p.add_argument("--max-depth", type=int, default=5)
    p.add_argument("--budget-tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--grad-tokens", type=int, default=4096)
    p.add_argument("--no-gradients", action="store_true", help="search over W and X only")
    p.add_argument("--final-tokens", type=int, default=4096)
    p.add_argument("--proposer", choices=["llama-cpp"], default=None, help="let an LLM write metrics too")
    p.add_argument("--llm-every", type=int, default=0, help="ask the LLM every N iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    p.add_argument("--resume", default=None, metavar="SESSION")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_metric_search)

    p = sub.add_parser("prune", parents=[device], help="apply any metric as unstructured pruning")
    p.add_argument("--metric", required=True, help='e.g. "mul(abs(W), X)" or "|W| * X"')
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=4096, help="test tokens for the ppl report")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    p.add_argument("--out", default=None, help="save the pruned (same-shape, zeroed) model here")
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser("export", parents=[sessions, device],
                       help="save the physically smaller model of a session's best candidate",
                       description="The model loads in the session's dtype, where it ran (or --device); --dtype "
                                   "is that of the saved weights (auto: the session's).")
    p.add_argument("session")
    p.add_argument("--out", required=True)
    p.add_argument("--candidate", type=int, default=None, help="candidate id (default: the best)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", parents=[sessions, device],
                       help="zero-shot accuracy of a saved model through lm-eval")
    p.add_argument("model_dir")
    p.add_argument("--tasks", default=None, help="comma list of lm-eval tasks or task YAML files "
                                                 "(default: the paper's seven)")
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--include-path", default=None)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("speed", parents=[sessions, device],
                       help="parameters, memory and tokens/s of a saved model vs dense")
    p.add_argument("model_dir")
    p.add_argument("--dense", default=None, help="the dense model spec (default: bundled)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--vllm", action="store_true", help="also measure with vLLM (GPU box, .[gpu] extra)")
    p.set_defaults(fn=cmd_speed)

    p = sub.add_parser("lora", parents=[sessions, device],
                       help="optional LoRA (r=8) recovery of a saved model on local text")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.set_defaults(fn=cmd_lora)
    return ap


def _show_core_warnings() -> None:
    """The core logs what the user should know but need not act on (e.g. WikiText-2 falling back to the
    local copy): show its WARNING-and-up records as one line each on stderr, above any progress bar."""
    import logging

    from rich.text import Text

    class OneLine(logging.Handler):
        def emit(self, record):
            msg = record.getMessage().strip()
            msg = msg.splitlines()[0] if msg else record.name
            style = "red" if record.levelno >= logging.ERROR else "yellow"
            console.print(Text.assemble((f"{record.levelname.lower()}: ", style), msg))

    logger = logging.getLogger("selfpruner")
    if not any(type(h).__name__ == "OneLine" for h in logger.handlers):
        logger.addHandler(OneLine(logging.WARNING))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _show_core_warnings()
    try:
        return args.fn(args)
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        console.print(f"[red]error:[/] {escape(msg)}", highlight=False)  # a message may hold [brackets]
        return 2
    except KeyboardInterrupt:
        console.print("[red]aborted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
