"""LLMProposer: the Self-Pruner proposer. It writes prompts from prompts/*.txt, asks a backend, parses and
repairs the reply, records every call, retries for what is missing, and fills any remainder with the
numeric GA's operators (origin "fallback") so a bad model never stops the search.

Algorithm 1's selection step is `select`: the LLM picks a generation's parents (ids only), and the search
then shows mutation and crossover only those. How a reply becomes candidates (`interpret_reply`,
`interpret_selection`) is a pure function of the reply and the search state, so replay re-reads stored
replies with it and a parse or repair regression shows as a diverged trajectory.

A backend is any object with
    complete(prompt, *, n_numbers, n_lists, max_tokens, n_parents=0, parent_ids=None, seed=None, fresh=True)
        -> (text, tok_in, tok_out)
(n_numbers = 0: an answer of n_parents ids only, for the selection step) and optionally `style` ("chat":
instructions + JSON answer; "completion": a document a base model continues), `max_population` (members
listed in the prompt), `max_lists` (lists asked for per call) and `should_stop` (set here: a long local
generation checks it and raises InterruptedError).

Every call is reproducible from what the session stores, never from this process's history, so a killed
and resumed search asks exactly what the uninterrupted one asked: its `seed` is call_seed(session seed,
generation, phase, attempt), and `fresh` (the first call of a phase) tells a backend with a prompt cache
(llama.cpp) to start from an empty one, since a resumed run starts a phase with nothing cached.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from importlib import resources
from string import Template

from ..types import CallRecord, Problem, Proposal, Scored
from .base import CallSink, ProposerError
from .numeric import NumericProposer, phase_rng, ranked
from .parse import parse_reply
from .repair import RepairError, identity, repair

log = logging.getLogger("selfpruner.proposers")

N_PARENTS = {"init": 0, "mutation": 1, "crossover": 2}


def call_seed(seed: int, generation: int, phase: str, attempt: int) -> int:
    """The sampling seed of one LLM call: a function of the call's place in the session alone (31 bits, what
    every backend accepts)."""
    digest = hashlib.blake2b(f"{seed}:{generation}:{phase}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass
class Selection:
    """The parents Algorithm 1's selection step picked for one generation."""
    ids: list[int]
    from_llm: int  # how many of `ids` the LLM chose (the rest: the numeric GA's tournament)
    call_id: int | None = None


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


def grain_text(problem: Problem) -> str:
    """How coarse each layer is, for the prompts (empty when the grain is unknown)."""
    g = problem.grain
    if g is None:
        return ""
    unit = (f"KV groups (one KV head with its {g.q_heads_per_unit} query heads)" if g.q_heads_per_unit > 1
            else "attention heads")
    step = "one channel" if g.channel_multiple == 1 else f"{g.channel_multiple} channels"
    name = "grain_search.txt" if g.attention_genes else "grain.txt" if g.unit_order is None else "grain_flap.txt"
    return template(name).substitute(units=g.attn_units, unit=unit, channels=g.channels,
                                     unit_rate=f"{g.unit_rate:.5f}", channel_step=step,
                                     channel_rate=f"{g.channel_step_rate:.5f}").strip()


def layer_facts(problem: Problem) -> str:
    """What the prompts say about the layers: their grain, the speed budget and, where measured, their
    sensitivity."""
    return "\n".join(t for t in (grain_text(problem), speed_text(problem), sensitivity_text(problem)) if t)


def speed_text(problem: Problem) -> str:
    """--target-speedup: the budget in the cost table's terms (empty without one)."""
    sb = problem.speed
    if sb is None:
        return ""
    attn, step, mlp = sb.table.step_savings(sb.objective)
    g = problem.grain
    unit = "KV groups" if g.q_heads_per_unit > 1 else "attention heads"
    objective = {"prompt": "prompt processing", "generation": "time per generated token",
                 "mix": f"a {sb.table.workload.prompt_len}-token prompt and {sb.table.workload.decode_tokens} "
                        f"generated tokens"}[sb.objective]
    return template("speed.txt").substitute(target=f"{sb.target:g}", engine=sb.table.engine, objective=objective,
                                            unit=unit, attn_ms=f"{1e3 * attn:.3g}", step=step,
                                            mlp_ms=f"{1e3 * mlp:.3g}",
                                            dense_ms=f"{1e3 * sb.table.dense_seconds(sb.objective):.4g}",
                                            beta=f"{problem.beta:g}").strip()


