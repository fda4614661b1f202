"""The ``--where`` expression language: what it selects, and how it refuses bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacktools.cs.query import evaluate, fields_used, parse, tokenize
from stacktools.errors import ExpressionError
from stacktools.formats.cs import read_cs

J24 = "cryosparc_P12_J24_001_particles.cs"
J2 = "cryosparc_J2_particles_exported.cs"


@pytest.fixture
def j24(real_data: Path, tmp_path: Path) -> np.ndarray:
    p = tmp_path / J24
    shutil.copy(real_data / "cryosparc" / J24, p)
    return read_cs(p)


@pytest.fixture
def j2(real_data: Path, tmp_path: Path) -> np.ndarray:
    p = tmp_path / J2
    shutil.copy(real_data / "cryosparc" / J2, p)
    return read_cs(p)


def test_issue_examples(j2: np.ndarray, j24: np.ndarray) -> None:
    cls = j2["alignments2D/class"]
    np.testing.assert_array_equal(evaluate("alignments2D/class in [1, 4, 7]", j2), np.isin(cls, [1, 4, 7]))
    m = evaluate("ctf/df1_A < 20000 and ctf/type == 'ctffind4'", j24)
    np.testing.assert_array_equal(m, (j24["ctf/df1_A"] < 20000) & (j24["ctf/type"] == b"ctffind4"))
    assert 0 < m.sum() < len(j24)


@pytest.mark.parametrize("expr, expected", [
    ("not alignments2D/class not in [4]", lambda a: a["alignments2D/class"] == 4),
    ("alignments2D/class between 2 and 5", lambda a: (a["alignments2D/class"] >= 2) & (a["alignments2D/class"] <= 5)),
    ("0 < alignments2D/class <= 4", lambda a: (a["alignments2D/class"] > 0) & (a["alignments2D/class"] <= 4)),
    ("blob/shape[0] == 300", lambda a: a["blob/shape"][:, 0] == 300),
    ("ctf/df1_A - ctf/df2_A > 150", lambda a: a["ctf/df1_A"] - a["ctf/df2_A"] > 150),
    ("abs(alignments2D/pose) < 1 or alignments2D/class == 0",
     lambda a: (np.abs(a["alignments2D/pose"]) < 1) | (a["alignments2D/class"] == 0)),
    ("(alignments2D/class == 1 or alignments2D/class == 4) and not ctf/df1_A > 1e9",
     lambda a: np.isin(a["alignments2D/class"], [1, 4])),
    ("blob/path == '>J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs'",
     lambda a: np.ones(len(a), bool)),
    ('ctf/type != "imported"', lambda a: np.zeros(len(a), bool)),
    ("alignments2D/alpha * 2 / 2 >= alignments2D/alpha", lambda a: np.ones(len(a), bool)),
    ("`alignments2D/class` % 2 == 1", lambda a: a["alignments2D/class"] % 2 == 1),
    ("true", lambda a: np.ones(len(a), bool)),
])
def test_expressions_match_numpy(j2: np.ndarray, expr: str, expected) -> None:
    np.testing.assert_array_equal(evaluate(expr, j2), expected(j2))


def test_uid_comparisons_are_exact_at_64_bits(j24: np.ndarray) -> None:
    big = int(j24["uid"].max())
    assert big > 2**63  # beyond float64's exact integers and int64
    assert evaluate(f"uid == {big}", j24).sum() == 1
    assert evaluate(f"uid in [{big}, {big - 1}, -1]", j24).sum() == 1
    assert evaluate(f"uid not in [{big}]", j24).sum() == len(j24) - 1


@pytest.mark.parametrize("expr, fragment", [
    ("ctf/df1_A <", "column 12"),
    ("ctf/df1_A < 1 and", "found end of expression"),
    ("alignments2D/class in [1, 2", "expected ',' or ']'"),
    ("alignments2D/class in 1", "expected '[' to start a list"),
    ("__import__('os').system('true')", "unexpected character '.'"),
    ("__import__('os')", "expected 'and', 'or' or the end"),
    ("ctf/df1_A.real > 0", "unexpected character '.'"),
    ("uid @ 3", "unexpected character '@'"),
    ("", "empty expression"),
    ("ctf/df1 < 3", "did you mean 'ctf/df1_A'"),
    ("blob/shape == 300", "pick one, e.g. blob/shape[0]"),
    ("blob/shape[2] == 300", "index 2 out of range"),
    ("ctf/df1_A[0] > 1", "not an array field"),
    ("ctf/type < 3", "cannot compare a string with a number"),
    ("ctf/type in [1, 2]", "list of strings"),
    ("uid and ctf/df1_A > 0", "needs conditions on both sides"),
    ("ctf/df1_A + 1", "not a condition"),
    ("'abc'", "not a condition"),
    ("ctf/type + 1 > 0", "needs numbers"),
    ("blob/shape[0.5] == 1", "element index must be an integer"),
])
def test_bad_expressions_raise_one_line(j2: np.ndarray, expr: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate(expr, j2, label="J2.cs")
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_unknown_field_message_names_the_file(j2: np.ndarray) -> None:
    with pytest.raises(ExpressionError, match=r"^J2\.cs: no field 'nope'"):
        evaluate("nope > 1", j2, label="J2.cs")


def test_tokenizer_keeps_slashes_in_names_and_spaced_division() -> None:
    kinds = [(t.kind, t.value) for t in tokenize("ctf/df1_A / 2 > 1")][:3]
    assert kinds == [("name", "ctf/df1_A"), ("op", "/"), ("number", 2)]
    assert fields_used("a/b > 1 and c in [1] or a/b < 0") == ["a/b", "c"]
    assert parse("x[1] == 2")[2][2] == 1


def test_works_on_empty_dataset(real_data: Path) -> None:
    empty = read_cs(real_data / "cryosparc" / "4k_dataset.cs")
    assert evaluate("alignments2D/class in [1] and uid > 0", empty).shape == (0,)


_NUM = st.one_of(st.integers(-5, 40), st.floats(-5, 40, allow_nan=False).map(lambda x: round(x, 3)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), value=_NUM,
       values=st.lists(st.integers(-3, 30), max_size=6), negate=st.booleans())
def test_comparisons_agree_with_numpy(j2: np.ndarray, op: str, value, values, negate: bool) -> None:
    cls = j2["alignments2D/class"]
    ref = {"<": cls < value, "<=": cls <= value, ">": cls > value, ">=": cls >= value,
           "==": cls == value, "!=": cls != value}[op]
    inlist = np.isin(cls, values)
    expr = f"alignments2D/class {op} {value} or alignments2D/class in {values}"
    expected = ref | inlist
    if negate:
        expr, expected = f"not ({expr})", ~expected
    np.testing.assert_array_equal(evaluate(expr, j2), expected)
