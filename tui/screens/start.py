"""The start screen: a SearchConfig as a form. Bad input and anything the core refuses (ConfigError,
ProposerError, ModelLoadError, StoreError) is shown inline; a proposer that cannot start (no API key)
gets a one-key switch to an offline proposer (llama-cpp or numeric)."""
from __future__ import annotations

import os

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Collapsible, Footer, Header, Input, Label, Select, Static

from selfpruner.core.config import ConfigError, SearchConfig

from ..errors import RunError

PROPOSERS = [("numeric (offline GA, no LLM)", "numeric"), ("llama-cpp (local GGUF)", "llama-cpp"),
             ("OpenAI API", "openai"), ("vLLM (GPU)", "vllm")]
PROPOSER_HELP = {
    "numeric": "writes mutations and crossovers numerically: no LLM, no key, runs anywhere",
    "llama-cpp": "a local GGUF model via llama-cpp-python (default: the bundled gemma-3-270m)",
    "openai": "needs OPENAI_API_KEY in the environment",
    "vllm": "needs vllm and a GPU",
}
DATA = [("auto (hub, else the local copy)", "auto"), ("local copy (offline)", "local"), ("hub", "hub")]
# (SearchConfig field = input id, label, type)
NUMBERS = [("population", "population K", int), ("mutations", "mutations M", int),
           ("crossovers", "crossovers S", int), ("generations", "generations N", int)]
ADVANCED = [("seq_len", "context (seq len)", int), ("calib_tokens", "calibration tokens", int),
            ("final_tokens", "final eval tokens", int), ("seed", "seed", int)]

# CLI flag in the core's messages -> (form label, input id).
FLAGS = {"--ratio": ("ratio β", "beta"), "--budget-tokens": ("tokens / fitness", "budget_tokens"),
         "--seq-len": ("context (seq len)", "seq_len"), "--population": ("population K", "population"),
         "--generations": ("generations N", "generations"), "mutation and crossover": (None, "mutations"),
         "bounds": (None, "beta")}


def _input(key: str, value, **kw) -> Input:
    """A borderless one-line field whose id is the SearchConfig field it edits."""
    return Input("" if value is None else str(value), id=key, compact=True, **kw)


def _row(label: str, widget) -> ComposeResult:
    with Horizontal(classes="form-row"):
        yield Label(label, classes="form-label")
        yield widget


def missing_key(proposer: str) -> str | None:
    """What the proposer is missing from the environment, said before anything loads."""
    if proposer == "openai" and not os.environ.get("OPENAI_API_KEY"):
        return "OPENAI_API_KEY is not set, so the OpenAI proposer cannot start."
    return None