def sensitivity_text(problem: Problem) -> str:
    """The measured per-layer sensitivity table, for the prompts (empty when not measured)."""
    if problem.sensitivity is None:
        return ""
    rows = ", ".join(f"{i}: {fmt_ppl(f)}" for i, f in enumerate(problem.sensitivity))
    return template("sensitivity.txt").substitute(rate=f"{problem.sensitivity_rate:g}",
                                                  dense=fmt_ppl(problem.dense_ppl), rows=rows).strip()


def parents_for(phase: str, cited: list[int] | None, rates: list[float], pop: list[Scored]) -> list[int]:
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


def interpret_reply(phase: str, text: str | None, problem: Problem, pop: list[Scored], count: int,
                    taken: set) -> tuple[list[Proposal], list[str]]:
    """(at most `count` repaired, distinct proposals, reasons for what was dropped). Adds the kept
    candidates' identities to `taken`."""
    parsed = parse_reply(text, problem.n_genes, problem.n_layers if problem.attention_genes else None)
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
        problems += [n for n in notes if n.startswith("length")]
        taken.add(identity(rates, problem))
        kept.append(Proposal(rates=rates, origin=phase, parents=parents_for(phase, cited, rates, pop),
                             repaired=changed, raw=list(values) if changed else None))
    return kept, problems


_FIRST_LIST = re.compile(r"\[([^\[\]]*)\]")


def interpret_selection(text: str | None, pop: list[Scored], count: int) -> list[int]:
    """Up to `count` distinct population ids in the order written: from the first bracketed list when there
    is one (the JSON or the template answer), else from the whole reply."""
    text = text or ""
    m = _FIRST_LIST.search(text)
    ids, out = {s.id for s in pop}, []
    for tok in re.findall(r"\d+", m.group(1) if m else text):
        i = int(tok)
        if i in ids and i not in out:
            out.append(i)
            if len(out) == count:
                break
    return out


