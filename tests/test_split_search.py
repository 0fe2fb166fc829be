"""--split search: each layer's attention-unit rate is a gene of its own. A candidate is [p_1..p_n, a_1..a_n]: the
layer rates keep the global budget (mean β) and a_i decides how much of layer i's rate falls on its attention units,
its MLP channels taking the rest. Checked: the plan arithmetic, repair, the numeric GA's operators, the LLM reply
reading and prompts, and a whole search on a tiny LLaMA that is stored, replayed, exported and shown."""
import json
import random
from dataclasses import replace

import pytest

from selfpruner.core.config import ConfigError, SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.self_pruner import compare_trajectories
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.plans import LayerGrain, attention_bounds, fit_attention, layer_plan, plans, Genes
from selfpruner.core.proposers.llm import LLMProposer, interpret_reply
from selfpruner.core.proposers.numeric import NumericProposer
from selfpruner.core.proposers.parse import parse_reply
from selfpruner.core.proposers.repair import identity, is_valid, repair
from selfpruner.core.types import Problem, Scored

GRAIN = LayerGrain(attn_units=4, q_heads_per_unit=1, params_per_attn_unit=100, channels=50, params_per_channel=10,
                   prunable_params=900, attention_genes=True)
PROB = Problem("m", 3, 0.3, grain=GRAIN)


def test_the_pair_of_genes_sets_the_heads_and_the_rate_sets_the_parameters():
    assert attention_bounds(GRAIN, 0.3) == (0, 2)  # 270 of 900 parameters: at most two 100-parameter units
    assert attention_bounds(GRAIN, 0.8) == (3, 4)  # 720: the 500 MLP parameters cannot take it all
    assert attention_bounds(GRAIN, 0.0) == (0, 0)
    assert fit_attention(GRAIN, 0.3, 1.0) == 0.5 and fit_attention(GRAIN, 0.3, 0.3) == 0.25
    assert layer_plan(GRAIN, 0.3, 0, 0.5) == layer_plan(GRAIN, 0.3, 0, 0.6)  # the same unit on the grid
    assert plans(GRAIN, [0.3, 0.3, 0.0, 0.5]) == [layer_plan(GRAIN, 0.3, 0, 0.0), layer_plan(GRAIN, 0.3, 1, 0.5)]
    assert [(p.attn_units, p.channels) for p in plans(GRAIN, [0.3, 0.3, 0.0, 0.5])] == [(4, 23), (2, 43)]
    for p in [i / 20 for i in range(21)]:
        for a in [i / 8 for i in range(9)]:
            pl = layer_plan(GRAIN, p, 0, a)
            removed = 900 - 100 * pl.attn_units - 10 * pl.channels
            assert abs(removed - p * 900) <= 5 + 1e-9, (p, a, pl)  # the rate's budget, to half a channel
            least, most = attention_bounds(GRAIN, p)
            assert least <= 4 - pl.attn_units <= most
    g = Genes.of([0.1, 0.2, 0.5, 0.25], "search")
    assert (g.layers, g.attention, g.attention_list) == ((0.1, 0.2), (0.5, 0.25), [0.5, 0.25])
    assert Genes.of([0.1, 0.2], "rule") == Genes((0.1, 0.2), None)


def test_repair_keeps_the_budget_on_the_layer_rates_and_fits_each_attention_gene():
    notes = []
    out, changed = repair([0.2, 0.3, 0.4], PROB, notes=notes)  # the rates alone: attention follows the rule
    assert out == [0.2, 0.3, 0.4, 0.25, 0.25, 0.5] and changed and is_valid(out, PROB)
    assert any("0 of 3 attention rates" in n for n in notes)
    notes = []
    out, _ = repair([0.2, 0.3, 0.4, 2.0, -1.0, 0.6], PROB, notes=notes)
    assert out == [0.2, 0.3, 0.4, 0.25, 0.0, 0.5] and any("clamped" in n for n in notes)
    assert repair(out, PROB) == (out, False)  # a valid vector is left alone
    assert not is_valid([0.2, 0.3, 0.4, 1.5, 0.0, 0.5], PROB) and not is_valid([0.2, 0.3, 0.4], PROB)
    # the same layer rates with another split are another pruned model, and dedup tells them apart
    other = repair([0.2, 0.3, 0.4, 0.0, 0.0, 0.5], PROB)[0]
    assert identity(other, PROB) != identity(out, PROB)
    again = repair(out, PROB, taken={identity(out, PROB)})[0]
    assert identity(again, PROB) != identity(out, PROB) and is_valid(again, PROB)


def _population(problem, k=8, seed=0):
    init = NumericProposer(seed).initial(problem, k)
    return [Scored(i, p.rates, 100.0 + i) for i, p in enumerate(init)]


