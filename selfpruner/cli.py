"""`selfpruner` command line: the parser and the entry point. Each command group lives in selfpruner/commands/
(search, sessions, results, metric, cost), rendering the core's events with rich (commands/common.py)."""
from __future__ import annotations

import argparse
import os
import sys

from rich.markup import escape

from selfpruner.core.config import DATA_SOURCES, Data, Fitness, Placement, Pruning
from selfpruner.core.cost_table import ENGINES
from selfpruner.core.proposers.registry import LAYER_PROPOSERS, METRIC_PROPOSERS
from selfpruner.core.results.gguf_export import ALIGN, FORMATS, OUTTYPES

from .commands.common import USER_ERRORS, console
from .commands.cost import cmd_cost_table
from .commands.metric import cmd_metric_search, cmd_prune
from .commands.options import SettingsParser, add_settings
from .commands.results import cmd_eval, cmd_export, cmd_lora, cmd_speed
from .commands.search import BASELINE_FITNESS, SEARCH_PARTS, cmd_baseline, cmd_replay, cmd_search
from .commands.sessions import cmd_control, cmd_report, cmd_sessions, cmd_show


def _baseline_settings(p):
    add_settings(p, Pruning, Data, skip=("decimals",))
    add_settings(p, Fitness, only=BASELINE_FITNESS)


