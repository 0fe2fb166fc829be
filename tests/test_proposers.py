"""LLMProposer with scripted backends (retries, call records, fallback, parents), the OpenAI backend against a
local fake server, the numeric GA, the registry, and one slow run of the real llama-cpp backend."""
import json
import random
import sys
import time
import types

import pytest

from selfpruner.core.plans import candidate_key
from selfpruner.core.proposers.base import ProposerError
from selfpruner.core.proposers.llm import LLMProposer, template
from selfpruner.core.proposers.numeric import NumericProposer, RandomInitProposer
from selfpruner.core.proposers.parse import parse_reply
from selfpruner.core.proposers.registry import make_proposer
from selfpruner.core.proposers.repair import is_valid, random_vector
from selfpruner.core.types import Problem, Scored

from conftest import SECRET

PROB = Problem("tiny-llama", 6, 0.3)


def population(n=5, prob=PROB, seed=3):
    rng = random.Random(seed)
    return [Scored(100 + i, random_vector(prob, rng, 0.1), 20.0 + i) for i in range(n)]


def lists(*vecs, parents=None):
    return "\n".join((f"parents: {parents[i]} " if parents else "") + "[" + ", ".join(f"{v:.5f}" for v in vec) + "]"
                     for i, vec in enumerate(vecs))


class Scripted:
    """A backend that answers from a script; an Exception in the script is raised instead. Each call takes
    `delay` seconds, so the recorded latency has something to measure."""
    style = "chat"
    max_population = None
    max_lists = None

    def __init__(self, *replies, delay: float = 0.0):
        self.replies, self.calls, self.delay = list(replies), [], delay

    def complete(self, prompt, *, n_numbers, n_lists, max_tokens, n_parents=0, parent_ids=None, seed=None,
                 fresh=True):
        self.calls.append(dict(prompt=prompt, n_numbers=n_numbers, n_lists=n_lists, max_tokens=max_tokens,
                               n_parents=n_parents, parent_ids=parent_ids, seed=seed, fresh=fresh))
        r = self.replies.pop(0) if self.replies else "nothing useful"
        time.sleep(self.delay)
        if isinstance(r, Exception):
            raise r
        return r, 100, 50


def proposer(backend, **kw):
    p = LLMProposer(backend, "fake", **kw)
    p.records = []

    def sink(rec):
        p.records.append(rec)
        return 1000 + len(p.records)
    p.on_call = sink
    return p


GOOD = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.3], [0.3, 0.3, 0.3, 0.3, 0.2, 0.4], [0.5, 0.1, 0.5, 0.1, 0.3, 0.3]]


def test_garbage_then_good_retries_and_records_every_call():
    b = Scripted("I am sorry, I cannot", lists(GOOD[0], GOOD[1]) + "\n" + lists(GOOD[2]), delay=0.02)
    p = proposer(b)
    out = p.initial(PROB, 3)
    assert [x.rates for x in out] == GOOD and all(x.origin == "init" and x.parents == [] for x in out)
    assert [r.attempt for r in p.records] == [1, 2]
    r1, r2 = p.records
    assert r1.parsed == 0 and r1.error and "no bracketed" in r1.error and r1.response == "I am sorry, I cannot"
    assert r2.parsed == 3 and r2.repaired == 0 and r2.error is None
    assert r2.tokens_in == 100 and r2.tokens_out == 50 and 0.02 <= r2.latency_s < 5 and r2.phase == "init"
    assert all(x.call_id == 1002 and not x.repaired and x.raw is None for x in out)


def test_retry_asks_only_for_the_missing_count():
    b = Scripted(lists(GOOD[0]), lists(GOOD[1], GOOD[2]))
    p = proposer(b)
    out = p.initial(PROB, 3)
    assert [c["n_lists"] for c in b.calls] == [3, 2]
    assert "write 2 configurations" in b.calls[1]["prompt"]
    assert [x.call_id for x in out] == [1001, 1002, 1002]


