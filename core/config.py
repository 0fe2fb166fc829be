"""SearchConfig: everything a layer-rate search needs, validated once, stored with the session."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import UserError


class ConfigError(UserError, ValueError):
    """Bad user input; the message is one line."""


DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's spreading strategies


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


@dataclass
class SearchConfig:
    model: str | None = None  # None = bundled gemma-3-270m GGUF
    beta: float = 0.3  # target mean pruning rate
    proposer: str = "llama-cpp"  # openai | llama-cpp | vllm | numeric | replay
    proposer_model: str | None = None  # GGUF path / OpenAI model / vLLM model; None = proposer's default
    replay_from: str | None = None  # session path for the replay proposer
    population: int = 30  # K
    mutations: int = 10  # M
    crossovers: int = 10  # S
    generations: int = 20  # N
    lo: float = 0.0  # per-layer rate bounds
    hi: float = 1.0
    # search-time fitness tokens; None = one seq_len window, which ranks as well as four (bench/token_budget.py)
    budget_tokens: int | None = None
    seq_len: int = 512
    calib_tokens: int = 16384
    final_tokens: int | None = None  # final evaluation budget; None = the whole test stream
    final_eval: bool = True
    init: str = "llm"  # llm | random  (paper ablation: random initial population)
    # no-mutation | no-crossover: the paper's ablations, at the same evaluation count (see __post_init__)
    ablation: str = "none"
    # llm: Algorithm 1's selection step (the LLM picks the parents, mutation and crossover see only those);
    # inline: mutation/crossover prompts show the whole population and the LLM cites parents as it writes
    selection: str = "llm"
    bos: str = "auto"  # BOS at the start of every window: auto (the tokenizer's habit) | on | off
    max_retries: int = 3
    temperature: float = 0.8
    llm_threads: int | None = None  # llama-cpp threads; None = as many as torch uses
    # search fitness: ppl, or kl = mean per-token KL(dense ‖ pruned) over the same windows, from the dense
    # model's top-kl_k log-probs (core/model/kl.py); the final evaluation is ppl on test text either way
    fitness: str = "ppl"
    kl_k: int = 64
    # what orders a layer's heads and channels for removal: wanda-sp (|W|·||X||) or flap (Var(X)·||W||²)
    importance: str = "wanda-sp"
    # FLAP's bias compensation: removed heads/channels leave their mean output as a bias of o_proj/down_proj
    compensate: bool = False
    decimals: int = 5  # of every rate: what prompts show and ask for, and repair's unit (10**-decimals)
    prompt_fitness: str = "ppl"  # ppl | rank: what the LLM sees of each population member's fitness
    # prompts carry a per-layer sensitivity table, measured once (n_layers extra evaluations)
    prompt_sensitivity: bool = False
    base_url: str | None = None  # openai: an OpenAI-compatible server (vllm serve, llama-cpp-python, Ollama)
    llm_concurrency: int = 4  # openai: requests in flight at once
    vllm_gpu_share: float = 0.3  # vllm: its gpu_memory_utilization, so the pruned model fits beside it
    seed: int = 0
    data: str = "auto"  # auto | hub | local
    sessions_dir: str = "sessions"
    # Where the model runs. device: auto | cpu | cuda | cuda:N (auto: CUDA when visible, else the CPU).
    # dtype: auto | bfloat16 | float16 | float32; a new session stores the dtype it actually ran in, since the
    # dtype changes every fitness (auto: bfloat16 on CUDA, float32 on the CPU). device_map: accelerate's
    # 'auto' spreads a model larger than one GPU over all visible ones. batch_size: windows per forward,
    # None = auto (from free memory on a GPU, evaluate.CPU_BATCH on the CPU).
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    batch_size: int | None = None
    # Racing (core/layer_search/racing.py), e.g. "512:all,2048:4,8192:1"; its last budget is budget_tokens.
    race: str | None = None
    # Ray (core/layer_search/distributed.py): evaluations run on `workers` actors, each holding one resident workbench;
    # 0 = in this process. ray_address joins a running cluster ('auto' or host:port) instead of starting one.
    # gpus_per_worker: None = 1 where the cluster has GPUs, else 0; above 1 the worker spreads the model
    # over its GPUs with a device map.
    workers: int = 0
    ray_address: str | None = None
    gpus_per_worker: float | None = None

    def __post_init__(self):
        if self.budget_tokens is None:
            self.budget_tokens = self.race_budget()
        # An ablation removes an operator but keeps the offspring count: its share goes to the other one.
        # Idempotent, so a config read back from a session is not shifted twice.
        if self.ablation == "no-mutation":
            self.mutations, self.crossovers = 0, self.mutations + self.crossovers
        elif self.ablation == "no-crossover":
            self.mutations, self.crossovers = self.mutations + self.crossovers, 0

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

    def validate(self) -> "SearchConfig":
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
        if not 1 <= self.decimals <= 6:
            raise ConfigError(f"--decimals must be 1 to 6, got {self.decimals}")
        if self.importance not in ("wanda-sp", "flap"):
            raise ConfigError("--importance must be wanda-sp or flap")
        if self.fitness not in ("ppl", "kl"):
            raise ConfigError("--fitness must be ppl or kl")
        if self.kl_k < 1:
            raise ConfigError(f"--kl-k must be at least 1, got {self.kl_k}")
        if self.prompt_fitness not in ("ppl", "rank"):
            raise ConfigError("--prompt-fitness must be ppl or rank")
        if self.llm_concurrency < 1:
            raise ConfigError(f"--llm-concurrency must be at least 1, got {self.llm_concurrency}")
        if not 0.0 < self.vllm_gpu_share < 1.0:
            raise ConfigError(f"--vllm-gpu-share must be in (0, 1), got {self.vllm_gpu_share}")
        if self.init not in ("llm", "random"):
            raise ConfigError("--init must be llm or random")
        if self.ablation not in ("none", "no-mutation", "no-crossover"):
            raise ConfigError("ablation must be none, no-mutation or no-crossover")
        if self.selection not in ("llm", "inline"):
            raise ConfigError("--selection must be llm or inline")
        if self.bos not in ("auto", "on", "off"):
            raise ConfigError("--bos must be auto, on or off")
        check_placement(self.device, self.dtype, self.device_map, self.batch_size)
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
    def from_dict(cls, d: dict) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
