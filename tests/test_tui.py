"""The Textual app, headless (`App.run_test` + Pilot): a real numeric search on a tiny random model driven
from the start screen, pause/stop/resume, the session browser and the replay scrubber; what the widgets
show is compared with what the session DB holds. SVG snapshots of the main screens live in
tests/snapshots/ (regenerate with `pytest tests/test_tui.py --snapshot-update`)."""
from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select, Sparkline, Static

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import CandidateEvaluated, Control, EventBus
from selfpruner.core.store import Store
from selfpruner.core.types import CallRecord, Proposal
from selfpruner.tui.app import DEFAULT_FINAL_TOKENS, SelfPrunerApp
from selfpruner.tui.screens.browser import SessionBrowser
from selfpruner.tui.screens.metric import MetricScreen
from selfpruner.tui.screens.replay import ReplayScreen
from selfpruner.tui.screens.run import RunScreen
from selfpruner.tui.screens.start import BUNDLED_TEST_TOKENS, BUNDLED_TOKENS_PER_S, StartScreen, duration, window_tokens
from selfpruner.tui.state import SearchState, fmt_fitness
from selfpruner.tui.widgets.calls import CallLog
from selfpruner.tui.widgets.population import PopulationTable
from selfpruner.tui.widgets.rates import BLOCKS, RateBars
from selfpruner.tui.widgets.scrubber import GenerationScrubber

from conftest import HeldSession

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (150, 44)
TINY = dict(beta=0.4, proposer="numeric", population=4, mutations=2, crossovers=2, generations=2,
            budget_tokens=128, seq_len=32, calib_tokens=256, final_tokens=256, data="local")


# ---- deterministic session DBs, written through the core's Store API ---------------------------------
CREATED = 1_700_000_000.0  # 2023-11-14 22:13 UTC
N_LAYERS = 6
BETA = 0.3


def _vector(rng: random.Random, n: int = N_LAYERS, beta: float = BETA) -> list[float]:
    raw = [beta + rng.uniform(-0.15, 0.15) for _ in range(n)]
    shift = beta - sum(raw) / n
    return [round(min(1.0, max(0.0, r + shift)), 5) for r in raw]


def _fix_times(store: Store) -> None:
    """Replace wall-clock times with fixed ones (the browser shows the creation date)."""
    db = store.db
    db.conn.execute("update session set created = ?, updated = ?", [CREATED, CREATED + 60])
    for table in ("llm_calls", "candidates", "evaluations", "results", "metric_candidates"):
        db.conn.execute(f"update {table} set created = ?", [CREATED])
    db.conn.execute("update generations set finished = ?", [CREATED])


def _stamp(path: Path, offset: float) -> Path:
    """The browser lists newest first by file mtime: pin it."""
    os.utime(path, (CREATED + offset, CREATED + offset))
    return path


def make_layer_session(directory: Path, sid: str = "20231114-221320-layer-demo", *, generations: int = 3,
                       k: int = 4, m: int = 2, s: int = 2, status: str = "finished", seed: int = 1,
                       mtime: float = 40) -> Path:
    """A small Self-Pruner session: gen 0 of K LLM-written candidates, then M mutations + S crossovers per
    generation, each phase from one LLM call (one call repaired a candidate, one failed to parse)."""
    rng = random.Random(seed)
    path = Path(directory) / f"{sid}.db"
    st = Store(path, create=True)
    cfg = {"model": None, "beta": BETA, "proposer": "llama-cpp", "population": k, "mutations": m, "crossovers": s,
           "generations": generations, "budget_tokens": 1024, "seq_len": 512, "calib_tokens": 4096}
    st.create_session(sid, "layer", cfg, model_name="tiny-llama (test)", model_fingerprint="0" * 16,
                      model_arch=json.dumps({"n_layers": N_LAYERS}), data_source="local:test", beta=BETA,
                      proposer="llama-cpp")
    fitness: dict[int, float] = {}
    pop: list[int] = []
    for g in range(generations + 1):
        phases = [("init", k)] if g == 0 else [("mutation", m), ("crossover", s)]
        new = []
        for phase, count in phases:
            if g == 1 and phase == "mutation":  # a reply the parser could not use, then a retry
                st.add_call(CallRecord("llama-cpp", phase, 1, f"[prompt] gen {g} {phase}", "[0.3, 0.3",
                                       parsed=0, repaired=0, error="no complete list in the reply",
                                       latency_s=1.25, generation=g, tokens_in=900, tokens_out=12))
            props = []
            for i in range(count):
                rates = _vector(rng)
                parents = [] if phase == "init" else ([pop[i % len(pop)]] if phase == "mutation"
                                                      else [pop[0], pop[(i + 1) % len(pop)]])
                repaired = phase == "init" and i == 1
                props.append(Proposal(rates, phase, parents, repaired, [r + 0.01 for r in rates] if repaired
                                      else None))
            reply = json.dumps([p.rates for p in props])
            call_id = st.add_call(CallRecord("llama-cpp", phase, 2 if (g == 1 and phase == "mutation") else 1,
                                             f"You are pruning a {N_LAYERS}-layer model to mean rate {BETA}.\n"
                                             f"[prompt] gen {g} {phase}", reply, parsed=count,
                                             repaired=sum(p.repaired for p in props), latency_s=2.5 + g,
                                             generation=g, tokens_in=1000 + g, tokens_out=200))
            for p in props:
                p.call_id = call_id
            new += st.add_candidates(g, phase, props)
        for cid in new:
            fitness[cid] = round(55.0 + 12.0 * rng.random() - 6.0 * g, 3)
            st.add_evaluation(cid, fitness[cid], budget_tokens=1024, seq_len=512, eval_s=1.5,
                              cached=cid % 7 == 0)
        pool = sorted(set(pop) | set(new), key=lambda c: (fitness[c], c))[:k]
        finite = [fitness[c] for c in pool]
        st.add_generation(g, fitness[pool[0]], sum(finite) / len(finite), pool)
        pop = pool
    best = pop[0]
    st.update_session(status=status, best_candidate=best, best_fitness=fitness[best],
                      final_ppl=round(fitness[best] * 1.1, 3) if status == "finished" else None)
    _fix_times(st)
    st.close()
    return _stamp(path, mtime)