def test_fallback_after_max_retries_never_raises():
    b = Scripted(*["[nan, nan]"] * 10)
    p = proposer(b, max_retries=2)
    pop = population()
    out = p.mutate(PROB, pop, 4, generation=3)
    assert len(b.calls) == 3 and [r.attempt for r in p.records] == [1, 2, 3]
    assert all(x.origin == "fallback" and x.call_id is None for x in out)
    assert all(is_valid(x.rates, PROB) for x in out)
    assert len({candidate_key(x.rates) for x in out} | {candidate_key(s.rates) for s in pop}) == 4 + len(pop)
    assert all(len(x.parents) == 1 and x.parents[0] in {s.id for s in pop} for x in out)
    assert p.stats["fallback"] == 4
    assert all(r.generation == 3 and r.phase == "mutation" for r in p.records)


def test_fallback_is_deterministic():
    runs = [[x.rates for x in proposer(Scripted(), max_retries=0).crossover(PROB, population(), 3, 2)]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_backend_exception_is_a_failed_attempt():
    b = Scripted(TimeoutError("read timed out"), lists(GOOD[0]), delay=0.02)
    p = proposer(b)
    out = p.initial(PROB, 1)
    assert out[0].rates == GOOD[0]
    assert p.records[0].error == "TimeoutError: read timed out" and p.records[0].response == ""
    assert 0.02 <= p.records[0].latency_s < 5  # a failed call's time is measured too


def test_setup_error_from_backend_is_recorded_and_raised():
    p = proposer(Scripted(ProposerError("OpenAI refused the request (401): check OPENAI_API_KEY")))
    with pytest.raises(ProposerError):
        p.initial(PROB, 2)
    assert len(p.records) == 1 and "401" in p.records[0].error


def test_repaired_candidates_keep_their_raw_numbers():
    off = [0.5] * 6  # mean 0.5, not 0.3
    p = proposer(Scripted(lists(off, GOOD[0])))
    out = p.initial(PROB, 2)
    assert out[0].repaired and out[0].raw == off and is_valid(out[0].rates, PROB)
    assert not out[1].repaired
    assert p.records[0].repaired == 1 and p.records[0].parsed == 2


def test_wrong_length_is_repaired_and_reported():
    p = proposer(Scripted(lists([0.3] * 5 + [0.2, 0.4]), lists([0.3] * 6)))
    out = p.initial(PROB, 2)
    assert out[0].repaired and len(out[0].rates) == 6
    assert "length 7 != 6" in p.records[0].error  # fell short of 2, so the reasons are shown


def test_copies_of_the_population_become_distinct():
    pop = population()
    p = proposer(Scripted(lists(pop[0].rates, pop[0].rates, pop[1].rates)))
    out = p.mutate(PROB, pop, 3, 1)
    keys = {candidate_key(x.rates) for x in out}
    assert len(keys) == 3 and not keys & {candidate_key(s.rates) for s in pop}
    assert all(x.repaired for x in out)


def test_cited_parents_are_used_when_they_exist():
    pop = population()
    reply = json.dumps({"solutions": [{"parents": [102, 104], "rates": GOOD[0]},
                                      {"parents": [999, 103], "rates": GOOD[1]},
                                      {"parents": [], "rates": GOOD[2]}]})
    out = proposer(Scripted(reply)).crossover(PROB, pop, 3, 1)
    assert out[0].parents == [102, 104]
    assert out[1].parents[0] == 103 and len(out[1].parents) == 2 and 999 not in out[1].parents
    near = sorted(pop, key=lambda s: sum(abs(a - b) for a, b in zip(s.rates, GOOD[2])))
    assert out[2].parents == [near[0].id, near[1].id]


def test_mutation_without_citation_gets_the_nearest_member():
    pop = population()
    child = list(pop[3].rates)
    child[0], child[1] = round(child[0] + 0.01, 5), round(child[1] - 0.01, 5)
    out = proposer(Scripted(lists(child))).mutate(PROB, pop, 1, 1)
    assert out[0].parents == [pop[3].id]


def test_chat_prompt_layout():
    pop = population(5)
    b = Scripted(lists(GOOD[0]))
    proposer(b).mutate(PROB, pop, 1, 1)
    prompt = b.calls[0]["prompt"]
    for s in ("tiny-llama", "6 decoder layers", "0.3", "5 decimals", "square brackets", '"solutions"', "mutation"):
        assert s in prompt
    ids = [int(line.split()[1]) for line in prompt.splitlines() if line.startswith("id ")]
    assert ids == [100, 101, 102, 103, 104]  # best (lowest ppl) first
    assert "ppl 20.00" in prompt
    assert prompt.index("Every configuration") < prompt.index("population") < prompt.index("Task:")
    assert b.calls[0]["n_parents"] == 1 and b.calls[0]["parent_ids"] == ids


def test_completion_prompt_lists_at_most_max_population_and_ends_open():
    class Base(Scripted):
        style, max_population = "completion", 3
    pop = population(8)
    b = Base(lists(GOOD[0], parents=["[101, 102]"]))
    out = proposer(b).crossover(PROB, pop, 1, 1)
    prompt = b.calls[0]["prompt"]
    assert prompt.count("id: ") == 3 and "ppl: 20.00" in prompt and prompt.endswith(":\n")
    assert b.calls[0]["parent_ids"] == [100, 101, 102] and b.calls[0]["n_parents"] == 2
    assert out[0].parents == [101, 102]
    init = Base(lists(GOOD[0]))
    proposer(init).initial(PROB, 1)
    assert "rates: [0.30000, 0.30000" in init.calls[0]["prompt"]  # format examples for a base model


def test_templates_are_package_data():
    for name in ("problem.txt", "attributes.txt", "population.txt", "task_init.txt", "task_mutation.txt",
                 "task_crossover.txt", "output_json.txt", "chat.txt", "completion_init.txt",
                 "completion_mutation.txt", "completion_crossover.txt"):
        assert template(name).template.strip()


def test_chunks_of_a_long_phase_are_not_failures():
    class Small(Scripted):
        max_lists = 2
    vecs = [random_vector(PROB, random.Random(i)) for i in range(5)]
    b = Small(lists(*vecs[:2]), lists(*vecs[2:4]), lists(vecs[4]))
    out = proposer(b, max_retries=0).initial(PROB, 5)
    assert [c["n_lists"] for c in b.calls] == [2, 2, 1] and all(x.origin == "init" for x in out)


# ---- OpenAI backend against a local fake server ----------------------------------------------------------
def test_openai_backend_structured_output_and_no_key_in_records(fake_openai):
    pop = population()
    fake_openai.content = json.dumps({"solutions": [{"parents": [101], "rates": GOOD[0]},
                                                    {"parents": [102], "rates": [0.9] * 6}]})
    p = make_proposer("openai", seed=1, max_retries=0)
    p.records = []
    p.on_call = lambda r: p.records.append(r) or 7
    out = p.mutate(PROB, pop, 2, 1)
    req = fake_openai.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {SECRET}"
    assert req["body"]["model"] == "gpt-4o"
    rf = req["body"]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert set(rf["json_schema"]["schema"]["properties"]["solutions"]["items"]["required"]) == {"parents", "rates"}
    assert out[0].rates == GOOD[0] and out[0].parents == [101] and out[1].repaired and out[1].parents == [102]
    rec = p.records[0]
    assert rec.tokens_in == 321 and rec.tokens_out == 45 and rec.parsed == 2 and rec.proposer == "openai"
    assert SECRET not in json.dumps(rec.to_dict()) and SECRET not in repr(p.backend)
    assert SECRET not in json.dumps(req["body"])
    assert SECRET not in json.dumps(vars(p.backend), default=str)


def test_openai_rejected_key_is_one_clear_error(fake_openai):
    fake_openai.status = 401
    p = make_proposer("openai", max_retries=3)
    with pytest.raises(ProposerError) as e:
        p.initial(PROB, 2)
    assert "401" in str(e.value) and SECRET not in str(e.value)
    assert len(fake_openai.requests) == 1  # not retried


def test_openai_missing_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ProposerError) as e:
        make_proposer("openai")
    assert str(e.value) == ("OPENAI_API_KEY is not set; use --proposer llama-cpp for the offline proposer "
                            "(or --base-url for a local OpenAI-compatible server)")


