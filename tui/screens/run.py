"""A live search: the core runs in a thread worker and its events arrive here as messages.

The core calls its subscribers on the search thread; `post_message` is thread-safe, so the subscriber only
wraps each event in a message and the UI thread folds it into the `SearchState`.
"""
from __future__ import annotations

import traceback
from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.message import Message

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus, SearchFinished, SessionStarted

from ..errors import USER_ERRORS, RunError, one_line
from ..state import SearchState
from ..widgets.fitness import FitnessPanel
from .search import ALL_PARTS, SearchScreen


class CoreEvent(Message):
    """One core event, carried from the search thread to the UI thread."""

    def __init__(self, event) -> None:
        super().__init__()
        self.event = event


class RunFailed(Message):
    def __init__(self, error: RunError, started: bool) -> None:
        super().__init__()
        self.error = error
        self.started = started  # False: nothing was stored, the start screen shows the error inline


class RunScreen(SearchScreen):
    """Dismissed with a RunError when the search could not start (nothing stored), else with None."""

    BINDINGS = [
        Binding("p", "pause", "Pause/Resume"),
        Binding("g", "stop_after_generation", "Stop after gen"),
        Binding("s", "stop", "Stop"),
        Binding("r", "resume", "Resume"),
    ]

    def __init__(self, cfg: SearchConfig, resume: Path | None = None) -> None:
        super().__init__(SearchState(config=cfg.to_dict(), beta=cfg.beta, proposer=cfg.proposer,
                                     model=cfg.model or ""))
        self.cfg, self.resume = cfg, resume
        self.control = Control()

    def on_mount(self) -> None:
        self.render_view()
        self.run_search()

    def show_progress(self, view) -> None:
        # Live: the generation's size comes from the core before its candidates exist, and the fraction
        # of the candidate being evaluated moves the bar between two evaluations.
        st = self.state
        self.query_one(FitnessPanel).show_progress(st.current, st.config.get("generations"),
                                                   min(st.gen_done + st.eval_frac, st.gen_total), st.gen_total)

    @property
    def running(self) -> bool:
        return self.state.status in ("starting", "running", "paused", "stopping")

    # ---- the worker -----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def run_search(self) -> None:
        from selfpruner.core.layer_search.session import start_search

        bus = EventBus()
        bus.subscribe(lambda ev: self.post_message(CoreEvent(ev)))
        started = False

        def seen(ev):
            nonlocal started
            started = started or isinstance(ev, SessionStarted)
        bus.subscribe(seen)
        try:
            if self.resume is not None:  # refuse a session another process runs before loading any model
                from selfpruner.core.run_lock import refuse_if_live
                refuse_if_live(self.resume)
            # Ray's workers hold their own models: the search starts them and stops them when it ends
            bench = None if self.cfg.distributed else self.app.workbench(self.cfg, bus)
            if self.control.stopped:  # stopped (or quit) while the model loaded: create no session
                self.post_message(RunFailed(RunError("stopped before the search started: nothing was stored",
                                                     "Stopped"), False))
                return
            search = start_search(self.cfg, bus=bus, control=self.control, resume=self.resume, bench=bench)
            search.run()
        except USER_ERRORS as e:
            self.post_message(RunFailed(RunError.of(e), started))
        except Exception as e:  # a bug or a broken model: keep the UI alive and say what happened
            self.log.error(f"search failed\n{traceback.format_exc()}")  # `textual console` shows it
            self.post_message(RunFailed(RunError(f"{type(e).__name__}: {one_line(e)}", type(e).__name__), started))

    # ---- events from the worker ----------------------------------------------------------------
    def on_core_event(self, msg: CoreEvent) -> None:
        ev = msg.event
        if isinstance(ev, SessionStarted):
            self._read_session(ev)
        parts = self.state.apply(ev)
        if self.control.paused and self.state.status == "running":
            self.state.status = "paused"
        if isinstance(ev, SessionStarted):
            parts = ALL_PARTS
        if isinstance(ev, SearchFinished):
            self.note = {"stopped": "everything is stored · r resumes"}.get(ev.status, "")
            self.notify(f"search {ev.status}" + (f": best ppl {ev.best_fitness:.3f}" if ev.best_fitness else ""),
                        title=self.state.session_id)
            self.refresh_bindings()
        self.render_view(parts)

    def _read_session(self, ev: SessionStarted) -> None:
        """The stored model name (events carry only the spec); a resumed run also gets its history."""
        from selfpruner.core.store import Store
        with Store(ev.path, readonly=True) as st:
            self.state.model = st.session()["model_name"] or self.state.model
            if ev.resumed:
                self.state.reload(st)

    def on_run_failed(self, msg: RunFailed) -> None:
        if not msg.started:
            self.dismiss(msg.error)
            return
        self.state.status, self.state.error = "failed", msg.error.message
        self.notify(msg.error.message, title="search failed", severity="error", timeout=10)
        self.refresh_bindings()
        self.render_view({"status"})

    # ---- controls -------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("pause", "stop", "stop_after_generation"):
            return self.running
        if action == "resume":
            return self.state.status in ("stopped", "failed") and bool(self.state.path)
        return True

    def action_pause(self) -> None:
        if self.control.paused:
            self.control.resume()
            self.state.status, self.note = "running", ""
        else:
            self.control.pause()
            self.state.status = "paused"
            self.note = "the evaluation in flight finishes first · p resumes"
        self.render_view({"status"})

    def action_stop_after_generation(self) -> None:
        self.control.stop_after_generation()
        self.note = "stopping when this generation is complete; s stops now"
        self.render_view({"status"})

    def action_stop(self) -> None:
        self.control.stop()
        self.state.status, self.note = "stopping", "stopping after the evaluation in flight; everything is stored"
        self.render_view({"status"})
        self.refresh_bindings()

    def action_resume(self) -> None:
        """Continue the stopped session in place, from what it stored."""
        self.resume, self.control = Path(self.state.path), Control()
        self.state.status, self.state.error, self.note = "starting", None, ""
        self.refresh_bindings()
        self.render_view({"status"})
        self.run_search()

    def action_back(self) -> None:
        if self.running:
            self.notify("the search is running: press s to stop it (everything stays stored)", severity="warning")
            return
        self.dismiss(None)

    def stop_for_exit(self) -> None:
        self.control.stop()
