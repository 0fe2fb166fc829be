"""Start or resume a Pruner-Zero metric search session: model, statistics, gradients, store, events."""
from __future__ import annotations

import time
from dataclasses import field, fields, make_dataclass

from ..config import ConfigError, Placement, check_placement, check_stored_base_url, fresh_field
from ..events import Control, EventBus, MetricEvaluated, SearchFinished, SessionStarted, Stage
from ..layer_search.evaluator import Evaluator
from ..model.calibration import load_or_collect
from ..model.data import load_token_data
from ..model.evaluate import auto_batch_size, perplexity
from ..model.models import dtype_name, load_model
from ..proposers.base import ProposerError
from ..run_lock import RunLock, new_locked_session
from ..session_files import resolve_session
from ..steering import ControlPoller
from ..store import Store, StoreError
from .expr_parse import parse
from .expr_print import to_text
from .pruner_zero import MetricSearchConfig, run_metric_search
from .unstructured import UnstructuredPruner, parse_pattern


class _MetricRunBase:
    def __post_init__(self):
        check_placement(self.device, self.dtype, self.device_map, self.batch_size)


# A metric search's own settings, then where the model runs: Placement's fields, declared once in config.py (a new
# session stores the dtype it actually ran in).
MetricRun = make_dataclass("MetricRun", [
    ("calib_tokens", "int", field(default=16384)),
    ("final_tokens", "int | None", field(default=4096)),  # None = the whole test stream
    ("data", "str", field(default="auto")),
    ("sessions_dir", "str", field(default="sessions")),
    # an LLM that writes metrics too (proposers.registry.METRIC_PROPOSERS); None = GP
    ("proposer", "str | None", field(default=None)),
    # its GGUF (llama-cpp: a path or a bundled name) or model name (openai)
    ("proposer_model", "str | None", field(default=None)),
    ("base_url", "str | None", field(default=None)),  # openai: any OpenAI-compatible server; no API key needed
    # sparsegpt: the final model is the best metric's mask with SparseGPT's update of the kept weights, scored beside
    # SparseGPT alone (the search's fitness stays mask-only: an update per candidate costs a layer-by-layer pass)
    ("update", "str", field(default="none")),
    *[(f.name, f.type, fresh_field(f)) for f in fields(Placement)],
], bases=(_MetricRunBase,))
MetricRun.__module__ = __name__


# What a resumed metric search may take from the command line rather than from its session.
RUN_RESUMABLE = tuple(f.name for f in fields(Placement) if f.metadata["resume"])


def resumed_run(stored: dict, given: MetricRun, session_id: str, typed: frozenset = frozenset()) -> MetricRun:
    """The stored MetricRun with the placement settings the user typed (`typed`: their names, whatever their
    value); a dtype change is refused (sessions from before devices existed ran in float32)."""
    stored = {"dtype": "float32", **stored, "sessions_dir": given.sessions_dir}
    if "dtype" in typed and given.dtype not in ("auto", stored["dtype"]):
        raise ConfigError(f"--dtype cannot change when resuming session {session_id}: it ran in {stored['dtype']}, "
                          f"and {given.dtype} weights give other fitness values; start a new search instead")
    if stored.get("proposer") == "openai":
        check_stored_base_url(stored.get("base_url"), given.base_url, session_id)
    if given.base_url:  # the server may have moved since; what it answered is stored
        stored["base_url"] = given.base_url
    if "device" in typed:  # a device given on its own replaces the stored placement, device map included
        stored["device_map"] = given.device_map
    for k in RUN_RESUMABLE:
        if k in typed:
            stored[k] = getattr(given, k)
    return MetricRun(**stored)


def metric_proposer(run: MetricRun, cfg: MetricSearchConfig):
    """The metric search's LLM proposer (prompt -> text) that `run` names, from the one registry of proposers."""
    from ..proposers.registry import METRIC_PROPOSERS
    if run.proposer not in METRIC_PROPOSERS:
        raise ProposerError(f"unknown metric proposer {run.proposer!r}; choose one of {', '.join(METRIC_PROPOSERS)}")
    return METRIC_PROPOSERS[run.proposer].build(cfg, run)