# ---- vLLM -----------------------------------------------------------------------------------------------
def test_vllm_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(ProposerError) as e:
        make_proposer("vllm")
    assert "pip install 'selfpruner[gpu]'" in str(e.value)


def test_vllm_backend_call_shape_with_a_stand_in_module(monkeypatch):
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class GuidedDecodingParams:
        def __init__(self, json):
            self.json = json

    class LLM:
        def __init__(self, model, **kw):
            seen["model"] = model

        def chat(self, messages, params, use_tqdm=False):
            seen["messages"] = messages
            out = types.SimpleNamespace(text=lists(GOOD[0]), token_ids=[1] * 30)
            return [types.SimpleNamespace(outputs=[out], prompt_token_ids=[1] * 12)]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    sp = types.ModuleType("vllm.sampling_params")
    sp.GuidedDecodingParams = GuidedDecodingParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    p = make_proposer("vllm", model="some/instruct-model")
    out = p.initial(PROB, 1)
    assert seen["model"] == "some/instruct-model" and out[0].rates == GOOD[0]
    assert "solutions" in seen["params"]["guided_decoding"].json["properties"]
    assert seen["messages"][0]["role"] == "user"


# ---- numeric GA, random init, registry ---------------------------------------------------------------------
def test_numeric_ga_is_deterministic_and_valid():
    pop = population(6)
    a, b, c = NumericProposer(5), NumericProposer(5), NumericProposer(6)
    for phase in ("mutate", "crossover"):
        x = getattr(a, phase)(PROB, pop, 4, 2)
        assert [p.rates for p in x] == [p.rates for p in getattr(b, phase)(PROB, pop, 4, 2)]
        assert [p.rates for p in x] != [p.rates for p in getattr(c, phase)(PROB, pop, 4, 2)]
        assert all(is_valid(p.rates, PROB) for p in x)
        assert not {candidate_key(p.rates) for p in x} & {candidate_key(s.rates) for s in pop}
        assert all(set(p.parents) <= {s.id for s in pop} for p in x)
    assert all(len(p.parents) == 2 for p in a.crossover(PROB, pop, 4, 3))
    init = a.initial(PROB, 10)
    assert [p.rates for p in init] == [p.rates for p in b.initial(PROB, 10)]
    assert len({candidate_key(p.rates) for p in init}) == 10 and all(p.origin == "init" for p in init)


