"""Search for a speed (issue 40) on SmolLM2 and llama.cpp: at each --targets speedup, the speed-targeted search
(--target-speedup, its budget predicted by the engine's cost table) against the β search and FLAP at the β whose
uniform allocation the table predicts at that speed, each exported to an f16 GGUF (widths padded to 32) and measured
on llama.cpp against the dense GGUF in one interleaved run (median of --rounds).

Every search is the numeric GA with the references seeded, FLAP's importance and least-squares reconstruction, on
one resident workbench (`--split search` lets each layer's attention rate be searched too, so a speed search can
spend its budget where the engine's time is); final ppl on --final-tokens held-out tokens, mean ± sd over --seeds
(the first seed's model is the one measured). The cost table comes from the cache where
`selfpruner cost-table MODEL --engine llama-cpp` measured it (else it is measured first, minutes).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.cost_table import SpeedBudget, Workload
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.speed_budget import nominal_beta
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.plans import plans
from selfpruner.core.results.cost_probes import cost_table
from selfpruner.core.results.export import build_pruned
from selfpruner.core.results.gguf_export import write_gguf
from selfpruner.core.results.gguf_speed import compare_gguf, dense_gguf

from bench_args import add  # bench/ is on sys.path when run as a script


def export(bench, rates, how: str, path: Path, split: str = "rule") -> Path:
    bench.set_pruning(how, 1, split)
    model = build_pruned(bench.lm, bench.pruner, rates, dtype=torch.float32, device="cpu")
    write_gguf(model, bench.lm.tokenizer, path, source_gguf=bench.lm.gguf_path, outtype="f16")
    return path


def final(bench, rates, tokens: int, how: str, split: str = "rule") -> float:
    bench.set_pruning(how, 1, split)
    return bench.fitness(rates, tokens, which="test")[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", seq_len=512, calib_tokens=16384, budget_tokens=512, final_tokens=8192, K=8, M=3, S=3, N=5)
    ap.add_argument("--targets", default="1.3,1.6")
    ap.add_argument("--objective", default="mix", choices=("prompt", "generation", "mix"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads, of the table and the measurement")
    ap.add_argument("--split", default="rule", choices=("rule", "search"), help="the searches' split")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                            importance="flap")
    table = cost_table(bench.lm, "llama-cpp", Workload(weights="f16", threads=args.threads))
    out = Path(tempfile.mkdtemp(prefix="selfpruner-speed-target-"))
    sessions = str(out / "sessions")
    dense = dense_gguf(args.model, like=export(bench, [0.0] * bench.lm.arch.n_layers, "none", out / "probe.gguf"))
    print(f"model {bench.lm.name}; dense ppl {bench.dense_ppl(args.final_tokens, which='test'):.2f} on "
          f"{bench.windows('test', args.final_tokens).numel()} held-out tokens; searches: numeric GA, "
          f"{args.K + args.N * (args.M + args.S)} evaluations, FLAP importance, least squares; objective "
          f"{args.objective}; llama.cpp f16, {args.threads or 'all'} threads, median of {args.rounds} interleaved "
          f"rounds; the GGUFs stay in {out}\n")
    for target in [float(x) for x in args.targets.split(",")]:
        bench.set_pruning("ls", 1, args.split)
        sb = SpeedBudget(table, target, args.objective)
        beta = nominal_beta(sb, bench.layer_grain(), bench.lm.arch.n_layers, 0.0, 1.0, 5)
        common = dict(model=args.model, proposer="numeric", population=args.K, mutations=args.M, crossovers=args.S,
                      generations=args.N, budget_tokens=args.budget_tokens, seq_len=args.seq_len,
                      calib_tokens=args.calib_tokens, final_eval=False, data="local", sessions_dir=sessions,
                      importance="flap", reconstruct="ls", numeric_mutation="mixed", split=args.split)
        rows, ppls = {}, {}
        for name, over in ((f"speed search ({target:g}x)", dict(target_speedup=target, engine="llama-cpp",
                                                                objective=args.objective,
                                                                engine_threads=args.threads)),
                           (f"β search (β {beta:g})", dict(beta=beta))):
            for seed in [int(x) for x in args.seeds.split(",")]:
                res = start_search(SearchConfig(**common, **over, seed=seed), bus=EventBus(), control=Control(),
                                   bench=bench).run()
                rows.setdefault(name, (res.best_rates, "ls", args.split))
                ppls.setdefault(name, []).append(final(bench, res.best_rates, args.final_tokens, "ls", args.split))
        flap = baseline_rates(bench, "flap", beta)
        rows[f"FLAP + comp (β {beta:g})"] = (flap, "bias", "rule")
        rows[f"FLAP + ls (β {beta:g})"] = (flap, "ls", "rule")
        files = {"dense": dense}
        for k, (name, (rates, how, split)) in enumerate(rows.items()):
            files[name] = export(bench, rates, how, out / f"{target:g}x-{k}.gguf", split)
        report = compare_gguf(files, baseline="dense", repeats=args.rounds, memory=False, prompt_len=128,
                              decode_tokens=32, threads=args.threads)
        w, res = table.workload, report["results"]

        def seconds(name, objective):
            r = res[name]
            return w.seconds(128 / r["prompt_tok_s"]["median"], 1 / r["gen_tok_s"]["median"], objective)

        print(f"target {target:g}x ({args.objective}): the table's uniform rate for it is β {beta:g}")
        print(f"{'method':<28} {'final ppl':>15} {'mean rate':>9} {'predicted':>9} {'measured':>8} {'prompt':>7} "
              f"{'gen':>6}")
        for name, (rates, how, split) in rows.items():
            ppl = ppls.get(name) or [final(bench, rates, args.final_tokens, how, split)]
            text = f"{statistics.mean(ppl):.2f}" + (f" ± {statistics.stdev(ppl):.2f}" if len(ppl) > 1 else "")
            bench.set_pruning(how, 1, split)
            n = bench.lm.arch.n_layers
            pred = sb.speedup(plans(bench.layer_grain(), rates))
            meas = {o: seconds("dense", o) / seconds(name, o) for o in ("prompt", "generation", args.objective)}
            print(f"{name:<28} {text:>15} {sum(rates[:n]) / n:>9.4f} {pred:>8.3f}x {meas[args.objective]:>7.3f}x"
                  f" {meas['prompt']:>6.2f}x {meas['generation']:>5.2f}x", flush=True)
        print()
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
