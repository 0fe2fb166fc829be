"""The start screen: a SearchConfig as a form. Bad input and anything the core refuses (ConfigError,
ProposerError, ModelLoadError, StoreError) is shown inline; a proposer that cannot start (no API key)
gets a one-key switch to an offline proposer (llama-cpp or numeric). Under the final-evaluation budget the
form says how many test tokens that evaluation scores and about how long it takes."""
from __future__ import annotations

import os

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Collapsible, Footer, Header, Input, Label, Select, Static

from selfpruner.core.config import PARTS, ConfigError, SearchConfig, part_fields
from selfpruner.core.proposers.registry import LAYER_PROPOSERS

from ..errors import RunError

PROPOSERS = [(e.label, e.name) for e in LAYER_PROPOSERS.values() if e.in_form]
PROPOSER_HELP = {e.name: e.help for e in LAYER_PROPOSERS.values()}
DATA = [("auto (hub, else the local copy)", "auto"), ("local copy (offline)", "local"), ("hub", "hub")]
DTYPE_CHOICES = [("auto (bfloat16 on a GPU, float32 on the CPU)", "auto"), ("bfloat16", "bfloat16"),
                 ("float16", "float16"), ("float32", "float32")]
IMPORTANCE_CHOICES = [("Wanda-sp (|W|·||X||)", "wanda-sp"), ("FLAP (Var(X)·||W||²)", "flap")]
RECONSTRUCT_CHOICES = [("none", "none"), ("bias (FLAP: removed units leave their mean output)", "bias"),
                       ("least squares (kept o/down columns rebuilt)", "ls")]
ENGINE_CHOICES = [("llama.cpp (f16 GGUF export)", "llama-cpp"), ("transformers (HF export)", "transformers"),
                  ("vLLM (HF export through the plugin)", "vllm")]
OBJECTIVE_CHOICES = [("a request: 128-token prompt + 32 generated", "mix"), ("prompt", "prompt"),
                     ("generation", "generation")]
SPLIT_CHOICES = [("rule (round(p·units) heads, the rest channels)", "rule"),
                 ("flap (heads against channels by FLAP's scores)", "flap"),
                 ("search (each layer's attention rate is searched too)", "search")]
DEVICE_MAP_CHOICES = [("none (one device)", ""), ("auto (spread over all GPUs)", "auto"),
                      ("balanced", "balanced"), ("sequential", "sequential")]
# A setting's label comes with its declaration (core/config.py); the form's input id is the field's name.
LABELS = {f.name: f.metadata["label"] for f in part_fields(*PARTS) if f.metadata["label"]}
# (SearchConfig field = input id, label, type)
NUMBERS = [(k, LABELS[k], int) for k in ("population", "mutations", "crossovers", "generations")]
ADVANCED = [(k, LABELS[k], int) for k in ("seq_len", "calib_tokens", "seed")]
FINAL = ("final_tokens", LABELS["final_tokens"], int)  # empty = the whole test stream

# Before a model has loaded, the final evaluation's size and speed are known only for the bundled
# gemma-3-270m, roughly: its tokenizer makes 292,281 tokens of the WikiText-2 test text (the local copy; the
# hub's test split is the same text), and on the 2-core CPU this is developed on, its whole offline test
# stream (137,728 tokens at β = 0.3) took ~20 min alongside other jobs, ~120 tokens/s (idle, bench/RESULTS.md
# fitness_cost measures ~190). Once a search has run, the app's own measurement replaces the speed, and a
# resident model its real test stream.
BUNDLED_TEST_TOKENS = 292_281
BUNDLED_TOKENS_PER_S = 120.0
# SmolLM2-135M on the same CPU: one 512-token fitness in ~0.9 s (../shared/DESIGN.md §5).
ROUGH_TOKENS_PER_S = {None: BUNDLED_TOKENS_PER_S, "bundled": BUNDLED_TOKENS_PER_S, "smollm2": 570.0}
# K, M, S, N: a search that ends in minutes on a CPU, and the paper's (F2 switches between them).
QUICK_SIZES = (8, 3, 3, 5)
PAPER_SIZES = (30, 10, 10, 20)

