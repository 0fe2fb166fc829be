"""Shared fixtures: tiny random LLaMA (GQA) / Gemma3 (MQA) models with a real word-level tokenizer built
offline from the local WikiText-2 copy, and the bundled gemma-3-270m for slow tests."""
from __future__ import annotations

import collections
import http.server
import json
import os
import re
import threading

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's ~/.cache/selfpruner; they share a cache of their own outside the checkout
# ($SELFPRUNER_TEST_CACHE, default ~/.cache/selfpruner-tests; subprocesses inherit it). Its entries are keyed by
# content and code version (the GGUF's sha256, the model fingerprint, the windows), so a second run on the same
# machine, a fresh clone's included, skips the dequantisation and calibration passes and nothing stale is read.
os.environ["SELFPRUNER_CACHE"] = os.environ.get("SELFPRUNER_TEST_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selfpruner-tests")
# Under pytest-xdist (.ci/run: `-n 2`) each worker and what it starts computes on one thread: two workers with
# torch's default thread per core oversubscribe two cores, their OpenMP threads spinning against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _wordlevel_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from selfpruner.core.model.data import local_wikitext_path

    text = local_wikitext_path().read_text(encoding="utf-8")[:300_000]
    counts = collections.Counter(re.findall(r"\w+|[^\w\s]", text))
    vocab = {"<unk>": 0, "<bos>": 1}
    for w, _ in counts.most_common(vocab_size - len(vocab)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>")


def make_tiny(kind: str, tokenizer=None, seed: int = 0):
    """A small random causal LM: 'llama' = 4 heads / 2 KV heads (GQA), 'gemma' = 4 heads / 1 KV head (MQA)."""
    torch.manual_seed(seed)
    vocab = len(tokenizer) if tokenizer is not None else 1000
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                               max_position_embeddings=256, sliding_window=32)
        model = Gemma3ForCausalLM(cfg)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _wordlevel_tokenizer()


@pytest.fixture(scope="session", params=["llama", "gemma"])
def tiny_model_dir(request, tmp_path_factory, tiny_tokenizer):
    """A saved tiny model + tokenizer directory, loadable by selfpruner's load_model like a real checkpoint."""
    d = tmp_path_factory.mktemp(f"tiny-{request.param}")
    make_tiny(request.param, tiny_tokenizer).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny-llama-only")
    make_tiny("llama", tiny_tokenizer).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_bench(tiny_llama_dir):
    """The tiny LLaMA's workbench (32-token windows), shared by a module's searches."""
    from selfpruner.core.layer_search.workbench import Workbench
    return Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local")


def run_search(cfg, bench, resume=None, subscriber=None):
    """(search, its SearchFinished) of a new or resumed session on `bench`; `subscriber` sees every event."""
    from selfpruner.core.events import Control, EventBus
    from selfpruner.core.layer_search.session import start_search
    bus = EventBus()
    if subscriber:
        bus.subscribe(subscriber)
    search = start_search(cfg, bus=bus, control=Control(), resume=resume, bench=bench)
    return search, search.run()


@pytest.fixture(scope="session")
def bundled():
    """The real gemma-3-270m (dequantised from the bundled GGUF; cached after the first load)."""
    from selfpruner.core.model.models import load_model
    return load_model()


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct in float32 on the CPU, loaded once for every test that needs it."""
    from selfpruner.core.model.models import load_model
    return load_model("smollm2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smol_bench(smollm2):
    """SmolLM2's one workbench (256-token windows, 4,096 calibration tokens, the default importance's order).
    Only one: a second workbench on the same model would re-order its heads and channels under this one."""
    from selfpruner.core.layer_search.workbench import Workbench
    return Workbench.build(None, lm=smollm2, seq_len=256, calib_tokens=4096, data="local")


@pytest.fixture
def smol(smol_bench):
    """The shared SmolLM2 workbench, its pruning settings back to the defaults after each test."""
    yield smol_bench
    smol_bench.set_pruning(False)


class HeldSession:
    """Another process that runs a session: it holds the session's run lock until killed (kill -9)."""

    def __init__(self, db, command: str = "selfpruner search"):
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", (
            "import time; from selfpruner.core.store import Store; from selfpruner.core.run_lock import RunLock; "
            f"RunLock(Store({str(db)!r}), {command!r}).acquire(); print('held', flush=True); time.sleep(600)")],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def cli(*args, env=None, cwd=None, timeout=None):
    """(exit code, stdout, stderr) of `selfpruner ARGS` as a user runs it (no API key), in this process: the
    same main(argv) behind the console script, its output captured, the environment and working directory as a
    subprocess would get them. Tests about a process boundary (signals, kill -9, a lock held by the runner
    itself, a module path) use cli_process. `timeout` is cli_process's; accepted here so callers can switch."""
    import contextlib
    import io
    import traceback

    from selfpruner.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.update(env or {})
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse: usage errors (2), --help (0)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what a subprocess prints before it dies with 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    # newlines as a subprocess's text-mode pipe reads them (csv writes \r\n)
    return code, stdout.getvalue().replace("\r\n", "\n"), stderr.getvalue().replace("\r\n", "\n")


def cli_process(*args, env=None, cwd=None, timeout=600):
    """(exit code, stdout, stderr) of `selfpruner ARGS` in a subprocess (no API key in its environment)."""
    import subprocess
    import sys
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "selfpruner.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=e, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


# ---- a fake OpenAI server (the proposers' tests) ---------------------------------------------------------
SECRET = "sk-test-DO-NOT-STORE-42"


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """An OpenAI chat-completions endpoint on loopback: answers `content` (or an error at another `status`) and
    records each request's path, Authorization header and body."""
    requests: list = []
    status = 200
    content = ""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if FakeOpenAI.status != 200:
            payload = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                 "code": "invalid_api_key"}}
        else:
            payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": FakeOpenAI.content}}],
                       "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366}}
        data = json.dumps(payload).encode()
        self.send_response(FakeOpenAI.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai(monkeypatch):
    """FakeOpenAI serving, reached through OPENAI_BASE_URL with the key SECRET in the environment."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.requests, FakeOpenAI.status = [], 200
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    yield FakeOpenAI
    server.shutdown()