class Workspace(Evaluator):
    """Fresh (never structurally permuted) model with calibration statistics and, if used, gradients. An
    Evaluator like the layer search's workbench: its candidate is (metric tree, sparsity), and its final
    evaluation is the shared one."""

    def __init__(self, cfg: MetricSearchConfig, run: MetricRun, bus: EventBus):
        bus.emit(Stage("load", f"loading {cfg.model or 'bundled gemma-3-270m'}"))
        self.lm = load_model(cfg.model, device=run.device, dtype=run.dtype, device_map=run.device_map)
        bus.emit(Stage("data", "tokenising WikiText-2"))
        self.data = load_token_data(self.lm.tokenizer, calib_tokens=run.calib_tokens, source=run.data)
        self.seq_len = cfg.seq_len
        windows = self.data.windows("calib", cfg.seq_len)
        bus.emit(Stage("calibrate", f"calibration pass over {windows.numel()} tokens"))
        self.stats, _, _ = load_or_collect(self.lm.model, self.lm.arch, self.lm.fingerprint, windows,
                                           batch_size=run.batch_size or auto_batch_size(self.lm.model, windows))
        grads = None
        if cfg.uses_gradients:
            from .gradients import load_or_collect_gradients
            bus.emit(Stage("gradients", f"gradients over {cfg.grad_tokens} calibration tokens"))
            grads, _ = load_or_collect_gradients(self.lm.model, self.lm.arch, self.lm.fingerprint,
                                                 self.data.windows("calib", cfg.seq_len, cfg.grad_tokens))
        self.pruner = UnstructuredPruner(self.lm.arch, self.stats, grads)
        # sized after the pruner's copy of the projections took its share of the GPU
        self.batch_size = run.batch_size or auto_batch_size(self.lm.model, windows)

    @property
    def dtype(self) -> str:
        return dtype_name(self.lm.dtype)

    def ppl(self, windows, should_stop=None, progress=None) -> float:
        return perplexity(self.lm.model, windows, should_stop=should_stop, progress=progress,
                          batch_size=self.batch_size)

    def fitness(self, candidate, budget_tokens: int, *, which: str = "search", should_stop=None, progress=None,
                **_) -> tuple[float, float]:
        """(ppl, seconds) of the model pruned by candidate = (metric tree, sparsity) on `budget_tokens` of `which`."""
        tree, sparsity = candidate
        windows = self.data.windows(which, self.seq_len, budget_tokens)
        t0 = time.perf_counter()
        with self.pruner.pruned_with(tree, sparsity):
            value = self.ppl(windows, should_stop=should_stop, progress=progress)
        return value, time.perf_counter() - t0

    def updated_ppl(self, metric: str | None, sparsity: float, tokens: int | None) -> float:
        """Held-out ppl after SparseGPT's update of the weights `metric` keeps (None: SparseGPT's own mask)."""
        self.pruner.apply_sparsegpt(self.lm.model, self.data.windows("calib", self.seq_len), sparsity,
                                    batch_size=self.batch_size, metric=metric)
        try:
            return self.ppl(self.test_windows(tokens))
        finally:
            self.pruner.restore()

    def fitness_fn(self, budget_tokens: int, sparsity: float, should_stop=None):
        """evaluate_fn for run_metric_search: a tree's search ppl at `sparsity`."""
        return lambda tree: self.fitness((tree, sparsity), budget_tokens, should_stop=should_stop)[0]

    def test_tokens(self, max_tokens: int | None) -> int:
        return self.test_windows(max_tokens).numel()

    def test_windows(self, tokens: int | None):
        """`tokens` of held-out test text (None: the whole stream) in seq_len windows."""
        return self.data.windows("test", self.seq_len, tokens and max(tokens, 1))


