"""The README's pictures of selfpruner-tui, made from a real run: the start form, the live run screen during the
search, and the session screen after a GGUF export, as SVG (Textual's save_screenshot).

    python bench/tui_screenshots.py --out docs/screenshots     # ~3 minutes on 2 CPU cores

It drives the app headless (App.run_test) as a user would: a numeric search on the bundled SmolLM2 started
from the form (quick sizes), a screenshot while generation 1 runs, then the stored session opened, `x`, Export.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from selfpruner.core.config import SearchConfig
from selfpruner.core.store import Store
from selfpruner.tui.app import SelfPrunerApp
from selfpruner.tui.screens.export import ExportScreen
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


async def shoot(out: Path, sessions: Path, cfg: SearchConfig) -> list[Path]:
    shots = []

    def save(app, name):
        shots.append(Path(app.save_screenshot(f"{name}.svg", path=str(out))))
        print(f"wrote {shots[-1]}", flush=True)

    app = SelfPrunerApp(sessions, cfg)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        save(app, "start")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
        run = app.screen
        # generation 1 under way, with the initial population and its plot on screen
        await until(pilot, lambda: (run.state.current or 0) >= 1 and run.state.status == "running", "generation 1")
        await pilot.pause(2)
        save(app, "run")
        await until(pilot, lambda: not run.live, "the end of the search")
        await pilot.pause(0.5)
    (db,) = sessions.glob("*.db")
    app = SelfPrunerApp(sessions, cfg)
    async with app.run_test(size=SIZE) as pilot:
        app.open_path(str(db))
        await pilot.pause(0.5)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ExportScreen), "the export dialog")
        app.screen.query_one("#out").value = str(Path(tempfile.mkdtemp()) / "pruned.gguf")
        await pilot.click("#export")
        await until(pilot, lambda: isinstance(app.screen, ReplayScreen), "the export")
        await pilot.pause(0.5)
        save(app, "session-export")
    with Store(db, readonly=True) as st:
        assert any(r["kind"] == "export" for r in st.results()), "the export was not stored"
    return shots


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", ratio=0.3, K=4, M=2, S=2, N=2, calib_tokens=8192, budget_tokens=512, final_tokens=2048)
    ap.add_argument("--out", default="docs/screenshots")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(model=args.model, beta=args.ratio, proposer="numeric", population=args.K, mutations=args.M,
                       crossovers=args.S, generations=args.N, calib_tokens=args.calib_tokens,
                       budget_tokens=args.budget_tokens, final_tokens=args.final_tokens, data="local")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(shoot(out, Path(tmp), cfg))


if __name__ == "__main__":
    main()