# CLI flag in the core's messages -> (form label, input id): every setting typed into the form under its long flag,
# and the messages that name no flag; longest first, so that --device-map is said before --device.
TYPED = [k for k, _, _ in NUMBERS + ADVANCED] + ["beta", "budget_tokens", "final_tokens", "device", "batch_size",
                                                 "workers", "race", "target_speedup"]
_SAID = {next(x for x in (f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)) if x.startswith("--")):
         (LABELS[f.name], f.name) for f in part_fields(*PARTS) if f.name in TYPED}
_SAID |= {"mutation and crossover": (None, "mutations"), "bounds": (None, "beta"),
          "--device-map": (LABELS["device_map"], "device")}
FLAGS = dict(sorted(_SAID.items(), key=lambda kv: -len(kv[0])))


def _input(key: str, value, **kw) -> Input:
    """A borderless one-line field whose id is the SearchConfig field it edits."""
    return Input("" if value is None else str(value), id=key, compact=True, **kw)


def _row(label: str, widget) -> ComposeResult:
    with Horizontal(classes="form-row"):
        yield Label(label, classes="form-label")
        yield widget


def missing_key(proposer: str) -> str | None:
    """What the proposer is missing from the environment, said before anything loads."""
    if proposer == "openai" and not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
        return "OPENAI_API_KEY is not set, so the OpenAI proposer cannot start."
    return None