def make_metric_session(directory: Path, sid: str = "20231114-221330-metric-demo", mtime: float = 30) -> Path:
    path = Path(directory) / f"{sid}.db"
    st = Store(path, create=True)
    st.create_session(sid, "metric", {"population": 4, "iterations": 3}, model_name="tiny-llama (test)",
                      model_fingerprint="0" * 16, beta=0.5, proposer="gp")
    exprs = [("abs(W) * X", "mul(abs(W), X)", 0, "seed", 61.5), ("abs(W)", "abs(W)", 0, "seed", 80.25),
             ("sqrt(abs(W * G))", "sqrt(abs(mul(W, G)))", 1, "mutation", 70.0),
             ("abs(W) * sqrt(X)", "mul(abs(W), sqrt(X))", 2, "crossover", 58.75),
             ("log(abs(G))", "log(abs(G))", 3, "mutation", float("inf"))]
    for e, c, it, origin, fit in exprs:
        st.add_metric_candidate(iteration=it, expression=e, canonical=c, origin=origin, parents=[], fitness=fit,
                                eval_s=2.0)
    st.update_session(status="finished", best_fitness=58.75)
    _fix_times(st)
    st.close()
    return _stamp(path, mtime)


def make_unreadable(directory: Path, name: str = "20231114-221340-broken.db") -> Path:
    path = Path(directory) / name
    path.write_bytes(b"this is not a SQLite database" * 10)
    return _stamp(path, 20)


def make_empty_db(directory: Path, name: str = "20231114-221350-empty.db") -> Path:
    """A valid SQLite file without a session row."""
    path = Path(directory) / name
    sqlite3.connect(path).close()
    return _stamp(path, 10)


