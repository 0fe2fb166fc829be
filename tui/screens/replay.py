"""A stored session, rebuilt from its DB, with a scrubber to step through the search as it happened. A session
that another process is running (a headless search, a Ray driver, a TUI elsewhere) is followed live: the screen
re-reads the DB every FOLLOW_S seconds (a WAL reader: it never blocks the run), notices when the run ends or its
process dies, and its pause / stop keys reach that process through the session's control table."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding

from selfpruner.core.run_lock import is_live, shown_status
from selfpruner.core.store import Store

from ..state import SearchState, View
from ..widgets.scrubber import GenerationScrubber
from .search import ALL_PARTS, SearchScreen

RESUMABLE = ("running", "stopped", "failed")
EXPORTABLE = ("layer", "baseline")  # session kinds whose candidates are layer-rate vectors
FOLLOW_S = 1.0


class ReplayScreen(SearchScreen):
    BINDINGS = [
        Binding("left_square_bracket", "step(-1)", "◀ gen"),
        Binding("right_square_bracket", "step(1)", "gen ▶"),
        Binding("r", "resume", "Resume"),
        Binding("x", "export", "Export"),
        Binding("m", "measure", "Measure"),
        Binding("c", "cost_table", "Cost table"),
        Binding("p", "control('pause')", "Pause"),
        Binding("u", "control('resume')", "Unpause"),
        Binding("g", "control('stop-after-generation')", "Stop after gen"),
        Binding("s", "control('stop')", "Stop"),
    ]

    def __init__(self, path: Path | str) -> None:
        self.db_path = Path(path)
        super().__init__(self._load())
        self.generation = self.state.last_generation

    def _load(self) -> SearchState:
        with Store(self.db_path, readonly=True) as store:
            return SearchState.from_store(store)

    def compose_top(self) -> ComposeResult:
        yield GenerationScrubber(id="scrubber")

    def on_mount(self) -> None:
        from selfpruner.core.results.session_summary import results_line
        last = self.state.last_generation
        self.query_one(GenerationScrubber).set_range(last or 0, last or 0)
        with Store(self.db_path, readonly=True) as st:
            self.note = results_line(st)  # what was measured on its exports, as the browser's row says too
        self.render_view()
        self.following = self.state.kind == "layer" and is_live(self.db_path)
        if self.following:
            self.sub_title = "following a live run"
            self._follower = self.set_interval(FOLLOW_S, self._follow)

    def _follow(self) -> None:
        """Re-read the session; stay on the newest generation if the view was there."""
        from ..errors import USER_ERRORS
        live = is_live(self.db_path)
        at_end = self.generation == self.state.last_generation
        try:
            self.state = self._load()
        except USER_ERRORS:  # the runner held the file a moment too long (a checkpoint): the next tick reads it
            return
        if not live:  # ended, stopped or died (its lock went with its process)
            self.following = False
            self._follower.stop()
            self.state.status = shown_status(self.db_path, self.state.status)
            self.sub_title = f"run {self.state.status}"
            self.notify(f"the run of {self.state.session_id} is {self.state.status}", timeout=8)
        last = self.state.last_generation or 0
        if at_end or self.generation is None:
            self.generation = last
        self.query_one(GenerationScrubber).set_range(last, self.generation or 0)
        self.refresh_bindings()
        self.render_view()

    def current_view(self) -> View:
        return self.state.view(self.generation)

    def screenshot_name(self) -> str:
        return f"{self.state.session_id}-gen{self.generation}.svg"

    def on_generation_scrubber_changed(self, msg: GenerationScrubber.Changed) -> None:
        if self.state.last_generation is None:
            return
        self.generation = msg.value
        self.render_view(ALL_PARTS - {"status"})

    def action_step(self, delta: int) -> None:
        self.query_one(GenerationScrubber).action_step(delta)

    # ---- resume an interrupted session -------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        following = getattr(self, "following", False)
        if action == "resume":
            return self.state.kind == "layer" and self.state.status in RESUMABLE and not following
        if action == "control":
            return following
        if action in ("export", "measure"):
            # a layer search's best candidate, or a baseline's one rate vector (core/baselines/run.py)
            return self.state.kind in EXPORTABLE and self.state.best_id is not None and not following
        return True

    def action_export(self) -> None:
        """The best candidate as a GGUF or an HF directory, in the background (screens/export.py)."""
        from .export import ExportScreen
        self.app.push_screen(ExportScreen(self.db_path), self._exported)

    def _exported(self, info: dict | None) -> None:
        if info is None:
            return
        size = info.get("file_bytes") or info.get("weight_bytes") or 0
        self.note = (f"exported #{info['candidate']} → {info['out_dir']} ({info['params'] / 1e6:.1f}M of "
                     f"{info['dense_params'] / 1e6:.1f}M parameters, {size / 2**20:.1f} MiB)")
        if info.get("format", "hf") == "hf":  # the directory vLLM serves through selfpruner's plugin
            self.note += f"; serve it: vllm serve {info['out_dir']}"
        self.notify(self.note, title="export", timeout=10)
        self.render_view({"status"})

    def action_cost_table(self) -> None:
        """A --target-speedup session's cost table as plots (screens/cost.py)."""
        from selfpruner.core.cost_table import CostTable

        from .cost import CostTableScreen
        with Store(self.db_path, readonly=True) as st:
            stored = st.results("cost-table")
        if not stored:
            self.notify("this session searched for a ratio β: it has no cost table (--target-speedup measures one)")
            return
        self.app.push_screen(CostTableScreen(CostTable.from_dict(stored[0]["payload"])))

    def action_measure(self) -> None:
        """Speed, zero-shot, LoRA or the report of the export, as a background job (screens/jobs.py)."""
        from .jobs import JobsScreen
        self.app.push_screen(JobsScreen(self.db_path), self._measured)

    def _measured(self, result: dict | None) -> None:
        if result is None:
            return
        from selfpruner.core.results.session_summary import results_line
        with Store(self.db_path, readonly=True) as st:
            line = results_line(st)
        self.note = line or (result["output"][-1] if result["output"] else f"{result['job']} done")
        self.notify(self.note, title=result["job"], timeout=10)
        self.render_view({"status"})

    def action_control(self, command: str) -> None:
        """Ask the process that runs this session to pause, resume or stop (core/steering.py)."""
        from selfpruner.core.steering import request

        from ..errors import USER_ERRORS, one_line
        try:
            with Store(self.db_path) as store:
                request(store, command, tool="selfpruner-tui")
        except USER_ERRORS as e:
            self.notify(one_line(e), severity="error")
            return
        self.notify(f"asked the run to {command}; it obeys at its next evaluation boundary", timeout=5)

    def action_resume(self) -> None:
        from selfpruner.core.layer_search.session import resume_config

        from ..errors import USER_ERRORS, one_line
        from .run import RunScreen
        try:
            cfg, path = resume_config(str(self.db_path), str(self.db_path.parent))
        except USER_ERRORS as e:
            self.notify(one_line(e), severity="error")
            return
        self.app.push_screen(RunScreen(cfg, resume=path), self._after_resume)

    def _after_resume(self, error) -> None:
        if error is not None:
            self.notify(error.message, title="cannot resume", severity="error", timeout=10)
        self.state = self._load()  # the resumed run wrote more generations
        last = self.state.last_generation or 0
        self.generation = last
        self.query_one(GenerationScrubber).set_range(last, last)
        self.refresh_bindings()
        self.render_view()
