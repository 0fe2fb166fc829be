"""The OpenAI-compatible proposer path: concurrent calls (a generation's mutation and crossover at once, stored in
a fixed order), backoff on 429/5xx, the structured-output fallback for servers without json_schema, and, end
to end against llama-cpp-python's own server serving the bundled SmolLM2 instruct GGUF on loopback: structured
output (its json_object dialect), concurrency, a timeout, a server killed mid-call, and a whole search with
--base-url that replays exactly. The fake server covers the error cases a real one will not produce on cue."""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from selfpruner.core.proposers.registry import make_proposer
from selfpruner.core.types import Problem, Scored

PROB = Problem("tiny-llama", 6, 0.3)
POP = [Scored(100 + i, [0.3] * 6, 20.0 + i) for i in range(4)]
MUT = {"solutions": [{"parents": [100], "rates": [0.1, 0.2, 0.3, 0.4, 0.5, 0.3]}]}
CROSS = {"solutions": [{"parents": [100, 101], "rates": [0.5, 0.1, 0.5, 0.1, 0.3, 0.3]}]}


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers chat completions: a mutation prompt with MUT after `slow` seconds, anything else with CROSS after
    half that; `statuses` is served first (one per request); counts the requests in flight."""
    requests: list = []
    statuses: list = []
    slow = 0.0
    refuse_schema = False
    in_flight = peak = 0
    lock = threading.Lock()

    def do_POST(self):
        cls = Scripted
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.requests.append(body)
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            status = cls.statuses.pop(0) if cls.statuses else 200
        try:
            prompt = body["messages"][0]["content"]
            mutation = "by mutation" in prompt
            if status == 200 and cls.refuse_schema and body.get("response_format", {}).get("type") == "json_schema":
                status = 422
            if status == 200:
                time.sleep(cls.slow if mutation else cls.slow / 2)
            reply = MUT if mutation else CROSS
            payload = ({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": json.dumps(reply)}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                       if status == 200 else {"error": {"message": f"status {status}", "type": "x"}})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Scripted.requests, Scripted.statuses, Scripted.slow, Scripted.refuse_schema = [], [], 0.0, False
    Scripted.in_flight = Scripted.peak = 0
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a --base-url server needs none
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield Scripted, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def recorded(p):
    p.records = []
    p.on_call = lambda r: p.records.append(r) or len(p.records)
    return p


def test_mutation_and_crossover_go_out_at_once_and_are_stored_in_order(scripted):
    server, url = scripted
    server.slow = 1.0  # the mutation answers last
    p = recorded(make_proposer("openai", base_url=url, max_retries=0, model="local"))
    p.prefetch(PROB, POP, {"mutation": 1, "crossover": 1}, 1)
    assert server.peak == 2 and len(server.requests) == 2  # both were in flight together
    muts, crosses = p.mutate(PROB, POP, 1, 1), p.crossover(PROB, POP, 1, 1)
    assert len(server.requests) == 2  # answered from the prefetch
    assert [r.phase for r in p.records] == ["mutation", "crossover"]
    assert muts[0].rates == MUT["solutions"][0]["rates"] and crosses[0].parents == [100, 101]
    assert all(r.latency_s > 0 for r in p.records)


def test_prefetched_answers_equal_sequential_ones(scripted):
    server, url = scripted
    a = recorded(make_proposer("openai", base_url=url, max_retries=0, seed=3))
    a.prefetch(PROB, POP, {"mutation": 1, "crossover": 1}, 2)
    got_a = [x.rates for x in a.mutate(PROB, POP, 1, 2) + a.crossover(PROB, POP, 1, 2)]
    b = recorded(make_proposer("openai", base_url=url, max_retries=0, seed=3))
    got_b = [x.rates for x in b.mutate(PROB, POP, 1, 2) + b.crossover(PROB, POP, 1, 2)]
    assert got_a == got_b
    assert [r.prompt for r in a.records] == [r.prompt for r in b.records]


def test_search_config_reaches_the_openai_proposer(scripted):
    from selfpruner.core.config import SearchConfig
    from selfpruner.core.layer_search.session import build_proposer

    _, url = scripted
    p = build_proposer(SearchConfig(proposer="openai", base_url=url, llm_concurrency=2, prompt_fitness="rank"))
    assert p.fitness_view == "rank" and p.backend.concurrency == 2
    assert str(p.backend._client.base_url).startswith(url)


def test_rate_limits_and_5xx_are_retried_with_backoff(scripted):
    server, url = scripted
    server.statuses = [429, 503]
    p = recorded(make_proposer("openai", base_url=url, max_retries=0))
    out = p.mutate(PROB, POP, 1, 1)
    assert len(server.requests) == 3 and out[0].origin == "mutation" and p.records[0].error is None


def test_a_server_without_json_schema_gets_json_object(scripted):
    server, url = scripted
    server.refuse_schema = True
    p = recorded(make_proposer("openai", base_url=url, max_retries=0))
    out = p.mutate(PROB, POP, 1, 1)
    kinds = [r.get("response_format", {}).get("type") for r in server.requests]
    assert kinds == ["json_schema", "json_object"] and p.backend.format == "json_object"
    assert server.requests[1]["response_format"]["schema"]["required"] == ["solutions"]
    assert out[0].rates == MUT["solutions"][0]["rates"] and p.records[0].error is None


def test_failed_prefetch_is_a_failed_attempt_then_a_retry(scripted):
    server, url = scripted
    server.statuses = [500] * 6  # both prefetched calls fail after the client's retries
    p = recorded(make_proposer("openai", base_url=url, max_retries=1, client_retries=2))
    p.prefetch(PROB, POP, {"mutation": 1, "crossover": 1}, 1)
    out = p.mutate(PROB, POP, 1, 1)
    assert [r.attempt for r in p.records] == [1, 2] and "InternalServerError" in p.records[0].error
    assert out[0].rates == MUT["solutions"][0]["rates"]  # the retry went to the server again


# ---- llama-cpp-python's own server, serving the bundled SmolLM2 instruct GGUF ------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(gguf, port):
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--seed", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("llama_cpp.server did not start in 120 s")


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] extras not installed")
    from selfpruner.core.model.models import bundled_gguf_path
    gguf = bundled_gguf_path("smollm2")
    port = _free_port()
    proc = _start_server(gguf, port)
    yield gguf, f"http://127.0.0.1:{port}/v1", port
    proc.kill()
    proc.wait()


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.mark.slow
def test_llama_cpp_server_structured_output_and_concurrency(llama_server, no_key):
    _, url, _ = llama_server
    p = recorded(make_proposer("openai", base_url=url, model="smollm2", max_retries=1, temperature=0.2))
    p.prefetch(PROB, POP, {"mutation": 1, "crossover": 1}, 1)
    assert p.backend.format == "json_object"  # the server refused json_schema (500) and took its own dialect
    muts, crosses = p.mutate(PROB, POP, 1, 1), p.crossover(PROB, POP, 1, 1)
    assert [r.phase for r in p.records][:1] == ["mutation"] and "crossover" in [r.phase for r in p.records]
    first = p.records[0]
    json.loads(first.response)  # grammar-constrained: valid JSON whatever the small model wrote
    assert (first.tokens_in or 0) > 0 and (first.tokens_out or 0) > 0, first  # the server answered and counted
    # the reply parsed into the one list asked for, or (SmolLM2 here writes "rates": []) the call failed saying why
    assert (first.parsed, first.error) == (1, None) or (first.parsed == 0 and str(first.error).startswith(
        "kept 0 of 1: ")), first
    assert len(muts) == 1 and len(crosses) == 1  # the LLM's or, where it wrote nonsense, the fallback's
    for phase, got in (("mutation", muts), ("crossover", crosses)):
        calls = [r for r in p.records if r.phase == phase]
        assert (got[0].origin == "fallback") == all(r.parsed == 0 for r in calls), (phase, got[0], calls)


@pytest.mark.slow
def test_llama_cpp_server_timeout_is_a_failed_attempt(llama_server, no_key):
    _, url, _ = llama_server
    p = recorded(make_proposer("openai", base_url=url, max_retries=0, timeout=0.05, client_retries=0))
    out = p.initial(PROB, 2)
    assert "Timeout" in p.records[0].error and len(out) == 2 and all(x.origin == "fallback" for x in out)


@pytest.mark.slow
def test_llama_cpp_server_killed_mid_call(no_key):
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] extras not installed")
    from selfpruner.core.model.models import bundled_gguf_path
    port = _free_port()
    proc = _start_server(bundled_gguf_path("smollm2"), port)
    p = recorded(make_proposer("openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, client_retries=1))
    threading.Timer(1.0, proc.kill).start()  # while the first call is being generated
    t0 = time.perf_counter()
    out = p.initial(Problem("tiny-llama", 30, 0.3), 4)
    proc.wait()
    assert len(out) == 4 and time.perf_counter() - t0 < 60
    errors = [r.error or "" for r in p.records]
    assert any("Connection" in e for e in errors), errors  # the killed call and its retry failed, no crash


@pytest.mark.slow
def test_search_with_base_url_runs_and_replays(llama_server, no_key, tmp_path, tiny_llama_dir):
    from selfpruner.cli import main

    _, url, _ = llama_server
    common = ["--sessions-dir", str(tmp_path), "--data", "local"]
    rc = main(["search", "--model", str(tiny_llama_dir), "--ratio", "0.3", "--proposer", "openai",
               "--proposer-model", "smollm2", "--base-url", url, "-K", "4", "-M", "1", "-S", "1", "-N", "2",
               "--budget-tokens", "64", "--seq-len", "32", "--calib-tokens", "256", "--final-tokens", "64",
               "--max-retries", "1", *common])  # K=4: three references and one the LLM writes
    assert rc == 0
    from selfpruner.core.store import Store
    (db,) = tmp_path.glob("*.db")
    st = Store(db)
    calls = st.calls()
    assert calls and {c["phase"] for c in calls} >= {"init", "selection", "mutation", "crossover"}
    for g in (1, 2):  # mutation before crossover in every generation, whatever finished first
        phases = [c["phase"] for c in calls if c["generation"] == g and c["phase"] in ("mutation", "crossover")]
        assert phases.index("mutation") < phases.index("crossover")
    assert main(["replay", st.session()["id"], "--no-final", *common[:2]]) == 0


# ---- the metric search's OpenAI-compatible proposer ----------------------------------------------------------
METRIC_REPLY = "Here are new metrics:\n1. mul(abs(W), sqrt(X))\n2. mul(W, (((\nThese should work well."


def test_metric_search_takes_metrics_from_an_openai_compatible_server(tmp_path, tiny_llama_dir, fake_openai):
    """A chat model that answers every prompt with one good metric, one that does not parse and prose."""
    from conftest import SECRET, cli
    from selfpruner.core.store import Store

    fake_openai.content = METRIC_REPLY
    url = os.environ["OPENAI_BASE_URL"]
    tiny = ["--model", tiny_llama_dir, "--population", "4", "--iterations", "2", "--top-k", "2", "--no-gradients",
            "--budget-tokens", "128", "--seq-len", "32", "--calib-tokens", "256", "--final-tokens", "128",
            "--data", "local", "--sessions-dir", tmp_path]
    code, out, err = cli("metric-search", *tiny, "--proposer", "openai", "--proposer-model", "local-model",
                         "--base-url", url, "--llm-every", "1", env={"OPENAI_API_KEY": SECRET})
    assert code == 0, err
    (db,) = tmp_path.glob("*.db")
    st = Store(db, readonly=True)
    calls = st.calls()
    assert [(c["proposer"], c["phase"], c["generation"]) for c in calls] == [("openai", "metric", 1),
                                                                            ("openai", "metric", 2)]
    assert calls[0]["response"] == METRIC_REPLY and calls[0]["parsed"] == 1 and calls[1]["parsed"] == 0
    # the prompt went out as the user message, without a JSON schema (the layer search's), with the call's seed
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {SECRET}"
    assert sent["body"]["model"] == "local-model" and sent["body"]["messages"][0]["content"] == calls[0]["prompt"]
    assert "response_format" not in sent["body"] and isinstance(sent["body"]["seed"], int)
    llm = [c for c in st.metric_candidates() if c["origin"] == "llm"]
    assert [c["canonical"] for c in llm] == ["mul(abs(W), sqrt(X))"]  # asked again, it is a duplicate: not re-run
    rejected = sorted((r["payload"]["iteration"], r["payload"]["text"]) for r in st.results("metric_rejection"))
    assert rejected == [(1, "mul(W, ((("), (2, "mul(W, ((("), (2, "mul(abs(W), sqrt(X))")]  # prose is skipped
    assert st.session()["config"]["run"]["base_url"] == url
    st.close()
    assert SECRET.encode() not in db.read_bytes()  # the key reached the server, never the session
    # without a key or a server: one line, before any model loads
    code, _, err = cli("metric-search", *tiny, "--proposer", "openai", env={"OPENAI_BASE_URL": ""})
    assert code == 2 and err.strip().splitlines() == [
        "error: OPENAI_API_KEY is not set; use --proposer llama-cpp for the offline proposer (or --base-url for "
        "a local OpenAI-compatible server)"]


@pytest.mark.slow
def test_metric_search_with_a_real_server_stores_what_it_wrote(llama_server, no_key, tmp_path, tiny_llama_dir):
    """SmolLM2-135M-Instruct on llama-cpp-python's server writes free text: whatever it wrote is stored, each line
    that parses is evaluated as an LLM candidate, each that does not is a stored rejection, and the search ends."""
    from conftest import cli
    from selfpruner.core.store import Store

    _, url, _ = llama_server
    code, _, err = cli("metric-search", "--model", tiny_llama_dir, "--population", "4", "--iterations", "1",
                       "--top-k", "2", "--no-gradients", "--budget-tokens", "128", "--seq-len", "32",
                       "--calib-tokens", "256", "--final-tokens", "128", "--data", "local", "--sessions-dir", tmp_path,
                       "--proposer", "openai", "--proposer-model", "smollm2", "--base-url", url, "--llm-every", "1")
    assert code == 0, err
    (db,) = tmp_path.glob("*.db")
    st = Store(db, readonly=True)
    (call,) = st.calls()
    assert call["error"] is None or call["error"] == "no new valid expression in the reply"
    assert call["response"] and call["latency_s"] > 0
    llm = [c for c in st.metric_candidates() if c["origin"] == "llm"]
    assert len(llm) == call["parsed"] and st.session()["status"] == "finished"
