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
