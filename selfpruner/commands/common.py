"""What every command shares: the two consoles, the one-line errors, the progress renderer of the core's
events, clean stops on Ctrl-C/SIGTERM, and small formatting helpers."""
from __future__ import annotations

import math
import sqlite3
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from selfpruner.core.errors import UserError

console = Console(stderr=True, soft_wrap=True)  # one error = one line, however long
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes get whole rows, not 80-col wraps

# Printed as one line, exit 2. sqlite3.Error: a session DB that passed the checks on opening and failed later (damaged
# in a page not read then); FileNotFoundError: a path the user gave.
USER_ERRORS = (UserError, FileNotFoundError, sqlite3.Error)


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
        self.fitness = "ppl"  # what the search minimises (ppl or kl), from the session's config

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
            self.fitness = ev.config.get("fitness") or "ppl"
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
            console.print(f"generation {ev.generation}: best {self.fitness} {ev.best:.3f}, mean {ev.mean:.3f}")
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


def _placement(args) -> dict:
    """--device/--dtype/--device-map/--batch-size as SearchConfig / MetricRun fields."""
    from selfpruner.core.config import Placement

    from .options import settings_from
    return settings_from(args, Placement)


def _typed_placement(args) -> dict:
    """The placement options the user gave (what a replay or export may take over the session's)."""
    from selfpruner.core.config import Placement

    from .options import typed_settings
    return typed_settings(args, Placement)


def _f(x, nd=3) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _print_shares(store) -> None:
    from selfpruner.core.results.session_summary import proposal_shares, shares_line
    sh = proposal_shares(store)
    if sh:
        out.print(("[yellow]" if sh["weak"] else "") + shares_line(sh) + ("[/]" if sh["weak"] else ""),
                  highlight=False)
