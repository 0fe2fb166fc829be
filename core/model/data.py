"""WikiText-2 text for calibration, search-time fitness and the final evaluation.

The real `datasets` loader is tried first (train → calibration, validation → search fitness, test → final).
Offline, the ../shared copy of the test split is used: calibration windows come from its tail, and the
rest (the head) is cut into two disjoint halves: the final evaluation reads the first, search-time fitness
the second. No calibration token is ever scored and no final window was seen by the search.
`TokenData.source` records which was used.

Every window starts with the model's BOS token when its tokenizer puts one at the start of a sequence
(Gemma, LLaMA-2: a Gemma window without it scores ~3x worse ppl), so window k is scored as the model was
trained to read a document, not as the middle of window 0's. The streams hold no special tokens.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from ..config import calib_file

WIKITEXT_ENV = "SELFPRUNER_WIKITEXT"


def local_wikitext_path() -> Path | None:
    """The offline copy: $SELFPRUNER_WIKITEXT, or shared/ beside the repository (or the current dir)."""
    candidates = []
    if os.environ.get(WIKITEXT_ENV):
        candidates.append(Path(os.environ[WIKITEXT_ENV]))
    rel = Path("shared/data/wikitext-2-raw/wiki.test.raw")
    for base in (Path(__file__).resolve().parents[3], Path.cwd().parent, Path.cwd()):
        candidates.append(base / rel)
    return next((p for p in candidates if p.is_file()), None)


HUB_PROBE_TIMEOUT_S = 1.5  # one TCP connect to the hub host; offline, datasets would retry for ~25 s instead
log = logging.getLogger(__name__)


def _env_offline() -> str | None:
    """Why the user switched the hub off (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), if they did."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"hub switched off ({var}={os.environ[var]})"
    return None


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub host ($HF_ENDPOINT, else huggingface.co), or to the proxy that
    $HTTPS_PROXY / $HTTP_PROXY names for it, opens within `timeout` seconds, name lookup included (it runs
    in a daemon thread, so a hanging DNS resolver cannot hold the caller longer)."""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
        proxy = urllib.request.getproxies().get(url.scheme or "https")
        if proxy and not urllib.request.proxy_bypass(host):
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            host, port = p.hostname or host, p.port or (443 if p.scheme == "https" else 80)
    except ValueError:  # a malformed port in the endpoint or proxy address
        return False
    done, opened = threading.Event(), []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.append(True)
        except OSError:
            pass
        finally:
            done.set()

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    done.wait(timeout)
    return bool(opened)


def _hub_splits() -> tuple[dict[str, str] | None, str]:
    """The three WikiText-2 splits from the hub, or (None, why not) at once when it is out of reach."""
    why = _env_offline()
    if why:
        return None, why
    if not _hub_reachable():
        return None, "hub unreachable (offline?)"
    try:
        from datasets import load_dataset

        out = {}
        for split in ("train", "validation", "test"):
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            out[split] = "\n\n".join(ds["text"])
        return out, ""
    except Exception as e:  # any failure to reach the hub means: use the local copy
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        return None, f"hub load failed ({type(e).__name__}{': ' + first if first else ''})"


@dataclass
class TokenData:
    calib: torch.Tensor  # 1-D token stream for calibration
    search: torch.Tensor  # 1-D token stream for search-time fitness
    test: torch.Tensor  # 1-D token stream for the final evaluation
    source: str  # "hub:wikitext-2-raw-v1" or "local:<path> sha256=<prefix>"
    bos: int | None = None  # token put at the start of every window, or None

    def windows(self, which: str, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
        """Non-overlapping [n, seq_len] windows from the start of a stream (at least one); with a BOS token
        each holds BOS plus seq_len - 1 text tokens, so every window scores seq_len - 1 text predictions."""
        ids = getattr(self, which)
        text_len = seq_len - (self.bos is not None)
        n = len(ids) // text_len
        if max_tokens is not None:
            n = min(n, max(1, max_tokens // seq_len))
        if n == 0 or text_len < 1:
            raise ValueError(f"{which} stream has {len(ids)} tokens, fewer than one window of {seq_len}")
        w = ids[: n * text_len].view(n, text_len)
        if self.bos is None:
            return w
        return torch.cat([torch.full((n, 1), self.bos, dtype=w.dtype), w], dim=1)


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer starts every sequence with it (what the model saw in training)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("The", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def resolve_bos(tokenizer, bos: str = "auto") -> int | None:
    """`bos`: 'auto' (the tokenizer's own habit), 'on' (its BOS token, which must exist) or 'off'."""
    if bos == "off":
        return None
    if bos == "auto":
        return tokenizer_bos(tokenizer)
    if bos == "on":
        if getattr(tokenizer, "bos_token_id", None) is None:
            raise ValueError("--bos on: this tokenizer has no BOS token")
        return tokenizer.bos_token_id
    raise ValueError(f"--bos must be auto, on or off, not {bos!r}")


def _encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _encode_file(tokenizer, text: str, text_sha: str) -> torch.Tensor:
    """A file's tokens, kept in the cache under the tokenizer's and the text's hashes: tokenising WikiText-2
    costs about a second at every run, hashing a fast tokenizer a few hundredths."""
    from .calibration import cached

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer has no serialised form to key by
        return _encode(tokenizer, text)
    h = hashlib.sha256(f"{type(tokenizer).__name__}|{text_sha}|".encode())
    h.update(backend.to_str().encode())
    ids, _ = cached("tokens", h.hexdigest()[:24], lambda: _encode(tokenizer, text), lambda t: {"ids": t},
                    lambda d: d["ids"])
    return ids


def load_token_data(tokenizer, *, calib_tokens: int = 16384, source: str = "auto", bos: str = "auto",
                    calib_data: str | None = None) -> TokenData:
    """`source`: 'auto' (hub, else local), 'hub', or 'local'; `bos`: see resolve_bos. `calib_data` (a text or
    jsonl file, or a hub dataset id) gives the calibration tokens instead of WikiText-2, which then keeps all
    its text for search fitness and the final evaluation; the source records it with its hash."""
    bos_id = resolve_bos(tokenizer, bos)
    calib = read_calibration(tokenizer, calib_data, calib_tokens) if calib_data else None
    if source in ("auto", "hub"):
        splits, why = _hub_splits()
        if splits is not None:
            return TokenData(calib[0] if calib else _encode(tokenizer, splits["train"])[:calib_tokens],
                             _encode(tokenizer, splits["validation"]), _encode(tokenizer, splits["test"]),
                             "hub:wikitext-2-raw-v1" + (f" calib={calib[1]}" if calib else ""), bos_id)
        if source == "hub":
            raise RuntimeError(f"the WikiText-2 hub dataset cannot be reached ({why}); use --data local")
    path = local_wikitext_path()
    if path is None:
        raise FileNotFoundError(f"offline WikiText-2 not found: set {WIKITEXT_ENV} to wiki.test.raw")
    if source == "auto":
        log.warning("WikiText-2 %s: using the local copy %s", why, path)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    ids = _encode_file(tokenizer, raw.decode("utf-8").replace("\r\n", "\n"), digest)
    sha = digest[:12]
    if calib:  # nothing of the test file is calibrated on: its halves are the final and the search text
        half = len(ids) // 2
        return TokenData(calib[0], ids[half:], ids[:half], f"local:{path} sha256={sha} calib={calib[1]}", bos_id)
    if calib_tokens >= len(ids) // 2:
        raise ValueError(f"calibration budget {calib_tokens} leaves too little of the {len(ids)}-token test text "
                         f"(--calib-data FILE calibrates on other text)")
    head, tail = ids[:-calib_tokens], ids[-calib_tokens:]
    half = len(head) // 2
    return TokenData(tail, head[half:], head[:half], f"local:{path} sha256={sha}", bos_id)


CHUNK_CHARS = 1 << 20  # text tokenised at a time: memory stays flat however long the file


def _file_texts(path: Path):
    """A text file in ~1 MiB pieces cut at line ends, or a jsonl file's "text" fields."""
    import json
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"{path}:{n}: each jsonl line needs a \"text\" field") from None
            return
        rest = ""
        while piece := f.read(CHUNK_CHARS):
            piece = rest + piece
            cut = piece.rfind("\n") + 1 or len(piece)
            rest = piece[cut:]
            yield piece[:cut]
        if rest:
            yield rest


