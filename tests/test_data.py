"""WikiText-2 loading: offline, `--data auto` falls back to the local copy at once and says so in one line.

No test here reaches beyond the loopback interface: the hub endpoint is pointed at 127.0.0.1."""
import logging
import socket
import time

import pytest
import torch

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


def test_local_tokens_are_cached_per_tokenizer_and_text(tmp_path, monkeypatch, tiny_tokenizer):
    """The tokenised file comes back from the cache the second time, and another tokenizer (one more word in its
    vocabulary) or another text never reads that entry."""
    monkeypatch.setenv("SELFPRUNER_CACHE", str(tmp_path / "cache"))
    calls = []
    real = D._encode
    monkeypatch.setattr(D, "_encode", lambda tok, text: calls.append(len(text)) or real(tok, text))
    first = D.load_token_data(tiny_tokenizer, calib_tokens=256, source="local")
    again = D.load_token_data(tiny_tokenizer, calib_tokens=256, source="local")
    assert len(calls) == 1 and all((a == b).all() for a, b in zip((first.calib, first.search, first.test),
                                                                    (again.calib, again.search, again.test)))
    other = _copy_with_one_more_word(tiny_tokenizer)
    got = D.load_token_data(other, calib_tokens=256, source="local")
    assert len(calls) == 2 and not torch.equal(got.test, first.test)
    text = tmp_path / "wiki.test.raw"
    text.write_text(D.local_wikitext_path().read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    monkeypatch.setenv(D.WIKITEXT_ENV, str(text))
    D.load_token_data(tiny_tokenizer, calib_tokens=256, source="local")
    assert len(calls) == 3


def _copy_with_one_more_word(tokenizer):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.add_tokens(["the"])  # the commonest word gets a new id
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<bos>")
