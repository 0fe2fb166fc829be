"""The searched model against its one-shot peers on SmolLM2, side by side: uniform, OWL and FLAP (each with and
without bias compensation) and the numeric GA with and without the quality pieces of this round, at β 0.3 and 0.5.

Every search prunes as FLAP does (FLAP's importance orders the units, compensation on unless the variant rebuilds the
kept weights by least squares, `+ ls`; the one-shot rows take --reconstruct none,bias,ls), so a search differs from
the FLAP baseline only in the layer allocation; it spends --evaluations fitness calls of --budget-tokens
(K + N·(M+S)). Final ppl on --final-tokens held-out tokens, mean ± sd over --seeds; the ratio is against FLAP with
compensation. `--llm` adds the paper's protocol (the default llama.cpp proposer, the bundled gemma-3-270m; one
seed: it is slow on a CPU). With `--split flap` every one-shot row and search divides a layer's rate between heads
and channels by FLAP's scores (FLAP's own structure; with the default `rule`, one row adds FLAP + comp that way); a
variant may set its own, and `search` (a second gene per layer, its attention rate) is for searches only.
`--piqa DIR` adds PIQA acc / acc_norm (lm-eval, local files, --piqa-limit items; FLAP + comp and, for a search,
its first seed's model), scored on the pruned model in memory.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench

from bench_args import add  # bench/ is on sys.path when run as a script

VARIANTS = {  # name: SearchConfig overrides
    "GA": dict(seed_references=False, numeric_mutation="gauss"),
    "GA + references": dict(seed_references=True, numeric_mutation="gauss"),
    "GA + references + level-switch": dict(seed_references=True, numeric_mutation="mixed"),
    "GA + references + level-switch + racing + KL": dict(seed_references=True, numeric_mutation="mixed",
                                                        fitness="kl", race="512:all,2048:3"),
    "GA + flap split": dict(seed_references=False, numeric_mutation="gauss", split="flap"),
    "GA + references + level-switch + flap split": dict(seed_references=True, numeric_mutation="mixed",
                                                       split="flap"),
    # each layer's attention-unit rate searched as a second gene (the references start from the rule's split)
    "GA + split searched": dict(seed_references=False, numeric_mutation="gauss", split="search"),
    "GA + references + level-switch + split searched": dict(seed_references=True, numeric_mutation="mixed",
                                                           split="search"),
    # the kept columns of o_proj / down_proj rebuilt by least squares (issue 39) instead of the bias compensation
    "GA + references + level-switch + ls": dict(seed_references=True, numeric_mutation="mixed", reconstruct="ls"),
}
SUFFIX = {"none": "", "bias": " + comp", "ls": " + ls"}


def final(bench, rates, tokens: int, how: str, split: str) -> float:
    bench.set_pruning(how, 1, split)
    return bench.fitness(rates, tokens, which="test")[0]


def piqa(bench, rates, how: str, split: str, data_dir, limit) -> str:
    """'acc / acc_norm' of the pruned model in memory ('' without --piqa)."""
    if not data_dir:
        return ""
    from selfpruner.core.results.lm_eval_bridge import evaluate_tasks, resolve_tasks
    bench.set_pruning(how, 1, split)
    with bench.pruner.applied(rates):
        m = evaluate_tasks(bench.lm.model, bench.lm.tokenizer, resolve_tasks(["piqa"], data_dir), limit=limit,
                           batch_size=32)["piqa"]
    return f"{m['acc']:.3f} / {m['acc_norm']:.3f}"


def show(beta: float, row: tuple, flap_comp: float) -> None:
    name, ppls, n_evals, wall, note, acc = row
    sd = statistics.stdev(ppls) if len(ppls) > 1 else 0.0
    val = f"{statistics.mean(ppls):.2f}" + (f" ± {sd:.2f}" if len(ppls) > 1 else "")
    ev, wl = (str(n_evals), f"{wall:.0f}") if n_evals else ("", "")
    if len(ppls) > 1:  # each seed's, so a wide sd can be read
        note = "; ".join(x for x in ("seeds " + ", ".join(f"{p:.1f}" for p in ppls), note) if x)
    print(f"{beta:>4}  {name:<52} {val:>18} {statistics.mean(ppls) / flap_comp:>11.3f} {ev:>6} {wl:>7} {acc:>13}  "
          f"{note}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", seq_len=512, calib_tokens=8192, budget_tokens=512, final_tokens=8192)
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-K", type=int, default=20)
    ap.add_argument("-M", type=int, default=5)
    ap.add_argument("-S", type=int, default=5)
    ap.add_argument("-N", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--llm", action="store_true", help="also the paper's protocol with the llama.cpp proposer")
    ap.add_argument("--split", default="rule", choices=("rule", "flap"), help="the one-shot rows' and searches' split")
    ap.add_argument("--piqa", default=None, help="PIQA's local files (e.g. ../shared/data/piqa): adds acc / acc_norm")
    ap.add_argument("--piqa-limit", type=int, default=None, help="PIQA items (default: all 1,838)")
    ap.add_argument("--reconstruct", default="none,bias",
                    help="the one-shot rows' reconstructions (none,bias,ls); PIQA for FLAP's last, and with ls for the ls "
                         "searches only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local",
                            importance="flap")
    wanda = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    sessions = tempfile.mkdtemp(prefix="selfpruner-peers-")
    tokens = bench.windows("test", args.final_tokens).numel()
    evals = args.K + args.N * (args.M + args.S)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"model {bench.lm.name}; searches: {evals} evaluations of {args.budget_tokens} tokens, FLAP importance, "
          f"compensation on, seeds {seeds}; final ppl on {tokens} held-out tokens")
    print(f"dense ppl {bench.dense_ppl(args.final_tokens, which='test'):.2f}\n")
    print(f"{'β':>4}  {'method':<52} {'final ppl':>18} {'× FLAP+comp':>11} {'evals':>6} {'wall s':>7} "
          f"{'PIQA acc/norm':>13}  notes")
    recons = args.reconstruct.split(",")
    for beta in [float(x) for x in args.ratios.split(",")]:
        rows, flap_comp = [], None
        for name, wb, method in (("uniform Wanda-sp", wanda, "uniform"), ("OWL (Wanda-sp)", wanda, "owl"),
                                 ("FLAP", bench, "flap")):
            rates = baseline_rates(wb, method, beta)
            for how in recons:
                rows.append((f"{name}{SUFFIX[how]}", [final(wb, rates, args.final_tokens, how, args.split)], 0, 0.0,
                             "", piqa(wb, rates, how, args.split, args.piqa, args.piqa_limit)
                             if how == recons[-1] and method == "flap" else ""))
                if (method, how) == ("flap", "bias"):
                    flap_comp = rows[-1][1][0]
        if args.split == "rule":  # FLAP's own within-layer structure beside it
            rates = baseline_rates(bench, "flap", beta)
            rows.append(("FLAP + comp, flap split", [final(bench, rates, args.final_tokens, True, "flap")], 0, 0.0,
                         "FLAP's own structure", "" if "ls" in recons else
                         piqa(bench, rates, True, "flap", args.piqa, args.piqa_limit)))
        flap_comp = flap_comp or final(bench, baseline_rates(bench, "flap", beta), args.final_tokens, "bias", args.split)
        for row in rows:
            show(beta, row, flap_comp)
        chosen = [v for v in args.variants.split(",") if v]
        runs = [(v, VARIANTS[v], "numeric") for v in chosen]
        if args.llm:
            runs.append(("Self-Pruner protocol (llama.cpp, gemma-3-270m proposer)", dict(seed_references=False),
                         "llama-cpp"))
        for name, over, proposer in runs:
            ppls, walls, best_refs, n_evals, acc = [], [], 0, 0, ""
            over = {"split": args.split, "reconstruct": "bias"} | over
            for seed in (seeds if proposer == "numeric" else seeds[:1]):
                cfg = SearchConfig(model=args.model, beta=beta, proposer=proposer, population=args.K,
                                   mutations=args.M, crossovers=args.S, generations=args.N,
                                   budget_tokens=None if over.get("race") else args.budget_tokens,
                                   seq_len=args.seq_len, calib_tokens=args.calib_tokens, final_eval=False,
                                   data="local", seed=seed, sessions_dir=sessions, importance="flap", **over)
                t = time.perf_counter()
                search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
                res = search.run()
                walls.append(time.perf_counter() - t)
                n_evals = len([e for e in search.store.evaluations() if e["kind"] == "search"])
                best = next(c for c in search.store.candidates() if c["id"] == res.best_id)
                best_refs += best["origin"].startswith("reference:")
                ppls.append(final(bench, res.best_rates, args.final_tokens, over["reconstruct"], over["split"]))
                if not acc and (over["reconstruct"] == "ls" or "ls" not in recons):
                    acc = piqa(bench, res.best_rates, over["reconstruct"], over["split"], args.piqa, args.piqa_limit)
            note = f"best is a reference in {best_refs}/{len(ppls)}" if over.get("seed_references") else ""
            show(beta, (name, ppls, n_evals, statistics.mean(walls), note, acc), flap_comp)
        print()
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
