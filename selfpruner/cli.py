"""`selfpruner` command line: the parser and the entry point. Each command group lives in selfpruner/commands/
(search, sessions, results, metric), rendering the core's events with rich (commands/common.py)."""
from __future__ import annotations

import argparse
import os
import sys

from rich.markup import escape

from selfpruner.core.proposers.registry import LAYER_PROPOSERS, METRIC_PROPOSERS

from .commands.common import USER_ERRORS, console
from .commands.metric import cmd_metric_search, cmd_prune
from .commands.results import cmd_eval, cmd_export, cmd_lora, cmd_speed
from .commands.search import cmd_baseline, cmd_replay, cmd_search
from .commands.sessions import cmd_report, cmd_sessions, cmd_show


def _common(p):
    p.add_argument("--model", default=None, help="HF dir, hub id or .gguf (default: bundled gemma-3-270m)")
    p.add_argument("--ratio", "--beta", dest="ratio", type=float, default=0.3, help="mean pruning rate β in (0,1)")
    p.add_argument("--budget-tokens", type=int, default=None,
                   help="tokens per search-time fitness (default: one --seq-len window)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--final-tokens", type=int, default=None, help="final evaluation tokens (default: all)")
    p.add_argument("--importance", choices=["wanda-sp", "flap"], default="wanda-sp",
                   help="what orders a layer's heads and channels for removal (flap: Var(X)·||W||²)")
    p.add_argument("--compensate", action="store_true",
                   help="FLAP bias compensation: removed heads/channels leave their mean output as a bias")
    p.add_argument("--lo", type=float, default=0.0, help="lowest per-layer rate")
    p.add_argument("--hi", type=float, default=1.0, help="highest per-layer rate")
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    _bos(p)



def _batch(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, not {text!r}")
    return int(text)


def _device_options() -> argparse.ArgumentParser:
    """Every command that loads a model: where it runs, in what precision, how many windows per forward."""
    from selfpruner.core.config import DEVICE_MAPS, DTYPES

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when visible, else CPU)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="weights (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--device-map", choices=DEVICE_MAPS, default=None,
                   help="spread a model larger than one GPU over all visible GPUs (accelerate)")
    g.add_argument("--batch-size", type=_batch, default=None, metavar="N|auto",
                   help="windows per forward (auto: as many as free GPU memory holds; 1 on the CPU)")
    return p