def _hub_texts(dataset_id: str):
    why = _env_offline() or (None if _hub_reachable() else "hub unreachable (offline?)")
    if why:
        raise RuntimeError(f"--calib-data {dataset_id}: {why}; pass a local text or jsonl file")
    from datasets import load_dataset
    for row in load_dataset(dataset_id, split="train", streaming=True):
        yield row["text"]


def read_calibration(tokenizer, spec: str, n_tokens: int) -> tuple[torch.Tensor, str]:
    """(the first `n_tokens` tokens, 'file:PATH sha256=X' or 'hub:ID') of a text / jsonl file or a hub dataset's
    train split, tokenised piece by piece until enough are read."""
    path = calib_file(spec)
    if path is not None:
        texts = _file_texts(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK_CHARS):
                h.update(block)
        described = f"file:{path.resolve()} sha256={h.hexdigest()[:12]}"
    else:
        texts, described = _hub_texts(spec), f"hub:{spec}"
    pieces, have = [], 0
    for text in texts:
        ids = _encode(tokenizer, text)
        pieces.append(ids[: n_tokens - have])
        have += len(pieces[-1])
        if have >= n_tokens:
            return torch.cat(pieces), described
    raise ValueError(f"--calib-data {spec} holds {have} tokens, fewer than --calib-tokens {n_tokens}")
