"""KL-from-dense fitness: zero for the dense model, a lower bound on the full-vocabulary KL that tightens with k,
ranked like the full KL, and a search that runs on it (prompts say kl, the final score stays ppl)."""
import pytest

from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.kl import dense_full, dense_reference, full_kl, mean_kl

RATES = [0.2, 0.5, 0.3, 0.6]


@pytest.fixture(scope="module")
def bench(tiny_llama_dir):
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local")


def test_dense_model_has_zero_kl(bench):
    w = bench.windows("search", 96)
    assert abs(mean_kl(bench.lm.model, w, dense_reference(bench.lm.model, w, 16))) < 1e-5


def test_coarsened_kl_is_a_lower_bound_that_tightens_with_k(bench):
    model, w = bench.lm.model, bench.windows("search", 96)
    refs = {k: dense_reference(model, w, k) for k in (4, 64, 512)}
    full = dense_full(model, w)
    with bench.pruner.applied(RATES):
        kls = [mean_kl(model, w, refs[k]) for k in (4, 64, 512)]
        exact = full_kl(model, full, w)
    assert 0 < kls[0] <= kls[1] + 1e-6 <= kls[2] + 2e-6 <= exact + 3e-6
    assert kls[2] > 0.5 * exact  # 512 of a 1000-token vocabulary holds most of it


def test_kl_fitness_ranks_like_full_kl(bench):
    import random

    from scipy.stats import spearmanr

    model, w = bench.lm.model, bench.windows("search", 96)
    ref, full = dense_reference(model, w, 64), dense_full(model, w)
    rng = random.Random(0)
    cands = [[rng.uniform(0, 0.8) for _ in range(4)] for _ in range(8)]
    got, want = [], []
    for r in cands:
        with bench.pruner.applied(r):
            got.append(mean_kl(model, w, ref))
            want.append(full_kl(model, full, w))
    assert spearmanr(got, want).statistic > 0.9


def test_search_on_kl_fitness(bench, tmp_path, tiny_llama_dir):
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import start_search

    cfg = SearchConfig(model=str(tiny_llama_dir), beta=0.4, proposer="numeric", population=3, mutations=1,
                       crossovers=1, generations=1, budget_tokens=64, seq_len=32, calib_tokens=256,
                       final_tokens=64, data="local", sessions_dir=str(tmp_path), fitness="kl", kl_k=32)
    s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    res = s.run()
    fits = s.store.fitness_by_candidate()
    best = min(fits, key=fits.get)
    assert res.best_fitness == fits[best] and 0 < res.best_fitness < 5  # a KL, not a ppl in the hundreds
    rates = next(c["rates"] for c in s.store.candidates() if c["id"] == best)
    assert res.best_fitness == pytest.approx(bench.fitness(rates, 64, measure="kl", kl_k=32)[0], rel=1e-5)
    assert res.final_ppl == pytest.approx(bench.fitness(rates, 64, which="test")[0])  # final: ppl on test


def test_prompts_show_kl():
    from selfpruner.core.proposers.llm import LLMProposer
    from selfpruner.core.types import Problem, Scored

    from test_proposers import Scripted

    prob = Problem("m", 4, 0.3, fitness_name="kl")
    pop = [Scored(1, [0.3] * 4, 0.123456), Scored(2, [0.2, 0.4, 0.3, 0.3], 0.5)]
    text = LLMProposer(Scripted(), "x").build_prompt("mutation", prob, pop, 1)
    assert "kl 0.1235" in text and "ppl 0.12" not in text