def _device_options() -> argparse.ArgumentParser:
    """Every command that loads a model: where it runs, in what precision, how many windows per forward."""
    p = argparse.ArgumentParser(add_help=False)
    add_settings(p.add_argument_group("device"), Placement)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = SettingsParser(prog="selfpruner", description="LLM-driven structured pruning search")
    sessions = argparse.ArgumentParser(add_help=False)  # every command that reads or writes sessions
    sessions.add_argument("--sessions-dir", default=os.environ.get("SELFPRUNER_SESSIONS", "sessions"))
    device = _device_options()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("search", parents=[sessions, device], help="Self-Pruner layer-rate search")
    add_settings(p, *SEARCH_PARTS, choices={"proposer": list(LAYER_PROPOSERS)})
    p.add_argument("--no-mutation", action="store_true", help="ablation: M+S crossovers, no mutation")
    p.add_argument("--no-crossover", action="store_true", help="ablation: M+S mutations, no crossover")
    p.add_argument("--resume", default=None, metavar="SESSION", help="continue a stopped or killed session")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("baseline", parents=[sessions, device], help="evaluate uniform or OWL layer rates")
    _baseline_settings(p)
    p.add_argument("--method", choices=["uniform", "owl", "flap"], default="uniform",
                   help="flap: FLAP's global adaptive structure (standardised fluctuation scores)")
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.set_defaults(fn=cmd_baseline)

    p = sub.add_parser("sessions", parents=[sessions], help="list stored sessions")
    p.set_defaults(fn=cmd_sessions)

    p = sub.add_parser("show", parents=[sessions],
                       help="a session's best config and per-generation fitness")
    p.add_argument("session")
    p.add_argument("--json", action="store_true", help="the session and its generations as JSON")
    p.add_argument("--csv", action="store_true", help="every candidate (generation, origin, parents, fitness, rates) "
                                                      "as CSV")
    p.add_argument("--history-json", action="store_true", help="every candidate as JSON")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("control", parents=[sessions],
                       help="pause, resume or stop a search that runs in another process")
    p.add_argument("session")
    p.add_argument("command", choices=["pause", "resume", "stop", "stop-after-generation"])
    p.add_argument("--wait", type=float, default=None, metavar="S", help="wait up to S seconds until it obeys")
    p.set_defaults(fn=cmd_control)

    p = sub.add_parser("report", parents=[sessions],
                       help="an HTML page with plots (PNG and SVG) of one or more sessions, offline")
    p.add_argument("session", nargs="+")
    p.add_argument("--out", required=True, help="directory for index.html and its figures")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("replay", parents=[sessions, device],
                       help="re-run a session with its stored proposer answers and compare")
    p.add_argument("session")
    p.add_argument("--no-final", action="store_true")
    p.add_argument("--rel-tol", type=float, default=0.0, metavar="X",
                   help="accept fitness values within X relative (default 0: bit-identical, as on the machine that "
                        "ran it; another CPU's or a GPU's kernels round the last bits differently)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("metric-search", parents=[sessions, device],
                       help="Pruner-Zero: evolve a symbolic pruning metric")
    p.add_argument("--model", default=None)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--p-mutation", type=float, default=0.5)
    p.add_argument("--min-depth", type=int, default=3)
    p.add_argument("--max-depth", type=int, default=5)
    p.add_argument("--budget-tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--grad-tokens", type=int, default=4096)
    p.add_argument("--no-gradients", action="store_true", help="search over W and X only")
    p.add_argument("--final-tokens", type=int, default=4096)
    p.add_argument("--update", choices=["none", "sparsegpt"], default="none",
                   help="sparsegpt: the final model keeps the best metric's mask with SparseGPT's update of the kept "
                        "weights, scored beside SparseGPT alone")
    p.add_argument("--race-top", type=int, default=5,
                   help="score the best N again on --race-tokens before the final evaluation (0/1: no race)")
    p.add_argument("--race-tokens", type=int, default=0, help="search tokens of that race (0: 4 x --budget-tokens)")
    p.add_argument("--proposer", choices=list(METRIC_PROPOSERS), default=None, help="let an LLM write metrics too")
    p.add_argument("--proposer-model", default=None,
                   help="llama-cpp: a GGUF path or smollm2 / bundled (default: bundled gemma-3-270m); openai: the "
                        "model name (default gpt-4o)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="--proposer openai against an OpenAI-compatible server (vllm serve, llama-cpp-python's "
                        "server, Ollama); no API key needed")
    p.add_argument("--llm-every", type=int, default=0, help="ask the LLM every N iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=DATA_SOURCES, default="auto")
    p.add_argument("--resume", default=None, metavar="SESSION")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_metric_search)

    p = sub.add_parser("prune", parents=[device], help="unstructured pruning by any metric, or SparseGPT")
    p.add_argument("--method", choices=["metric", "sparsegpt"], default="metric",
                   help="metric: mask the lowest scores of --metric; sparsegpt: OBS mask and weight update")
    p.add_argument("--metric", default=None, help='e.g. "mul(abs(W), X)" or "|W| * X" (--method metric)')
    p.add_argument("--update", choices=["none", "sparsegpt"], default="none",
                   help="sparsegpt: the metric chooses the mask, SparseGPT's OBS update rebuilds the kept weights")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default=None, metavar="N:M",
                   help="semi-structured: N kept of every M inputs (2:4 is what GPUs accelerate); sets the sparsity")
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=4096, help="test tokens for the ppl report")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data", choices=DATA_SOURCES, default="auto")
    p.add_argument("--out", default=None, help="save the pruned (same-shape, zeroed) model here")
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser("export", parents=[sessions, device],
                       help="save the physically smaller model of a session's best candidate",
                       description="The model loads in the session's dtype, where it ran (or --device); --dtype "
                                   "is that of the saved weights (auto: the session's).")
    p.add_argument("session")
    p.add_argument("--out", required=True)
    p.add_argument("--candidate", type=int, default=None, help="candidate id (default: the best)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="hf: a transformers directory; gguf: one file for llama.cpp, llama-server and Ollama "
                        "(default: gguf when --out ends in .gguf)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16", help="GGUF weight type (default f16)")
    p.add_argument("--align", type=int, default=ALIGN, metavar="N",
                   help=f"GGUF: pad MLP widths with zero channels (exact) to multiples of N (default {ALIGN}: "
                        f"llama.cpp runs unaligned widths' prompts far slower; 1 = as searched)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", parents=[sessions, device],
                       help="zero-shot accuracy through lm-eval")
    p.add_argument("model_dir", metavar="MODEL", help="an export, or a model as search takes it (smollm2, bundled, "
                                                      "a GGUF, an HF dir)")
    p.add_argument("--tasks", default=None, help="comma list of lm-eval tasks or task YAML files "
                                                 "(default: the paper's seven)")
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--include-path", default=None)
    p.add_argument("--data-dir", default=None, metavar="PATH",
                   help="read piqa from local files here (PIQA's valid.jsonl + valid-labels.lst) instead of the hub")
    p.add_argument("--engine", choices=("transformers", "llama-cpp", "vllm"), default=None,
                   help="what runs the model (default: llama-cpp for a .gguf, else transformers); vllm: lm-eval's vLLM "
                        "model, an export loading through selfpruner's plugin")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("speed", parents=[sessions, device],
                       help="parameters, memory and tokens/s of a saved model vs dense")
    p.add_argument("model_dir", metavar="MODEL", help="an export (directory or .gguf), or a model as search takes it")
    p.add_argument("--dense", default=None,
                   help="the dense model: a name as for search (smollm2, bundled, HF dir) or, with --engine llama-cpp, "
                        "a .gguf (a name is written as GGUF in the pruned file's type first); default: bundled")
    p.add_argument("--engine", choices=["transformers", "llama-cpp", "vllm"], default=None,
                   help="what runs the models (default: llama-cpp for a .gguf, else transformers); vllm: offline "
                        "batched throughput of --batch-size prompts (default 16), the export through selfpruner's "
                        "vLLM plugin")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds per model after a warm-up (median and min-max reported)")
    p.add_argument("--prefill-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="--engine vllm: the report as JSON (for scripts)")
    p.set_defaults(fn=cmd_speed)

    p = sub.add_parser("cost-table", parents=[device],
                       help="a model's per-layer costs on a serving engine (what --target-speedup predicts with)",
                       description="Measured with probe models of the model's shape (random weights) against its "
                                   "dense shape, once per engine and workload; cached, and printed.")
    p.add_argument("model", nargs="?", default=None, help="a model as search takes it (default: bundled)")
    p.add_argument("--engine", choices=ENGINES, default="llama-cpp")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per probe pair after a warm-up")
    p.add_argument("--points", type=int, default=12, help="MLP widths probed, about (each one probe model)")
    p.add_argument("--refresh", action="store_true", help="measure again even where a cached table exists")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="also measure N random allocations and print the prediction error")
    p.add_argument("--check-seed", type=int, default=0, metavar="S",
                   help="which random allocations --check draws (another seed: a check set the table was not fitted on)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_cost_table)

    p = sub.add_parser("lora", parents=[sessions, device],
                       help="optional LoRA (r=8) recovery of a saved model on local text")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.set_defaults(fn=cmd_lora)
    return ap


def _show_core_warnings() -> None:
    """The core logs what the user should know but need not act on (e.g. WikiText-2 falling back to the
    local copy): show its WARNING-and-up records as one line each on stderr, above any progress bar."""
    import logging

    from rich.text import Text

    class OneLine(logging.Handler):
        def emit(self, record):
            msg = record.getMessage().strip()
            msg = msg.splitlines()[0] if msg else record.name
            style = "red" if record.levelno >= logging.ERROR else "yellow"
            console.print(Text.assemble((f"{record.levelname.lower()}: ", style), msg))

    logger = logging.getLogger("selfpruner")
    if not any(type(h).__name__ == "OneLine" for h in logger.handlers):
        logger.addHandler(OneLine(logging.WARNING))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _show_core_warnings()
    try:
        return args.fn(args)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        console.print(f"[red]error:[/] {escape(msg)}", highlight=False)  # a message may hold [brackets]
        return 2
    except KeyboardInterrupt:
        console.print("[red]aborted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
