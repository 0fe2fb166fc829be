"""repair(): bounds, exact mean at 5 decimals, distinctness, length fixes; parse_reply(): what models write."""
import ast
import math
import random
from pathlib import Path

import pytest

from selfpruner.core.plans import candidate_key
from selfpruner.core.proposers.parse import parse_reply, to_number
from selfpruner.core.proposers.repair import RepairError, is_valid, project, random_vector, repair
from selfpruner.core.types import Problem

P18 = Problem("m", 18, 0.3)


def text_mean(values, decimals=5):
    """The mean after the vector went through its stored 5-decimal text."""
    return sum(float(f"{v:.{decimals}f}") for v in values) / len(values)


def _adversarial(n):
    rng = random.Random(n)
    return {
        "zeros": [0.0] * n, "ones": [1.0] * n, "beta": [0.3] * n, "huge": [1e9] * n, "negative": [-5.0] * n,
        "alternating": [i % 2 for i in range(n)], "one_spike": [1.0] + [0.0] * (n - 1),
        "tiny_noise": [0.3 + 1e-12 * i for i in range(n)], "six_decimals": [0.123456] * n,
        "mixed_sign": [rng.uniform(-3, 3) for _ in range(n)], "denormal": [5e-324] * n,
    }


@pytest.mark.parametrize("n", [1, 2, 3, 7, 18, 32, 80])
@pytest.mark.parametrize("beta", [0.1, 0.25, 0.3, 0.5, 0.7, 0.9])
def test_adversarial_vectors_become_valid(n, beta):
    prob = Problem("m", n, beta)
    for name, vec in _adversarial(n).items():
        out, _ = repair(vec, prob)
        assert is_valid(out, prob), name
        assert abs(text_mean(out) - beta) < 1e-9, name
        assert [float(f"{v:.5f}") for v in out] == out  # already at 5 decimals


def test_random_fuzz_with_bounds_and_lengths():
    rng = random.Random(0)
    for _ in range(1500):
        lo = round(rng.uniform(0, 0.3), 2)
        hi = round(rng.uniform(0.5, 1.0), 2)
        prob = Problem("m", rng.randint(1, 40), round(rng.uniform(lo, hi), 3), lo, hi)
        vec = [rng.uniform(-1, 2) for _ in range(rng.randint(1, 60))]
        out, _ = repair(vec, prob)
        assert is_valid(out, prob, tol=1e-9), (prob, vec)
        assert all(lo <= v <= hi for v in out)


def test_projection_moves_only_what_it_must():
    x = project([0.9, 0.1, 0.2, 0.0], 0.3, 0.0, 1.0)  # mean 0.3 already
    assert x == [0.9, 0.1, 0.2, 0.0]
    x = project([1.0, 1.0, 0.0, 0.0], 0.25, 0.0, 1.0)  # shift down by 0.25; zeros stay at lo
    assert [round(v, 9) for v in x] == [0.5, 0.5, 0.0, 0.0]


def test_exact_vector_is_unchanged_and_unreported():
    vec = [0.2, 0.4] * 9
    notes = []
    out, changed = repair(vec, P18, notes=notes)
    assert out == vec and not changed and notes == []


def test_off_mean_is_reported_as_changed():
    out, changed = repair([0.35] * 18, P18)
    assert changed and out == [0.3] * 18


@pytest.mark.parametrize("length", [0, 5, 17, 19, 40])
def test_wrong_length_truncated_or_padded_and_reported(length):
    notes = []
    if length == 0:
        with pytest.raises(RepairError):
            repair([], P18)
        return
    out, changed = repair([0.3] * length, P18, notes=notes)
    assert len(out) == 18 and changed and is_valid(out, P18)
    assert any(n.startswith(f"length {length} != 18") for n in notes)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_an_error(bad):
    with pytest.raises(RepairError):
        repair([0.3] * 17 + [bad], P18)


def test_distinct_from_taken_by_small_mean_preserving_moves():
    taken = set()
    outs = []
    for _ in range(300):  # the same input over and over: every result must differ
        out, _ = repair([0.3] * 18, P18, taken)
        assert candidate_key(out) not in taken and is_valid(out, P18)
        assert max(abs(a - 0.3) for a in out) <= 3e-5  # small moves
        taken.add(candidate_key(out))
        outs.append(out)
    assert len({candidate_key(o) for o in outs}) == 300


