"""The whole job in selfpruner-tui, headless on the bundled SmolLM2, as a user drives it: a search started from the
form, then on its session screen `x` Export to GGUF and `m` zero-shot (PIQA from local files). The drive is the
one bench/tui_screenshots.py makes the README's pictures with; each result must land in the session DB, and the
exported GGUF must run in llama.cpp."""
import asyncio
import sys
from pathlib import Path

import pytest

from selfpruner.core.config import SearchConfig
from selfpruner.core.store import Store

PIQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "piqa"


@pytest.mark.slow
def test_search_export_gguf_and_zero_shot_from_the_tui(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from tui_screenshots import after_search, search

    cfg = SearchConfig(model="smollm2", beta=0.3, proposer="numeric", population=2, mutations=1, crossovers=1,
                       generations=1, calib_tokens=2048, budget_tokens=256, seq_len=256, final_tokens=256,
                       data="local")
    sessions, gguf = tmp_path / "sessions", tmp_path / "pruned.gguf"
    asyncio.run(search(sessions, cfg))
    (db,) = sessions.glob("*.db")
    note = asyncio.run(after_search(sessions, db, cfg, gguf, str(PIQA), limit=8, speed=False))
    with Store(db, readonly=True) as st:
        s, results = st.session(), {r["kind"]: r for r in st.results()}
    assert s["status"] == "finished" and s["final_ppl"] > 1
    export = results["export"]["payload"]
    assert Path(export["path"]) == gguf and gguf.stat().st_size > 10e6 and export["params"] < 0.8 * 134.5e6
    piqa = results["lm_eval"]["payload"]["results"]["piqa"]
    assert piqa["n"] == 8 and 0 <= piqa["acc"] <= 1 and "piqa" in note

    from llama_cpp import Llama  # the file the TUI wrote runs where people serve models
    llm = Llama(str(gguf), n_ctx=64, n_threads=1, verbose=False, logits_all=False)
    assert len(llm.tokenize(b"The capital of France")) > 2 and llm.create_completion("The", max_tokens=3)["choices"]