def test_the_numeric_ga_searches_both_genes():
    prob = Problem("m", 6, 0.3, grain=GRAIN)
    pop = _population(prob, 12)
    assert all(is_valid(s.rates, prob) and len(s.rates) == 12 for s in pop)
    assert len({identity(s.rates, prob) for s in pop}) == 12
    rule = [repair(s.rates[:6], prob)[0][6:] for s in pop]  # what the rule split would remove
    assert any(s.rates[6:] != r for s, r in zip(pop, rule))  # the initial splits vary around the rule
    ga = NumericProposer(1)
    kids = ga.mutate(prob, pop, 10, 1) + ga.crossover(prob, pop, 10, 1)
    assert all(is_valid(k.rates, prob) for k in kids)
    seen = {identity(s.rates, prob) for s in pop}
    assert not seen & {identity(k.rates, prob) for k in kids}
    by_id = {s.id: s for s in pop}
    # half the mutations move one layer's attention by one unit, inside what the layer's rate allows
    layer, attention = [0.3] * 6, [0.25] * 6
    steps = [NumericProposer.attention_step(attention, layer, prob, random.Random(s)) for s in range(40)]
    moved = [[i for i in range(6) if x[i] != 0.25] for x in steps]
    assert 10 <= sum(map(bool, moved)) <= 30 and all(len(m) <= 1 for m in moved)
    assert {x[m[0]] for x, m in zip(steps, moved) if m} == {0.0, 0.5}
    for k in kids[10:]:  # a crossover's attention genes are its parents', fitted to the child's layer rates
        for i in range(6):
            assert k.rates[6 + i] in {round(fit_attention(GRAIN, k.rates[i], by_id[j].rates[6 + i]), 5)
                                      for j in k.parents}


def test_llm_replies_are_read_in_every_shape_a_model_writes():
    rates, attention = [0.2, 0.3, 0.4], [0.5, 0.0, 0.25]
    as_json = json.dumps({"solutions": [{"parents": [7], "rates": rates, "attention": attention}]})
    as_one_list = json.dumps({"solutions": [{"parents": [7], "rates": rates + attention}]})
    as_text = "parents: [7] rates: [0.2, 0.3, 0.4] attention: [0.5, 0.0, 0.25]"
    for reply in (as_json, as_one_list, as_text):
        got = parse_reply(reply, 6, 3)
        assert [(c.values, c.parents) for c in got.candidates] == [(rates + attention, [7])], reply
    # under the other splits a list of both genes is far from n numbers
    assert parse_reply(as_one_list, 3).candidates == []
    pop = [Scored(7, repair(rates, PROB)[0], 50.0)]
    kept, _ = interpret_reply("mutation", json.dumps({"rates": [0.3, 0.3, 0.3]}), PROB, pop, 1, set())
    assert kept[0].rates == [0.3, 0.3, 0.3, 0.25, 0.25, 0.25] and kept[0].repaired  # attention from the rule


class _Chat:
    style, max_population, max_lists = "chat", None, None

    def complete(self, prompt, **kw):
        raise AssertionError("not called")


def test_prompts_ask_for_both_genes_only_under_split_search():
    pop = [Scored(1, repair([0.2, 0.3, 0.4], PROB)[0], 50.0)]
    llm = LLMProposer(_Chat(), "fake")
    split = llm.build_prompt("mutation", PROB, pop, 2)
    assert "then the 3 attention rates" in split and "[r1, ..., r3, a1, ..., a3]" in split
    assert '"rates": [6 numbers]' in split and "you choose how each layer's rate is split" in split
    assert "[0.20000, 0.30000, 0.40000, 0.25000, 0.25000, 0.50000]" in split
    rule = Problem("m", 3, 0.3, grain=replace(GRAIN, attention_genes=False))
    plain = llm.build_prompt("mutation", rule, [Scored(1, [0.2, 0.3, 0.4], 50.0)], 2)
    assert "attention rate" not in plain and '"rates": [3 numbers]' in plain


TINY = dict(beta=0.4, population=6, mutations=2, crossovers=2, generations=2, seq_len=32, budget_tokens=32,
            calib_tokens=256, data="local", final_eval=False, split="search")


class _FakeLLM:
    """A chat backend answering n_numbers rates per list (the layer rates, then attention) from the call's seed."""
    style, max_population, max_lists = "chat", None, None

    def complete(self, prompt, *, n_numbers, n_lists, max_tokens, n_parents=0, parent_ids=None, seed=None,
                 fresh=True):
        rng = random.Random(seed)
        sols = [{"parents": (parent_ids or [])[:n_parents], "rates": [round(rng.uniform(0.1, 0.7), 5)
                                                                      for _ in range(n_numbers)]}
                for _ in range(n_lists)]
        return json.dumps({"solutions": sols}), 10, 5


