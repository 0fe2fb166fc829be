"""The quality push's search pieces: the one-shot peers' allocations as starting points (--seed-references) and
EvoPress's level-switch mutation in the numeric GA."""
import random

import pytest

from selfpruner.cli import build_parser
from selfpruner.commands.search import _search_settings
from selfpruner.core.config import SearchConfig
from selfpruner.core.layer_search.session import stored_config
from selfpruner.core.proposers.numeric import NumericProposer
from selfpruner.core.proposers.repair import is_valid
from selfpruner.core.types import Problem, Scored

from conftest import run_search

TINY = dict(beta=0.4, proposer="numeric", population=5, mutations=2, crossovers=2, generations=2,
            budget_tokens=128, seq_len=32, calib_tokens=256, final_eval=False, data="local")


def test_references_are_on_for_every_proposer_and_off_for_the_papers_protocol():
    assert SearchConfig(proposer="numeric").seed_references is True
    assert SearchConfig(proposer="llama-cpp").seed_references is True  # defaults that win (issue 39)
    settings = _search_settings(build_parser().parse_args(["search", "--proposer", "openai", "--no-seed-references"]))
    assert SearchConfig(**settings).seed_references is False  # the paper's protocol: the LLM writes every one
    settings = _search_settings(build_parser().parse_args(["search", "--no-seed-references"]))
    assert SearchConfig(**{**settings, "proposer": "numeric"}).seed_references is False
    # a session stored before references existed had none: it resumes and replays as it ran
    old = {"config": {"proposer": "numeric", "beta": 0.3}}
    assert stored_config(old).seed_references is False


def test_a_search_seeded_with_references_never_ends_behind_them(tmp_path, tiny_bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    search, res = run_search(cfg, tiny_bench)
    init = [c for c in search.store.candidates(0) if c["phase"] == "init"]
    refs = {c["origin"]: c for c in init if c["origin"].startswith("reference:")}
    assert len(init) == 5 and set(refs) <= {"reference:uniform", "reference:owl", "reference:flap"}
    assert "reference:uniform" in refs and len(refs) >= 2
    assert refs["reference:uniform"]["rates"] == [0.4] * 4
    fit = search.store.fitness_by_candidate()
    assert res.best_fitness <= min(fit[c["id"]] for c in refs.values())
    off = SearchConfig(**{**cfg.to_dict(), "seed_references": False, "sessions_dir": str(tmp_path / "off")})
    plain, _ = run_search(off, tiny_bench)
    assert not [c for c in plain.store.candidates() if c["origin"].startswith("reference:")]


def test_level_switch_moves_rate_between_layers_and_keeps_the_mean():
    problem = Problem("m", 12, 0.3, 0.0, 0.6)
    ga = NumericProposer(seed=3, mutation="level-switch")
    parent = Scored(1, [0.3] * 12, 10.0, "init", 0, [])
    rng = random.Random(0)
    for _ in range(50):
        child = ga.level_switch(parent.rates, problem, rng)
        assert abs(sum(child) - sum(parent.rates)) < 1e-9 and all(0.0 <= v <= 0.6 for v in child)
        moved = [i for i, (a, b) in enumerate(zip(child, parent.rates)) if abs(a - b) > 1e-12]
        assert len(moved) >= 2 or moved == []  # a step leaves one layer and lands on another
    props = ga.mutate(problem, [parent], 6, 1)
    assert len(props) == 6 and all(is_valid(p.rates, problem) for p in props)
    again = NumericProposer(seed=3, mutation="level-switch").mutate(problem, [parent], 6, 1)
    assert [p.rates for p in props] == [p.rates for p in again]  # seeded per phase, as the Gaussian one
    with pytest.raises(Exception, match="unknown mutation"):
        NumericProposer(mutation="cauchy")
