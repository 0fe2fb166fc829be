"""Turn an LLM reply into raw rate vectors (with the parent ids it cites), tolerating what models write.

Two readers, neither evaluates model text as code: json.loads on the reply (after removing code fences,
trailing commas and bare ".3" numbers), and a regex scan for bracketed number lists with optional
"parents" markers. The reading with more candidates (then more cited parents) wins; on a tie the scan,
which also explains the lists JSON cannot read (nan, 30%). Every dropped piece gets a reason.

No reply text can raise: JSON nested deeper than MAX_JSON_DEPTH levels is refused before it is decoded
(json and the walk over its result recurse once per level), and a RecursionError that still happens
turns into a rejection.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple


class RawCandidate(NamedTuple):
    values: list[float]
    parents: list[int] | None


@dataclass
class ParseResult:
    candidates: list[RawCandidate] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # one reason per dropped piece, for the call log


# a number as models write it: 0.3, .3, 3e-1, 30%, and the words models use for non-numbers
_NUM = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\s*%?"
_NUM_RE = re.compile(rf"^\s*[\"']?\s*({_NUM}|[-+]?(?:nan|inf(?:inity)?))\s*[\"']?\s*$", re.IGNORECASE)
_LIST_RE = re.compile(r"\[([^\[\]]*)\]")
_PARENTS_RE = re.compile(
    r"\bparents?(?:[ _-]?ids?)?\b[\"']?\s*[:=]?\s*"
    r"(?:\[([^\[\]]*)\]|\(([^()]*)\)|(#?\d+(?:\s*(?:,|and|&|\+)\s*#?\d+)*))",
    re.IGNORECASE)
MAX_JSON_DEPTH = 32  # a real reply nests 4 levels ({"solutions": [{"rates": [...]}]}); deeper is junk
_RATE_KEYS = ("rates", "rate", "values", "pruning_rates", "layer_rates", "solution", "vector", "p")
_ATTENTION_KEYS = ("attention", "attention_rates", "attn", "attn_rates")
_ATTENTION_LABEL = re.compile(r"\b(?:attention|attn)\w*[\"']?\s*[:=]?\s*$", re.IGNORECASE)
_LIST_KEYS = ("solutions", "candidates", "children", "offspring", "population", "configurations", "lists")


def _labelled_attention(text: str, start: int) -> bool:
    """Whether the list at `start` is labelled as attention rates ("attention: [...]"): --split search."""
    return bool(_ATTENTION_LABEL.search(text[max(0, start - 32):start]))


def to_number(item) -> float | None:
    """A JSON value or text item as a float (percent strings divided by 100); None if it is not a number."""
    if isinstance(item, bool):
        return None
    if isinstance(item, (int, float)):
        return float(item)
    if not isinstance(item, str):
        return None
    m = _NUM_RE.match(item)
    if not m:
        return None
    tok = m.group(1).replace(" ", "")
    pct = tok.endswith("%")
    try:
        v = float(tok.rstrip("%"))
    except ValueError:
        return None
    return v / 100 if pct else v


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


class _Checker:
    """Shared acceptance rules for both readers."""

    def __init__(self, n: int | None, result: ParseResult, layers: int | None = None):
        self.n, self.result, self.split = n, result, layers is not None
        # fewest numbers a list may have; --split search also takes the layer rates alone (repair adds the rest)
        self.least = math.ceil(0.75 * (layers if self.split else n)) if n is not None else 0

    def add(self, values: list[float], parents: list[int] | None, where: str) -> None:
        r = self.result
        if not values:
            r.rejected.append(f"{where}: empty list")
        elif not all(math.isfinite(v) for v in values):
            r.rejected.append(f"{where}: NaN or infinity")
        elif any(v < -0.5 or v > 1.5 for v in values):  # rates in [0, 1]; e.g. 30 means a percent without '%'
            r.rejected.append(f"{where}: values far outside [0, 1] ({max(values, key=abs):g})")
        elif self.n is not None and not (self.least <= len(values) <= 1.5 * self.n):
            r.rejected.append(f"{where}: {len(values)} numbers, expected {self.n}")
        else:
            r.candidates.append(RawCandidate(values, parents))


# ---- JSON reader ------------------------------------------------------------------------------------
def _clean_json(text: str) -> str:
    t = re.sub(r",\s*([\]}])", r"\1", text)  # trailing commas
    return re.sub(r"(?<=[\[,:\s])([-+]?)\.(\d)", r"\g<1>0.\2", t)  # .3 -> 0.3


def _bracket_spans(text: str) -> dict[int, tuple[int, int]]:
    """For each '[' / '{' at i: (end, levels), the index after its closing bracket (len(text) if it never
    closes) and how many levels nest from it, itself included. One linear pass, no recursion. Brackets
    inside strings count too, which can only overestimate the depth."""
    spans, stack = {}, []  # stack: [start, levels so far]
    for m in re.finditer(r"[\[\]{}]", text):
        if m.group() in "[{":
            stack.append([m.start(), 1])
        elif stack:
            start, levels = stack.pop()
            spans[start] = (m.end(), levels)
            if stack:
                stack[-1][1] = max(stack[-1][1], levels + 1)
    while stack:
        start, levels = stack.pop()
        spans[start] = (len(text), levels)
        if stack:
            stack[-1][1] = max(stack[-1][1], levels + 1)
    return spans


def _json_values(text: str, rejected: list[str], split: bool = False) -> list:
    """Every top-level JSON value in the text: the whole reply if it parses, else each '{' / '[' that
    decodes, scanning on after it (so a truncated reply still yields its complete objects). A value
    nested deeper than MAX_JSON_DEPTH is skipped whole, with a reason in `rejected`. `split`: a list labelled
    attention joins the list before it (--split search)."""
    cleaned = _clean_json(text)
    spans = _bracket_spans(cleaned)
    if max((levels for _, levels in spans.values()), default=0) <= MAX_JSON_DEPTH:
        for candidate in (text, cleaned):
            try:
                return [json.loads(candidate)]
            except (ValueError, RecursionError):
                pass
    dec, out, pos = json.JSONDecoder(), [], 0
    for m in re.finditer(r"[\[{]", cleaned):
        if m.start() < pos or re.search(r"parents?\w*[\"']?\s*:\s*$", cleaned[max(0, m.start() - 24):m.start()],
                                        re.IGNORECASE):
            continue  # inside a value already read, or the id list of a broken object
        end, levels = spans[m.start()]
        if levels > MAX_JSON_DEPTH:
            rejected.append(f"json at char {m.start()}: nested deeper than {MAX_JSON_DEPTH} levels")
            pos = end  # skip the whole nested piece, not each of its inner brackets
            continue
        try:
            value, pos = dec.raw_decode(cleaned, m.start())
        except (ValueError, RecursionError):
            continue
        if split and out and isinstance(value, list) and isinstance(out[-1], list) \
                and _labelled_attention(cleaned, m.start()):
            out[-1] = out[-1] + value
            continue
        out.append(value)
    return out


def _parents_of(obj: dict) -> list[int] | None:
    for k in ("parents", "parent", "parent_ids", "parent_id"):
        if k in obj:
            v = obj[k]
            vals = v if isinstance(v, list) else [v]
            ids = [int(x) for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)
                   and math.isfinite(x) and float(x).is_integer()]
            ids += [i for x in vals if isinstance(x, str) for i in _ints(x)]
            return ids
    return None


def _walk(obj, chk: _Checker, where: str, parents: list[int] | None = None) -> None:
    if isinstance(obj, dict):
        low = {str(k).lower(): v for k, v in obj.items()}
        for k in _LIST_KEYS:
            if k in low:
                return _walk(low[k], chk, f"{where}.{k}")
        for k in _RATE_KEYS:
            if k in low:
                values = low[k]
                extra = next((low[a] for a in _ATTENTION_KEYS if a in low), None)  # --split search, given apart
                if chk.split and isinstance(values, list) and isinstance(extra, list):
                    values = values + extra
                return _walk(values, chk, f"{where}.{k}", _parents_of(low))
        chk.result.rejected.append(f"{where}: object without rates")
    elif isinstance(obj, list):
        if obj and all(not isinstance(x, (list, dict)) for x in obj):
            nums = [to_number(x) for x in obj]
            if any(v is None for v in nums):
                chk.result.rejected.append(f"{where}: non-numeric items")
            else:
                chk.add(nums, parents, where)
        else:
            for i, x in enumerate(obj):
                _walk(x, chk, f"{where}[{i}]")


# ---- free-text reader -------------------------------------------------------------------------------
def _scan_text(text: str, chk: _Checker) -> None:
    markers = [(m.start(), m.end(), _ints(next(g for g in m.groups() if g is not None)))
               for m in _PARENTS_RE.finditer(text)]
    inside_marker = [(s, e) for s, e, _ in markers]
    lists = []
    last_end = 0
    for m in _LIST_RE.finditer(text):
        last_end = m.end()
        if any(s <= m.start() < e for s, e in inside_marker):
            continue  # the list of a "parents: [..]" marker
        body = m.group(1)
        if not re.search(r"\d|nan|inf", body, re.IGNORECASE):
            continue  # brackets in prose, not a candidate
        items = [x for x in re.split(r"[,;]|\s+(?=[-+.\d])", body) if x.strip()]
        nums = [to_number(x) for x in items]
        where = f"list at char {m.start()}"
        if any(v is None for v in nums):
            chk.result.rejected.append(f"{where}: non-numeric items")
            continue
        if chk.split and lists and _labelled_attention(text, m.start()):
            lists[-1][1] = lists[-1][1] + nums  # "rates: [...] attention: [...]": one candidate
            continue
        lists.append([m.start(), nums, None])
    tail = text[last_end:]
    if "[" in tail and re.search(r"\d", tail[tail.index("["):]):
        chk.result.rejected.append(f"truncated list at char {last_end + tail.index('[')}")
    if lists and markers:
        # markers written before their list ("parents: [3, 7] rates: [...]") or after it
        before = markers[0][0] < lists[0][0]
        for s, _, ids in markers:
            if before:
                nxt = [x for x in lists if x[0] > s and x[2] is None]
                if nxt:
                    nxt[0][2] = ids
            else:
                prev = [x for x in lists if x[0] < s and x[2] is None]
                if prev:
                    prev[-1][2] = ids
    for i, (start, nums, parents) in enumerate(lists):
        chk.add(nums, parents, f"list {i + 1}")


def parse_reply(text: str | None, n: int | None = None, layers: int | None = None) -> ParseResult:
    """Candidates in `text`, each (values, parents or None). With `n`, lists far from n numbers (fewer than
    3n/4 or more than 3n/2) are rejected; near misses are kept for repair to pad or truncate. `layers`: the
    --split search reading (n = 2·layers), where the layer rates alone are kept too and a list labelled
    attention joins the list before it. Never raises on any text: a reply it cannot read gives no candidates
    and a reason."""
    try:
        return _parse_reply(text, n, layers)
    except RecursionError:  # last resort; nesting is bounded before decoding, so this should not happen
        return ParseResult(rejected=["reply nested too deeply to read"])


def _parse_reply(text: str | None, n: int | None, layers: int | None = None) -> ParseResult:
    result = ParseResult()
    if not text or not text.strip():
        result.rejected.append("empty reply")
        return result
    body = re.sub(r"```[a-zA-Z0-9_-]*", "\n", text)  # code fences, with or without a language tag
    from_json = ParseResult()
    for i, obj in enumerate(_json_values(body, from_json.rejected, layers is not None)):
        _walk(obj, _Checker(n, from_json, layers), f"json {i + 1}")
    _scan_text(body, _Checker(n, result, layers))
    def score(r):
        return len(r.candidates), sum(c.parents is not None for c in r.candidates)

    if score(from_json) > score(result):
        # the structured reading found more (e.g. parents under a key the text scan cannot see)
        from_json.rejected += [x for x in result.rejected if x.startswith("truncated")]
        return from_json
    if not result.candidates:
        result.rejected += from_json.rejected
    if not result.candidates and not result.rejected:
        result.rejected.append("no bracketed number list found")
    return result