class StartScreen(Screen):
    BINDINGS = [
        Binding("ctrl+r", "start", "Start search"),
        Binding("ctrl+o", "browse", "Sessions"),
        Binding("ctrl+n", "offline", "Use numeric proposer", show=False),
    ]

    def __init__(self, defaults: SearchConfig) -> None:
        super().__init__()
        self.defaults = defaults

    def compose(self) -> ComposeResult:
        d = self.defaults
        yield Header()
        with VerticalScroll(id="start-body"), Vertical(id="form"):
            yield Static(Text.assemble(("New layer-rate search", "bold"),
                                       ("  (Self-Pruner: an LLM evolves per-layer pruning rates)", "dim")),
                         id="form-title")
            yield from _row("model", _input("model", d.model,
                                            placeholder="bundled gemma-3-270m (or an HF dir, hub id, .gguf)"))
            yield from _row("ratio β", _input("beta", f"{d.beta:g}"))
            yield from _row("proposer", Select(PROPOSERS, value=d.proposer, allow_blank=False, compact=True,
                                               id="proposer"))
            yield Static("", id="proposer-help")
            with Vertical(id="key-warning"):
                yield Static("", id="key-text")
                with Horizontal(id="key-buttons"):
                    yield Button("llama-cpp (offline LLM)", id="use-llama", variant="warning", compact=True)
                    yield Button("numeric (no LLM)", id="use-offline", variant="warning", compact=True)
            yield from _row("proposer model", _input("proposer_model", d.proposer_model,
                                                     placeholder="proposer's default"))
            with Horizontal(classes="form-row"):
                yield Label("K · M · S · N", classes="form-label")
                for key, label, _ in NUMBERS:
                    yield _input(key, getattr(d, key), classes="small-input", tooltip=label)
            yield Static("", id="kmsn-help")
            yield from _row("tokens / fitness", _input("budget_tokens", d.budget_tokens))
            with Collapsible(title="advanced", id="advanced"):
                for key, label, _ in ADVANCED:
                    yield from _row(label, _input(key, getattr(d, key), placeholder="whole test stream"
                                                  if key == "final_tokens" else ""))
                yield from _row("WikiText-2", Select(DATA, value=d.data, allow_blank=False, compact=True, id="data"))
                yield Checkbox("random initial population (paper ablation)", d.init == "random", compact=True,
                               id="init_random")
                yield Checkbox("final evaluation on the test stream", d.final_eval, compact=True, id="final_eval")
            yield Static("", id="error")
            with Horizontal(id="buttons"):
                yield Button("Start search", id="start", variant="primary")
                yield Button("Open a past session", id="browse")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "new search"
        self._explain_budget()
        self._proposer_changed(self.query_one("#proposer", Select).value)
        self.query_one("#model", Input).focus()

    # ---- proposer hints -----------------------------------------------------------------------
    @on(Select.Changed, "#proposer")
    def _on_proposer(self, event: Select.Changed) -> None:
        self._proposer_changed(event.value)

    def _proposer_changed(self, name) -> None:
        self.query_one("#proposer-help", Static).update(Text(PROPOSER_HELP.get(name, ""), style="dim"))
        self.show_key_problem(missing_key(name))

    def show_key_problem(self, message: str | None) -> None:
        warn = self.query_one("#key-warning")
        warn.display = bool(message)
        if message:
            self.query_one("#key-text", Static).update(Text(message + " Switch to an offline proposer?",
                                                            style="yellow"))

    @on(Button.Pressed, "#use-offline")
    def action_offline(self) -> None:
        self._switch_proposer("numeric")

    @on(Button.Pressed, "#use-llama")
    def _use_llama(self) -> None:
        self._switch_proposer("llama-cpp")

    def _switch_proposer(self, name: str) -> None:
        self.query_one("#proposer", Select).value = name
        self.show_error(None)
        self.show_key_problem(None)

    @on(Input.Changed)
    def _edited(self, event: Input.Changed) -> None:
        event.input.remove_class("-bad")  # an edited field is no longer the one the error was about
        self._explain_budget()

    def _explain_budget(self) -> None:
        """K, M, S, N in words, with the number of fitness evaluations they cost."""
        try:
            k, m, s, n = (int(self.query_one(f"#{key}", Input).value) for key, _, _ in NUMBERS)
            cost = f" → {k + n * (m + s)} evaluations"
        except ValueError:
            k = m = s = n = "?"
            cost = ""
        self.query_one("#kmsn-help", Static).update(Text(
            f"population {k}, {m} mutations + {s} crossovers per generation, {n} generations{cost}", style="dim"))

    # ---- reading the form ---------------------------------------------------------------------
    def read_config(self) -> SearchConfig:
        """The form as a validated SearchConfig; ConfigError names the field that is wrong."""
        for w in self.query(Input):
            w.remove_class("-bad")
        cfg = SearchConfig.from_dict(self.defaults.to_dict())
        cfg.model = self.query_one("#model", Input).value.strip() or None
        cfg.proposer = str(self.query_one("#proposer", Select).value)
        cfg.proposer_model = self.query_one("#proposer_model", Input).value.strip() or None
        cfg.beta = self._number("beta", "ratio β", float)
        for key, label, typ in NUMBERS + [("budget_tokens", "tokens / fitness", int)] + ADVANCED:
            setattr(cfg, key, self._number(key, label, typ, optional=key == "final_tokens"))
        cfg.init = "random" if self.query_one("#init_random", Checkbox).value else "llm"
        cfg.final_eval = self.query_one("#final_eval", Checkbox).value
        cfg.data = str(self.query_one("#data", Select).value)
        return cfg.validate()

    def _number(self, key: str, label: str, typ, optional: bool = False):
        w = self.query_one(f"#{key}", Input)
        text = w.value.strip()
        if optional and not text:
            return None
        try:
            return typ(text)
        except ValueError:
            w.add_class("-bad")
            kind = "a whole number" if typ is int else "a number"
            raise ConfigError(f"{label} must be {kind}, got {text!r}") from None

    @staticmethod
    def in_form_terms(message: str) -> str:
        """The core's messages name CLI flags; say them as the form labels them."""
        for flag, (label, _) in FLAGS.items():
            if label:
                message = message.replace(flag, label)
        return message

    def show_error(self, message: str | None) -> None:
        err = self.query_one("#error", Static)
        err.display = bool(message)
        err.update(Text(f"✗ {self.in_form_terms(message)}", style="bold red") if message else "")

    # ---- actions ------------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    @on(Input.Submitted)
    def action_start(self) -> None:
        try:
            cfg = self.read_config()
        except ConfigError as e:
            self.show_error(str(e))
            self._mark(str(e))
            return
        problem = missing_key(cfg.proposer)
        if problem:
            self.show_key_problem(problem)
            self.show_error(problem)
            return
        self.show_error(None)
        from .run import RunScreen
        self.app.push_screen(RunScreen(cfg), self._after_run)

    def _mark(self, message: str) -> None:
        """Mark the input the core's message is about (first flag it names)."""
        for flag, (_, key) in FLAGS.items():
            if flag in message:
                self.query_one(f"#{key}", Input).add_class("-bad")
                break

    def _after_run(self, error: RunError | None) -> None:
        """Back from a run: an error means it never started (nothing stored) and belongs here, inline."""
        if error is None:
            return
        self.show_error(error.message)
        if error.kind == "ProposerError":
            self.show_key_problem(error.message.rstrip(".") + ".")

    @on(Button.Pressed, "#browse")
    def action_browse(self) -> None:
        self.app.show_browser()
