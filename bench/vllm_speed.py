"""vLLM throughput of pruned exports against their dense model (issue 38), as the Self-Pruner paper measures it:
offline batched generation, prefill and generated tokens/s, both engines in one process taking turns in every
round (`selfpruner speed DIR --engine vllm`). Each pair is measured twice, in two separate processes, to show
whether the protocol's ratio comes back.

Models: SmolLM2-135M-Instruct pruned by FLAP's allocation with bias compensation at β 0.3 and 0.5 (its decode is
dominated by the 28M-parameter embedding/head and per-step overhead), and a weight-dominated shape: a 4-layer cut
of llama-2-7b with random weights (bench/scale.py's build), uniform rates. The ceiling printed beside each ratio is
the dense weight bytes over the pruned ones, what a weight-bound decode step can gain at most.

Runs from the main venv (exports with transformers); vLLM runs in the venv named by --vllm-python (default
.venv-vllm, as .ci/run builds it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]


def smollm2_exports(out: Path, ratios: list[float]) -> list[tuple[str, Path, Path]]:
    from selfpruner.core.baselines.run import baseline_rates
    from selfpruner.core.layer_search.workbench import Workbench
    from selfpruner.core.results.export import export_pruned
    bench = Workbench.build("smollm2", seq_len=512, calib_tokens=8192, data="local", device="cpu", dtype="float32",
                            importance="flap")
    dense = export_pruned(bench.lm, bench.pruner, [0.0] * bench.lm.arch.n_layers, out / "smollm2-dense")
    pairs = []
    bench.set_pruning(True)
    for r in ratios:
        rates = baseline_rates(bench, "flap", r)
        pairs.append((f"SmolLM2 FLAP+comp β {r}", dense, export_pruned(bench.lm, bench.pruner, rates,
                                                                       out / f"smollm2-flap-{r}")))
    return pairs


def llama7b_cut_exports(out: Path, ratios: list[float], layers: int = 4) -> list[tuple[str, Path, Path]]:
    from scale import build_random, random_tokens

    from selfpruner.core.layer_search.workbench import Workbench
    from selfpruner.core.model.models import LoadedModel
    from selfpruner.core.results.export import export_pruned
    from transformers import AutoTokenizer

    from selfpruner.core.model.models import hf_directory
    model = build_random("llama-2-7b", layers, torch.float32, torch.device("cpu"))
    # vLLM wants a tokenizer beside the weights; the prompts are random ids below both vocabularies
    tok = AutoTokenizer.from_pretrained(hf_directory("smollm2"))
    lm = LoadedModel.wrap(model, f"random llama-2-7b ({layers} layers)", tok)
    bench = Workbench.from_parts(lm, random_tokens(32000, 1024, 2048, 2048), seq_len=256, batch_size=1)
    dense = export_pruned(lm, bench.pruner, [0.0] * layers, out / "l7b-dense")
    return [(f"llama-2-7b {layers}-layer cut, uniform β {r}", dense,
             export_pruned(lm, bench.pruner, [r] * layers, out / f"l7b-uniform-{r}")) for r in ratios]


def measure(vllm_python: str, dense: Path, pruned: Path, args) -> dict:
    cli = Path(vllm_python).parent / "selfpruner"
    r = subprocess.run([str(cli), "speed", str(pruned), "--engine", "vllm", "--dense", str(dense), "--repeats",
                        str(args.rounds), "--batch-size", str(args.batch), "--prefill-len", str(args.prompt_len),
                        "--decode-tokens", str(args.gen_tokens), "--sessions-dir", str(args.tmp), "--json"],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(next(line for line in reversed(r.stdout.splitlines()) if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2, help="processes per pair (the protocol's repeatability)")
    ap.add_argument("--shapes", default="smollm2,llama-2-7b-cut")
    args = ap.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = Path(tmp)
        pairs = []
        if "smollm2" in args.shapes:
            pairs += smollm2_exports(args.tmp, ratios)
        if "llama-2-7b-cut" in args.shapes:
            pairs += llama7b_cut_exports(args.tmp, ratios)
        print(f"vLLM offline throughput, {args.batch} prompts x {args.prompt_len} tokens + {args.gen_tokens} "
              f"generated, {args.rounds} interleaved rounds per process, {args.runs} processes per pair "
              f"(torch threads {torch.get_num_threads()})\n")
        print("| model | run | prefill x | generate x | total x | ceiling | generate / ceiling |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, dense, pruned in pairs:
            for run in range(args.runs):
                rep = measure(args.vllm_python, dense, pruned, args)
                q = rep["ratios"]
                print(f"| {name} | {run + 1} | {q['prefill_tok_s']:.2f} | {q['gen_tok_s']:.2f} | "
                      f"{q['total_tok_s']:.2f} | {rep['ceiling']:.2f} | {q['gen_tok_s'] / rep['ceiling']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
