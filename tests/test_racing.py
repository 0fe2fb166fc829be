"""--race (EvoPress's multi-step selection) on a tiny model: every stage stored, survivors by stage fitness,
only the last stage joins the population, resume after a crash mid-race and replay are exact."""
from collections import Counter

import pytest

from selfpruner.core.config import ConfigError, SearchConfig
from selfpruner.core.events import CandidateEvaluated
from selfpruner.core.layer_search.racing import parse_race, race_tokens
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.store import Store

from conftest import run_search as _run

RACE = dict(beta=0.4, proposer="numeric", population=4, mutations=3, crossovers=3, generations=3, seq_len=32,
            calib_tokens=256, final_tokens=256, data="local", race="32:all,64:3,128:1")


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def bench(tiny_bench):
    return tiny_bench


def test_race_specs_are_checked_in_one_line():
    st = parse_race("512:all,2048:4,8192:1", 512)
    assert [(s.budget_tokens, s.keep) for s in st] == [(512, None), (2048, 4), (8192, 1)]
    assert race_tokens(st, 20) == 20 * 512 + 4 * 2048 + 8192
    assert SearchConfig(race="512:all,2048:4,8192:1").budget_tokens == 8192
    for bad, says in [("512:all", "at least two"), ("2048:all,512:1", "grow"), ("512:all,2048:all", "shrink"),
                      ("512:2,2048:4", "shrink"), ("512:all,2048:x", "TOKENS:COUNT"), ("512,2048:1", "TOKENS:COUNT"),
                      ("256:all,2048:1", "--seq-len")]:
        with pytest.raises(ConfigError, match=says) as e:
            SearchConfig(race=bad).validate()
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="last budget"):
        SearchConfig(race="512:all,2048:1", budget_tokens=1024).validate()


def test_race_scores_each_stage_and_keeps_only_the_last_survivors(tmp_path, bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **RACE)
    events = []
    search, res = _run(cfg, bench, subscriber=events.append)
    st = search.store
    assert res.status == "finished"
    cands = {c["id"]: c for c in st.candidates()}
    evals = [e for e in st.evaluations() if e["kind"] == "search"]
    # every (candidate, budget) scored once: the initial population on the last budget only
    assert len({(e["candidate_id"], e["budget_tokens"]) for e in evals}) == len(evals)
    for c in cands.values():
        budgets = sorted(e["budget_tokens"] for e in evals if e["candidate_id"] == c["id"])
        assert budgets in ([[128]] if c["generation"] == 0 else [[32], [32, 64], [32, 64, 128]])
    gens = st.generations()
    for g in range(1, 4):
        per_budget = Counter(e["budget_tokens"] for e in evals if cands[e["candidate_id"]]["generation"] == g)
        assert per_budget == {32: 6, 64: 3, 128: 1}
        # the survivors of a stage are the best of the one before it, by that stage's fitness
        at = {b: {e["candidate_id"]: e["fitness"] for e in evals
                  if e["budget_tokens"] == b and cands[e["candidate_id"]]["generation"] == g} for b in (32, 64, 128)}
        assert set(at[64]) == set(sorted(at[32], key=lambda i: (at[32][i], i))[:3])
        assert set(at[128]) == set(sorted(at[64], key=lambda i: (at[64][i], i))[:1])
        # only last-budget candidates are ever in a population
        assert set(gens[g]["population"]) <= set(st.fitness_by_candidate(budget_tokens=128))
    full = st.fitness_by_candidate(budget_tokens=128)
    assert res.best_id == min(full, key=lambda i: (full[i], i)) and res.best_fitness == full[res.best_id]
    early = [e for e in events if isinstance(e, CandidateEvaluated) and not e.final]
    assert len(early) == 3 * 9 and all(e.budget_tokens in (32, 64) for e in early)


def test_race_resumes_mid_race_and_replays_exactly(tmp_path, bench, tiny_llama_dir):
    ref, _ = _run(SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path / "ref"), **RACE), bench)
    seen = []

    def crash(ev):
        if isinstance(ev, CandidateEvaluated):
            seen.append(ev)
            if len(seen) == 4 + 8:  # generation 1, second stage, after two of its three evaluations
                raise Crash

    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path / "crash"), **RACE)
    with pytest.raises(Crash):
        _run(cfg, bench, subscriber=crash)
    assert seen[-1].budget_tokens == 64
    (path,) = list((tmp_path / "crash").glob("*.db"))
    resumed, res = _run(cfg, bench, resume=path)
    assert res.status == "finished"
    assert compare_trajectories(ref.store, resumed.store) == []
    evals = [(e["candidate_id"], e["budget_tokens"]) for e in resumed.store.evaluations() if e["kind"] == "search"]
    assert len(evals) == len(set(evals))  # nothing scored twice across the crash
    rcfg = SearchConfig(**{**cfg.to_dict(), "proposer": "replay", "replay_from": str(ref.store.path)})
    replay, _ = _run(rcfg, bench)
    assert compare_trajectories(ref.store, replay.store) == []
    stages = lambda s: sorted((e["candidate_id"], e["budget_tokens"], e["fitness"]) for e in s.evaluations()
                              if e["kind"] == "search")
    assert stages(Store(replay.store.path)) == stages(Store(ref.store.path))
