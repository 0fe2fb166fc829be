"""WikiText-2 loading: offline, `--data auto` falls back to the local copy at once and says so in one line.

No test here reaches beyond the loopback interface: the hub endpoint is pointed at 127.0.0.1."""
import logging
import socket
import time

import pytest

from selfpruner.core.model import data as D


@pytest.fixture
def online_env(monkeypatch):
    """The environment of a user who did not switch the hub off (conftest.py does, for every other test)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _fallback_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == D.__name__ and r.levelno == logging.WARNING]


def test_unreachable_hub_falls_back_to_the_local_copy_fast(online_env, monkeypatch, caplog, tiny_tokenizer):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens, refused at once
    caplog.set_level(logging.WARNING, logger=D.__name__)
    t0 = time.perf_counter()
    td = D.load_token_data(tiny_tokenizer, calib_tokens=256, source="auto")
    elapsed = time.perf_counter() - t0
    assert td.source.startswith("local:")
    assert elapsed < 3.0, f"fallback took {elapsed:.1f}s"
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "unreachable" in lines[0] and str(D.local_wikitext_path()) in lines[0]


def test_probe_failure_means_offline_and_hub_source_says_why(online_env, monkeypatch, caplog, tiny_tokenizer):
    monkeypatch.setattr(D, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("the hub was tried while offline"))
    caplog.set_level(logging.WARNING, logger=D.__name__)
    assert D.load_token_data(tiny_tokenizer, calib_tokens=256, source="auto").source.startswith("local:")
    assert len(_fallback_lines(caplog)) == 1
    with pytest.raises(RuntimeError, match="unreachable"):
        D.load_token_data(tiny_tokenizer, calib_tokens=256, source="hub")
    caplog.clear()
    D.load_token_data(tiny_tokenizer, calib_tokens=256, source="local")  # asked for: nothing to say
    assert _fallback_lines(caplog) == []


def test_offline_switch_skips_the_probe(online_env, monkeypatch, caplog, tiny_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(D, "_hub_reachable", lambda *a, **k: pytest.fail("probed although offline was set"))
    caplog.set_level(logging.WARNING, logger=D.__name__)
    assert D.load_token_data(tiny_tokenizer, calib_tokens=256, source="auto").source.startswith("local:")
    (line,) = _fallback_lines(caplog)
    assert "HF_HUB_OFFLINE=1" in line


def test_probe_honours_hf_endpoint(online_env, monkeypatch):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert D._hub_reachable(timeout=1.0)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert not D._hub_reachable(timeout=1.0)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:notaport")
    assert not D._hub_reachable(timeout=1.0)


def test_cli_shows_core_warnings_as_one_line(capsys):
    from selfpruner import cli
    logger = logging.getLogger("selfpruner")
    saved = list(logger.handlers)
    before = [h for h in saved if type(h).__name__ != "OneLine"]  # an in-process CLI run of another test added one
    logger.handlers[:] = before
    try:
        cli._show_core_warnings()
        cli._show_core_warnings()  # main() may run more than once in a process: still one handler
        assert len(logger.handlers) == len(before) + 1
        capsys.readouterr()
        logging.getLogger(D.__name__).warning("WikiText-2 hub unreachable (offline?): using the local copy [x]\nmore")
        logging.getLogger(D.__name__).info("not shown")
        assert capsys.readouterr().err == "warning: WikiText-2 hub unreachable (offline?): using the local copy [x]\n"
    finally:
        logger.handlers[:] = saved