def _bos(p):
    p.add_argument("--bos", choices=["auto", "on", "off"], default="auto",
                   help="BOS token at the start of every window (auto: as the model's tokenizer does)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfpruner", description="LLM-driven structured pruning search")
    sessions = argparse.ArgumentParser(add_help=False)  # every command that reads or writes sessions
    sessions.add_argument("--sessions-dir", default=os.environ.get("SELFPRUNER_SESSIONS", "sessions"))
    device = _device_options()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("search", parents=[sessions, device], help="Self-Pruner layer-rate search")
    _common(p)
    p.add_argument("--proposer", default="llama-cpp", choices=list(LAYER_PROPOSERS))
    p.add_argument("--proposer-model", default=None, help="GGUF / OpenAI model / vLLM model for the proposer")
    p.add_argument("--replay-from", default=None, help="session to replay (with --proposer replay)")
    p.add_argument("-K", "--population", type=int, default=30)
    p.add_argument("-M", "--mutations", type=int, default=10)
    p.add_argument("-S", "--crossovers", type=int, default=10)
    p.add_argument("-N", "--generations", type=int, default=20)
    p.add_argument("--init", choices=["llm", "random"], default="llm", help="random = paper's ablation")
    p.add_argument("--no-mutation", action="store_true", help="ablation: M+S crossovers, no mutation")
    p.add_argument("--no-crossover", action="store_true", help="ablation: M+S mutations, no crossover")
    p.add_argument("--selection", choices=["llm", "inline"], default="llm",
                   help="llm: the LLM selects M parents first (Algorithm 1); inline: it cites parents as it writes")
    p.add_argument("--no-final", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--llm-threads", type=int, default=None, metavar="N",
                   help="llama-cpp threads (default: as many as torch uses; 1 on a box busy with other jobs)")
    p.add_argument("--fitness", choices=["ppl", "kl"], default="ppl",
                   help="search fitness: ppl, or KL from the dense model (EvoPress); the final score is ppl")
    p.add_argument("--kl-k", type=int, default=64, help="dense top-k log-probs kept for --fitness kl")
    p.add_argument("--race", default=None, metavar="TOKENS:N,...",
                   help="racing, e.g. 512:all,2048:4,8192:1: offspring on 512 tokens, the best 4 on 2048, the best 1 "
                        "on 8192 (joins the population); the last budget is the search budget")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="evaluate candidates on N Ray workers, each holding the model (pip install "
                        "'selfpruner[distributed]'); 0 = in this process")
    p.add_argument("--ray-address", default=None, metavar="ADDR|auto",
                   help="join a running Ray cluster instead of starting a local one")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs each Ray worker owns (default 1 where the cluster has GPUs); above 1 it spreads the "
                        "model over them with a device map")
    p.add_argument("--decimals", type=int, default=5, help="decimals of every rate (prompts and repair)")
    p.add_argument("--prompt-fitness", choices=["ppl", "rank"], default="ppl",
                   help="what the LLM sees of each population member: its ppl or its rank")
    p.add_argument("--prompt-sensitivity", action="store_true",
                   help="measure each layer's sensitivity once (n_layers evaluations) and show it in the prompts")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="--proposer openai against any OpenAI-compatible server (vllm serve, llama-cpp-python's "
                        "server, Ollama), e.g. http://127.0.0.1:8000/v1; no API key needed")
    p.add_argument("--llm-concurrency", type=int, default=4, metavar="N",
                   help="openai: requests in flight at once (a generation's mutation and crossover calls)")
    p.add_argument("--vllm-gpu-share", type=float, default=0.3, metavar="F",
                   help="vllm: fraction of the GPU's memory the proposer takes (the pruned model shares the rest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, metavar="SESSION", help="continue a stopped or killed session")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("baseline", parents=[sessions, device], help="evaluate uniform or OWL layer rates")
    _common(p)
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
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("report", parents=[sessions],
                       help="an HTML page with plots (PNG and SVG) of one or more sessions, offline")
    p.add_argument("session", nargs="+")
    p.add_argument("--out", required=True, help="directory for index.html and its figures")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("replay", parents=[sessions, device],
                       help="re-run a session with its stored proposer answers and compare")
    p.add_argument("session")
    p.add_argument("--no-final", action="store_true")
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
    p.add_argument("--proposer", choices=list(METRIC_PROPOSERS), default=None, help="let an LLM write metrics too")
    p.add_argument("--llm-every", type=int, default=0, help="ask the LLM every N iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    p.add_argument("--resume", default=None, metavar="SESSION")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_metric_search)

    p = sub.add_parser("prune", parents=[device], help="apply any metric as unstructured pruning")
    p.add_argument("--metric", required=True, help='e.g. "mul(abs(W), X)" or "|W| * X"')
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=4096, help="test tokens for the ppl report")
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data", choices=["auto", "hub", "local"], default="auto")
    p.add_argument("--out", default=None, help="save the pruned (same-shape, zeroed) model here")
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser("export", parents=[sessions, device],
                       help="save the physically smaller model of a session's best candidate",
                       description="The model loads in the session's dtype, where it ran (or --device); --dtype "
                                   "is that of the saved weights (auto: the session's).")
    p.add_argument("session")
    p.add_argument("--out", required=True)
    p.add_argument("--candidate", type=int, default=None, help="candidate id (default: the best)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", parents=[sessions, device],
                       help="zero-shot accuracy of a saved model through lm-eval")
    p.add_argument("model_dir")
    p.add_argument("--tasks", default=None, help="comma list of lm-eval tasks or task YAML files "
                                                 "(default: the paper's seven)")
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--include-path", default=None)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("speed", parents=[sessions, device],
                       help="parameters, memory and tokens/s of a saved model vs dense")
    p.add_argument("model_dir")
    p.add_argument("--dense", default=None, help="the dense model spec (default: bundled)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--vllm", action="store_true", help="also measure with vLLM (GPU box, .[gpu] extra)")
    p.set_defaults(fn=cmd_speed)

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
