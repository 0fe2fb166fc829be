"""metric-search and prune from the command line on a tiny model: stored, resumable, bad metrics refused."""
from types import SimpleNamespace

from selfpruner.core.store import Store

from conftest import HeldSession
from conftest import cli as run_cli

TINY = ["--budget-tokens", "128", "--seq-len", "32", "--calib-tokens", "256", "--data", "local"]


def cli(*args, ok=True):
    code, out, err = run_cli(*args)
    if ok:
        assert code == 0, err
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_metric_search_stores_candidates_and_resumes(tmp_path, tiny_llama_dir):
    sd = tmp_path / "s"
    r = cli("metric-search", "--model", tiny_llama_dir, "--population", "4", "--iterations", "3", "--top-k", "2",
            "--grad-tokens", "64", "--final-tokens", "256", "--sessions-dir", sd, *TINY)
    assert "best metric:" in r.stdout and "final wanda" in r.stdout
    (db,) = sd.glob("*.db")
    st = Store(db)
    rows = st.metric_candidates()
    assert st.session()["kind"] == "metric" and st.session()["status"] == "finished"
    assert {"abs(W)", "mul(abs(W), X)"} <= {r["canonical"] for r in rows}  # the seeds: magnitude and Wanda
    assert len({r["canonical"] for r in rows}) == len(rows)  # de-duplicated by canonical form
    # the reported best is the stored candidate with the lowest fitness, and the session says so too
    best = min(rows, key=lambda r: (r["fitness"], r["id"]))
    assert f"best metric: {best['canonical']}  (search ppl {best['fitness']:.3f})" in r.stdout
    assert st.session()["best_fitness"] == best["fitness"]
    # the final evaluation scores --final-tokens test tokens in --seq-len windows, not the whole stream
    assert st.results("final")[0]["payload"]["tokens"] == 256
    # the race: the best four (race_top 5 > population 4) again on 4 x 128 search tokens; its winner is the one
    # the final evaluation scores
    (race,) = [r["payload"] for r in st.results("race")]
    assert race["tokens"] == 512 and len(race["candidates"]) == 4
    assert [c["metric"] for c in race["candidates"]] == [c["canonical"] for c in sorted(rows, key=lambda c: (
        c["fitness"], c["id"]))[:4]]
    winner = min(race["candidates"], key=lambda c: c["race_fitness"])["metric"]
    assert race["best"] == winner == st.results("final")[0]["payload"]["best"]["metric"]
    n = len(rows)
    st.close()
    # resuming a finished session evaluates nothing again
    cli("metric-search", "--resume", db.stem, "--sessions-dir", sd)
    assert len(Store(db).metric_candidates()) == n
    assert [r["outcome"] for r in Store(db).runs()] == ["finished", "finished"]
    # while another process runs it, a resume is refused in one line naming that process
    with HeldSession(db, "selfpruner metric-search") as holder:
        r = cli("metric-search", "--resume", db.stem, "--sessions-dir", sd, ok=False)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and f"being run by pid {holder.pid}" in errors[0]


def test_prune_with_any_metric_and_reject_bad_ones(tmp_path, tiny_llama_dir):
    r = cli("prune", "--model", tiny_llama_dir, "--metric", "|W| * X", "--sparsity", "0.5", "--tokens", "256",
            "--calib-tokens", "256", "--seq-len", "32", "--data", "local")
    assert "at sparsity 0.5" in r.stdout and "(256 test tokens)" in r.stdout
    sg = cli("prune", "--model", tiny_llama_dir, "--method", "sparsegpt", "--pattern", "2:4", "--tokens", "256",
             "--calib-tokens", "256", "--seq-len", "32", "--data", "local", "--out", tmp_path / "sg")
    assert "sparsegpt at pattern 2:4 0.5000" in sg.stdout
    from transformers import AutoModelForCausalLM  # the saved model is a stock checkpoint with the zeros in it
    w = AutoModelForCausalLM.from_pretrained(tmp_path / "sg").model.layers[1].mlp.down_proj.weight
    assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())
    bad = cli("prune", "--model", tiny_llama_dir, "--metric", "__import__('os')", "--data", "local", ok=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: bad metric")
    bad = cli("prune", "--model", tiny_llama_dir, "--method", "sparsegpt", "--pattern", "4:2", ok=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --pattern: a pattern N:M needs 0 < N < M")


def test_metric_search_with_the_sparsegpt_update_scores_it_beside_sparsegpt(tmp_path, tiny_llama_dir):
    """--update sparsegpt: the final evaluation adds the best metric's mask with SparseGPT's update (closer to
    dense than the mask alone) and SparseGPT itself; the session stores the setting and both scores."""
    sd = tmp_path / "s"
    r = cli("metric-search", "--model", tiny_llama_dir, "--population", "3", "--iterations", "1", "--top-k", "2",
            "--no-gradients", "--race-top", "1", "--final-tokens", "256", "--update", "sparsegpt",
            "--sessions-dir", sd, *TINY)
    assert "final best+update" in r.stdout and "final sparsegpt" in r.stdout
    (db,) = sd.glob("*.db")
    st = Store(db)
    final = st.results("final")[0]["payload"]
    assert st.session()["config"]["run"]["update"] == "sparsegpt"
    assert final["best+update"]["metric"] == final["best"]["metric"] + " + sparsegpt update"
    assert final["best+update"]["ppl"] < final["best"]["ppl"] and final["sparsegpt"]["ppl"] > 1
