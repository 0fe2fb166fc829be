"""Does an LLM earn its time as the proposer? Each proposer runs the same search (same model, β, budget,
K/M/S/N) and is scored on what its offspring did:

- kept:    share of offspring (generations >= 1) that entered the top K of their generation
- Δppl:    median relative change of an offspring's search ppl against its parents' mean (negative =
           better; the median, because one broken child can be 50x its parents)
- repair:  share of the LLM's candidates that repair had to change; fallback: share the numeric GA wrote
- s/prop:  seconds spent proposing (wall time minus evaluation time) per candidate
- final:   final ppl of the best candidate on held-out test tokens

Proposers: llama-cpp with gemma-3-270m (base model, template decoding), llama-cpp with SmolLM2-135M-Instruct,
the numeric GA, pure random search (every offspring a fresh random vector); prompt designs (the population's
ranks instead of its ppl, 2 decimals instead of 5, a per-layer sensitivity table measured once); and either LLM
for the initial population only with the numeric GA writing every offspring ("init + GA"). Default model
SmolLM2.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import build_proposer, start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.proposers.numeric import NumericProposer, phase_rng
from selfpruner.core.results.session_summary import proposal_shares
from selfpruner.core.types import Proposal

from bench_args import add  # bench/ is on sys.path when run as a script

PROPOSERS = {
    "llama-cpp gemma": dict(proposer="llama-cpp"),
    "llama-cpp smollm2": dict(proposer="llama-cpp", proposer_model="smollm2"),
    "numeric GA": dict(proposer="numeric"),
    "random": dict(proposer="numeric"),  # its operators are replaced by RandomSearch below
    # prompt designs: ranks instead of raw ppl; 2 decimals instead of 5 (a third of the output tokens)
    "smollm2 rank view": dict(proposer="llama-cpp", proposer_model="smollm2", prompt_fitness="rank"),
    "smollm2 2 decimals": dict(proposer="llama-cpp", proposer_model="smollm2", decimals=2),
    "gemma 2 decimals": dict(proposer="llama-cpp", decimals=2),
    # a per-layer sensitivity table in every prompt (n_layers more evaluations, before the search)
    "smollm2 sensitivity": dict(proposer="llama-cpp", proposer_model="smollm2", prompt_sensitivity=True),
    "gemma sensitivity": dict(proposer="llama-cpp", prompt_sensitivity=True),
    # the LLM for the initial population only, the numeric GA for every offspring
    "gemma init + GA": dict(proposer="numeric"),
    "smollm2 init + GA": dict(proposer="numeric"),
}
LLM_INIT = {"gemma init + GA": dict(proposer="llama-cpp"),
            "smollm2 init + GA": dict(proposer="llama-cpp", proposer_model="smollm2")}


class RandomSearch(NumericProposer):
    """Every offspring is a fresh random vector (no parents): the floor any proposer must beat."""

    def mutate(self, problem, population, m, generation, seen=frozenset()):
        return self._random(problem, m, generation, "mutation", seen, population)

    def crossover(self, problem, population, s, generation, seen=frozenset()):
        return self._random(problem, s, generation, "crossover", seen, population)

    def _random(self, problem, count, generation, phase, seen, population):
        out = self.fill(problem, [], count, "init", phase_rng(self.seed, f"random-{phase}", generation),
                        self._taken(problem, population, seen), phase)
        return [Proposal(p.rates, phase) for p in out]


def offspring_stats(store) -> dict:
    fit = store.fitness_by_candidate()
    cands = store.candidates()
    kept = {i for g in store.generations() for i in g["population"]}
    kids = [c for c in cands if c["generation"] > 0]
    deltas = []
    for c in kids:
        ps = [fit[p] for p in c["parents"] if p in fit and math.isfinite(fit[p])]
        if ps and math.isfinite(fit.get(c["id"], math.inf)):
            deltas.append(fit[c["id"]] / statistics.mean(ps) - 1)
    llm = [c for c in cands if c["call_id"] is not None]
    evals = store.evaluations()
    s = store.session()
    propose_s = (s["updated"] - s["created"]) - sum(e["eval_s"] or 0 for e in evals)
    sh = proposal_shares(store)
    return {"kept": sum(c["id"] in kept for c in kids) / max(1, len(kids)),
            "dppl": statistics.median(deltas) if deltas else float("nan"),
            "repair": sum(c["repaired"] for c in llm) / len(llm) if llm else float("nan"),
            "fallback": sh["fallback"] / sh["asked"] if sh else float("nan"),
            "s_per_prop": propose_s / max(1, len(cands))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model="smollm2", ratio=0.3, K=6, M=3, S=3, N=4, budget_tokens=512, final_tokens=4096, seq_len=512,
            calib_tokens=8192, seed=0, sessions_dir=None)
    ap.add_argument("--proposers", default=",".join(PROPOSERS))
    ap.add_argument("--report", metavar="DIR", help="print the table from the sessions a run left in DIR")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)
    t0 = time.perf_counter()
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    sessions = args.sessions_dir or tempfile.mkdtemp(prefix="selfpruner-pq-")
    evals = args.K + args.N * (args.M + args.S)
    print(f"model {bench.lm.name}, β={args.ratio}, K={args.K} M={args.M} S={args.S} N={args.N} ({evals} "
          f"evaluations of {args.budget_tokens} tokens), final ppl on "
          f"{bench.windows('test', args.final_tokens).numel()} test tokens, seed {args.seed}")
    print(f"{'proposer':<20} {'search ppl':>10} {'final ppl':>10} {'kept':>6} {'Δppl':>7} {'repair':>7} "
          f"{'fallbk':>7} {'s/prop':>7} {'time s':>7}")
    uniform = [args.ratio] * bench.lm.arch.n_layers
    print(f"{'uniform':<20} {bench.fitness(uniform, args.budget_tokens)[0]:>10.2f} "
          f"{bench.fitness(uniform, args.final_tokens, which='test')[0]:>10.2f}")
    for name in args.proposers.split(","):
        random.seed(args.seed)
        cfg = SearchConfig(model=args.model, beta=args.ratio, population=args.K, mutations=args.M,
                           crossovers=args.S, generations=args.N, budget_tokens=args.budget_tokens,
                           seq_len=args.seq_len, calib_tokens=args.calib_tokens, final_tokens=args.final_tokens,
                           data="local", seed=args.seed, sessions_dir=sessions, **PROPOSERS[name])
        t = time.perf_counter()
        init = None
        if name in LLM_INIT:
            init = build_proposer(SearchConfig(**{**cfg.to_dict(), **LLM_INIT[name]}))
        search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench, init_proposer=init)
        if name == "random":
            search.proposer = RandomSearch(args.seed)
        search.store.add_result("bench", "proposer_quality", {"name": name})
        res = search.run()
        print(row(name, search.store, res.best_fitness, res.final_ppl, time.perf_counter() - t), flush=True)
    print(f"sessions in {sessions}; total {time.perf_counter() - t0:.0f} s")


def row(name: str, store, best: float, final: float, secs: float) -> str:
    st = offspring_stats(store)
    pct = lambda x: "-" if math.isnan(x) else f"{100 * x:.0f}%"  # noqa: E731
    return (f"{name:<20} {best:>10.2f} {final:>10.2f} {pct(st['kept']):>6} {pct(st['dppl']):>7} "
            f"{pct(st['repair']):>7} {pct(st['fallback']):>7} {st['s_per_prop']:>7.2f} {secs:>7.0f}")


def report(directory: str) -> None:
    """The table again from stored sessions (in creation order, as a run writes them)."""
    from pathlib import Path

    from selfpruner.core.store import Store

    print(f"{'proposer':<20} {'search ppl':>10} {'final ppl':>10} {'kept':>6} {'Δppl':>7} {'repair':>7} "
          f"{'fallbk':>7} {'s/prop':>7} {'time s':>7}")
    for path in sorted(Path(directory).glob("*.db")):
        st = Store(path, readonly=True)
        s = st.session()
        tag = [r["payload"]["name"] for r in st.results("bench")]
        name = tag[0] if tag else f"{s['proposer']} {s['config'].get('proposer_model') or ''}".strip()
        print(row(name, st, s["best_fitness"], s["final_ppl"], s["updated"] - s["created"]))


if __name__ == "__main__":
    main()