class StartScreen(Screen):
    BINDINGS = [
        Binding("ctrl+r", "start", "Start search"),
        Binding("ctrl+o", "browse", "Sessions"),
        Binding("ctrl+n", "offline", "Use numeric proposer", show=False),
        Binding("f2", "sizes", "Quick / paper sizes"),
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
            yield from _row(FINAL[1], _input("final_tokens", d.final_tokens,
                                             placeholder="empty = the whole test stream"))
            yield Static("", id="final-help")
            with Collapsible(title="advanced", id="advanced"):
                for key, label, _ in ADVANCED:
                    yield from _row(label, _input(key, getattr(d, key)))
                yield from _row("WikiText-2", Select(DATA, value=d.data, allow_blank=False, compact=True, id="data"))
                yield from _row("importance", Select(IMPORTANCE_CHOICES, value=d.importance, allow_blank=False,
                                                     compact=True, id="importance"))
                yield from _row(LABELS["reconstruct"], Select(RECONSTRUCT_CHOICES, value=d.reconstruct,
                                                              allow_blank=False, compact=True, id="reconstruct"))
                yield from _row(LABELS["sequential"], Checkbox("final rebuilt layer by layer (least squares)",
                                                               value=d.sequential, compact=True, id="sequential"))
                yield from _row(LABELS["split"], Select(SPLIT_CHOICES, value=d.split, allow_blank=False, compact=True,
                                                        id="split"))
                yield from _row(LABELS["target_speedup"], _input("target_speedup", d.target_speedup,
                                                                 placeholder="empty = prune to the ratio β"))
                yield from _row(LABELS["engine"], Select(ENGINE_CHOICES, value=d.engine, allow_blank=False,
                                                         compact=True, id="engine"))
                yield from _row(LABELS["objective"], Select(OBJECTIVE_CHOICES, value=d.objective, allow_blank=False,
                                                            compact=True, id="objective"))
                yield from _row("device", _input("device", d.device, placeholder="auto | cpu | cuda | cuda:N"))
                yield from _row("dtype", Select(DTYPE_CHOICES, value=d.dtype, allow_blank=False, compact=True,
                                                id="dtype"))
                yield from _row("device map", Select(DEVICE_MAP_CHOICES, value=d.device_map or "",
                                                     allow_blank=False, compact=True, id="device_map"))
                yield from _row("windows / forward", _input("batch_size", d.batch_size,
                                                            placeholder="auto (free GPU memory; 1 on the CPU)"))
                yield from _row("Ray workers", _input("workers", d.workers or None,
                                                      placeholder="0 = this process (pip install .[distributed])"))
                yield from _row("race", _input("race", d.race, placeholder="e.g. 512:all,2048:4,8192:1"))
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
        self._explain_final()
        self._proposer_changed(self.query_one("#proposer", Select).value)
        self.query_one("#model", Input).focus()

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self._explain_final()  # back from a search: the model may be resident now, its speed measured

    # ---- proposer hints -----------------------------------------------------------------------
    @on(Select.Changed, "#proposer")
    def _on_proposer(self, event: Select.Changed) -> None:
        self._proposer_changed(event.value)

    def _proposer_changed(self, name) -> None:
        self.query_one("#proposer-help", Static).update(Text(PROPOSER_HELP.get(name, ""), style="dim"))
        self._explain_budget()
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
        self._explain_final()

    @on(Select.Changed, "#data")
    @on(Checkbox.Changed, "#final_eval")
    def _final_settings_changed(self) -> None:
        self._explain_final()

    def _explain_final(self) -> None:
        """How many test tokens the final evaluation scores, and about how long that takes."""
        def value(key):
            text = self.query_one(f"#{key}", Input).value.strip()
            return int(text) if text else None
        try:
            final_tokens, seq_len, calib = value("final_tokens"), value("seq_len"), value("calib_tokens")
        except ValueError:
            final_tokens = seq_len = calib = -1
        model = self.query_one("#model", Input).value.strip() or None
        data = str(self.query_one("#data", Select).value)
        app = self.app
        bench = app.resident(model, data) if hasattr(app, "resident") else None
        lines = final_estimate(enabled=self.query_one("#final_eval", Checkbox).value, model=model, data=data,
                               seq_len=seq_len, calib_tokens=calib, final_tokens=final_tokens, bench=bench,
                               measured=getattr(app, "throughput", None))
        self.query_one("#final-help", Static).update(Text("\n".join(lines), style="dim"))

    def action_sizes(self) -> None:
        """Switch K, M, S, N between a search that ends in minutes on a CPU and the paper's."""
        now = tuple(self.query_one(f"#{key}", Input).value for key, _, _ in NUMBERS)
        sizes = PAPER_SIZES if now == tuple(map(str, QUICK_SIZES)) else QUICK_SIZES
        for (key, _, _), v in zip(NUMBERS, sizes):
            self.query_one(f"#{key}", Input).value = str(v)

    def _explain_budget(self) -> None:
        """K, M, S, N in words, with the number of fitness evaluations they cost and about how long those take
        (measured in this app's last search on the model, else a rough CPU figure; LLM proposals come on top)."""
        try:
            k, m, s, n = (int(self.query_one(f"#{key}", Input).value) for key, _, _ in NUMBERS)
            evals = k + n * (m + s)
            cost = f" → {evals} evaluations"
            budget = self.query_one("#budget_tokens", Input).value.strip() or self.query_one("#seq_len", Input).value
            model = self.query_one("#model", Input).value.strip() or None
            measured = getattr(self.app, "throughput", None)
            rate = (measured.rate if measured is not None and measured.rate and measured.model == model
                    else ROUGH_TOKENS_PER_S.get(model))
            if rate:
                cost += f" ≈ {duration(evals * int(budget) / rate)}"
                if str(self.query_one("#proposer", Select).value) != "numeric":
                    cost += " + LLM calls"
        except ValueError:
            k = m = s = n = "?"
            cost = ""
        self.query_one("#kmsn-help", Static).update(Text(
            f"population {k}, {m} mutations + {s} crossovers per generation, {n} generations{cost} (F2: "
            f"{'paper' if (k, m, s, n) != PAPER_SIZES else 'quick'} sizes)", style="dim"))

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
        for key, label, typ in NUMBERS + [("budget_tokens", LABELS["budget_tokens"], int), FINAL] + ADVANCED:
            setattr(cfg, key, self._number(key, label, typ, optional=key == "final_tokens"))
        cfg.init = "random" if self.query_one("#init_random", Checkbox).value else "llm"
        cfg.final_eval = self.query_one("#final_eval", Checkbox).value
        cfg.reconstruct = str(self.query_one("#reconstruct", Select).value)
        cfg.sequential = self.query_one("#sequential", Checkbox).value
        cfg.data = str(self.query_one("#data", Select).value)
        cfg.importance = str(self.query_one("#importance", Select).value)
        cfg.split = str(self.query_one("#split", Select).value)
        cfg.target_speedup = self._number("target_speedup", LABELS["target_speedup"], float, optional=True)
        cfg.engine = str(self.query_one("#engine", Select).value)
        cfg.objective = str(self.query_one("#objective", Select).value)
        cfg.device = self.query_one("#device", Input).value.strip() or "auto"
        cfg.dtype = str(self.query_one("#dtype", Select).value)
        cfg.device_map = str(self.query_one("#device_map", Select).value) or None
        cfg.batch_size = self._number("batch_size", "windows / forward", int, optional=True)
        cfg.workers = self._number("workers", "Ray workers", int, optional=True) or 0
        cfg.race = self.query_one("#race", Input).value.strip() or None
        if cfg.race:  # the form's budget field gives way to the race's (the race rule, in racing.search_budget)
            cfg.budget_tokens = cfg.race_budget()
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


# ---- the final evaluation's estimate -------------------------------------------------------------------
def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s} s" if s else f"{m} min"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def window_tokens(stream: int, seq_len: int, bos: bool, final_tokens: int | None) -> int:
    """Tokens the final evaluation scores from a `stream`-token test text: TokenData.windows' count."""
    n = stream // (seq_len - bos)
    if final_tokens is not None:
        n = min(n, max(1, final_tokens // seq_len))
    return n * seq_len


def final_estimate(*, enabled: bool, model: str | None, data: str, seq_len: int | None, calib_tokens: int | None,
                   final_tokens: int | None, bench=None, measured=None) -> list[str]:
    """The form's lines about the final evaluation. Test tokens come from the resident model's test stream
    (`bench`), else for the bundled model from BUNDLED_TEST_TOKENS; speed from `measured` (the app's last
    search, if on this model and context), else for the bundled model BUNDLED_TOKENS_PER_S."""
    if not enabled:
        return ["no final evaluation: switched off under advanced"]
    if seq_len is None or calib_tokens is None or min(seq_len, calib_tokens) < 2 or (final_tokens or 0) < 0:
        return ["final evaluation: no estimate until the token counts and context are whole numbers"]
    # the test text's length in tokens: [offline copy, hub] when 'auto' may end up on either
    if bench is not None:
        td = bench.data
        test = len(td.test)
        if td.source.startswith("local:") and len(td.calib) != calib_tokens:  # the form moves the cut
            test = (len(td.test) + len(td.search) + len(td.calib) - calib_tokens) // 2
        streams, bos, exact = [max(0, test)], td.bos is not None, True
    elif model is None:
        local = max(0, BUNDLED_TEST_TOKENS - calib_tokens) // 2  # the offline copy's final half (core/model/data.py)
        streams = {"hub": [BUNDLED_TEST_TOKENS], "auto": [local, BUNDLED_TEST_TOKENS]}.get(data, [local])
        bos, exact = True, False
    else:
        streams, bos, exact = None, False, False
    if measured is not None and measured.rate and measured.model == model and measured.seq_len == seq_len:
        rate, why = measured.rate, "measured in this app's last search"
    elif model is None:
        rate, why = BUNDLED_TOKENS_PER_S, "a rough CPU figure for gemma-3-270m"
    else:
        rate, why = None, ""

    def say(ft: int | None) -> str:
        """'N tokens ≈ T', with ' (hub: N ≈ T)' when that source would score a different count."""
        cap = None if ft is None else max(1, ft // seq_len) * seq_len
        counts = [cap] if streams is None else list(dict.fromkeys(window_tokens(n, seq_len, bos, ft)
                                                                  for n in streams))
        said = []
        for i, t in enumerate(counts):
            approx = not exact and t != cap
            said.append((f"~{round(t, -3):,}" if approx and t >= 10_000 else f"{t:,}") + (" tokens" * (i == 0))
                        + (f" ≈ {duration(t / rate)}" if rate else ""))
        return said[0] + (f" (hub: {said[1]})" if len(said) > 1 else "")

    if streams is None and final_tokens is None:
        first = "final evaluation: the whole test stream, its size unknown until the model loads"
    else:
        first = f"final evaluation: {say(final_tokens)}"
    speed = f"at ~{rate:,.0f} tok/s, {why}" if rate else "time unknown until a search has run on this model"
    if final_tokens is None:
        return [first, speed, "empty = the whole test stream; a number of tokens caps it"]
    whole = "the whole test stream, its size unknown until the model loads" if streams is None else \
        "all " + say(None).replace(" tokens", " test tokens", 1)
    return [first, speed, f"empty = {whole}"]