def run_metric_session(cfg: MetricSearchConfig, run: MetricRun, *, bus: EventBus, control: Control,
                       resume: str | None = None, typed: frozenset = frozenset()) -> dict:
    """A new metric search, or (`resume`) a stored one continued with the placement settings named in `typed`."""
    cfg.validate()
    lock = None
    try:
        if resume:
            path = resolve_session(resume, run.sessions_dir)
            store = Store(path)
            lock = RunLock(store).acquire()  # one runner per session, before the model loads
            s = store.session()
            if s["kind"] != "metric":
                raise StoreError(f"session {s['id']} is a {s['kind']} search, not a metric search")
            cfg = MetricSearchConfig.from_dict(s["config"]["search"])
            run = resumed_run(s["config"]["run"], run, s["id"], typed)
        proposer = metric_proposer(run, cfg) if run.proposer else None
        ws = Workspace(cfg, run, bus)
        if resume:
            if ws.lm.fingerprint != s["model_fingerprint"]:
                raise ConfigError(f"session {s['id']} was run on another model ({s['model_name']}, {run.dtype}) "
                                  f"than this run loaded ({ws.lm.name}, {ws.dtype})")
            store.update_session(status="running", config={"search": cfg.to_dict(), "run": run.__dict__})
            sid = s["id"]
        else:
            run.dtype = ws.dtype  # 'auto' resolves per box; the session records what it ran in
            store, lock = new_locked_session(run.sessions_dir, "metric",
                                             {"search": cfg.to_dict(), "run": run.__dict__}, model_name=ws.lm.name,
                                             model_fingerprint=ws.lm.fingerprint, data_source=ws.data.source,
                                             beta=cfg.sparsity, proposer=run.proposer or "gp")
            sid = store.session_id
    except BaseException:
        if lock is not None:
            lock.release("refused")
        raise
    outcome = "failed"
    # commands from other processes (core/steering.py); a metric search has no generations: stop-after-generation
    # stops at the next iteration
    control.poll = ControlPoller(store, control, lock.run_id)
    try:
        out = _run_metric(cfg, run, ws, store, sid, proposer, bus, control, resumed=bool(resume))
        outcome = out["status"]
        return out
    except BaseException as e:
        outcome = "failed" if isinstance(e, Exception) else "aborted"
        raise
    finally:
        lock.release(outcome)


def _run_metric(cfg: MetricSearchConfig, run: MetricRun, ws: Workspace, store: Store, sid: str, proposer,
                bus: EventBus, control: Control, resumed: bool) -> dict:
    bus.emit(SessionStarted(sid, str(store.path), cfg.to_dict(), ws.lm.arch.n_layers, resumed))
    previous = [{**r, "id": r["gp_id"]} for r in store.metric_candidates()]

    def on_candidate(c):
        row = c.to_dict()
        row["gp_id"] = row.pop("id")
        store.add_metric_candidate(**row)
        bus.emit(MetricEvaluated(c.id, c.iteration, c.expression, c.canonical, c.origin, c.fitness, c.eval_s))

    def on_call(rec):
        call_id = store.add_call(rec)
        from ..events import LLMCall
        bus.emit(LLMCall(call_id, rec))
        return call_id

    def on_reject(r):
        store.add_result("metric_rejection", r.reason, {"text": r.text, "detail": r.detail,
                                                         "iteration": r.iteration, "call_id": r.call_id})

    stop = lambda: control.checkpoint() or control.stopping_after_generation  # noqa: E731 - pause blocks here
    try:
        fitness = ws.fitness_fn(cfg.budget_tokens, cfg.sparsity, should_stop=lambda: control.stopped)
        res = run_metric_search(cfg, fitness,
                                on_candidate=on_candidate, should_stop=stop, proposer=proposer, on_call=on_call,
                                on_reject=on_reject, resume_from=previous)
    except Exception as e:
        store.mark_failed(e)
        raise
    out = {"session_id": sid, "status": res.status, "best": res.best.canonical if res.best else None,
           "best_fitness": res.best.fitness if res.best else None, "evaluated": res.n_evaluated}
    best = res.best.canonical if res.best else None
    if res.status == "finished" and res.best is not None and cfg.race_top > 1:
        best = _race(cfg, ws, store, res.population[: cfg.race_top], bus, control)
        out["raced"] = best
    if res.status == "finished" and res.best is not None and run.final_tokens != 0:
        bus.emit(Stage("final", "final evaluation of the best metric, Wanda and magnitude"))
        finals, tokens = {}, 0
        for name, text in (("best", best), ("wanda", "mul(abs(W), X)"), ("magnitude", "abs(W)")):
            ppl, _, tokens = ws.final_ppl((parse(text), cfg.sparsity), run.final_tokens)
            finals[name] = {"metric": text, "ppl": ppl}
        if run.update == "sparsegpt":
            for name, metric in (("best+update", best), ("sparsegpt", None)):
                bus.emit(Stage("final", f"{name}: SparseGPT's layer-by-layer update"))
                finals[name] = {"metric": f"{metric} + sparsegpt update" if metric else "sparsegpt",
                                "ppl": ws.updated_ppl(metric, cfg.sparsity, run.final_tokens)}
        out["final"] = finals
        store.add_result("final", "metric", {**finals, "tokens": tokens})
    store.update_session(status=res.status, best_fitness=out["best_fitness"],
                         final_ppl=out.get("final", {}).get("best", {}).get("ppl"))
    bus.emit(SearchFinished(res.status, None, out["best_fitness"], None, out.get("final", {}).get("best", {})
                            .get("ppl")))
    return out


