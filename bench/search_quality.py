"""Search quality at equal fitness-evaluation counts: final ppl of each method as a ratio to uniform.

Methods: uniform Wanda-sp, OWL (λ=0.08, M=5), numeric GA, Self-Pruner with the llama-cpp proposer (with
Algorithm 1's LLM selection step, and with inline parent citation instead), and the paper's ablations
(random init; no mutation, no crossover: SearchConfig.ablation, which gives the dropped operator's count to
the other), so every search spends K + N·(M+S) fitness evaluations. Beyond the paper (issue 12): the FLAP
baseline (its global adaptive structure as layer rates), the search with FLAP bias compensation (its final
ppl compensated too), with KL-from-dense fitness, and with --race, whose generations are as many as fit in
the others' tokens: "evals" counts full-budget-equivalent evaluations (tokens scored / --budget-tokens). The no-mutation and no-crossover
ablations start from the LLM run's stored initial population, so they differ from it only in the operator
they drop (and do not pay for the same K LLM calls again). "llm %" is the share of candidates the LLM
wrote itself (the rest came from the numeric fallback). Defaults fit 2 CPU cores; on a GPU box
raise -K/-M/-S/-N, --budget-tokens and --final-tokens (0 = whole test stream), and use --proposer openai.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from selfpruner.core.baselines.run import baseline_rates
from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.racing import race_tokens
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.plans import candidate_key, candidate_key_text
from selfpruner.core.proposers.replay import ReplayProposer
from selfpruner.core.results.session_summary import proposal_shares
from selfpruner.core.store import Store

from bench_args import add  # bench/ is on sys.path when run as a script

SEARCHES = {
    "numeric GA": dict(proposer="numeric"),
    "Self-Pruner (LLM)": dict(),
    "Self-Pruner (inline parents)": dict(selection="inline"),
    "ablation: random init": dict(init="random"),
    "ablation: no mutation": dict(ablation="no-mutation"),
    "ablation: no crossover": dict(ablation="no-crossover"),
    "search +compensation": dict(reconstruct="bias"),
    "search KL fitness": dict(fitness="kl"),
    "search race": dict(race=None),  # --race, generations to match the others' tokens (main)
}
BASELINES = ("uniform", "owl", "flap")


def run_search(bench, sessions_dir, base: dict, variant: dict, init_from=None):
    cfg = SearchConfig(sessions_dir=sessions_dir, final_eval=False, **{**base, **variant})
    init = ReplayProposer(Store(init_from)) if init_from and cfg.ablation != "none" else None
    search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench, init_proposer=init)
    res = search.run()
    sh = proposal_shares(search.store)
    share = f"{100 * sh['llm'] / sh['asked']:.0f}" if sh else "-"
    tokens = sum(e["budget_tokens"] for e in search.store.evaluations() if e["kind"] == "search" and not e["cached"])
    return res.best_rates, res.best_fitness, tokens / cfg.budget_tokens, search.store.path, share


def race_generations(args) -> int:
    """As many raced generations as fit in the tokens of N plain ones (the initial population costs the same)."""
    stages = SearchConfig(race=args.race, seq_len=args.seq_len).race_stages
    return args.N * (args.M + args.S) * args.budget_tokens // race_tokens(stages, args.M + args.S)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model=None, K=4, M=2, S=2, N=2, budget_tokens=512, seq_len=512, calib_tokens=8192)
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--proposer", default="llama-cpp")
    ap.add_argument("--final-tokens", type=int, default=2048, help="0 = whole test stream")
    ap.add_argument("--llm-threads", type=int, default=None, help="llama-cpp threads (default: torch's)")
    ap.add_argument("--race", default="128:all,256:2,512:1", help="the race row's stages (last = --budget-tokens)")
    ap.add_argument("--methods", default=",".join(["uniform", "owl", *SEARCHES]))
    ap.add_argument("--sessions-dir", default=None, help="keep the sessions here (default: a temp dir)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    methods = args.methods.split(",")
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    sessions = args.sessions_dir or tempfile.mkdtemp(prefix="selfpruner-bench-")
    final_tokens = args.final_tokens or None
    evals = args.K + args.N * (args.M + args.S)
    print(f"model {bench.lm.name}; {evals} fitness evaluations per search on {args.budget_tokens} tokens; "
          f"final ppl on {bench.windows('test', final_tokens).numel()} test tokens; proposer {args.proposer}")
    for beta in [float(x) for x in args.ratios.split(",")]:
        base = dict(model=args.model, beta=beta, proposer=args.proposer, population=args.K, mutations=args.M,
                    crossovers=args.S, generations=args.N, budget_tokens=args.budget_tokens,
                    seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local", llm_threads=args.llm_threads)
        rows, llm_session, finals = {}, None, {}
        for name in methods:
            t0 = time.perf_counter()
            variant = dict(SEARCHES.get(name, {}))
            if "race" in variant:
                variant.update(race=args.race, budget_tokens=None, generations=race_generations(args))
            bench.set_pruning(False)
            if name in BASELINES:
                rates, n, share = baseline_rates(bench, name, beta), 1, "-"
                search_ppl = bench.fitness(rates, args.budget_tokens)[0]
            else:
                rates, search_ppl, n, path, share = run_search(bench, sessions, base, variant, llm_session)
                if name == "Self-Pruner (LLM)":
                    llm_session = path
            comp = variant.get("reconstruct", "none") == "bias"
            bench.set_pruning(comp)
            # searches that end on the same best share its final evaluation
            key = (candidate_key_text(candidate_key(rates)), comp)
            if key not in finals:
                finals[key] = bench.final_ppl(rates, final_tokens)[0]
            final = finals[key]
            rows[name] = (search_ppl, final, n, share, time.perf_counter() - t0)
        uni = rows.get("uniform", (None, None))[1]
        owl = rows.get("owl", (None, None))[1]
        print(f"\nβ = {beta}")
        print(f"{'method':<28} {'evals':>5} {'search fit':>11} {'final ppl':>10} {'/uniform':>9} {'/OWL':>7} "
              f"{'llm %':>6} {'time s':>7}")
        for name, (sp, fp, n, share, secs) in rows.items():
            ru = f"{fp / uni:.3f}" if uni else "-"
            ro = f"{fp / owl:.3f}" if owl else "-"
            print(f"{name:<28} {n:>5.0f} {sp:>11.3f} {fp:>10.2f} {ru:>9} {ro:>7} {share:>6} {secs:>7.0f}")
        if "Self-Pruner (LLM)" in rows and uni and owl:
            fp = rows["Self-Pruner (LLM)"][1]
            print(f"targets: LLM ≤ 0.75× uniform: {'met' if fp <= 0.75 * uni else 'NOT met'}; "
                  f"≤ 0.9× OWL: {'met' if fp <= 0.9 * owl else 'NOT met'}")
    print(f"\nsessions kept in {sessions}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
