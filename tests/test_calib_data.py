"""--calib-data: calibration from a text or jsonl file the user names, tokenised piece by piece, its hash in the
session's data source; all of WikiText-2 is then search and final text; a missing or short file is one line."""
import hashlib

import pytest

from selfpruner.core.model.data import load_token_data, read_calibration
from selfpruner.core.model import data as data_mod
from selfpruner.cli import main


def _text(n_lines: int) -> str:
    return "".join(f"the cat number {i} sat on the mat .\n" for i in range(n_lines))


def test_text_and_jsonl_give_the_tokens_of_their_text(tmp_path, tiny_tokenizer, monkeypatch):
    txt = tmp_path / "calib.txt"
    txt.write_text(_text(400))
    monkeypatch.setattr(data_mod, "CHUNK_CHARS", 1000)  # many pieces: cut at line ends, nothing lost or doubled
    ids, source = read_calibration(tiny_tokenizer, str(txt), 2000)
    whole = tiny_tokenizer(_text(400), add_special_tokens=False)["input_ids"]
    assert ids.tolist() == whole[:2000]
    assert source == f"file:{txt.resolve()} sha256={hashlib.sha256(txt.read_bytes()).hexdigest()[:12]}"
    jl = tmp_path / "calib.jsonl"
    jl.write_text("".join('{"text": "the cat number %d sat on the mat ."}\n' % i for i in range(400)))
    ids_j, source_j = read_calibration(tiny_tokenizer, str(jl), 500)
    assert ids_j.tolist() == whole[:500] and source_j.startswith("file:")


def test_wikitext_is_all_search_and_final_text_with_calib_data(tmp_path, tiny_tokenizer):
    txt = tmp_path / "calib.txt"
    txt.write_text(_text(400))
    plain = load_token_data(tiny_tokenizer, calib_tokens=1000, source="local")
    other = load_token_data(tiny_tokenizer, calib_tokens=1000, source="local", calib_data=str(txt))
    assert len(other.calib) == 1000 and "calib=file:" in other.source and "sha256=" in other.source
    assert len(other.search) + len(other.test) == len(plain.search) + len(plain.test) + len(plain.calib)
    assert other.test[:100].tolist() == plain.test[:100].tolist()  # the final text starts where it did


def test_bad_calibration_files_are_one_line(tmp_path, tiny_tokenizer, tiny_llama_dir, capsys):
    short = tmp_path / "short.txt"
    short.write_text(_text(3))
    with pytest.raises(ValueError, match="holds 27 tokens, fewer than --calib-tokens 1000"):
        read_calibration(tiny_tokenizer, str(short), 1000)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: each jsonl line needs a \"text\" field"):
        read_calibration(tiny_tokenizer, str(bad), 10)
    rc = main(["baseline", "--method", "uniform", "--model", str(tiny_llama_dir), "--data", "local",
               "--calib-data", str(tmp_path / "missing.txt"), "--sessions-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()  # refused before the model loads
    assert rc != 0 and len(err) == 1 and "missing.txt: no such file" in err[0]