def test_distinctness_is_deterministic():
    taken = {candidate_key([0.3] * 18)}
    assert repair([0.3] * 18, P18, set(taken)) == repair([0.3] * 18, P18, set(taken))


def test_no_distinct_vector_left_is_an_error():
    prob = Problem("m", 4, 0.3, lo=0.3, hi=0.9)  # mean == lo: only one feasible vector
    with pytest.raises(RepairError):
        repair([0.5] * 4, prob, {candidate_key([0.3] * 4)})


def test_beta_finer_than_decimals_gets_closest_mean():
    prob = Problem("m", 18, 1 / 3)
    out, _ = repair([0.5] * 18, prob)
    assert abs(sum(out) / 18 - 1 / 3) <= 0.5e-5 / 18 + 1e-12  # the closest a 5-decimal vector can get


def test_infeasible_problem_is_an_error():
    with pytest.raises(RepairError):
        repair([0.3] * 4, Problem("m", 4, 0.3, lo=0.4, hi=0.9))


def test_random_vector_is_valid_and_seeded():
    a = [random_vector(P18, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and is_valid(a[0], P18)
    assert random_vector(P18, random.Random(8)) != a[0]
    prob = Problem("m", 12, 0.5, 0.2, 0.6)
    rng = random.Random(1)
    assert all(is_valid(random_vector(prob, rng), prob) for _ in range(100))


@pytest.mark.parametrize("vec, ok", [
    ([0.3] * 18, True), ([0.3] * 17, False), ([0.3] * 17 + [0.30001], False), ([0.3000001] * 18, False),
    ([0.0, 0.6] * 9, True), ([-0.1, 0.7] * 9, False), ([0.3] * 17 + [math.nan], False), (["x"] * 18, False),
])
def test_is_valid(vec, ok):
    assert is_valid(vec, P18) is ok


# ---- parser -----------------------------------------------------------------------------------------
R = [0.1, 0.2, 0.3, 0.4]
R2 = [0.4, 0.3, 0.2, 0.1]


def parsed(text, n=4):
    res = parse_reply(text, n)
    return [(c.values, c.parents) for c in res.candidates], res.rejected


@pytest.mark.parametrize("text, expected", [
    ('{"solutions":[{"parents":[1,2],"rates":[0.1,0.2,0.3,0.4]},{"parents":[3],"rates":[0.4,0.3,0.2,0.1]}]}',
     [(R, [1, 2]), (R2, [3])]),
    ('```json\n[[0.1,0.2,0.3,0.4],[.4,.3,.2,.1,],]\n```', [(R, None), (R2, None)]),
    ('{"rates": [0.1, 0.2, 0.3, 0.4], "parents": [5]}', [(R, [5])]),
    ('{"candidates": [{"parent": "7", "values": ["10%", "20%", "30%", "40%"]}]}', [(R, [7])]),
    ('Here you go:\nChild 1 (parents 3 and 7): [10%, 20%, 30%, 40%]\nChild 2 parents: [2, 5] -> [.4, .3, .2, .1]',
     [(R, [3, 7]), (R2, [2, 5])]),
    ('[0.1, 0.2, 0.3, 0.4] parents: [1,2]\n[0.4, 0.3, 0.2, 0.1] parents: [3,4]', [(R, [1, 2]), (R2, [3, 4])]),
    ('parents: [12, 4] rates: [0.1, 0.2, 0.3, 0.4]\nparents: [7] rates: [0.4, 0.3, 0.2, 0.1]\n',
     [(R, [12, 4]), (R2, [7])]),
    ('1. [0.1 0.2 0.3 0.4]\n2. [0.4; 0.3; 0.2; 0.1]', [(R, None), (R2, None)]),
    ('Sure! <noise> [0.1, 0.2, 0.3, 0.4] and also {"solutions": [[0.4, 0.3, 0.2, 0.1]]} bye', [(R, None), (R2, None)]),
    ('[1e-1, 2E-1, 3e-1, 4e-1]', [(R, None)]),
    ('[0.1, 0.2, 0.3, 0.4, 0.5]', [([0.1, 0.2, 0.3, 0.4, 0.5], None)]),  # near miss: kept for repair
    ('[-0.1, 0.2, 0.3, 1.2]', [([-0.1, 0.2, 0.3, 1.2], None)]),  # slightly out of range: repair clamps
])
def test_parse_good_and_messy_replies(text, expected):
    cands, _ = parsed(text)
    assert cands == expected


def test_truncated_json_keeps_complete_objects_and_says_so():
    text = '{"solutions":[{"parents":[1,2],"rates":[0.1,0.2,0.3,0.4]},{"parents":[3],"rates":[0.4,0.3'
    cands, rejected = parsed(text)
    assert cands == [(R, [1, 2])]
    assert any(r.startswith("truncated") for r in rejected)


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"), ("   \n", "empty reply"), (None, "empty reply"),
    ("I cannot help with pruning.", "no bracketed number list"),
    ("[0.1, NaN, 0.3, 0.4]", "NaN"), ('{"rates": [0.1, Infinity, 0.3, 0.4]}', "NaN"),
    ("[30, 20, 10, 40]", "far outside"), ("[-3, 0.2, 0.3, 0.4]", "far outside"),
    ("[0.1, 0.2]", "2 numbers, expected 4"), ("[" + ", ".join(["0.1"] * 9) + "]", "9 numbers"),
    ("[a, b, c, d]", "no bracketed number list"), ("[0.1, 0.2, zero, 0.4]", "non-numeric"),
    ('{"foo": 1}', "without rates"), ("rates: [0.1, 0.2, 0.3", "truncated"),
])
def test_parse_rejections_have_reasons(text, reason):
    cands, rejected = parsed(text)
    assert cands == []
    assert any(reason in r for r in rejected), rejected


