"""Device and dtype plumbing, checked without a GPU: 'auto' resolves to the CPU in float32 here, the choice is
stored with the session and pinned on resume, a bfloat16 search runs, no tensor of a search is made without an
explicit device (default device 'meta'), batched fitness scores as batch 1 does, and bfloat16 SmolLM2 scores
within 1% of float32 (slow)."""
import pytest
import torch

from selfpruner.cli import build_parser
from selfpruner.core.baselines.rates import owl_rates
from selfpruner.core.config import ConfigError, SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import resume_config, start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model import evaluate as ev
from selfpruner.core.model.data import load_token_data
from selfpruner.core.model.models import LoadedModel, ModelLoadError, load_model, resolve_device, resolve_dtype
from selfpruner.core.store import Store

from conftest import make_tiny

TINY = dict(beta=0.4, proposer="numeric", population=4, mutations=2, crossovers=2, generations=1,
            budget_tokens=96, seq_len=32, calib_tokens=256, final_tokens=128, data="local")
RATES = [0.1, 0.6, 0.3, 0.6]
GPU = torch.cuda.is_available()


# ---- resolution and validation --------------------------------------------------------------------------
def test_auto_is_cpu_float32_without_a_gpu():
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")
    assert resolve_dtype("auto") == (torch.bfloat16 if GPU else torch.float32)
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="--device must be"):
        resolve_device("gpu0")


@pytest.mark.skipif(GPU, reason="checks the message a CPU-only box gives")
def test_cuda_requests_fail_in_one_line_without_a_gpu(tiny_llama_dir):
    for kw in ({"device": "cuda"}, {"device": "cuda:1"}, {"device_map": "auto"}):
        with pytest.raises(ModelLoadError) as e:
            load_model(str(tiny_llama_dir), **kw)
        assert "no CUDA device is visible" in str(e.value) and "\n" not in str(e.value)


def test_config_validates_placement():
    for bad, msg in (({"device": "tpu"}, "--device"), ({"dtype": "int8"}, "--dtype"),
                     ({"device_map": "everywhere"}, "--device-map"), ({"batch_size": 0}, "--batch-size"),
                     ({"device": "cpu", "device_map": "auto"}, "leave --device at auto")):
        with pytest.raises(ConfigError, match=msg):
            SearchConfig(**bad).validate()
    SearchConfig(device="cuda:3", dtype="float16", batch_size=8).validate()  # valid, even where no GPU is


def test_every_model_command_takes_the_device_options():
    p = build_parser()
    needs = {"search": [], "baseline": [], "metric-search": [], "prune": ["--metric", "W"], "replay": ["s"],
             "export": ["s", "--out", "o"], "eval": ["d"], "speed": ["d"], "lora": ["d", "--out", "o"]}
    for cmd, rest in needs.items():
        a = p.parse_args([cmd, *rest, "--device", "cpu", "--dtype", "bfloat16", "--batch-size", "3"])
        assert (a.device, a.dtype, a.device_map, a.batch_size) == ("cpu", "bfloat16", None, 3), cmd
        a = p.parse_args([cmd, *rest, "--device-map", "auto", "--batch-size", "auto"])
        assert (a.device, a.dtype, a.device_map, a.batch_size) == ("auto", "auto", "auto", None), cmd
    with pytest.raises(SystemExit):
        p.parse_args(["search", "--batch-size", "0"])


# ---- stored with the session ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_bench(tiny_llama_dir):
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local", device="cpu")


@pytest.fixture(scope="module")
def bf16_bench(tiny_llama_dir):
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local", dtype="bfloat16")


def _search(tmp_path, bench, model_dir, **kw):
    cfg = SearchConfig(model=str(model_dir), sessions_dir=str(tmp_path), **{**TINY, **kw})
    search = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    return search, search.run()