# ---- helpers ---------------------------------------------------------------------------------------
async def wait_for(pilot, cond, timeout: float = 120.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def cell_text(table: DataTable, row_key: str, col: str) -> str:
    v = table.get_cell(row_key, col)
    return getattr(v, "plain", str(v))


def table_ids(table: DataTable) -> list[int]:
    return [int(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


def expected_pool(store: Store, g: int) -> tuple[list[int], dict[int, float]]:
    """The rows a view of generation g must show, in rank order, read straight from the DB."""
    fit = store.fitness_by_candidate()
    gens = {x["generation"]: x for x in store.generations()}
    prev = gens[g - 1]["population"] if g - 1 in gens else []
    pool = list(prev) + [c["id"] for c in store.candidates(g) if c["id"] not in prev]
    return sorted(pool, key=lambda i: (fit[i], i)), fit


def check_screen_matches_db(screen, store: Store, g: int) -> None:
    """Table, sparklines, rate bars and call log of `screen` (showing generation g) against the DB."""
    order, fit = expected_pool(store, g)
    table = screen.query_one(PopulationTable)
    assert table_ids(table) == order  # default sort: rank
    kept = set({x["generation"]: x for x in store.generations()}[g]["population"])
    cands = {c["id"]: c for c in store.candidates()}
    for rank, cid in enumerate(order, 1):
        assert cell_text(table, str(cid), "rank") == str(rank)
        assert cell_text(table, str(cid), "fitness").split()[0] == fmt_fitness(fit[cid])
        assert cell_text(table, str(cid), "origin") == cands[cid]["origin"]
        assert cell_text(table, str(cid), "gen") == str(cands[cid]["generation"])
        mean = sum(cands[cid]["rates"]) / len(cands[cid]["rates"])
        assert cell_text(table, str(cid), "mean") == f"{mean:.4f}"
        assert cell_text(table, str(cid), "status") == ("" if cid in kept else "dropped")
    gens = [x for x in store.generations() if x["generation"] <= g]
    assert screen.query_one("#best-spark", Sparkline).data == [x["best"] for x in gens]
    assert screen.query_one("#mean-spark", Sparkline).data == pytest.approx([x["mean"] for x in gens])
    bars = screen.query_one(RateBars)
    shown = bars.candidate
    assert shown is not None and shown.rates == cands[shown.id]["rates"]
    text = bars.render().plain
    for r in cands[shown.id]["rates"]:
        assert f"{r:7.4f}" in text
    calls = [c for c in store.calls() if (c["generation"] or 0) <= g]
    log = screen.query_one(CallLog)
    assert [c.id for c in log.calls] == [c["id"] for c in calls]
    assert screen.query_one("#call-table", DataTable).row_count == len(calls)


def assert_snapshot(request, app, name: str) -> None:
    """Compare the app's SVG screenshot with tests/snapshots/<name>.svg (unique ids normalised)."""
    svg = re.sub(r"\bterminal-\d+-", "terminal-", app.export_screenshot(title="selfpruner"))
    path = SNAPSHOTS / f"{name}.svg"
    if request.config.getoption("--snapshot-update", default=False):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(svg, encoding="utf-8")
        pytest.skip(f"{name}: snapshot written, not compared")  # an update run proves nothing about the screen
    assert path.exists(), f"missing snapshot {path}: run pytest tests/test_tui.py --snapshot-update"
    if path.read_text(encoding="utf-8") != svg:
        actual = path.with_suffix(".actual.svg")
        actual.write_text(svg, encoding="utf-8")
        raise AssertionError(f"{name}: screen differs from {path} (actual written to {actual})")


async def settle(pilot) -> None:
    """Let layout, timers and animations finish; stop cursors blinking, so screenshots are stable."""
    for w in pilot.app.screen.query(Input):
        w.cursor_blink = False
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    """A sessions dir with a finished and a stopped layer session, a metric session and an unreadable file;
    the app runs from tmp_path with a relative dir and in UTC, so nothing machine-specific is on screen."""
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    monkeypatch.chdir(tmp_path)
    d = Path("sessions")
    d.mkdir()
    make_layer_session(d)
    make_layer_session(d, "20231114-221325-layer-stopped", status="stopped", generations=2, seed=2, mtime=35)
    make_metric_session(d)
    make_unreadable(d)
    yield d
    if old_tz is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old_tz
    time.tzset()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matmuls are too small to share: on a busy 2-core machine two intra-op threads made
    a 128-token fitness take seconds instead of milliseconds."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FitnessGate:
    """Lets the tiny model's search evaluate only as many candidates as the test has allowed, so keys pressed
    "mid-search" land mid-search however fast the machine is. A gated evaluation still honours stop."""

    def __init__(self, bench, monkeypatch):
        self._permits, self._open = threading.Semaphore(0), threading.Event()
        inner = bench.fitness

        def gated(rates, budget_tokens, *, should_stop=None, **kw):
            t0 = time.monotonic()
            while not (self._open.is_set() or self._permits.acquire(timeout=0.02)):
                if should_stop is not None and should_stop():
                    raise InterruptedError
                if time.monotonic() - t0 > 120:  # a failed test never opened the gate: don't hang the suite
                    break
            return inner(rates, budget_tokens, should_stop=should_stop, **kw)

        monkeypatch.setattr(bench, "fitness", gated)

    def allow(self, n: int) -> None:
        for _ in range(n):
            self._permits.release()

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gate(tiny_bench, monkeypatch):
    return FitnessGate(tiny_bench, monkeypatch)


def n_evaluated(state: SearchState) -> int:
    return sum(c.fitness is not None for c in state.cands.values())


def tiny_app(sessions: Path, model_dir: Path, bench=None, **over) -> SelfPrunerApp:
    cfg = SearchConfig(model=str(model_dir), sessions_dir=str(sessions), **{**TINY, **over})
    app = SelfPrunerApp(sessions, cfg)
    if bench is not None:  # the module's resident tiny model: no second load or calibration
        app.use_workbench(cfg, bench)
    return app


# ---- pure state ------------------------------------------------------------------------------------
def test_state_from_store_views_every_generation(tmp_path):
    path = make_layer_session(tmp_path)
    st = Store(path)
    state = SearchState.from_store(st)
    assert state.generations() == [0, 1, 2, 3] and state.n_layers == N_LAYERS
    for g in range(4):
        v = state.view(g)
        order, fit = expected_pool(st, g)
        assert [r.cand.id for r in v.rows] == order
        assert [r.cand.fitness for r in v.rows] == [fit[i] for i in order]
        pop = {x["generation"]: x for x in st.generations()}[g]["population"]
        assert [r.cand.id for r in v.rows if r.status == "alive"] == pop
        assert v.best == [x["best"] for x in st.generations()][: g + 1]
    assert state.best().id == st.session()["best_candidate"]


@pytest.mark.parametrize("race", [None, "32:all,64:2,128:1"])
def test_live_events_and_db_give_the_same_view(tmp_path, tiny_bench, tiny_llama_dir, race):
    """Folding the core's events in gives what rebuilding from the DB gives, generation by generation; with
    --race, candidates dropped at an early stage show that stage's score and are never ranked."""
    from selfpruner.core.layer_search.session import start_search
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY, race=race)
    live, bus = SearchState(), EventBus()
    views = {}

    def fold(ev):
        live.apply(ev)
        if type(ev).__name__ == "GenerationFinished":
            views[ev.generation] = live.view()
    bus.subscribe(fold)
    search = start_search(cfg, bus=bus, control=Control(), bench=tiny_bench)
    search.run()
    stored = SearchState.from_store(search.store)
    assert live.status == "finished" and sorted(views) == [0, 1, 2]
    for g, v in views.items():
        w = stored.view(g)
        assert [(r.cand.id, r.rank, r.status, r.cand.fitness, r.cand.raced) for r in v.rows] == \
               [(r.cand.id, r.rank, r.status, r.cand.fitness, r.cand.raced) for r in w.rows]
        assert v.best == w.best and v.mean == pytest.approx(w.mean)
    raced = [c for c in stored.cands.values() if c.raced]
    if race:
        assert len(raced) == 2 * 3 and all(c.fitness is None and re.search(r"@(32|64)$", c.raced) for c in raced)
        assert stored.best().id == search.store.session()["best_candidate"]
    else:
        assert not raced


def test_run_screen_status_shows_each_ray_worker():
    from selfpruner.core.events import WorkerState
    from selfpruner.tui.state import session_options, workers_text
    st = SearchState()
    for ev in [WorkerState(0, "loading"), WorkerState(1, "loading"), WorkerState(0, "idle", where="n1:cuda:0"),
               WorkerState(1, "evaluating", 7, "n2:cuda:0"), WorkerState(0, "dead")]:
        assert st.apply(ev) == {"status"}
    assert st.workers[0] == ("dead", None, "n1:cuda:0")
    text = workers_text(st.workers)
    assert text.plain.split("  ")[:2] == ["0: dead", "1: evaluating #7"]
    assert "red" in str(text.spans[0].style)
    assert session_options({"fitness": "kl", "importance": "flap", "compensate": True, "race": "512:all,2048:1"}) == \
        ["KL fitness", "FLAP importance", "bias compensation", "race 512:all,2048:1"]


# ---- start screen ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,needle", [
    ("beta", "1.5", "ratio β must be in (0, 1)"),
    ("beta", "0", "ratio β must be in (0, 1)"),
    ("beta", "abc", "ratio β must be a number"),
    ("population", "x", "population K must be a whole number"),
    ("budget_tokens", "16", "tokens / fitness (16) must be at least context (seq len) (512)"),
    ("device", "tpu", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("batch_size", "0", "windows / forward must be at least 1"),
])
async def test_start_screen_shows_validation_errors_inline(tmp_path, field, value, needle):
    app = SelfPrunerApp(tmp_path / "s", SearchConfig(proposer="numeric"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.screen.query_one("#advanced").collapsed = False  # device and batch size are folded there
        await pilot.pause()
        inp = app.screen.query_one(f"#{field}", Input)
        inp.value = ""
        inp.focus()  # folded-out fields can sit below the visible region, where a click cannot reach
        await pilot.pause()
        await pilot.press(*value)
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)  # nothing started
        err = app.screen.query_one("#error", Static)
        assert err.display and needle in str(err.render())
        assert app.screen.query_one(f"#{field}", Input).has_class("-bad")
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*.db"))


async def test_start_form_reads_the_placement(tmp_path):
    """device, dtype, device map and windows per forward go from the form into the SearchConfig."""
    app = SelfPrunerApp(tmp_path / "s", SearchConfig(proposer="numeric", device="cpu", dtype="bfloat16"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        cfg = screen.read_config()
        assert (cfg.device, cfg.dtype, cfg.device_map, cfg.batch_size) == ("cpu", "bfloat16", None, None)
        screen.query_one("#device", Input).value = "cuda:1"
        screen.query_one("#dtype", Select).value = "float16"
        screen.query_one("#batch_size", Input).value = "8"
        cfg = screen.read_config()
        assert (cfg.device, cfg.dtype, cfg.batch_size) == ("cuda:1", "float16", 8)
        screen.query_one("#device", Input).value = ""
        screen.query_one("#device_map", Select).value = "auto"
        cfg = screen.read_config()
        assert (cfg.device, cfg.device_map) == ("auto", "auto")


async def test_missing_api_key_offers_the_offline_proposer(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    app = SelfPrunerApp(tmp_path / "s", SearchConfig(proposer="numeric"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert not screen.query_one("#key-warning").display
        screen.query_one("#proposer", Select).value = "openai"
        await pilot.pause()
        assert screen.query_one("#key-warning").display
        assert "OPENAI_API_KEY" in str(screen.query_one("#key-text", Static).render())
        await pilot.press("ctrl+r")  # refuses to start, says why
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        assert "OPENAI_API_KEY" in str(screen.query_one("#error", Static).render())
        await pilot.click("#use-offline")
        await pilot.pause()
        assert screen.query_one("#proposer", Select).value == "numeric"
        assert not screen.query_one("#key-warning").display and not screen.query_one("#error").display


async def test_core_errors_come_back_inline(tmp_path):
    """A model that cannot load fails in the worker; the start screen shows the core's message."""
    app = SelfPrunerApp(tmp_path / "s", SearchConfig(proposer="numeric", model=str(tmp_path / "nope"), data="local"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen) and app.screen.query_one("#error").display,
                       timeout=60, what="the error back on the start screen")
        assert "not found" in str(app.screen.query_one("#error", Static).render())


async def test_start_form_estimates_the_final_evaluation(tmp_path):
    """Before any model is loaded: the bundled model's rough figures, a few-minute default budget, and what an
    empty field (the whole test stream) would cost; another model's time is unknown until it loads."""
    app = SelfPrunerApp(tmp_path / "s")  # the TUI's own defaults
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        help_ = screen.query_one("#final-help", Static)
        field = screen.query_one("#final_tokens", Input)
        assert field.region.height == 1  # on the form itself, not folded away under "advanced"
        assert field.value == str(DEFAULT_FINAL_TOKENS)
        assert screen.read_config().final_tokens == DEFAULT_FINAL_TOKENS
        text = str(help_.render())
        minutes = DEFAULT_FINAL_TOKENS / BUNDLED_TOKENS_PER_S / 60
        assert f"final evaluation: {DEFAULT_FINAL_TOKENS:,} tokens ≈ " in text and 1 <= minutes <= 5
        assert f"~{BUNDLED_TOKENS_PER_S:.0f} tok/s" in text and "gemma-3-270m" in text
        whole = window_tokens((BUNDLED_TEST_TOKENS - SearchConfig().calib_tokens) // 2, 512, True,
                              None)  # the offline copy's half
        whole_time = duration(whole / BUNDLED_TOKENS_PER_S)
        assert f"empty = all ~{round(whole, -3):,} test tokens ≈ {whole_time} (hub: ~" in text
        field.value = ""  # empty: the whole stream
        await pilot.pause()
        assert screen.read_config().final_tokens is None
        assert f"final evaluation: ~{round(whole, -3):,} tokens ≈ {whole_time}" in str(help_.render())
        screen.query_one("#model", Input).value = str(tmp_path / "some-model")
        await pilot.pause()
        assert "unknown until the model loads" in str(help_.render())
        screen.query_one("#final_eval").value = False
        await pilot.pause()
        assert str(help_.render()).startswith("no final evaluation")


async def test_start_form_estimate_uses_the_resident_model_and_measured_speed(tmp_path, tiny_llama_dir, tiny_bench):
    """With the model resident, the test tokens are its own stream's; after a search, the speed is measured."""
    app = tiny_app(tmp_path / "s", tiny_llama_dir, tiny_bench)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        help_ = app.screen.query_one("#final-help", Static)
        scored = tiny_bench.data.windows("test", TINY["seq_len"], TINY["final_tokens"]).numel()
        whole = tiny_bench.data.windows("test", TINY["seq_len"]).numel()
        text = str(help_.render())
        assert f"final evaluation: {scored:,} tokens\n" in text and f"empty = all {whole:,} test tokens" in text
        assert "time unknown until a search has run" in text
        # another calibration budget moves the offline copy's cut: the form follows without reloading
        from selfpruner.core.model.data import load_token_data
        other = load_token_data(tiny_bench.lm.tokenizer, calib_tokens=512, source="local")
        app.screen.query_one("#calib_tokens", Input).value = "512"
        await pilot.pause()
        assert f"empty = all {other.windows('test', TINY['seq_len']).numel():,} test tokens" in str(help_.render())
        app.screen.query_one("#calib_tokens", Input).value = str(TINY["calib_tokens"])
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        run = app.screen
        await wait_for(pilot, lambda: run.state.status in ("finished", "failed"), what="finished search")
        assert run.state.status == "finished", run.state.error
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        # the app timed the search's evaluations: tokens scored per evaluation over their seconds
        rate = app.throughput.rate
        per_eval = tiny_bench.windows("search", TINY["budget_tokens"]).numel()
        assert app.throughput.tokens % per_eval == 0 and rate > 0
        text = str(help_.render())
        assert f"at ~{rate:,.0f} tok/s, measured in this app's last search" in text
        assert f"{scored:,} tokens ≈ {duration(scored / rate)}" in text


# ---- a real search, live --------------------------------------------------------------------------
async def test_live_search_on_tiny_model(tmp_path, tiny_llama_dir, monkeypatch):
    """Start screen → run screen; the numeric proposer on a tiny LLaMA, model loaded by the worker."""
    sessions = tmp_path / "sessions"
    app = tiny_app(sessions, tiny_llama_dir)
    synced, updated = [], []  # what the table was told, event by event
    orig_sync, orig_update = PopulationTable.sync, PopulationTable.update_cell
    monkeypatch.setattr(PopulationTable, "sync", lambda self, rows: (
        synced.append(sum(r.cand.fitness is not None for r in rows)), orig_sync(self, rows))[1])
    monkeypatch.setattr(PopulationTable, "update_cell", lambda self, *a, **k: (
        updated.append(a[1]), orig_update(self, *a, **k))[1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state.status in ("finished", "failed"), what="finished search")
        assert screen.state.status == "finished", screen.state.error
        await pilot.pause()
        (db,) = sessions.glob("*.db")
        st = Store(db)
        assert st.session()["status"] == "finished"
        check_screen_matches_db(screen, st, 2)
        # until the user moves the cursor, the bars show the top row: the best candidate
        assert screen.query_one(RateBars).candidate.id == st.session()["best_candidate"]
        assert st.session()["model_name"] in str(screen.query_one("#status", Static).render())
        # the footer offers pause/stop only while running
        assert screen.check_action("pause", ()) is False and screen.check_action("stop", ()) is False
        # final result in the status line
        assert fmt_fitness(st.session()["final_ppl"]) in str(screen.query_one("#status", Static).render())

        # sort by id, then by ppl descending: the table reorders, the rows stay the same
        table = screen.query_one(PopulationTable)
        before = set(table_ids(table))
        table.sort_by("id")
        assert table_ids(table) == sorted(before)
        table.sort_by("fitness")
        table.sort_by("fitness")
        fit = st.fitness_by_candidate()
        assert table_ids(table) == sorted(before, key=lambda i: -fit[i])

        # selecting a row shows that candidate's bars
        table.focus()
        table.move_cursor(row=2)
        await pilot.pause()
        cid = table_ids(table)[2]
        assert screen.query_one(RateBars).candidate.id == cid

        # saved files: the best rates as JSON and an SVG screenshot, both beside the DB
        await pilot.press("e")
        await pilot.pause()
        (js,) = sessions.glob("*-best-rates.json")
        best = json.loads(js.read_text())
        s = st.session()
        assert best["candidate_id"] == s["best_candidate"] and best["search_ppl"] == s["best_fitness"]
        assert best["rates"] == {c["id"]: c for c in st.candidates()}[s["best_candidate"]]["rates"]
        assert str(js) in str(screen.query_one("#status", Static).render())
        await pilot.press("v")
        await pilot.pause()
        (svg,) = sessions.glob("*.svg")
        assert svg.read_text().startswith("<svg")
        st.close()
    # the table followed the search one evaluation at a time, changing cells in place
    assert all(n in synced for n in range(1, 9)) and {"fitness", "rank"} <= set(updated)


async def test_pause_stop_and_resume_from_the_run_screen(tmp_path, tiny_llama_dir, tiny_bench, gate):
    sessions = tmp_path / "sessions"
    app = tiny_app(sessions, tiny_llama_dir, tiny_bench, generations=6)
    total = 4 + 6 * (2 + 2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        gate.allow(1)
        await wait_for(pilot, lambda: n_evaluated(screen.state) == 1, what="first evaluation")
        await pilot.press("p")
        assert screen.control.paused
        assert "paused" in str(screen.query_one("#status", Static).render())
        # with evaluations allowed, a paused search finishes at most the one in flight, then nothing more
        gate.allow(3)
        await pilot.pause(1.0)
        n = n_evaluated(screen.state)
        assert n in (1, 2)
        await pilot.pause(0.5)
        assert n_evaluated(screen.state) == n and screen.state.status == "paused"
        await pilot.press("p")  # resume: the allowed evaluations left run now
        await wait_for(pilot, lambda: n_evaluated(screen.state) == 4, what="evaluations after resume")
        assert screen.state.status == "running"
        await pilot.press("s")  # stop: the search is held at the gate and ends there
        # the screen's own notion of a live run: it passes through "stopping" (set by the key itself)
        await wait_for(pilot, lambda: not screen.running, what="stopped")
        assert screen.state.status == "stopped"
        (db,) = sessions.glob("*.db")
        st = Store(db)
        assert st.session()["status"] == "stopped"
        assert len(st.fitness_by_candidate()) == 4 == n_evaluated(screen.state)
        st.close()
        gate.open()
        await pilot.press("escape")  # leaving is allowed once the search has stopped
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)
        # resume it from the browser
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, SessionBrowser)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="resumed run screen")
        resumed = app.screen
        await wait_for(pilot, lambda: resumed.state.status in ("finished", "failed"), what="resumed run")
        assert resumed.state.status == "finished", resumed.state.error
        st = Store(db)
        assert st.session()["status"] == "finished" and len(st.candidates()) == total
        # nothing evaluated twice
        evals = [e["candidate_id"] for e in st.evaluations() if e["kind"] == "search"]
        assert len(evals) == len(set(evals))
        check_screen_matches_db(resumed, st, 6)
        st.close()


async def test_escape_is_refused_while_running_and_r_resumes_in_place(tmp_path, tiny_llama_dir, tiny_bench,
                                                                      gate):
    app = tiny_app(tmp_path / "s", tiny_llama_dir, tiny_bench)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        gate.allow(1)
        await wait_for(pilot, lambda: n_evaluated(screen.state) == 1, what="first evaluation")
        await pilot.press("p")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("s")
        # the screen's own notion of a live run: it passes through "stopping" (seen on a loaded box)
        await wait_for(pilot, lambda: not screen.running, what="stopped")
        assert screen.state.status == "stopped"
        gate.open()
        # r continues the stopped session in place, from what it stored
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.state.status == "finished", what="resumed in place")
        (db,) = (tmp_path / "s").glob("*.db")
        st = Store(db)
        assert st.session()["status"] == "finished" and len(st.fitness_by_candidate()) == 4 + 2 * (2 + 2)
        check_screen_matches_db(screen, st, 2)
        st.close()
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)


# ---- replay ------------------------------------------------------------------------------------------
@pytest.fixture
def stopped_real_session(tmp_path, tiny_bench, tiny_llama_dir):
    """A real search on the tiny model, stopped by its control after 7 evaluations (mid generation 1)."""
    from selfpruner.core.layer_search.session import start_search
    sessions = tmp_path / "real"
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(sessions), **TINY)
    control, bus, n = Control(), EventBus(), []
    bus.subscribe(lambda e: (n.append(1), len(n) == 7 and control.stop()) if isinstance(e, CandidateEvaluated)
                  else None)
    search = start_search(cfg, bus=bus, control=control, bench=tiny_bench)
    assert search.run().status == "stopped"
    search.store.close()
    return sessions


async def test_replay_scrubs_a_real_session_and_resumes_it(stopped_real_session, tiny_llama_dir, tiny_bench):
    sessions = stopped_real_session
    app = tiny_app(sessions, tiny_llama_dir, tiny_bench)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+o")
        await pilot.pause()
        browser = app.screen
        table = browser.query_one("#sessions", DataTable)
        assert table.row_count == 1 and cell_text(table, "0", "status") == "stopped"
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        (db,) = sessions.glob("*.db")
        st = Store(db)
        # stopped mid generation 1: the scrubber ends there; generation 0 is complete
        scrub = screen.query_one(GenerationScrubber)
        assert scrub.maximum == 1 and scrub.value == 1
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert scrub.value == 0 and screen.generation == 0
        check_screen_matches_db(screen, st, 0)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        # generation 1 is partial: 3 of its 4 candidates evaluated, the 4th shown as pending
        table = screen.query_one(PopulationTable)
        pending = [i for i in table_ids(table) if cell_text(table, str(i), "fitness") == "…"]
        assert len(pending) == 1
        assert screen.check_action("resume", ()) is True
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="resumed run screen")
        run = app.screen
        await wait_for(pilot, lambda: run.state.status in ("finished", "failed"), what="resumed run")
        assert run.state.status == "finished", run.state.error
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen  # back on the replay, reloaded with the finished run
        assert screen.state.status == "finished" and screen.query_one(GenerationScrubber).maximum == 2
        check_screen_matches_db(screen, Store(db), 2)
        st.close()


async def test_replay_of_stored_session_matches_db_at_every_generation(demo_dir):
    app = SelfPrunerApp(demo_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("enter")  # newest first: the finished demo session
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        st = Store(demo_dir / "20231114-221320-layer-demo.db")
        scrub = screen.query_one(GenerationScrubber)
        assert scrub.value == 3
        await pilot.press("home")  # scrubber keys need focus; home only works focused
        scrub.focus()
        await pilot.press("home")
        for g in range(4):
            await pilot.pause()
            assert screen.generation == g
            check_screen_matches_db(screen, st, g)
            await pilot.press("right")
        # the call log: a failed parse is shown with its error, the repaired candidate with raw numbers
        await pilot.press("l")
        await pilot.pause()
        log = screen.query_one(CallLog)
        calls = st.calls()
        failed = next(i for i, c in enumerate(calls) if c["error"])
        log.query_one("#call-table", DataTable).move_cursor(row=failed)
        await pilot.pause()
        detail = str(log.query_one("#call-text", Static).render())
        assert "no complete list in the reply" in detail and calls[failed]["prompt"] in detail
        log.query_one("#call-table", DataTable).move_cursor(row=0)
        await pilot.pause()
        detail = str(log.query_one("#call-text", Static).render())
        assert "repaired" in detail and "raw:" in detail and calls[0]["response"][:40] in detail
        st.close()


async def test_browser_lists_unreadable_and_metric_sessions(demo_dir):
    make_empty_db(demo_dir)  # valid SQLite, no session in it
    app = SelfPrunerApp(demo_dir, browse=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        browser = app.screen
        assert isinstance(browser, SessionBrowser)
        table = browser.query_one("#sessions", DataTable)
        status = {cell_text(table, str(i), "id"): cell_text(table, str(i), "status") for i in range(table.row_count)}
        assert status == {"20231114-221320-layer-demo": "finished", "20231114-221325-layer-stopped": "stopped",
                          "20231114-221330-metric-demo": "finished", "20231114-221340-broken": "unreadable",
                          "20231114-221350-empty": "unreadable"}
        row = {r["id"]: i for i, r in enumerate(browser.rows)}
        # unreadable: a notification, no crash, still on the browser
        for name in ("20231114-221340-broken", "20231114-221350-empty"):
            table.move_cursor(row=row[name])
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, SessionBrowser)
        # metric session: read-only expression table + best-so-far sparkline
        table.move_cursor(row=row["20231114-221330-metric-demo"])
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, MetricScreen)
        mt = screen.query_one("#metric-table", DataTable)
        rows = Store(demo_dir / "20231114-221330-metric-demo.db").metric_candidates()
        assert mt.row_count == len(rows)
        assert cell_text(mt, str(min(rows, key=lambda r: r["fitness"])["id"]), "rank") == "1"
        assert screen.query_one("#metric-spark", Sparkline).data == [61.5, 61.5, 58.75, 58.75]
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, SessionBrowser)
        # resume is refused for finished sessions
        table.move_cursor(row=row["20231114-221320-layer-demo"])
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, SessionBrowser)


