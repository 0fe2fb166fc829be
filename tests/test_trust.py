"""The faults under the measurements, each pinned: calibration cache keyed on model order and window shape,
disjoint final/search text, BOS per window, plan-level identity, the selection step, equal-count ablations,
the reported fallback share, and resume/replay/export refusing a changed setup."""
import json
import random
import sqlite3
import subprocess
import sys

import pytest
import torch

from selfpruner.core.config import ConfigError, SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.layer_search.session import replay_session, resume_config, start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.calibration import cache_key
from selfpruner.core.model.data import TokenData, load_token_data, tokenizer_bos
from selfpruner.core.model.models import load_model
from selfpruner.core.model.structured import StructuredPruner
from selfpruner.core.plans import candidate_key
from selfpruner.core.proposers.llm import LLMProposer
from selfpruner.core.proposers.numeric import NumericProposer
from selfpruner.core.proposers.repair import identity, repair
from selfpruner.core.results.session_summary import proposal_shares
from selfpruner.core.store import Store
from selfpruner.core.types import Problem

from conftest import cli

TINY = dict(beta=0.4, population=4, mutations=2, crossovers=2, generations=2, budget_tokens=128, seq_len=32,
            calib_tokens=256, final_tokens=256, data="local")
RATES = [0.1, 0.6, 0.3, 0.6]


# ---- 1. calibration cache -------------------------------------------------------------------------------
FRESH = """
import sys
from selfpruner.core.layer_search.workbench import Workbench
b = Workbench.build(sys.argv[1], seq_len=int(sys.argv[2]), calib_tokens=256, data="local")
print(repr(b.fitness([0.1, 0.6, 0.3, 0.6], 128)[0]))
"""