def test_session_stores_the_placement_it_ran_with(tmp_path, fp32_bench, tiny_llama_dir):
    assert fp32_bench.lm.device.type == "cpu" and fp32_bench.dtype == "float32" and fp32_bench.batch_size == 1
    search, res = _search(tmp_path, fp32_bench, tiny_llama_dir, device="cpu", batch_size=2)
    assert res.status == "finished"
    stored = search.store.session()["config"]
    # 'auto' is pinned to what ran: the dtype moves every fitness, a resume elsewhere must not re-resolve it
    assert (stored["device"], stored["dtype"], stored["device_map"], stored["batch_size"]) == ("cpu", "float32",
                                                                                                None, 2)
    ref = search.store.path.stem
    cfg, _ = resume_config(ref, str(tmp_path), {"device": "auto", "batch_size": 1})
    assert (cfg.device, cfg.dtype, cfg.batch_size) == ("auto", "float32", 1)  # where it runs may change
    with pytest.raises(ConfigError, match="--dtype cannot change when resuming") as e:
        resume_config(ref, str(tmp_path), {"dtype": "bfloat16"})
    assert "\n" not in str(e.value)
    # a session from before devices existed ran in float32
    st = Store(search.store.path)
    legacy = {k: v for k, v in stored.items() if k not in ("device", "dtype", "device_map", "batch_size")}
    st.update_session(config=legacy)
    st.close()
    assert resume_config(ref, str(tmp_path))[0].dtype == "float32"


@pytest.mark.skipif(GPU, reason="checks the message a CPU-only box gives")
def test_a_cuda_session_resumes_on_the_cpu_only_when_asked(tmp_path, fp32_bench, tiny_llama_dir):
    search, _ = _search(tmp_path, fp32_bench, tiny_llama_dir)
    st = Store(search.store.path)
    st.update_session(config={**st.session()["config"], "device": "cuda:0"})
    st.close()
    cfg, path = resume_config(search.store.path.stem, str(tmp_path))
    with pytest.raises(ConfigError, match="no CUDA device is visible here: pass --device cpu"):
        start_search(cfg, bus=EventBus(), control=Control(), resume=path)
    cfg, path = resume_config(search.store.path.stem, str(tmp_path), {"device": "cpu"})
    assert cfg.device == "cpu" and cfg.device_map is None


def test_bfloat16_search_runs_and_cannot_resume_a_float32_session(tmp_path, fp32_bench, bf16_bench, tiny_llama_dir):
    lm = bf16_bench.lm
    assert lm.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert lm.fingerprint != fp32_bench.lm.fingerprint  # the weights' dtype is part of the model's identity
    # statistics accumulate in float64 whatever the weights' dtype
    assert all(v.dtype == torch.float64 for layer in bf16_bench.stats.sqsum for v in layer.values())
    search, res = _search(tmp_path, bf16_bench, tiny_llama_dir)
    assert res.status == "finished" and 1 < res.best_fitness < 1e4 and 1 < res.final_ppl < 1e4
    assert search.store.session()["config"]["dtype"] == "bfloat16"
    fp32_ppl = fp32_bench.fitness(RATES, 96)[0]
    assert bf16_bench.fitness(RATES, 96)[0] == pytest.approx(fp32_ppl, rel=0.05)
    # an fp32 session resumed on a bf16 model: one line naming both dtypes
    f32, _ = _search(tmp_path / "f32", fp32_bench, tiny_llama_dir)
    cfg, path = resume_config(f32.store.path.stem, str(tmp_path / "f32"))
    with pytest.raises(ConfigError, match="ran in float32, this run loaded .* in bfloat16"):
        start_search(cfg, bus=EventBus(), control=Control(), resume=path, bench=bf16_bench)
    with pytest.raises(ConfigError, match="--dtype float32 asked, but the model given to the search is in bfloat16"):
        _search(tmp_path / "x", bf16_bench, tiny_llama_dir, dtype="float32")


