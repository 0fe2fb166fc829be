"""The Self-Pruner paper's protocol at small scale, on SmolLM2-135M-Instruct (LLaMA, GQA): main table and
ablation table, with seeds.

Methods (each β): uniform Wanda-sp, OWL (λ=0.08, M=5), the numeric GA and Self-Pruner with the llama-cpp LLM
proposer over --seeds seeds, and the paper's ablations (random init; no mutation, no crossover, at equal
offspring count, starting from seed 0's LLM initial population) over one seed. Every search spends
K + N·(M+S) fitness evaluations of --budget-tokens search tokens. K:(M+S) is the paper's 30:20 (K=6, M=S=2);
N=6 instead of 20 is what fits 2 CPU cores in 90 minutes. Each method's best is scored on --final-tokens
held-out test tokens and on the local lm-eval task (tests/data/tiny_facts.yaml, 24 questions: the paper's
seven zero-shot tasks need the hub). Prints the tables at the end; --report FILE re-prints them from the
JSON lines a run wrote.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from search_quality import run_search

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.results.lm_eval_bridge import evaluate_tasks

from bench_args import add, add_protocol_args  # bench/ is on sys.path when run as a script

TASK = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny_facts.yaml"
SEEDED = {"numeric GA": dict(proposer="numeric"), "Self-Pruner (LLM)": dict()}
ABLATIONS = {
    "w/o LLM init (random init)": dict(init="random"),
    "w/o mutation": dict(ablation="no-mutation"),
    "w/o crossover": dict(ablation="no-crossover"),
}


def zero_shot(bench, rates) -> float:
    """Accuracy on the local task, of the model pruned at `rates` (None: dense)."""
    if rates is None:
        res = evaluate_tasks(bench.lm.model, bench.lm.tokenizer, [TASK], batch_size=8)
    else:
        with bench.pruner.applied(rates):
            res = evaluate_tasks(bench.lm.model, bench.lm.tokenizer, [TASK], batch_size=8)
    return next(iter(res.values()))["acc"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(ap)
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--proposer-model", default=None, help="llama-cpp proposer GGUF (default: the code default)")
    add(ap, final_tokens=4096)
    ap.add_argument("--out", default="paper_protocol.jsonl", help="one JSON line per method run")
    ap.add_argument("--report", metavar="FILE", help="print the tables from a run's JSON lines")
    args = ap.parse_args(argv)
    if args.report:
        return tables([json.loads(line) for line in Path(args.report).read_text().splitlines() if line])
    t_start = time.perf_counter()
    torch.manual_seed(0)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    sessions = tempfile.mkdtemp(prefix="selfpruner-paper-")
    evals = args.K + args.N * (args.M + args.S)
    header = (f"model {bench.lm.name}; K={args.K} M={args.M} S={args.S} N={args.N} = {evals} evaluations of "
              f"{args.budget_tokens} tokens per search; final ppl on {bench.windows('test', args.final_tokens).numel()}"
              f" test tokens; zero-shot: {TASK.name}; LLM proposer llama-cpp {args.proposer_model or '(default)'}")
    print(header, flush=True)
    out = Path(args.out)
    out.write_text(json.dumps({"header": header}) + "\n")
    rows = []
    dense = dict(method="dense", beta=0.0, seed=0, search_ppl=bench.dense_ppl(args.budget_tokens),
                 final_ppl=bench.dense_ppl(args.final_tokens, which="test"), acc=zero_shot(bench, None), evals=0,
                 secs=0.0)
    rows.append(dense)
    with out.open("a") as f:
        f.write(json.dumps(dense) + "\n")

    def record(method, beta, seed, rates, search_ppl, n, secs):
        final = bench.fitness(rates, args.final_tokens, which="test")[0]
        row = dict(method=method, beta=beta, seed=seed, search_ppl=search_ppl, final_ppl=final,
                   acc=zero_shot(bench, rates), evals=n, secs=secs)
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"β={beta} {method:<28} seed {seed}: final ppl {final:9.2f}  acc {row['acc']:.3f}  "
              f"{n} evals  {secs:5.0f} s", flush=True)

    for beta in [float(x) for x in args.ratios.split(",")]:
        for name in ("uniform", "owl"):
            t0 = time.perf_counter()
            rates = baseline_rates(bench, name, beta)
            record("uniform Wanda-sp" if name == "uniform" else "OWL", beta, 0, rates,
                   bench.fitness(rates, args.budget_tokens)[0], 1, time.perf_counter() - t0)
        base = dict(model=args.model, beta=beta, proposer="llama-cpp", proposer_model=args.proposer_model,
                    population=args.K, mutations=args.M, crossovers=args.S, generations=args.N,
                    budget_tokens=args.budget_tokens, seq_len=args.seq_len, calib_tokens=args.calib_tokens,
                    data="local")
        llm_seed0 = None
        for seed in range(args.seeds):
            for name, variant in SEEDED.items():
                t0 = time.perf_counter()
                rates, sppl, n, path, _ = run_search(bench, sessions, {**base, "seed": seed}, variant)
                if name == "Self-Pruner (LLM)" and seed == 0:
                    llm_seed0 = path
                record(name, beta, seed, rates, sppl, n, time.perf_counter() - t0)
        for name, variant in ABLATIONS.items():
            t0 = time.perf_counter()
            rates, sppl, n, _, _ = run_search(bench, sessions, {**base, "seed": 0}, variant, llm_seed0)
            record(name, beta, 0, rates, sppl, n, time.perf_counter() - t0)
    tables([{"header": header}, *rows])
    print(f"\nsessions in {sessions}; rows in {out}; total {time.perf_counter() - t_start:.0f} s")


def _cell(xs: list[float], fmt: str) -> str:
    if len(xs) > 1:
        return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"
    return format(xs[0], fmt) if xs else "-"


def tables(lines: list[dict]) -> None:
    rows = [r for r in lines if "method" in r]
    if lines and "header" in lines[0]:
        print(lines[0]["header"])
    betas = sorted({r["beta"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    main_methods = [m for m in methods if m not in ABLATIONS]
    print("\nMain table: final WikiText-2 ppl (mean ± sd over seeds) and zero-shot accuracy")
    print(f"{'β':>4} {'method':<28} {'seeds':>5} {'ppl':>20} {'acc':>14} {'time s':>7}")
    for r in rows:
        if r["method"] == "dense":
            print(f"{'0':>4} {'dense':<28} {'-':>5} {r['final_ppl']:>20.2f} {r['acc']:>14.3f} {'-':>7}")
    for beta in [b for b in betas if b > 0]:
        for m in [m for m in main_methods if m != "dense"]:
            rs = [r for r in rows if r["method"] == m and r["beta"] == beta]
            if rs:
                print(f"{beta:>4} {m:<28} {len(rs):>5} {_cell([r['final_ppl'] for r in rs], '.2f'):>20} "
                      f"{_cell([r['acc'] for r in rs], '.3f'):>14} {statistics.mean(r['secs'] for r in rs):>7.0f}")
    print("\nAblation table: final ppl (seed 0; the full method's mean over seeds beside it)")
    print(f"{'variant':<28} " + " ".join(f"{f'β={b}':>20}" for b in betas if b > 0))
    for m in ["Self-Pruner (LLM)", *ABLATIONS]:
        cells = []
        for beta in [b for b in betas if b > 0]:
            rs = [r["final_ppl"] for r in rows if r["method"] == m and r["beta"] == beta]
            cells.append(_cell(rs, ".2f"))
        if any(c != "-" for c in cells):
            print(f"{m:<28} " + " ".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
