"""Pruner-Zero GP: de-duplication, determinism and resume on a tiny model, the LLM proposer path (malformed
replies never crash), config checks; one slow run on the bundled gemma-3-270m."""
import math

import pytest
import torch

from selfpruner.core.config import ConfigError
from selfpruner.core.metric_search.expr import WANDA
from selfpruner.core.metric_search.expr_parse import parse
from selfpruner.core.metric_search.expr_print import to_text
from selfpruner.core.metric_search.expr_simplify import canonical
from selfpruner.core.metric_search.prompts import build_metric_prompt, extract_expressions, metric_grammar
from selfpruner.core.metric_search.pruner_zero import (
    MetricCandidate,
    MetricSearchConfig,
    ppl_fitness,
    run_metric_search,
)
from selfpruner.core.metric_search.unstructured import UnstructuredPruner
from selfpruner.core.model.calibration import collect_stats
from selfpruner.core.model.models import describe_model

from conftest import make_tiny


@pytest.fixture(scope="module")
def tiny_fitness():
    model = make_tiny("llama")
    arch = describe_model(model)
    g = torch.Generator().manual_seed(0)
    stats = collect_stats(model, arch, torch.randint(0, 1000, (4, 32), generator=g))
    windows = torch.randint(0, 1000, (2, 32), generator=g)
    pruner = UnstructuredPruner(arch, stats)
    return ppl_fitness(model, pruner, windows, 0.5)


def _cfg(**kw):
    base = dict(population=6, iterations=8, top_k=4, operands=("W", "X"), seed=7)
    return MetricSearchConfig(**(base | kw))


def _summary(res):
    return [(c.id, c.canonical, c.origin, c.parents, c.iteration, round(c.fitness, 6)) for c in res.records]


def test_gp_is_deterministic_with_a_seed(tiny_fitness):
    a = run_metric_search(_cfg(), tiny_fitness)
    b = run_metric_search(_cfg(), tiny_fitness)
    c = run_metric_search(_cfg(seed=8), tiny_fitness)
    assert a.status == "finished" and _summary(a) == _summary(b)
    assert _summary(a) != _summary(c)
    assert [r.origin for r in a.records[:2]] == ["seed", "seed"]
    assert a.records[1].canonical == to_text(WANDA)
    assert a.best.fitness == min(r.fitness for r in a.records) <= a.records[0].fitness
    assert len({r.key for r in a.records}) == len(a.records)  # nothing evaluated twice


def test_resume_continues_the_same_trajectory(tiny_fitness):
    full = run_metric_search(_cfg(), tiny_fitness)
    stored, calls = [], {"n": 0}

    def stop_after_9():
        calls["n"] += 1
        return len(stored) >= 9

    first = run_metric_search(_cfg(), tiny_fitness, on_candidate=stored.append, should_stop=stop_after_9)
    assert first.status == "stopped" and len(stored) == 9
    evaluated = []

    def counting(tree):
        evaluated.append(to_text(tree))
        return tiny_fitness(tree)

    rows = [c.to_dict() | {"session": "s1"} for c in stored]  # what a store would hand back
    second = run_metric_search(_cfg(), counting, resume_from=rows, on_candidate=stored.append)
    assert second.status == "finished"
    assert _summary(second) == _summary(full)
    assert len(evaluated) == len(full.records) - 9 == second.n_evaluated
    assert not set(evaluated) & {c["canonical"] for c in rows}


def test_duplicates_by_canonical_form_are_evaluated_once():
    seen = []

    def fitness(tree):
        seen.append(to_text(tree))
        return float(len(seen))

    cfg = _cfg(seeds=("abs(W)", "mul(abs(W), X)", "X * |W|", "abs(abs(W))", "sqrt(mul(X, abs(W)))"),
               iterations=0)
    res = run_metric_search(cfg, fitness)
    assert seen.count("mul(abs(W), X)") == 1 and seen.count("abs(W)") == 1
    assert len(seen) == len(set(seen)) == cfg.population
    assert "sqrt(mul(abs(W), X))" not in seen  # same per-row ranking as Wanda
    res2 = run_metric_search(_cfg(seeds=cfg.seeds, iterations=0, dedup_by_ranking=False), lambda t: 1.0)
    assert "sqrt(mul(abs(W), X))" in [r.canonical for r in res2.records]
    assert res.n_evaluated == cfg.population


class FakeLLM:
    name = "fake"

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        r = self.replies.pop(0) if self.replies else ""
        if isinstance(r, Exception):
            raise r
        return r