def test_numeric_mutation_prefers_good_parents():
    pop = population(10)
    counts = {}
    for g in range(30):
        for p in NumericProposer(0).mutate(PROB, pop, 5, g):
            counts[p.parents[0]] = counts.get(p.parents[0], 0) + 1
    assert counts.get(100, 0) > counts.get(109, 0)


def test_numeric_blend_crossover_and_bad_kind():
    out = NumericProposer(1, crossover="blend").crossover(PROB, population(), 3, 1)
    assert all(is_valid(p.rates, PROB) for p in out)
    with pytest.raises(ProposerError):
        NumericProposer(crossover="nope")


def test_degenerate_problem_raises_proposer_error():
    prob = Problem("m", 3, 0.3, lo=0.3, hi=0.9)  # only [0.3, 0.3, 0.3] exists
    with pytest.raises(ProposerError):
        NumericProposer(0).initial(prob, 2)


def test_random_init_proposer():
    inner = proposer(Scripted(lists(GOOD[0])))
    r = RandomInitProposer(3, inner=inner)
    init = r.initial(PROB, 4)
    assert all(p.origin == "random" and is_valid(p.rates, PROB) for p in init)
    assert r.mutate(PROB, population(), 1, 1)[0].rates == GOOD[0]
    r.on_call = None
    assert inner.on_call is None
    plain = make_proposer("random", seed=3)
    assert plain.name == "random" and [p.rates for p in plain.initial(PROB, 4)] == [p.rates for p in init]


def test_registry_names_and_errors():
    assert make_proposer("numeric", seed=2, max_retries=1, temperature=0.5).name == "numeric"
    with pytest.raises(ProposerError, match="unknown proposer"):
        make_proposer("gpt-7")
    with pytest.raises(ProposerError, match="replay"):
        make_proposer("replay")
    with pytest.raises(ProposerError, match="not found"):
        make_proposer("llama-cpp", model="/nonexistent/model.gguf")