class LLMProposer:
    def __init__(self, backend, name: str, max_retries: int = 3, rng_seed: int = 0, *, sigma: float = 0.05,
                 fitness_view: str = "ppl"):
        self.backend, self.name = backend, name
        self.fitness_view = fitness_view  # ppl | rank: what the population rows show
        self.max_retries = max(0, int(max_retries))  # retries after the first call of a phase
        self.seed = rng_seed
        self.on_call: CallSink | None = None
        self.numeric = NumericProposer(rng_seed, sigma=sigma)
        self.stats = {"calls": 0, "failed_calls": 0, "kept": 0, "repaired": 0, "fallback": 0}
        self._ahead: dict[tuple[int, str], tuple[str, tuple]] = {}  # (generation, phase) -> prompt, answer
        self._should_stop = None

    @property
    def should_stop(self):
        return self._should_stop

    @should_stop.setter
    def should_stop(self, fn) -> None:
        """Set by the search: checked before every call, and by a backend that generates locally."""
        self._should_stop = fn
        if hasattr(self.backend, "should_stop"):
            self.backend.should_stop = fn

    def _check_stop(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise InterruptedError("stopped")

    # ---- prompts --------------------------------------------------------------------------------------
    def _fields(self, problem: Problem, count: int) -> dict:
        d, n = problem.decimals, problem.n_layers
        listed = f"{n} rates in [{problem.lo:g}, {problem.hi:g}] with {d} decimals, mean " + \
            (f"about {problem.beta:g}" if problem.speed else f"{problem.beta:g}")
        if problem.attention_genes:
            listed += f", then {n} attention rates"
        f = dict(model=problem.model_name, n_layers=n, beta=f"{problem.beta:g}", n_numbers=problem.n_genes,
                 listed=listed, lo=f"{problem.lo:g}", hi=f"{problem.hi:g}", decimals=d, count=count,
                 example=f"{problem.beta:.{d}f}", total=f"{problem.beta * problem.n_layers:.{d}f}".rstrip("0")
                 .rstrip("."), grain=layer_facts(problem))
        f["mean_rule"] = template("mean_speed.txt" if problem.speed else "mean_exact.txt").substitute(f).strip()
        return f

    def build_prompt(self, phase: str, problem: Problem, population: list[Scored], count: int) -> str:
        pop = ranked(population)
        limit = getattr(self.backend, "max_population", None)
        shown = pop[:limit] if limit else pop
        f = self._fields(problem, count)
        if getattr(self.backend, "style", "chat") == "completion":
            # the best `limit` members, listed worst to best: a base model mostly continues from the last
            # lines it read (measured: it cited the last-listed id in nearly every mutation), so the best
            # member sits right above the answer
            rows = "\n".join(f"id: {s.id} {self._score(s, pop, ': ', problem)} "
                             f"rates: {fmt_rates(s.rates, problem.decimals)}" for s in reversed(shown))
            examples = "\n".join(f"rates: {fmt_rates(v, problem.decimals)}" for v in example_shapes(problem))
            return template(f"completion_{phase}.txt").substitute(f, rows=rows, examples=examples)
        population_block = ""
        if phase != "init":
            rows = "\n".join(f"id {s.id} | {self._score(s, pop, ' ', problem)} | "
                             f"{fmt_rates(s.rates, problem.decimals)}" for s in shown)
            population_block = template("population.txt").substitute(shown=len(shown), size=len(pop), rows=rows) + "\n"
        example_ids = ", ".join(str(s.id) for s in pop[:N_PARENTS.get(phase, 2)])
        output = "output_selection_json.txt" if phase == "selection" else "output_json.txt"
        return template("chat.txt").substitute(
            problem=template("problem.txt").substitute(f).strip(),
            attributes=template("attributes_split.txt" if problem.attention_genes else "attributes.txt")
            .substitute(f).strip(),
            population=population_block,
            task=template(f"task_{phase}.txt").substitute(f).strip(),
            output=template(output).substitute(f, parents_example=example_ids).strip())

    def _score(self, s: Scored, ranked_pop: list[Scored], sep: str, problem: Problem) -> str:
        """How a member's fitness is shown: its ppl (or KL), or (fitness_view 'rank') its rank, 1 = best."""
        if self.fitness_view == "rank":
            return f"rank{sep}{next(i for i, x in enumerate(ranked_pop, 1) if x.id == s.id)}"
        if problem.fitness_name == "kl":
            return f"kl{sep}{s.fitness:.4f}" if math.isfinite(s.fitness) else f"kl{sep}inf"
        return f"ppl{sep}{fmt_ppl(s.fitness)}"

    # ---- one backend call -----------------------------------------------------------------------------
    def _emit(self, rec: CallRecord) -> int | None:
        return self.on_call(rec) if self.on_call else None

    def _request(self, phase: str, problem: Problem, pop: list[Scored], count: int, n_numbers: int,
                 n_parents: int, generation: int, attempt: int) -> tuple[str, dict]:
        """The prompt and the backend's keywords of one call."""
        limit = getattr(self.backend, "max_population", None)
        listed = [s.id for s in (pop[:limit] if limit else pop)]
        max_tokens = count * tokens_per_list(n_numbers) + 32 if n_numbers else 8 * count + 32
        return self.build_prompt(phase, problem, pop, count), dict(
            n_numbers=n_numbers, n_lists=count if n_numbers else 1, max_tokens=max_tokens, n_parents=n_parents,
            parent_ids=listed or None, seed=call_seed(self.seed, generation, phase, attempt), fresh=attempt == 1)

    def _ask(self, phase: str, problem: Problem, pop: list[Scored], count: int, attempt: int,
             generation: int, n_numbers: int, n_parents: int) -> tuple[CallRecord, str | None]:
        """One backend call (or its answer fetched ahead by prefetch), recorded in the returned record (not
        yet stored); text None: it failed."""
        self._check_stop()
        prompt, kw = self._request(phase, problem, pop, count, n_numbers, n_parents, generation, attempt)
        rec = CallRecord(proposer=self.name, phase=phase, attempt=attempt, prompt=prompt, response="",
                         generation=generation, asked=count)
        self.stats["calls"] += 1
        ahead = self._ahead.pop((generation, phase), None) if attempt == 1 else None
        if ahead is not None and ahead[0] == prompt:
            outcome, rec.latency_s = ahead[1]
        else:
            t0 = time.perf_counter()
            try:
                outcome = self.backend.complete(prompt, **kw)
            except InterruptedError:  # the user stopped the search during the call: stored as such, phase dropped
                rec.latency_s, rec.error = time.perf_counter() - t0, "stopped during the call"
                self._emit(rec)
                raise
            except Exception as e:
                outcome = e
            rec.latency_s = time.perf_counter() - t0
        if isinstance(outcome, ProposerError):  # the backend cannot work at all (bad key, missing model)
            rec.error = str(outcome)
            self._emit(rec)
            raise outcome
        if isinstance(outcome, Exception):  # a failed request is a failed attempt, never the end of the search
            rec.error = f"{type(outcome).__name__}: {outcome}"
            self.stats["failed_calls"] += 1
            return rec, None
        text, rec.tokens_in, rec.tokens_out = outcome
        rec.response = text or ""
        return rec, rec.response

    def prefetch(self, problem: Problem, parents: list[Scored], counts: dict[str, int], generation: int) -> None:
        """Send the first call of each phase in `counts` ({"mutation": M, "crossover": S}) at once, where the
        backend can (complete_many: OpenAI's async client, vLLM's batched generate). The answers wait until
        mutate()/crossover() ask for them, so calls are stored, parsed and repaired in the same fixed order as
        without prefetching, whatever order they finished in: replay stays exact."""
        many = getattr(self.backend, "complete_many", None)
        self._ahead.clear()
        if many is None:
            return
        pop = ranked(parents)
        per_call = getattr(self.backend, "max_lists", None)
        phases = [(ph, min(c, per_call or c)) for ph, c in counts.items() if c > 0]
        if len(phases) < 2:
            return
        requests = [self._request(ph, problem, pop, c, problem.n_genes, N_PARENTS[ph], generation, 1)
                    for ph, c in phases]
        for (ph, _), (prompt, _), outcome in zip(phases, requests, many(requests)):
            self._ahead[(generation, ph)] = (prompt, outcome)

    def _call(self, phase: str, problem: Problem, pop: list[Scored], count: int, attempt: int, generation: int,
              taken: set) -> list[Proposal]:
        rec, text = self._ask(phase, problem, pop, count, attempt, generation, problem.n_genes, N_PARENTS[phase])
        if text is None:
            self._emit(rec)
            return []
        kept, problems = interpret_reply(phase, text, problem, pop, count, taken)
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

    # ---- Algorithm 1's selection step ----------------------------------------------------------------
    def select(self, problem: Problem, population: list[Scored], count: int, generation: int) -> Selection:
        """`count` distinct parents picked by the LLM; what it has not picked after the retries comes from
        the numeric GA's tournament (and counts as fallback)."""
        pop = ranked(population)
        count = min(count, len(pop))
        best: list[int] = []
        call_id = None
        for attempt in range(1, self.max_retries + 2):
            rec, text = self._ask("selection", problem, pop, count, attempt, generation, 0, count)
            got = interpret_selection(text, pop, count) if text is not None else []
            rec.parsed = len(got)
            if text is not None and len(got) < count:
                self.stats["failed_calls"] += 1
                rec.error = f"kept {len(got)} of {count} parent ids"
            cid = self._emit(rec)
            if len(got) > len(best):
                best, call_id = got, cid
            if len(best) == count:
                break
        chosen = list(best)
        rng = phase_rng(self.seed, "fallback-selection", generation)
        while len(chosen) < count:
            pick = self.numeric.pick(pop, rng).id
            if pick not in chosen:
                chosen.append(pick)
        self.stats["fallback"] += count - len(best)
        return Selection(chosen, len(best), call_id)

    # ---- a phase ------------------------------------------------------------------------------------
    def _run(self, phase: str, problem: Problem, population: list[Scored], count: int,
             generation: int, seen) -> list[Proposal]:
        if count <= 0:
            return []
        pop = ranked(population)
        taken = {identity(s.rates, problem) for s in pop} | set(seen)
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

    def initial(self, problem: Problem, k: int, seen=frozenset()) -> list[Proposal]:
        return self._run("init", problem, [], k, 0, seen)

    def mutate(self, problem: Problem, population: list[Scored], m: int, generation: int,
               seen=frozenset()) -> list[Proposal]:
        return self._run("mutation", problem, population, m, generation, seen)

    def crossover(self, problem: Problem, population: list[Scored], s: int, generation: int,
                  seen=frozenset()) -> list[Proposal]:
        return self._run("crossover", problem, population, s, generation, seen)