def test_parse_mixed_good_and_bad_pieces():
    res = parse_reply("[0.1, 0.2, 0.3, 0.4]\n[0.1, nan, 0.3, 0.4]\n[0.2, 0.2]\n[0.4, 0.3, 0.2, 0.1]", 4)
    assert [c.values for c in res.candidates] == [R, R2]
    assert len(res.rejected) == 2


def test_parse_without_n_accepts_any_length():
    assert parse_reply("[0.5, 0.1]").candidates[0].values == [0.5, 0.1]


@pytest.mark.parametrize("item, value", [
    ("0.3", 0.3), (".3", 0.3), ("30%", 0.3), ("30 %", 0.3), ('"0.25"', 0.25), ("-0.1", -0.1), ("3e-1", 0.3),
    ("nan", None), ("abc", None), (True, None), ([1], None), ("0.3.4", None),
])
def test_to_number(item, value):
    got = to_number(item)
    if value is None:
        assert got is None or math.isnan(got)
    else:
        assert got == pytest.approx(value)


def test_hostile_text_is_data_only():
    res = parse_reply("__import__('os').system('echo hacked') [__import__('os'), 1, 2, 3]", 4)
    assert res.candidates == []


def test_no_eval_in_parser_or_repair():
    src = Path(__file__).resolve().parents[1] / "core" / "proposers"
    for name in ("parse.py", "repair.py", "llm.py"):
        for node in ast.walk(ast.parse((src / name).read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                assert called not in ("eval", "exec", "literal_eval"), (name, called)


DEEP_LISTS = "[" * 3000 + "]" * 3000
DEEP_OBJECTS = '{"a":' * 3000 + "1" + "}" * 3000


@pytest.mark.parametrize("junk", [DEEP_LISTS, DEEP_OBJECTS, "[" * 3000, '{"a":' * 3000,
                                  '{"rates": ' + "[" * 3000 + "]" * 3000 + "}"],
                         ids=["lists", "objects", "unclosed-lists", "unclosed-objects", "deep-rates"])
@pytest.mark.parametrize("n", [None, 4])
def test_deeply_nested_reply_is_rejected_not_raised(junk, n):
    res = parse_reply(junk, n)  # used to raise RecursionError, which ended the search
    assert res.candidates == []
    assert res.rejected, "a refused reply still says why"


@pytest.mark.parametrize("junk", [DEEP_LISTS, DEEP_OBJECTS], ids=["lists", "objects"])
def test_reply_after_deeply_nested_junk_still_reads(junk):
    res = parse_reply(junk + '\nHere: {"solutions": [{"parents": [1, 2], "rates": [0.1, 0.2, 0.3, 0.4]}, '
                             '{"parents": [3], "rates": [0.4, 0.3, 0.2, 0.1]}]}', 4)
    assert [(c.values, c.parents) for c in res.candidates] == [(R, [1, 2]), (R2, [3])]