def test_llama_cpp_grammar_text():
    from selfpruner.core.proposers.llama_cpp_backend import rates_grammar
    g = rates_grammar(3, 2, 2, [4, 17])
    assert g.count("line") == 3 and '"4" | "17"' in g and g.count("num") == 4


# ---- the real offline backend (slow) ----------------------------------------------------------------------
@pytest.mark.slow
def test_llama_cpp_writes_two_mutations_of_18_numbers():
    prob = Problem("gemma-3-270m", 18, 0.3)
    pop = population(12, prob)
    backend = make_proposer("llama-cpp", seed=0, max_retries=0).backend
    p = proposer(backend, max_retries=0)
    out = p.mutate(prob, pop, 2, 1)
    # the template decoder uses llama.cpp internals: fail loudly if it ever falls back to the grammar
    assert backend.last_decoding == "template"
    recs = p.records  # the backend asks for one list per call (max_lists = 1)
    assert sum(r.parsed for r in recs) == 2 and all(r.error is None for r in recs)
    assert all(r.latency_s > 0 and r.tokens_in > 0 and r.tokens_out > 0 for r in recs)
    raw = [c.values for r in recs for c in parse_reply(r.response, 18).candidates]
    assert len(raw) == 2 and all(len(v) == 18 and all(0 <= x < 1 for x in v) for v in raw)
    for x in out:
        assert x.origin == "mutation" and x.call_id in {1000 + i + 1 for i in range(len(recs))}
        assert is_valid(x.rates, prob) and abs(sum(x.rates) / 18 - 0.3) < 1e-9
        assert len(x.parents) == 1 and x.parents[0] in {s.id for s in pop[:10]}
    for r in recs:
        print(f"\nllama-cpp mutation call: {r.latency_s:.1f}s, {r.tokens_in}->{r.tokens_out} tokens, "
              f"repaired {r.repaired}/{r.parsed}: {r.response.strip()}")


@pytest.mark.slow
def test_llama_cpp_selection_step_answers_with_population_ids():
    prob = Problem("gemma-3-270m", 18, 0.3)
    pop = population(12, prob)
    backend = make_proposer("llama-cpp", seed=0, max_retries=0).backend
    p = proposer(backend, max_retries=1)
    sel = p.select(prob, pop, 4, 1)
    assert backend.last_decoding == "template" and p.records[0].phase == "selection"
    assert p.records[0].response.startswith("parents: [")
    assert len(sel.ids) == len(set(sel.ids)) == 4 and set(sel.ids) <= {s.id for s in pop}
    assert sel.from_llm >= 1  # the model's own picks come first; repeats it wrote are filled by tournament


@pytest.mark.slow
def test_llama_cpp_grammar_decoding_gives_the_same_format():
    from selfpruner.core.proposers.llama_cpp_backend import LlamaCppBackend
    b = LlamaCppBackend(decoding="grammar")
    text, _, n_out = b.complete("Rates, one list per line:\n", n_numbers=4, n_lists=1, max_tokens=60,
                                n_parents=1, parent_ids=[3, 12])
    assert text.startswith("parents: [") and n_out > 0
    cand = parse_reply(text, 4).candidates
    assert len(cand) == 1 and cand[0].parents[0] in (3, 12) and len(cand[0].values) == 4


def test_search_config_reaches_the_llama_cpp_proposer(monkeypatch):
    """SearchConfig -> build_proposer -> make_proposer -> LLMProposer, without loading a GGUF."""
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.layer_search.session import build_proposer
    from selfpruner.core.proposers import llama_cpp_backend

    made = {}
    monkeypatch.setattr(llama_cpp_backend, "LlamaCppBackend", lambda model, **kw: made.update(kw) or Scripted())
    p = build_proposer(SearchConfig(proposer="llama-cpp", prompt_fitness="rank", llm_threads=1, seed=4))
    assert p.fitness_view == "rank" and made["n_threads"] == 1 and made["seed"] == 4