async def test_resume_of_a_session_another_process_runs_is_refused(stopped_real_session, tiny_llama_dir, tiny_bench):
    """The browser shows the session as running while a CLI process holds it; Resume says who holds it."""
    (db,) = stopped_real_session.glob("*.db")
    with HeldSession(db) as holder:
        Store(db).update_session(status="running")  # what a live runner's row says
        app = tiny_app(stopped_real_session, tiny_llama_dir, tiny_bench)
        said = []
        app.notify = lambda message, **kw: said.append(message)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+o")
            await pilot.pause()
            table = app.screen.query_one("#sessions", DataTable)
            # live, with who runs it
            assert cell_text(table, "0", "status").startswith(f"running · pid {holder.pid} on ")
            await pilot.press("r")
            await wait_for(pilot, lambda: any("being run by" in m for m in said), what="the refusal")
            assert isinstance(app.screen, SessionBrowser)
            assert f"pid {holder.pid}" in next(m for m in said if "being run by" in m)
    # the holder is gone: the browser calls it died, and Resume takes it over
    assert Store(db, readonly=True).session()["status"] == "running"
    from selfpruner.core.session_files import list_sessions
    assert list_sessions(stopped_real_session)[0]["status"] == "died"


async def test_open_flag_and_bad_reference(demo_dir):
    app = SelfPrunerApp(demo_dir, open_session="20231114-221325")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ReplayScreen) and app.screen.state.status == "stopped"
    app = SelfPrunerApp(demo_dir, open_session="nope")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, StartScreen)