def _fresh_process_fitness(model_dir, seq_len: int) -> float:
    r = subprocess.run([sys.executable, "-c", FRESH, str(model_dir), str(seq_len)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip().splitlines()[-1])


def test_reused_model_cannot_poison_the_calibration_cache(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    a = Workbench.build(None, lm=lm, seq_len=32, calib_tokens=256, data="local")
    assert lm.order != "dense"  # the pruner permuted the resident model in place, and the model says so
    fit_a = a.fitness(RATES, 128)[0]
    # the sequence that poisoned the cache: the same permuted model rebuilt with other windows, then again
    b = Workbench.build(None, lm=lm, seq_len=16, calib_tokens=256, data="local")
    fit_b = b.fitness(RATES, 128)[0]
    again = Workbench.build(None, lm=lm, seq_len=32, calib_tokens=256, data="local")
    assert again.calib_key == a.calib_key and again.fitness(RATES, 128)[0] == fit_a
    assert b.calib_key != a.calib_key
    # a fresh process reads the entries those builds wrote and gets the same numbers as this one
    assert _fresh_process_fitness(tiny_llama_dir, 16) == pytest.approx(fit_b, rel=1e-6)
    assert _fresh_process_fitness(tiny_llama_dir, 32) == pytest.approx(fit_a, rel=1e-6)


def test_cache_key_covers_window_shape_and_order():
    w = torch.arange(512).view(2, 256)
    assert cache_key("fp", "dense", w) != cache_key("fp", "dense", w.view(4, 128))
    assert cache_key("fp", "dense", w) != cache_key("fp", "perm-1", w)
    assert cache_key("fp", "dense", w) == cache_key("fp", "dense", w.clone())


def test_pruner_leaves_given_stats_alone_and_exposes_them_in_model_order(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    td = load_token_data(lm.tokenizer, calib_tokens=256, source="local")
    from selfpruner.core.baselines.rates import owl_rates
    from selfpruner.core.model.calibration import collect_stats
    stats = collect_stats(lm.model, lm.arch, td.windows("calib", 32))
    before = [{k: v.clone() for k, v in s.items()} for s in stats.sqsum]
    owl_dense = owl_rates(lm.arch, stats, 0.4)
    pruner = StructuredPruner(lm.model, lm.arch, stats)
    assert all(torch.equal(before[i][k], stats.sqsum[i][k]) for i in range(lm.arch.n_layers) for k in before[i])
    assert pruner.stats.order == lm.order != "dense"
    # OWL pairs each weight with its input norm: in model order it gives the dense answer
    assert owl_rates(lm.arch, pruner.stats, 0.4) == pytest.approx(owl_dense, abs=1e-12)
    with pytest.raises(ValueError, match="order"):  # dense-order statistics for a permuted model
        StructuredPruner(lm.model, lm.arch, stats)


def test_fingerprint_sees_a_change_anywhere(tiny_llama_dir):
    a = load_model(str(tiny_llama_dir))
    b = load_model(str(tiny_llama_dir))
    assert a.fingerprint == b.fingerprint
    with torch.no_grad():
        b.arch.layers[-1].down.weight[-1, -1] += 1.0  # the last value of the last layer
    from selfpruner.core.model.models import _fingerprint
    assert _fingerprint(b.model) != a.fingerprint


# ---- 2./3. held-out split and BOS ------------------------------------------------------------------------
def test_offline_final_and_search_text_are_disjoint(tiny_tokenizer):
    td = load_token_data(tiny_tokenizer, calib_tokens=256, source="local")
    from selfpruner.core.model.data import _encode, local_wikitext_path
    ids = _encode(tiny_tokenizer, local_wikitext_path().read_text(encoding="utf-8").replace("\r\n", "\n"))
    # the stream is cut into test | search | calib, in that order, with nothing shared
    assert torch.equal(torch.cat([td.test, td.search, td.calib]), ids)
    assert abs(len(td.test) - len(td.search)) <= 1


def test_bos_starts_every_window_when_the_tokenizer_uses_one(tiny_tokenizer):
    td = TokenData(torch.arange(10, 100), torch.arange(10, 100), torch.arange(10, 100), "x", bos=1)
    w = td.windows("test", 8)
    assert w.shape == (12, 8) and (w[:, 0] == 1).all()
    assert torch.equal(w[:, 1:].reshape(-1), torch.arange(10, 10 + 12 * 7))  # text runs on, BOS only added
    assert TokenData(td.calib, td.search, td.test, "x").windows("test", 8).shape == (11, 8)
    assert tokenizer_bos(tiny_tokenizer) is None  # the word-level test tokenizer adds none


# ---- 4. plan-level identity -------------------------------------------------------------------------------
def _grain_problem(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    return Problem("tiny", lm.arch.n_layers, 0.4, grain=lm.arch.grain), lm


def test_distinct_means_a_different_pruned_model(tiny_llama_dir):
    prob, lm = _grain_problem(tiny_llama_dir)
    rng = random.Random(0)
    base = [0.4] * prob.n_layers
    taken, plans = set(), set()
    for _ in range(60):  # vectors perturbed by less than one channel collide in plan, and repair moves them
        noisy = [r + rng.uniform(-0.002, 0.002) for r in base]
        rates, _ = repair(noisy, prob, taken)
        taken.add(identity(rates, prob))
        plans.add(candidate_key(rates, lm.arch.grain))
    assert len(plans) == 60
    # seen candidates are avoided too
    seen = frozenset(taken)
    new = NumericProposer(3).initial(prob, 10, seen)
    assert not {identity(p.rates, prob) for p in new} & seen


def test_search_never_evaluates_the_same_plan_twice(tmp_path, tiny_llama_dir):
    bench = Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local")
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="numeric",
                       **{**TINY, "generations": 4})
    search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    search.run()
    keys = [c["key"] for c in search.store.candidates()]
    assert len(keys) == len(set(keys)) == 4 + 4 * 4
    assert keys[0].count(":") == bench.lm.arch.n_layers  # "units:channels" per layer


def test_prompt_tells_the_llm_how_coarse_a_layer_is(tiny_llama_dir):
    prob, lm = _grain_problem(tiny_llama_dir)
    p = LLMProposer(FakeLLM(), "fake").build_prompt("init", prob, [], 3)
    assert "2 KV groups" in p and f"{lm.arch.grain.channel_rate:.5f}" in p and "128 MLP channels" in p


# ---- 5. the selection step ------------------------------------------------------------------------------
class FakeLLM:
    """A chat backend that answers every request in the asked shape: parent ids for the selection step (the
    last-listed ones, so the choice is visibly the LLM's), else lists near beta, drawn from the call's seed."""
    style, max_population, max_lists = "chat", None, None

    def __init__(self, beta=0.4, fail=False):
        self.beta, self.fail, self.n, self.prompts = beta, fail, 0, []

    def complete(self, prompt, *, n_numbers, n_lists, max_tokens, n_parents=0, parent_ids=None, seed=None,
                 fresh=True):
        self.n += 1
        self.prompts.append((n_numbers, prompt))
        if self.fail:
            return "I cannot help with that.", 10, 5
        if n_numbers == 0:
            return json.dumps({"parents": list(reversed(parent_ids))[:n_parents]}), 10, 5
        rng = random.Random(seed)
        sols = [{"parents": (parent_ids or [])[:n_parents],
                 "rates": [round(self.beta + rng.uniform(-0.2, 0.2), 5) for _ in range(n_numbers)]}
                for _ in range(n_lists)]
        return json.dumps({"solutions": sols}), 10, 5


@pytest.fixture
def fake_llm(monkeypatch):
    made = []

    def build(cfg):
        from selfpruner.core.proposers.replay import ReplayProposer
        from selfpruner.core.session_files import resolve_session
        if cfg.proposer == "replay":
            return ReplayProposer(Store(resolve_session(cfg.replay_from, cfg.sessions_dir)))
        backend = FakeLLM(cfg.beta, fail=cfg.proposer_model == "broken")
        made.append(backend)
        return LLMProposer(backend, "llama-cpp", max_retries=1, rng_seed=cfg.seed)
    monkeypatch.setattr("selfpruner.core.layer_search.session.build_proposer", build)
    return made


def _search(tmp_path, bench, tiny_llama_dir, **kw):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="llama-cpp",
                       **{**TINY, "population": 6, "seed_references": False, **kw})
    s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    return s, s.run()


def test_selection_step_picks_parents_that_mutation_and_crossover_use(tmp_path, tiny_bench, tiny_llama_dir,
                                                                      fake_llm):
    search, res = _search(tmp_path, tiny_bench, tiny_llama_dir)
    st = search.store
    sels = st.selections()
    assert [s["generation"] for s in sels] == [1, 2] and all(len(s["parents"]) == 2 for s in sels)
    assert all(s["from_llm"] == 2 and s["call_id"] for s in sels)
    for s in sels:
        kids = [c for c in st.candidates(s["generation"])]
        assert kids and all(set(c["parents"]) <= set(s["parents"]) for c in kids)
    # the mutation prompts list only the selected parents
    mut_prompts = [p for n, p in fake_llm[0].prompts if n and "by mutation" in p]
    assert mut_prompts and all(p.count("| ppl ") == 2 for p in mut_prompts)
    assert {c["phase"] for c in st.calls()} == {"init", "selection", "mutation", "crossover"}


def test_inline_selection_shows_the_whole_population(tmp_path, tiny_bench, tiny_llama_dir, fake_llm):
    search, _ = _search(tmp_path, tiny_bench, tiny_llama_dir, selection="inline")
    assert search.store.selections() == []
    assert all(p.count("| ppl ") == 6 for n, p in fake_llm[0].prompts if n and "by mutation" in p)


def test_replay_rereads_stored_replies_and_catches_a_parse_regression(tmp_path, tiny_bench, tiny_llama_dir,
                                                                      fake_llm):
    orig, _ = _search(tmp_path, tiny_bench, tiny_llama_dir)
    replay, path = replay_session(orig.store.path.stem, str(tmp_path), bus=EventBus(), control=Control())
    assert path == orig.store.path
    replay.run()
    assert compare_trajectories(orig.store, replay.store) == []  # bit-exact fitness, same selections
    # a stored reply that today's parser reads differently (here: edited) shows as a divergence
    con = sqlite3.connect(orig.store.path)
    cid, resp = con.execute("select id, response from llm_calls where phase = 'mutation' order by id").fetchone()
    sol = json.loads(resp)
    sol["solutions"][0]["rates"][0] += 0.05
    con.execute("update llm_calls set response = ? where id = ?", (json.dumps(sol), cid))
    con.commit()
    con.close()
    again, _ = replay_session(orig.store.path.stem, str(tmp_path), bus=EventBus(), control=Control())
    again.run()
    assert any("differs" in d for d in compare_trajectories(orig.store, again.store))


# ---- 6. ablations at equal evaluation count ------------------------------------------------------------
def test_ablations_keep_the_offspring_count():
    nm = SearchConfig(mutations=10, crossovers=10, ablation="no-mutation")
    nc = SearchConfig(mutations=10, crossovers=10, ablation="no-crossover")
    assert (nm.mutations, nm.crossovers) == (0, 20) and (nc.mutations, nc.crossovers) == (20, 0)
    # read back from a session it is not shifted again
    assert SearchConfig.from_dict(nm.to_dict()).crossovers == 20


# ---- 7. the fallback share is reported -------------------------------------------------------------------
def test_fallback_share_is_reported_and_a_weak_session_flagged(tmp_path, tiny_bench, tiny_llama_dir, fake_llm):
    good, _ = _search(tmp_path / "good", tiny_bench, tiny_llama_dir)
    bad, _ = _search(tmp_path / "bad", tiny_bench, tiny_llama_dir, proposer_model="broken")
    g, b = proposal_shares(good.store), proposal_shares(bad.store)
    assert g["llm"] == g["asked"] == 14 and g["fallback"] == 0 and not g["weak"]
    assert b["llm"] == 0 and b["fallback"] == 14 and b["weak"] and b["parents_llm"] == 0
    _, out, _ = cli("show", bad.store.path.stem, "--sessions-dir", str(tmp_path / "bad"))
    assert "LLM wrote 0 of 14 candidates (14 from the numeric fallback)" in out and "WARNING" in out


# ---- 8. resume / replay / export check the setup ------------------------------------------------------
def test_resume_refuses_a_changed_meaning_and_extends_a_finished_search(tmp_path, tiny_bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="numeric", **TINY)
    search = start_search(cfg, bus=EventBus(), control=Control(), bench=tiny_bench)
    search.run()
    ref = search.store.path.stem
    with pytest.raises(ConfigError, match="--beta cannot change"):
        resume_config(ref, str(tmp_path), {"beta": 0.5})
    with pytest.raises(ConfigError, match="only extend"):
        resume_config(ref, str(tmp_path), {"generations": 1})
    cfg2, path = resume_config(ref, str(tmp_path), {"generations": 3, "beta": 0.4})
    more = start_search(cfg2, bus=EventBus(), control=Control(), resume=path, bench=tiny_bench)
    assert more.run().status == "finished"
    assert [g["generation"] for g in more.store.generations()] == [0, 1, 2, 3]
    assert more.store.session()["config"]["generations"] == 3


def test_resume_and_export_refuse_other_data_or_calibration(tmp_path, tiny_bench, tiny_llama_dir):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="numeric", **TINY)
    search = start_search(cfg, bus=EventBus(), control=Control(), bench=tiny_bench)
    search.run()
    search.store.update_session(data_source="hub:wikitext-2-raw-v1")
    with pytest.raises(ConfigError, match="used data hub"):
        start_search(cfg, bus=EventBus(), control=Control(), resume=search.store.path, bench=tiny_bench)
    search.store.update_session(data_source=tiny_bench.data.source, calib_key="other")
    code, _, err = cli("export", search.store.path.stem, "--out", str(tmp_path / "out"), "--sessions-dir",
                       str(tmp_path))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "calibrated on other windows" in errors[0]
    assert not (tmp_path / "out").exists()