def test_llm_proposals_are_parsed_and_malformed_ones_rejected(tiny_fitness):
    reply = "\n".join([
        "Here are five new metrics:",
        "1. mul(sqrt(abs(W)), X)",
        "2. __import__('os').system('rm -rf /')",
        "3. mul(W)",
        "4. foo(W, X)",
        "- X * |W|",  # Wanda again
        "5. div(div(div(div(div(W, X), X), X), X), X)",  # too deep for max_depth 5
        "score = div(square(W), X)",
        "mul(W, G)",  # G is not an operand in this search
        "Thank you!",
    ])
    llm = FakeLLM([reply, RuntimeError("server down"), "W W W"])
    calls, rejects, cands = [], [], []

    def on_call(rec):
        calls.append(rec)
        return 100 + len(calls)

    res = run_metric_search(_cfg(iterations=3, llm_every=1, llm_count=5), tiny_fitness, proposer=llm,
                            on_call=on_call, on_reject=rejects.append, on_candidate=cands.append)
    assert res.status == "finished" and len(calls) == 3
    assert "mul(abs(W), X)" in llm.prompts[0] and "Pruning metrics" in llm.prompts[0]
    llm_c = [c for c in cands if c.origin == "llm"]
    assert {(c.expression, c.canonical) for c in llm_c} == {("mul(sqrt(abs(W)), X)", "mul(sqrt(W), X)"),
                                                           ("div(square(W), X)", "div(square(W), X)")}
    assert all(c.call_id == 101 and c.iteration == 1 for c in llm_c)
    reasons = [(r.text, r.reason) for r in rejects if r.call_id == 101]
    assert reasons == [("__import__('os').system('rm -rf /')", "bad_char"), ("mul(W)", "arity"),
                       ("foo(W, X)", "unknown_op"), ("X * |W|", "duplicate"),
                       ("div(div(div(div(div(W, X), X), X), X), X)", "too_deep"), ("mul(W, G)", "unknown_operand")]
    assert calls[0].parsed == 2 and calls[0].phase == "metric" and calls[0].error is None
    assert calls[1].error.startswith("RuntimeError") and calls[1].parsed == 0
    assert calls[2].parsed == 0 and [r.reason for r in rejects if r.call_id == 103] == ["syntax"]


def test_prompt_grammar_and_reply_extraction():
    cfg = _cfg()
    pop = [MetricCandidate(0, "abs(W)", "abs(W)", "abs(W)", 2264.1, "seed"),
           MetricCandidate(1, "mul(abs(W), X)", "mul(abs(W), X)", "mul(abs(W), X)", 78.4, "seed"),
           MetricCandidate(2, "W", "W", "W", math.inf, "init")]
    p = build_metric_prompt(cfg, pop, 4)
    assert p.index("mul(abs(W), X)") < p.index("2264.10") and "Write 4 new metrics" in p and "$" not in p
    assert "G =" not in p  # only the configured operands are described
    assert extract_expressions("```\n1) |W| * X\n```\n  12.5  abs(W)\nmetric: sqrt(W)\nprose here") == \
        ["|W| * X", "abs(W)", "sqrt(W)"]
    g = metric_grammar(cfg, 3)
    assert g.startswith("root ::= line line line") and '"G"' not in g
    llama_cpp = pytest.importorskip("llama_cpp")
    llama_cpp.LlamaGrammar.from_string(g, verbose=False)


@pytest.mark.parametrize("kw", [dict(population=1), dict(p_mutation=1.5), dict(max_depth=3, init_max_depth=5),
                                dict(sparsity=1.0), dict(operands=("W", "Z")),
                                dict(operands=("W", "X"), seeds=("mul(W, G)",)),
                                dict(operands=("X",), seeds=("X",)), dict(budget_tokens=100)])
def test_config_validation(kw):
    with pytest.raises(ConfigError):
        MetricSearchConfig(**kw).validate()


def test_config_round_trips_through_a_dict():
    cfg = MetricSearchConfig(operands=("W", "X"), seeds=("abs(W)",))
    import json
    assert MetricSearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_canonical_candidate_tree_round_trips():
    c = MetricCandidate(0, "X*|W|", to_text(canonical(parse("X*|W|"))), "k", 1.0, "llm")
    assert c.tree == WANDA


@pytest.mark.slow
def test_short_gp_on_bundled_model_is_no_worse_than_magnitude(bundled):
    from selfpruner.core.model.calibration import load_or_collect
    from selfpruner.core.model.data import load_token_data

    lm = bundled
    td = load_token_data(lm.tokenizer, calib_tokens=2048, source="local")  # 4 windows: gemma calibrates slowly
    stats, _, _ = load_or_collect(lm.model, lm.arch, lm.fingerprint, td.windows("calib", 512))
    pruner = UnstructuredPruner(lm.arch, stats)
    windows = td.windows("search", 256, 256)  # one window: gemma's 262k-entry head costs seconds per window
    cfg = MetricSearchConfig(population=4, iterations=1, top_k=4, operands=("W", "X"), budget_tokens=256,
                             seq_len=256, seed=0)
    res = run_metric_search(cfg, ppl_fitness(lm.model, pruner, windows, cfg.sparsity))
    by = {c.canonical: c.fitness for c in res.records}
    print(f"\nGP on gemma-3-270m, 50% unstructured, 256 tokens: magnitude {by['abs(W)']:.1f}, "
          f"Wanda {by['mul(abs(W), X)']:.1f}, best {res.best.canonical} {res.best.fitness:.1f} "
          f"({len(res.records)} evaluated)")
    assert res.best.fitness <= by["abs(W)"]
    assert by["mul(abs(W), X)"] < by["abs(W)"]  # activations matter a lot on gemma-3
    assert not pruner.pruned and all(math.isfinite(c.fitness) or c.fitness == math.inf for c in res.records)
