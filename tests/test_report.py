"""`selfpruner report`: an offline HTML page with PNG/SVG figures, built from stored session DBs (a real tiny
search with its stored uniform/OWL references, a stored LLM session with calls, a metric session), alone and
side by side. The figures are checked to hold a drawing, not a blank canvas."""
import re

import pytest
from test_tui import make_layer_session, make_metric_session

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.results.report import build_report, read_session
from selfpruner.core.store import Store


@pytest.fixture(scope="module")
def real_session(tmp_path_factory, tiny_llama_dir):
    d = tmp_path_factory.mktemp("report-sessions")
    bench = Workbench.build(str(tiny_llama_dir), seq_len=32, calib_tokens=256, data="local")
    cfg = SearchConfig(model=str(tiny_llama_dir), beta=0.4, proposer="numeric", population=4, mutations=2,
                       crossovers=2, generations=2, budget_tokens=64, seq_len=32, calib_tokens=256,
                       final_tokens=64, data="local", sessions_dir=str(d))
    s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
    s.run()
    return s.store.path


def _drawn(png) -> float:
    """How much the image varies: a blank canvas gives 0."""
    import matplotlib.image as mpimg
    return float(mpimg.imread(png)[..., :3].std())


def test_search_stores_uniform_and_owl_references(real_session):
    (ref,) = Store(real_session).results("reference")
    rates = ref["payload"]
    assert rates["uniform"] == [0.4] * 4 and len(rates["owl"]) == 4
    assert abs(sum(rates["owl"]) / 4 - 0.4) < 1e-6 and rates["owl"] != rates["uniform"]


def test_report_of_one_session(real_session, tmp_path):
    page = build_report([real_session], tmp_path / "r")
    text = page.read_text()
    v = read_session(real_session)
    assert v.id in text and len(v.evaluations) == 4 + 2 * 4
    for stem in (f"{v.id}-profile", f"{v.id}-fitness"):
        assert f"src='{stem}.png'" in text
        assert _drawn(tmp_path / "r" / f"{stem}.png") > 0.02
        assert (tmp_path / "r" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    # offline and static: nothing fetched, nothing run
    assert "<script" not in text and not re.search(r"(src|href)=['\"]https?:", text)
    assert f"<td class='num'>{v.final_ppl:.2f}</td>" in text


def test_report_side_by_side_with_llm_calls_and_a_metric_session(real_session, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    llm = make_layer_session(d)
    metric = make_metric_session(d)
    page = build_report([real_session, llm, metric], tmp_path / "r")
    text = page.read_text()
    assert "side by side" in text and _drawn(tmp_path / "r" / "all-profiles.png") > 0.02
    assert _drawn(tmp_path / "r" / "all-fitness.png") > 0.02
    calls = read_session(llm).calls
    assert calls["calls"] == len(Store(llm).calls()) and calls["failed"] == 1 and 0 < calls["repaired"] < 1
    assert "median latency s" in text and Store(llm).session()["id"] in text


def test_report_cli(real_session, tmp_path):
    from selfpruner.cli import main

    sid = Store(real_session).session()["id"]
    assert main(["report", sid[:15], "--sessions-dir", str(real_session.parent), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "index.html").exists()


def _chromium():
    import shutil
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.skipif(not _chromium(), reason="no Chromium here (.ci/run installs Debian's chromium where it can)")
def test_report_renders_in_headless_chromium(real_session, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from report_screenshot import ink, screenshot

    page = build_report([real_session], tmp_path / "r")
    png = screenshot(page, tmp_path / "shot.png")
    assert ink(png) > 0.02  # text, tables and both figures drawn: not a blank page
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    assert ink(screenshot(blank, tmp_path / "blank.png")) < 0.001  # the measure can tell
