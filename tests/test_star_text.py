"""The STAR writer's number text, against Python's own formatting."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.formats.star import format_rows

ints = st.lists(st.integers(-(10**17), 10**17), min_size=1, max_size=300)
floats = st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=64), min_size=1, max_size=300)


def _fields(text: bytes, n: int) -> list[list[bytes]]:
    lines = text.split(b"\n")
    assert lines[-1] == b"" and len(lines) == n + 1
    return [line.split() for line in lines[:-1]]


@settings(max_examples=200, deadline=None)
@given(ints)
def test_integers_read_back_exactly_and_right_aligned(values):
    a = np.array(values, dtype=np.int64)
    text, n = format_rows(["i"], {"i": a})
    assert n == len(a)
    lines = text.split(b"\n")[:-1]
    assert len({len(line) for line in lines}) == 1  # one width: right-aligned
    assert [int(f[0]) for f in _fields(text, n)] == values


@settings(max_examples=200, deadline=None)
@given(floats, ints)
def test_floats_read_back_within_their_last_digit(values, other):
    v = np.array(values, dtype=np.float64)
    i = np.resize(np.array(other, dtype=np.int64), len(v))
    text, n = format_rows(["v", "i"], {"v": v, "i": i})
    rows = _fields(text, n)
    decimals = {len(r[0].split(b".")[1]) for r in rows}
    assert len(decimals) == 1
    step = 10.0 ** -decimals.pop()
    for r, want, k in zip(rows, v, i):
        assert abs(float(r[0]) - want) <= step / 2 + abs(want) * 1e-15
        assert int(r[1]) == k
        assert r[0].count(b"-") == (1 if float(r[0]) < 0 else 0)


def test_every_digit_group_reads_as_python_prints_it():
    # Both groups of an 8-digit number walk through "0000".."9999".
    a = np.arange(10_000, dtype=np.int64) * 10_001
    text, n = format_rows(["i"], {"i": a})
    assert [f[0] for f in _fields(text, n)] == [str(v).encode() for v in a.tolist()]
