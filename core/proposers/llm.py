"""LLMProposer: the Self-Pruner proposer. It writes prompts from prompts/*.txt, asks a backend, parses and
repairs the reply, records every call, retries for what is missing, and fills any remainder with the
numeric GA's operators (origin "fallback") so a bad model never stops the search.

A backend is any object with
    complete(prompt, *, n_numbers, n_lists, max_tokens, n_parents=0, parent_ids=None) -> (text, tok_in, tok_out)
and optionally `style` ("chat": instructions + JSON answer; "completion": a document a base model continues),
`max_population` (members listed in the prompt) and `max_lists` (lists asked for per call).
"""
from __future__ import annotations

import logging
import math
import time
from importlib import resources
from string import Template

from ..types import CallRecord, Problem, Proposal, Scored
from .base import CallSink, ProposerError
from .numeric import NumericProposer, phase_rng, ranked
from .parse import parse_reply
from .repair import RepairError, key, repair

log = logging.getLogger("selfpruner.proposers")

N_PARENTS = {"init": 0, "mutation": 1, "crossover": 2}


def template(name: str) -> Template:
    return Template(resources.files("selfpruner.prompts").joinpath(name).read_text(encoding="utf-8"))


def fmt_rates(rates, decimals: int) -> str:
    return "[" + ", ".join(f"{r:.{decimals}f}" for r in rates) + "]"


def fmt_ppl(f: float) -> str:
    return f"{f:.2f}" if math.isfinite(f) else "inf"


def example_shapes(problem: Problem) -> list[list[float]]:
    """Format examples for a base model's first generation (it has no population to imitate): uniform, a
    ramp, and a profile that prunes the first and last layers less. Repaired, so each has mean beta."""
    n, b = problem.n_layers, problem.beta
    amp = min(0.15, b - problem.lo, problem.hi - b)
    ramp = [b + amp * (2 * i / max(1, n - 1) - 1) for i in range(n)]
    arch = [b + amp * (1 - 2 * abs(2 * i / max(1, n - 1) - 1)) for i in range(n)]
    return [repair(v, problem)[0] for v in ([b] * n, ramp, arch)]


def tokens_per_list(n: int) -> int:
    """Generous output budget: small tokenizers spend one token per digit (0.12345 + ', ' ~ 8 tokens)."""
    return 9 * n + 24