def test_rank_view_shows_ranks_not_ppl():
    pop = population()
    p = proposer(Scripted(), fitness_view="rank")
    text = p.build_prompt("mutation", PROB, pop, 2)
    assert "rank 1 |" in text and "rank 5 |" in text and "ppl 20" not in text
    assert "id 100 | rank 1 |" in text  # 100 has the lowest ppl
    plain = proposer(Scripted()).build_prompt("mutation", PROB, pop, 2)
    assert "id 100 | ppl 20" in plain


def test_two_decimals_prompt_and_repair():
    prob = Problem("tiny-llama", 6, 0.3, decimals=2)
    p = proposer(Scripted(lists([0.111, 0.222, 0.333, 0.444, 0.3, 0.4])), max_retries=0)
    (out,) = p.mutate(prob, population(prob=prob), 1, 1)
    assert all(round(r, 2) == r for r in out.rates) and abs(sum(out.rates) - 1.8) < 1e-9
    assert "has 2 decimals" in p.records[0].prompt and "0.30" in p.records[0].prompt


def test_sensitivity_table_in_both_prompt_styles():
    from dataclasses import replace

    prob = replace(PROB, sensitivity=(40.0, 90.5, 35.25, 33.0, 34.0, 60.0), sensitivity_rate=0.6, dense_ppl=30.0)
    chat = proposer(Scripted()).build_prompt("mutation", prob, population(), 2)
    assert "pruned at rate 0.6" in chat and "0: 40.00, 1: 90.50, 2: 35.25" in chat and "is 30.00" in chat

    class Completion(Scripted):
        style = "completion"
    assert "1: 90.50" in proposer(Completion()).build_prompt("mutation", prob, population(), 2)
    assert "pruned at rate" not in proposer(Scripted()).build_prompt("mutation", PROB, population(), 2)


def test_search_measures_the_sensitivity_table_once(tmp_path, tiny_llama_dir):
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import start_search
    from selfpruner.core.layer_search.workbench import Workbench

    bench = Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local")
    cfg = SearchConfig(model=str(tiny_llama_dir), beta=0.3, proposer="numeric", population=3, mutations=1,
                       crossovers=1, generations=1, budget_tokens=64, seq_len=32, calib_tokens=256,
                       final_eval=False, data="local", sessions_dir=str(tmp_path), prompt_sensitivity=True)
    s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    backend = Scripted()  # nothing useful: the numeric fallback writes, the prompts are what is checked
    s.proposer = LLMProposer(backend, "scripted", max_retries=0)
    s.proposer.on_call = s._record_call
    s.run()
    (res,) = s.store.results("sensitivity")
    table = res["payload"]
    assert table["rate"] == 0.6 and len(set(table["ppl"])) == 4 and table["dense"] == bench.dense_ppl(64)
    assert bench.fitness([0.6, 0, 0, 0], 64)[0] == table["ppl"][0]
    assert all("0: " + f"{table['ppl'][0]:.2f}" in c["prompt"] for c in backend.calls)


def test_one_registry_feeds_the_cli_the_tui_and_both_searches(tmp_path):
    from selfpruner.cli import build_parser
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.layer_search.session import build_proposer
    from selfpruner.core.proposers.registry import LAYER_PROPOSERS, METRIC_PROPOSERS
    from selfpruner.tui.screens.start import PROPOSER_HELP, PROPOSERS

    def choices(command):
        sub = next(a for a in build_parser()._actions if a.dest == "cmd" or getattr(a, "choices", None)
                   and command in (a.choices or {}))
        action = next(a for a in sub.choices[command]._actions if a.dest == "proposer")
        return list(action.choices)
    assert choices("search") == list(LAYER_PROPOSERS) and choices("metric-search") == list(METRIC_PROPOSERS)
    assert [v for _, v in PROPOSERS] == [n for n, e in LAYER_PROPOSERS.items() if e.in_form]
    assert set(PROPOSER_HELP) == set(LAYER_PROPOSERS)
    assert build_proposer(SearchConfig(proposer="numeric", seed=3)).name == "numeric"
    with pytest.raises(ProposerError, match="--replay-from"):
        build_proposer(SearchConfig(proposer="replay"))
    with pytest.raises(ProposerError, match="unknown proposer"):
        build_proposer(types.SimpleNamespace(proposer="gpt-9"))