@pytest.fixture
def fake_llm(monkeypatch):
    def build(cfg):
        from selfpruner.core.proposers.replay import ReplayProposer
        from selfpruner.core.session_files import resolve_session
        from selfpruner.core.store import Store
        if cfg.proposer == "replay":
            return ReplayProposer(Store(resolve_session(cfg.replay_from, cfg.sessions_dir)))
        return LLMProposer(_FakeLLM(), "llama-cpp", max_retries=1, rng_seed=cfg.seed)
    monkeypatch.setattr("selfpruner.core.layer_search.session.build_proposer", build)


def test_an_llm_search_with_the_split_searched_is_stored_replayed_exported_and_shown(
        tiny_bench, tiny_llama_dir, tmp_path, fake_llm, capsys):
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="llama-cpp", **TINY)
    try:
        search = start_search(cfg, bus=EventBus(), control=Control(), bench=tiny_bench)
        assert search.run().status == "finished" and search.problem.attention_genes
        st, n, units = search.store, tiny_bench.lm.arch.n_layers, tiny_bench.lm.arch.n_attn_units
        cands = st.candidates()
        assert all(len(c["rates"]) == 2 * n and is_valid(c["rates"], search.problem) for c in cands)
        kept_units = {tuple(p.attn_units for p in tiny_bench.pruner.plan(c["rates"])) for c in cands}
        assert len(kept_units) > 1  # the searched splits give different heads at the same budget
        for c in cands:  # each layer keeps the heads its attention gene says
            assert [p.attn_units for p in tiny_bench.pruner.plan(c["rates"])] == [
                units - round(a * units) for a in c["rates"][n:]]
        # a replay re-reads the stored replies into the same two-gene candidates and the same trajectory
        rcfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), proposer="replay",
                            replay_from=str(st.path), **TINY)
        replay = start_search(rcfg, bus=EventBus(), control=Control(), bench=tiny_bench)
        assert replay.run().status == "finished" and compare_trajectories(st, replay.store) == []
        # the export keeps the searched heads, and `show` says both genes
        from selfpruner.cli import main
        sid = st.session()["id"]
        assert main(["export", sid, "--sessions-dir", str(tmp_path), "--out", str(tmp_path / "hf")]) == 0
        record = json.loads((tmp_path / "hf" / "config.json").read_text())["selfpruner"]
        best = next(c for c in cands if c["id"] == st.session()["best_candidate"])
        assert record["split"] == "search" and record["attention_rates"] == best["rates"][n:]
        assert record["plans"] == [[p.attn_units, p.channels] for p in tiny_bench.pruner.plan(best["rates"])]
        assert main(["show", sid, "--sessions-dir", str(tmp_path)]) == 0
        shown = capsys.readouterr().out
        assert "search split" in shown and "attention: " + json.dumps(best["rates"][n:]) in shown
    finally:
        tiny_bench.set_pruning(False)


def test_a_baseline_refuses_the_searched_split(tiny_llama_dir, tmp_path):
    from selfpruner.core.baselines.run import run_baseline
    cfg = SearchConfig(model=str(tiny_llama_dir), sessions_dir=str(tmp_path), **TINY)
    with pytest.raises(ConfigError, match="split search is for searches"):
        run_baseline(cfg, "uniform")


async def test_the_tui_bars_show_both_genes(tmp_path):
    from selfpruner.core.store import Store
    from selfpruner.core.types import Proposal
    from selfpruner.tui.app import SelfPrunerApp
    from selfpruner.tui.widgets.rates import RateBars
    st = Store(tmp_path / "s.db", create=True)
    st.create_session("20231114-221300-layer-split", "layer", {"beta": 0.3, "split": "search"}, model_name="tiny",
                      model_fingerprint="0" * 16, beta=0.3, proposer="numeric")
    (cid,) = st.add_candidates(0, "init", [Proposal([0.2, 0.4, 0.3, 0.0, 0.5, 0.25], "init")])
    st.add_evaluation(cid, 51.5, budget_tokens=1024, seq_len=512, eval_s=1.0)
    st.update_session(status="finished", best_candidate=cid, best_fitness=51.5)
    st.close()
    app = SelfPrunerApp(tmp_path, open_session=str(tmp_path / "s.db"))
    async with app.run_test(size=(150, 44)) as pilot:
        await pilot.pause()
        bars = app.screen.query_one(RateBars)
        assert bars.candidate.rates == [0.2, 0.4, 0.3] and bars.candidate.attention == [0.0, 0.5, 0.25]
        text = bars.render().plain
        assert "mean rate 0.3000" in text and "attention" in text
        assert [line.split("attn ")[1] for line in text.splitlines() if "attn " in line] == ["0.00", "0.50", "0.25"]