# ---- no tensor without a device --------------------------------------------------------------------------
def test_search_makes_no_tensor_without_an_explicit_device(tmp_path, tiny_llama_dir):
    """Default device 'meta': any tensor a search creates without naming a device is a meta tensor, and the
    first time it meets a real one (or is read as a number) the search fails."""
    from selfpruner.core.metric_search.gradients import collect_gradients
    from selfpruner.core.metric_search.unstructured import UnstructuredPruner

    lm = load_model(str(tiny_llama_dir), device="cpu")
    td = load_token_data(lm.tokenizer, calib_tokens=256, source="local")
    with torch.device("meta"):
        with pytest.raises((RuntimeError, NotImplementedError)):  # the guard bites
            float((torch.zeros(3) + torch.ones(3, device="cpu")).sum())
        bench = Workbench.from_parts(lm, td, seq_len=32, batch_size=2)
        assert all(v.device.type == "cpu" for layer in bench.stats.sqsum for v in layer.values())
        rates = owl_rates(lm.arch, bench.stats, 0.4)
        assert abs(sum(rates) / len(rates) - 0.4) < 1e-9
        search, res = _search(tmp_path, bench, tiny_llama_dir, batch_size=2)
        assert res.status == "finished" and res.final_ppl > 1
        bench.pruner.reconstruct = True  # FLAP bias and KL fitness make their tensors where the layer lives too
        assert bench.fitness(rates, 64, measure="kl", kl_k=8)[0] > 0
        bench.pruner.reconstruct = False
        grads = collect_gradients(lm.model, lm.arch, bench.windows("calib", 64))
        unstructured = UnstructuredPruner(lm.arch, bench.stats, grads)
        with unstructured.pruned_with("mul(abs(W), mul(G, X))", 0.5) as achieved:
            assert abs(achieved - 0.5) < 0.02
            assert ev.perplexity(lm.model, bench.windows("search", 64), batch_size=2) > 1


# ---- batched fitness ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,softcap,chunk", [("llama", None, 512), ("llama", None, 5), ("gemma", 0.3, 7)])
def test_batched_windows_score_as_one_at_a_time(kind, softcap, chunk, monkeypatch):
    model = make_tiny(kind)
    if softcap:
        model.config.final_logit_softcapping = softcap
    monkeypatch.setattr(ev, "HEAD_CHUNK", chunk)  # with a batch of 3 the head runs over chunk // 3 positions
    windows = torch.randint(0, 1000, (7, 32), generator=torch.Generator().manual_seed(0))
    one = ev.window_nlls(model, windows, batch_size=1)
    for b in (2, 3, 8):
        assert ev.window_nlls(model, windows, batch_size=b) == pytest.approx(one, rel=1e-5)
    assert ev.perplexity(model, windows, batch_size=3) == pytest.approx(ev.perplexity(model, windows), rel=1e-6)


def test_batched_workbench_fitness_matches_batch_one(tiny_llama_dir, fp32_bench):
    lm = LoadedModel.wrap(make_tiny("llama", fp32_bench.lm.tokenizer), "tiny", fp32_bench.lm.tokenizer)
    one = Workbench.from_parts(lm, fp32_bench.data, seq_len=32, batch_size=1)
    three = Workbench.from_parts(lm, fp32_bench.data, seq_len=32, batch_size=3)
    assert three.calib_key == one.calib_key
    for rates in (RATES, [0.0] * 4, [0.5] * 4):
        assert three.fitness(rates, 7 * 32)[0] == pytest.approx(one.fitness(rates, 7 * 32)[0], rel=1e-6)
    assert three.dense_ppl(20 * 32, "test") == pytest.approx(one.dense_ppl(20 * 32, "test"), rel=1e-6)


def test_cpu_default_batch_is_one(fp32_bench):
    """On the CPU, batch 'auto' is evaluate.CPU_BATCH (1: see the measurement there), so every float32
    perplexity stays bit-identical to one window at a time."""
    if fp32_bench.lm.model.device.type != "cpu":
        pytest.skip("the workbench is on a GPU here: the CPU default is not what it uses")
    w = fp32_bench.windows("search", None)
    assert ev.auto_batch_size(fp32_bench.lm.model, w) == ev.CPU_BATCH == 1


# ---- real model: bfloat16 on the CPU ------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_bfloat16_within_one_percent_of_float32():
    ppl = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model("smollm2", device="cpu", dtype=dtype)
        assert lm.dtype == getattr(torch, dtype)
        td = load_token_data(lm.tokenizer, calib_tokens=4096, source="local")
        windows = td.windows("test", 512, 1024)
        assert windows.numel() == 1024
        ppl[dtype] = ev.perplexity(lm.model, windows)
        del lm
    assert ppl["bfloat16"] == pytest.approx(ppl["float32"], rel=0.01), ppl