async def test_baseline_session_opens_read_only(tmp_path):
    """A uniform/OWL baseline session: one candidate, no generations, nothing to resume."""
    st = Store(tmp_path / "b.db", create=True)
    st.create_session("20231114-221300-baseline-demo", "baseline", {"beta": 0.3, "method": "owl"},
                      model_name="tiny", model_fingerprint="0" * 16, beta=0.3, proposer="owl")
    (cid,) = st.add_candidates(0, "init", [Proposal([0.2, 0.4, 0.3], "owl")])
    st.add_evaluation(cid, 51.5, budget_tokens=1024, seq_len=512, eval_s=1.0)
    st.update_session(status="finished", best_candidate=cid, best_fitness=51.5, final_ppl=55.0)
    st.close()
    app = SelfPrunerApp(tmp_path, open_session=str(tmp_path / "b.db"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen) and screen.check_action("resume", ()) is False
        table = screen.query_one(PopulationTable)
        assert table_ids(table) == [cid] and cell_text(table, str(cid), "fitness") == "51.500"
        assert screen.query_one(RateBars).candidate.rates == [0.2, 0.4, 0.3]


async def test_rate_bars_use_the_width(demo_dir):
    """A wide terminal gives the bars its width: the table keeps what its columns need, the bars fill the
    rest, on a scale up to 2β, and follow a resize; every row keeps its layer index and numeric rate."""
    app = SelfPrunerApp(demo_dir, open_session="20231114-221320-layer-demo")

    def bars_of(widget):
        lines = widget.render().plain.splitlines()
        top = float(lines[2].split()[2])  # "layer 0 ... <top>    rate     Δβ"
        rows = lines[3:]
        assert all(len(row) == widget.size.width for row in rows)
        return top, [sum(ch in BLOCKS[1:] for ch in row[6:6 + widget.bar_width()]) for row in rows], rows

    async with app.run_test(size=(160, 44)) as pilot:
        await pilot.pause()
        bars = app.screen.query_one(RateBars)
        rates = bars.candidate.rates
        assert bars.size.width >= 80  # at least half the terminal
        top, cells, rows = bars_of(bars)
        assert top == pytest.approx(2 * BETA) and max(rates) <= top
        for i, (r, n, row) in enumerate(zip(rates, cells, rows)):
            assert row.startswith(f"L{i} ") and f"{r:7.4f}" in row
            assert abs(n - r / top * bars.bar_width()) <= 1
        assert max(cells) >= 0.4 * bars.size.width
        narrow = bars.size.width
        await pilot.resize_terminal(200, 44)
        await pilot.pause()
        assert bars.size.width >= narrow + 40
        _, wider, _ = bars_of(bars)
        assert all(w > n for w, n in zip(wider, cells))


# ---- SVG snapshots -----------------------------------------------------------------------------------
async def test_snapshot_start(request, demo_dir):
    app = SelfPrunerApp(demo_dir, SearchConfig(proposer="numeric", final_tokens=DEFAULT_FINAL_TOKENS))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert_snapshot(request, app, "start")


async def test_snapshot_start_missing_key(request, demo_dir, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    app = SelfPrunerApp(demo_dir, SearchConfig(proposer="openai"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert_snapshot(request, app, "start-missing-key")


async def test_snapshot_browser(request, demo_dir):
    app = SelfPrunerApp(demo_dir, browse=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert_snapshot(request, app, "browser")


async def test_snapshot_replay_and_calls(request, demo_dir):
    app = SelfPrunerApp(demo_dir, open_session="20231114-221320-layer-demo")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert_snapshot(request, app, "replay-gen2")
        await pilot.press("l")
        await settle(pilot)
        assert_snapshot(request, app, "replay-calls")


async def test_snapshot_metric(request, demo_dir):
    app = SelfPrunerApp(demo_dir, open_session="20231114-221330-metric-demo")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert_snapshot(request, app, "metric")


async def test_fitness_plot_when_there_is_room(demo_dir):
    """A tall terminal gets the braille plot (every evaluation a dot, best/mean lines, following the scrubber);
    the 44-row one of the snapshots keeps the sparklines alone."""
    from selfpruner.tui.widgets.plot import FitnessPlot, render_plot

    for size, shown in (((150, 60), True), (SIZE, False)):
        app = SelfPrunerApp(demo_dir, open_session="20231114-221320-layer-demo")
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            plot = app.screen.query_one(FitnessPlot)
            assert plot.display is shown
            if not shown:
                continue
            st = Store(demo_dir / "20231114-221320-layer-demo.db")
            assert len(plot.points) == len(st.evaluations()) and len(plot.best) == 4
            text = "\n".join(t.plain for t in render_plot(plot.best, plot.mean, plot.points, 80, 10))
            assert sum(0x2800 < ord(ch) <= 0x28FF for ch in text) > 20 and "gen 3" in text
            app.screen.query_one(GenerationScrubber).focus()
            await pilot.press("home")
            await pilot.pause()
            assert max(g for g, _ in plot.points) == 0 and len(plot.best) == 1  # follows the scrubbed generation


async def test_ctrl_e_writes_the_candidate_history_as_the_cli_does(demo_dir, tmp_path):
    """Ctrl+E on a session screen writes every candidate as CSV and JSON beside the DB; `show --csv` prints the
    same rows."""
    import csv

    from conftest import cli
    app = SelfPrunerApp(demo_dir, open_session="20231114-221325")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ReplayScreen)
        sid = app.screen.state.session_id
        await pilot.press("ctrl+e")
        await pilot.pause()
    (csv_path,) = Path(demo_dir).glob("*-candidates.csv")
    data = json.loads(csv_path.with_suffix(".json").read_text())
    with Store(next(Path(demo_dir).glob("20231114-221325*.db")), readonly=True) as st:
        stored = st.candidates()
        fit = st.fitness_by_candidate()
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["id"]) for r in rows] == [c["id"] for c in stored] == [c["id"] for c in data["candidates"]]
    assert all((r["fitness"] == "") == (fit.get(int(r["id"])) is None) for r in rows)
    assert [float(x) for x in rows[0]["rates"].split()] == stored[0]["rates"]
    code, out, _ = cli("show", "20231114-221325", "--csv", "--sessions-dir", str(demo_dir))
    assert code == 0 and out == csv_path.read_text()
    assert data["session"] == sid


async def test_command_palette_offers_the_screens_actions_and_f1_shows_every_key(demo_dir):
    app = SelfPrunerApp(demo_dir, open_session="20231114-221325")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        titles = {c.title: c for c in app.get_system_commands(app.screen)}
        assert {"New search", "Open a session", "Theme", "Resume", "CSV/JSON", "gen ▶"} <= set(titles)
        assert "Pause" not in titles  # nothing runs this session: the follow keys are not offered
        titles["gen ▶"].callback()
        await pilot.press("f1")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("f1")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")
        titles["Open a session"].callback()
        await pilot.pause()
        assert isinstance(app.screen, SessionBrowser)


async def test_start_form_estimates_the_search_time_and_f2_switches_to_the_paper_sizes(tmp_path):
    from selfpruner.tui.screens.start import PAPER_SIZES, QUICK_SIZES, ROUGH_TOKENS_PER_S
    k, m, s, n = QUICK_SIZES
    app = SelfPrunerApp(tmp_path, SearchConfig(model="smollm2", proposer="numeric", population=k, mutations=m,
                                               crossovers=s, generations=n, sessions_dir=str(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        helptext = lambda: str(app.screen.query_one("#kmsn-help", Static).content)  # noqa: E731
        evals = k + n * (m + s)
        assert f"→ {evals} evaluations ≈ " in helptext() and "(F2: paper sizes)" in helptext()
        assert f"≈ {round(evals * 512 / ROUGH_TOKENS_PER_S['smollm2'])} s" in helptext()
        await pilot.press("f2")
        await pilot.pause()
        k2, m2, s2, n2 = PAPER_SIZES
        assert f"→ {k2 + n2 * (m2 + s2)} evaluations" in helptext() and "(F2: quick sizes)" in helptext()
        assert app.screen.read_config().population == k2
        await pilot.press("f2")
        await pilot.pause()
        assert app.screen.read_config().generations == n


async def test_export_from_the_session_screen(stopped_real_session, tiny_llama_dir, tiny_bench):
    """x on a session: a GGUF of a model whose tokenizer llama.cpp cannot take is refused in the dialog in one line;
    the HF directory is written in the background and stored in the session. m: a speed job on it, cancelled
    once, then run to the end: its ratios are stored in the session and shown on its screen."""
    from selfpruner.tui.screens.export import ExportScreen
    from selfpruner.tui.screens.jobs import JobsScreen
    (db,) = stopped_real_session.glob("*.db")
    app = tiny_app(stopped_real_session, tiny_llama_dir, tiny_bench)
    async with app.run_test(size=SIZE) as pilot:
        app.open_path(str(db))
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ExportScreen) and dialog.query_one("#out", Input).value.endswith(".gguf")
        await pilot.click("#export")
        status = lambda: str(dialog.query_one("#export-status", Static).content)  # noqa: E731
        await wait_for(pilot, lambda: "✗" in status(), what="the refusal")
        assert "byte-level BPE vocabularies only" in status() and "\n" not in status()
        dialog.query_one("#format", Select).value = "hf"
        await pilot.pause()
        assert dialog.query_one("#out", Input).value.endswith("-pruned")
        await pilot.click("#export")
        await wait_for(pilot, lambda: isinstance(app.screen, ReplayScreen), what="the export")
        assert "exported #" in app.screen.note
        # m: a speed job on that export, run as `selfpruner speed` in the background, stored in the session
        await pilot.press("m")
        await pilot.pause()
        jobs = app.screen
        assert isinstance(jobs, JobsScreen) and jobs.export.endswith("-pruned")
        await pilot.click("#run")
        await pilot.pause()
        await pilot.press("escape")  # cancel: the job's process ends and nothing is stored
        await wait_for(pilot, lambda: jobs.proc is None, what="the cancelled job")
        assert "cancelled" in str(jobs.query_one("#job-status", Static).content)
        await pilot.click("#run")
        await wait_for(pilot, lambda: isinstance(app.screen, ReplayScreen), timeout=240, what="the speed job")
        assert re.search(r"speed prefill \d+\.\d\d× decode \d+\.\d\d×", app.screen.note)
    with Store(db, readonly=True) as st:
        (rec,) = [r for r in st.results() if r["kind"] == "export"]
        (speed,) = [r for r in st.results() if r["kind"] == "speed"]
    assert Path(rec["payload"]["out_dir"], "config.json").is_file()
    assert speed["payload"]["results"]["pruned"]["params"] == rec["payload"]["params"]


def test_job_command_lines(tmp_path):
    """Each measure job is the `selfpruner` command a user would type; a job that needs an export says so."""
    from selfpruner.tui.screens.jobs import job_command
    db = make_layer_session(tmp_path)
    sd = ["--sessions-dir", str(db.parent)]
    assert job_command("zero-shot", db, "e.gguf", tasks="piqa", data_dir="/d", limit="50") == \
        ["eval", "e.gguf", "--tasks", "piqa", "--data-dir", "/d", "--limit", "50", *sd]
    assert job_command("report", db, None) == ["report", db.stem, "--out", str(db.with_name(db.stem + "-report")), *sd]
    with pytest.raises(ValueError, match="export the best candidate first"):
        job_command("speed", db, None)
    with pytest.raises(ValueError, match="LoRA recovery trains an HF directory"):
        job_command("lora", db, "e.gguf")


async def test_compare_marked_sessions(request, demo_dir):
    """space marks two layer sessions in the browser, c compares them: one plot of both best curves, a summary row
    each, their best profiles layer by layer against uniform; w writes them as one report."""
    from selfpruner.tui.screens.compare import CompareScreen
    app = SelfPrunerApp(demo_dir, browse=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        browser = app.screen
        layer_rows = [i for i, r in enumerate(browser.rows) if r.get("kind") == "layer" and not r.get("error")]
        assert len(layer_rows) == 2
        await pilot.press("c")  # nothing marked: a warning, no screen
        await pilot.pause()
        assert app.screen is browser
        for i in layer_rows:
            browser.query_one("#sessions", DataTable).move_cursor(row=i)
            await pilot.press("space")
            await pilot.pause()
        assert len(browser.marked) == 2
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        summary = screen.query_one("#compare-summary", DataTable)
        assert summary.row_count == 2
        for s in screen.sessions:
            with Store(s.path, readonly=True) as st:
                best = st.session()["best_fitness"]
                gens = [g["best"] for g in st.generations()]
            assert s.best.fitness == pytest.approx(best) and s.best_curve == pytest.approx(gens)
        profiles = screen.query_one("#compare-profiles", DataTable)
        assert profiles.row_count == N_LAYERS
        assert [str(c.label) for c in profiles.columns.values()][-1] == f"uniform {BETA:g}"
        await settle(pilot)
        assert_snapshot(request, app, "compare")
        await pilot.press("w")
        await pilot.pause()
        (page,) = Path("sessions").glob("compare-*/index.html")
        assert "report" in str(screen.query_one("#compare-note", Static).content)
        assert page.stat().st_size > 0