class LLMProposer:
    def __init__(self, backend, name: str, max_retries: int = 3, rng_seed: int = 0, *, sigma: float = 0.05):
        self.backend, self.name = backend, name
        self.max_retries = max(0, int(max_retries))  # retries after the first call of a phase
        self.seed = rng_seed
        self.on_call: CallSink | None = None
        self.numeric = NumericProposer(rng_seed, sigma=sigma)
        self.stats = {"calls": 0, "failed_calls": 0, "kept": 0, "repaired": 0, "fallback": 0}

    # ---- prompts --------------------------------------------------------------------------------------
    def _fields(self, problem: Problem, count: int) -> dict:
        d = problem.decimals
        return dict(model=problem.model_name, n_layers=problem.n_layers, beta=f"{problem.beta:g}",
                    lo=f"{problem.lo:g}", hi=f"{problem.hi:g}", decimals=d, count=count,
                    example=f"{problem.beta:.{d}f}", total=f"{problem.beta * problem.n_layers:.{d}f}".rstrip("0")
                    .rstrip("."))

    def build_prompt(self, phase: str, problem: Problem, population: list[Scored], count: int) -> str:
        pop = ranked(population)
        limit = getattr(self.backend, "max_population", None)
        shown = pop[:limit] if limit else pop
        f = self._fields(problem, count)
        if getattr(self.backend, "style", "chat") == "completion":
            # the best `limit` members, listed worst to best: a base model mostly continues from the last
            # lines it read (measured: it cited the last-listed id in nearly every mutation), so the best
            # member sits right above the answer
            rows = "\n".join(f"id: {s.id} ppl: {fmt_ppl(s.fitness)} rates: {fmt_rates(s.rates, problem.decimals)}"
                             for s in reversed(shown))
            examples = "\n".join(f"rates: {fmt_rates(v, problem.decimals)}" for v in example_shapes(problem))
            return template(f"completion_{phase}.txt").substitute(f, rows=rows, examples=examples)
        population_block = ""
        if phase != "init":
            rows = "\n".join(f"id {s.id} | ppl {fmt_ppl(s.fitness)} | {fmt_rates(s.rates, problem.decimals)}"
                             for s in shown)
            population_block = template("population.txt").substitute(shown=len(shown), size=len(pop), rows=rows) + "\n"
        example_ids = ", ".join(str(s.id) for s in pop[:N_PARENTS[phase]])
        return template("chat.txt").substitute(
            problem=template("problem.txt").substitute(f).strip(),
            attributes=template("attributes.txt").substitute(f).strip(),
            population=population_block,
            task=template(f"task_{phase}.txt").substitute(f).strip(),
            output=template("output_json.txt").substitute(f, parents_example=example_ids).strip())

    # ---- one backend call -----------------------------------------------------------------------------
    def _emit(self, rec: CallRecord) -> int | None:
        return self.on_call(rec) if self.on_call else None

    def _call(self, phase: str, problem: Problem, pop: list[Scored], count: int, attempt: int, generation: int,
              taken: set) -> list[Proposal]:
        prompt = self.build_prompt(phase, problem, pop, count)
        limit = getattr(self.backend, "max_population", None)
        listed = [s.id for s in (pop[:limit] if limit else pop)]
        rec = CallRecord(proposer=self.name, phase=phase, attempt=attempt, prompt=prompt, response="",
                         generation=generation)
        self.stats["calls"] += 1
        t0 = time.perf_counter()
        try:
            text, rec.tokens_in, rec.tokens_out = self.backend.complete(
                prompt, n_numbers=problem.n_layers, n_lists=count, max_tokens=count * tokens_per_list(
                    problem.n_layers) + 32, n_parents=N_PARENTS[phase], parent_ids=listed or None)
        except ProposerError as e:  # the backend cannot work at all (bad key, missing model): tell the user
            rec.latency_s, rec.error = time.perf_counter() - t0, str(e)
            self._emit(rec)
            raise
        except Exception as e:  # a failed request is a failed attempt, never the end of the search
            rec.latency_s, rec.error = time.perf_counter() - t0, f"{type(e).__name__}: {e}"
            self.stats["failed_calls"] += 1
            self._emit(rec)
            return []
        rec.latency_s, rec.response = time.perf_counter() - t0, text or ""
        parsed = parse_reply(text, problem.n_layers)
        problems, kept = list(parsed.rejected), []
        for values, cited in parsed.candidates:
            if len(kept) == count:
                break
            notes: list[str] = []
            try:
                rates, changed = repair(values, problem, taken, notes)
            except RepairError as e:
                problems.append(str(e))
                continue
            if any(n.startswith("length") for n in notes):
                problems += [n for n in notes if n.startswith("length")]
            log.debug("%s %s: %s", self.name, phase, "; ".join(notes) or "kept as written")
            taken.add(key(rates, problem.decimals))
            kept.append(Proposal(rates=rates, origin=phase, parents=self._parents(phase, cited, rates, pop),
                                 repaired=changed, raw=list(values) if changed else None))
        rec.parsed, rec.repaired = len(kept), sum(p.repaired for p in kept)
        if len(kept) < count:
            self.stats["failed_calls"] += 1
            rec.error = f"kept {len(kept)} of {count}" + (": " + "; ".join(problems[:8]) if problems else "")
        elif problems:
            log.info("%s %s: %s", self.name, phase, "; ".join(problems))
        self.stats["kept"] += len(kept)
        self.stats["repaired"] += rec.repaired
        call_id = self._emit(rec)
        for p in kept:
            p.call_id = call_id
        return kept

    @staticmethod
    def _parents(phase: str, cited: list[int] | None, rates: list[float], pop: list[Scored]) -> list[int]:
        """The cited ids that are in the population; missing ones are the nearest members by L1 distance."""
        need = N_PARENTS[phase]
        ids = {s.id for s in pop}
        chosen = [i for i in dict.fromkeys(cited or []) if i in ids][:need]
        for s in sorted(pop, key=lambda s: (sum(abs(a - b) for a, b in zip(s.rates, rates)), s.id)):
            if len(chosen) >= need:
                break
            if s.id not in chosen:
                chosen.append(s.id)
        return chosen

    # ---- a phase ------------------------------------------------------------------------------------
    def _run(self, phase: str, problem: Problem, population: list[Scored], count: int,
             generation: int) -> list[Proposal]:
        if count <= 0:
            return []
        pop = ranked(population)
        taken = {key(s.rates, problem.decimals) for s in pop}
        per_call = getattr(self.backend, "max_lists", None) or count
        out: list[Proposal] = []
        attempt = failures = 0
        while len(out) < count and failures <= self.max_retries:
            attempt += 1
            want = min(count - len(out), per_call)
            got = self._call(phase, problem, pop, want, attempt, generation, taken)
            out += got
            failures += len(got) < want  # a short reply costs a retry; chunks of a long phase do not
        if len(out) < count:
            rng = phase_rng(self.seed, f"fallback-{phase}", generation)
            extra = self.numeric.fill(problem, pop, count - len(out), phase, rng, taken, "fallback")
            self.stats["fallback"] += len(extra)
            log.info("%s %s: %d of %d proposals from the numeric fallback", self.name, phase, len(extra), count)
            out += extra
        return out

    def initial(self, problem: Problem, k: int) -> list[Proposal]:
        return self._run("init", problem, [], k, 0)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int) -> list[Proposal]:
        return self._run("mutation", problem, population, m, generation)

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int) -> list[Proposal]:
        return self._run("crossover", problem, population, s, generation)
