"""The README's pictures of selfpruner-tui, made from real runs, and the whole job end to end: the start form,
the live run screen during a search, the session screen after a GGUF export with its speed and zero-shot
results, and a comparison of two sessions, as SVG (Textual's save_screenshot).

    python bench/tui_screenshots.py --out docs/screenshots --piqa ../shared/data/piqa   # ~10 min on 2 CPU cores

It drives the app headless (App.run_test) as a user would: two numeric searches on the bundled SmolLM2 started
from the form (quick sizes, seeds 0 and 1), a screenshot while the first one's generation 1 runs; then the first
session opened, `x` Export (GGUF), `m` speed (llama.cpp, dense against pruned) and `m` zero-shot (PIQA, --limit
items, offline); then both marked in the browser and compared. Each step checks what the session DB stored.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from selfpruner.core.config import SearchConfig
from selfpruner.core.store import Store
from selfpruner.tui.app import SelfPrunerApp
from selfpruner.tui.screens.browser import SessionBrowser
from selfpruner.tui.screens.compare import CompareScreen
from selfpruner.tui.screens.export import ExportScreen
from selfpruner.tui.screens.jobs import JobsScreen
from selfpruner.tui.screens.replay import ReplayScreen
from selfpruner.tui.screens.run import RunScreen

from bench_args import add  # bench/ is on sys.path when run as a script

SIZE = (150, 44)


async def until(pilot, cond, what: str, timeout: float = 900.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        await pilot.pause(0.2)


async def search(sessions: Path, cfg: SearchConfig, save=None) -> None:
    """One search started from the form; `save(app, name)` is called once while generation 1 runs."""
    app = SelfPrunerApp(sessions, cfg)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        if save:
            save(app, "start")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
        run = app.screen
        if save:  # generation 1 under way, with the initial population and its plot on screen
            await until(pilot, lambda: (run.state.current or 0) >= 1 and run.state.status == "running", "generation 1")
            await pilot.pause(2)
            save(app, "run")
        await until(pilot, lambda: not run.running, "the end of the search")
        await pilot.pause(0.5)


async def job(pilot, app, name: str, **fields) -> None:
    """m on the session screen, one job with its fields, run to the end."""
    await pilot.press("m")
    await until(pilot, lambda: isinstance(app.screen, JobsScreen), "the measure dialog")
    app.screen.query_one("#job").value = name
    for key, value in fields.items():
        app.screen.query_one(f"#{key}").value = value
    await pilot.click("#run")
    await until(pilot, lambda: isinstance(app.screen, ReplayScreen), f"the {name} job")


async def after_search(sessions: Path, db: Path, cfg: SearchConfig, gguf: Path, piqa: str, limit: int, save=None,
                       speed: bool = True) -> str:
    """The session screen's whole job on session `db`: `x` Export (GGUF to `gguf`), `m` speed (unless not `speed`)
    and `m` zero-shot (PIQA, `limit` items); checks that the session stored each result and returns the screen's
    note. `save(app, name)` is called once at the end."""
    app = SelfPrunerApp(sessions, cfg)
    async with app.run_test(size=SIZE) as pilot:
        app.open_path(str(db))
        await pilot.pause(0.5)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ExportScreen), "the export dialog")
        app.screen.query_one("#out").value = str(gguf)
        await pilot.click("#export")
        await until(pilot, lambda: isinstance(app.screen, ReplayScreen), "the export")
        if speed:
            await job(pilot, app, "speed")
        await job(pilot, app, "zero-shot", tasks="piqa", data_dir=piqa, limit=str(limit))
        await pilot.pause(0.5)
        if save:
            save(app, "session-export")
        with Store(db, readonly=True) as st:
            kinds = {r["kind"] for r in st.results()}
        want = {"export", "lm_eval"} | ({"speed"} if speed else set())
        assert want <= kinds, f"the session stored only {sorted(kinds)}"
        return str(app.screen.note)


async def shoot(out: Path, sessions: Path, cfg: SearchConfig, piqa: str, limit: int) -> list[Path]:
    shots = []

    def save(app, name):
        shots.append(Path(app.save_screenshot(f"{name}.svg", path=str(out))))
        print(f"wrote {shots[-1]}", flush=True)

    await search(sessions, cfg, save)
    (first,) = sessions.glob("*.db")
    await search(sessions, replace(cfg, seed=cfg.seed + 1))
    note = await after_search(sessions, first, cfg, Path(tempfile.mkdtemp()) / "pruned.gguf", piqa, limit, save)
    print(f"end to end: {note}", flush=True)
    app = SelfPrunerApp(sessions, cfg, browse=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionBrowser), "the browser")
        browser = app.screen
        for i in range(len(browser.rows)):
            browser.query_one("#sessions").move_cursor(row=i)
            await pilot.press("space")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), "the comparison")
        await pilot.pause(0.5)
        save(app, "compare")
    return shots


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", ratio=0.3, K=4, M=2, S=2, N=2, calib_tokens=8192, budget_tokens=512, final_tokens=2048)
    ap.add_argument("--out", default="docs/screenshots")
    ap.add_argument("--piqa", default="../shared/data/piqa", help="PIQA's local files (valid.jsonl, valid-labels.lst)")
    ap.add_argument("--limit", type=int, default=50, help="PIQA items of the zero-shot job")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(model=args.model, beta=args.ratio, proposer="numeric", population=args.K, mutations=args.M,
                       crossovers=args.S, generations=args.N, calib_tokens=args.calib_tokens,
                       budget_tokens=args.budget_tokens, final_tokens=args.final_tokens, data="local")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(shoot(out, Path(tmp), cfg, str(Path(args.piqa).resolve()), args.limit))


if __name__ == "__main__":
    main()
