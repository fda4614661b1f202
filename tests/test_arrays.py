"""The fast factorisation of byte-string columns agrees with np.unique."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cs.arrays import factorize


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.binary(min_size=0, max_size=30).filter(lambda b: not b.endswith(b"\0")),
                       min_size=1, max_size=8),
       picks=st.lists(st.integers(0, 7), min_size=0, max_size=200),
       width=st.integers(9, 40), grouped=st.booleans())
def test_factorize_matches_unique(values, picks, width, grouped) -> None:
    vals = np.array(values, dtype=f"S{width}")
    idx = np.array([p % len(values) for p in picks], dtype=np.int64)
    if grouped:
        idx = np.sort(idx)
    rec = np.zeros(len(idx), dtype=[("a", "<u4"), ("p", f"S{width}"), ("b", "<f4", (3,))])
    rec["p"] = vals[idx]
    col = rec["p"]
    uniq, codes = factorize(col)
    ref_u, ref_c = np.unique(col, return_inverse=True)
    assert uniq.tolist() == ref_u.tolist()
    assert codes.tolist() == ref_c.ravel().tolist()
    assert (uniq[codes] == col).all()


def test_hash_collisions_fall_back_to_exact(monkeypatch) -> None:
    import stacktools.cs.arrays as arrays
    monkeypatch.setattr(arrays, "_MUL2", np.uint64(0))  # every row hashes to 0
    col = np.array([b"J5/extract/bbbbbbbbbbbbb.mrc", b"J5/extract/aaaaaaaaaaaaa.mrc"] * 3)
    uniq, codes = arrays.factorize(col)
    assert uniq.tolist() == sorted(set(col.tolist()))
    assert (uniq[codes] == col).all()


def _first_rows(queries, keys) -> list[int]:
    """The reference: a dict of each key's first row."""
    first: dict[int, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(int(k), i)
    return [first.get(int(q), -1) for q in queries]


# A small pool, so that keys repeat and queries both hit and miss; the extremes of uint64.
_POOL = st.sampled_from([0, 1, 2, 3, 7, 2**32, 2**63, 2**63 + 7, 2**64 - 2, 2**64 - 1])


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(_POOL | st.integers(0, 2**64 - 1), max_size=60),
       queries=st.lists(_POOL | st.integers(0, 2**64 - 1), max_size=60))
def test_key_index_finds_first_rows(keys, queries) -> None:
    from stacktools.cs.arrays import KeyIndex
    k = np.array(keys, dtype=np.uint64)
    index = KeyIndex(k)
    assert index.find(np.array(queries, dtype=np.uint64)).tolist() == _first_rows(queries, keys)
    assert index.first_occurrences().tolist() == [_first_rows([x], keys)[0] == i for i, x in enumerate(keys)]
    assert index.repeats == (len(set(keys)) < len(keys))


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(_POOL, max_size=40), queries=st.lists(_POOL, max_size=40),
       levels=st.integers(0, 2))
def test_key_index_sorted_tail_agrees(keys, queries, levels) -> None:
    """Keys no hash table placed (after _MAX_LEVELS tables) are found in the sorted tail."""
    import stacktools.cs.arrays as arrays
    saved = arrays._MAX_LEVELS
    arrays._MAX_LEVELS = levels
    try:
        index = arrays.KeyIndex(np.array(keys, dtype=np.uint64))
        assert index.find(np.array(queries, dtype=np.uint64)).tolist() == _first_rows(queries, keys)
        assert index.first_occurrences().tolist() == [_first_rows([x], keys)[0] == i
                                                      for i, x in enumerate(keys)]
    finally:
        arrays._MAX_LEVELS = saved


def test_key_index_at_scale_matches_sorting() -> None:
    """A million shuffled uids with repeats and misses: eight tables deep, against argsort."""
    from stacktools.cs.arrays import KeyIndex
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**64 - 1, 300_000, dtype=np.uint64, endpoint=True)
    keys = np.concatenate([keys, keys[:1000], np.arange(5000, dtype=np.uint64)])
    queries = np.concatenate([keys[rng.permutation(len(keys))], rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64)])
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.minimum(np.searchsorted(sk, queries), len(sk) - 1)
    expect = np.where(sk[pos] == queries, order[pos], -1)
    index = KeyIndex(keys)
    assert len(index._levels) > 3
    np.testing.assert_array_equal(index.find(queries), expect)