def _race(cfg: MetricSearchConfig, ws: Workspace, store: Store, top, bus: EventBus, control: Control) -> str:
    """The best of `top` on cfg.race_budget search tokens (a resumed finished session reads its stored race)."""
    done = store.results("race")
    if done:
        return done[-1]["payload"]["best"]
    bus.emit(Stage("race", f"the best {len(top)} again on {cfg.race_budget} search tokens"))
    scores = []
    for c in top:
        ppl, _ = ws.fitness((c.tree, cfg.sparsity), cfg.race_budget, should_stop=lambda: control.stopped)
        scores.append({"metric": c.canonical, "search_fitness": c.fitness, "race_fitness": ppl})
    best = min(zip(scores, top), key=lambda sc: (sc[0]["race_fitness"], sc[1].id))[0]["metric"]
    store.add_result("race", "metric", {"tokens": ws.data.windows("search", ws.seq_len, cfg.race_budget).numel(),
                                        "candidates": scores, "best": best})
    return best


def prune_with_metric(model_spec: str | None, metric: str | None, sparsity: float, *, tokens: int | None = 4096,
                      calib_tokens: int = 16384, seq_len: int = 512, data: str = "auto",
                      out_dir: str | None = None, device: str = "auto", dtype: str = "auto",
                      device_map: str | None = None, batch_size: int | None = None, method: str = "metric",
                      pattern: str | None = None, update: str = "none") -> dict:
    """Prune with a metric (mask only; with `update="sparsegpt"` SparseGPT's update rebuilds the kept weights) or
    SparseGPT (`method="sparsegpt"`: its mask and update), per row at `sparsity` or N:M with `pattern` ("2:4");
    ppl before and after, optionally save the pruned model."""
    nm = parse_pattern(pattern)
    if method == "sparsegpt":
        tree, label = None, "sparsegpt"
    else:
        tree = parse(metric)  # our own parser: rejects anything that is not a metric, with a reason
        label = metric + (" + sparsegpt update" if update == "sparsegpt" else "")
    uses_g = tree is not None and "G" in to_text(tree)  # operands are the only upper-case tokens of a tree
    cfg = MetricSearchConfig(model=model_spec, seq_len=seq_len, operands=("W", "G", "X") if uses_g else ("W", "X"))
    run = MetricRun(calib_tokens=calib_tokens, data=data, device=device, dtype=dtype, device_map=device_map,
                    batch_size=batch_size)
    ws = Workspace(cfg, run, EventBus())
    test = ws.test_windows(tokens)
    dense = ws.ppl(test)
    if tree is None or update == "sparsegpt":
        achieved = ws.pruner.apply_sparsegpt(ws.lm.model, ws.data.windows("calib", seq_len), sparsity, nm,
                                             batch_size=ws.batch_size, metric=tree)
    else:
        achieved = ws.pruner.apply(tree, sparsity, nm)
    pruned = ws.ppl(test)
    if out_dir:
        ws.lm.model.save_pretrained(out_dir)
        ws.lm.tokenizer.save_pretrained(out_dir)
    ws.pruner.restore()
    return {"metric": label, "pattern": pattern or None, "sparsity": achieved, "dense_ppl": dense,
            "pruned_ppl": pruned, "tokens": test.numel(), "out_dir": out_dir}
