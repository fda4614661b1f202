"""Set operations by uid, join and the CsDataset API: properties and real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cs import rows as ds
from stacktools.cs.dataset import CsDataset
from stacktools.errors import FieldError
from stacktools.formats.cs import read_cs, write_cs

J24 = "cryosparc_P12_J24_001_particles.cs"
J2 = "cryosparc_J2_particles_exported.cs"


def make(uids, width: int = 6, seed: int = 0) -> np.ndarray:
    """A small dataset shaped like a real one: uid, a string, an array field, floats."""
    rng = np.random.default_rng(seed)
    a = np.zeros(len(uids), dtype=[("uid", "<u8"), ("blob/path", f"S{width}"), ("blob/idx", "<u4"),
                                   ("blob/shape", "<u4", (2,)), ("ctf/df1_A", "<f4")])
    a["uid"] = uids
    a["blob/path"] = [f"s{u % 97}".encode()[:width] for u in uids]
    a["blob/idx"] = np.arange(len(uids))
    a["blob/shape"] = 64
    a["ctf/df1_A"] = rng.uniform(5000, 30000, len(uids))
    return a


# uids from a small pool so that A and B overlap, plus one above 2**63.
_UIDS = st.lists(st.sampled_from([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 2**63 + 7, 2**64 - 1]),
                 unique=True, max_size=12)


def rows_by_uid(a: np.ndarray) -> dict:
    return {int(r["uid"]): r.tobytes() for r in a}


@settings(max_examples=50, deadline=None)
@given(ua=_UIDS, ub=_UIDS, wa=st.integers(1, 8), wb=st.integers(1, 8))
def test_set_algebra_properties(ua, ub, wa, wb) -> None:
    a, b = make(ua, wa, 1), make(ub, wb, 2)
    a_before, b_before = a.copy(), b.copy()
    u, i, d = ds.union(a, b), ds.intersect(a, b), ds.subtract(a, b)
    sa, sb = set(ua), set(ub)
    # Inputs are never modified.
    assert a.tobytes() == a_before.tobytes() and b.tobytes() == b_before.tobytes()
    # A ∪ B ⊇ A, and exactly A ∪ B; A ∩ B ⊆ A; (A − B) ∩ B = ∅.
    assert set(u["uid"].tolist()) == sa | sb
    assert set(i["uid"].tolist()) == sa & sb
    assert set(d["uid"].tolist()) == sa - sb
    assert len(ds.intersect(d, b)) == 0
    # uids stay unique.
    for out in (u, i, d):
        assert len(np.unique(out["uid"])) == len(out)
    # A's fields, in A's order; A's rows first and in order; strings widen, never truncate.
    assert u.dtype.names == a.dtype.names == i.dtype.names == d.dtype.names
    assert u.dtype["blob/path"].itemsize == max(wa, wb)
    assert i.dtype == d.dtype == a.dtype
    np.testing.assert_array_equal(u["uid"][:len(a)], a["uid"])
    assert list(i["uid"]) == [x for x in ua if x in sb]
    assert list(d["uid"]) == [x for x in ua if x not in sb]
    assert list(u["uid"][len(a):]) == [x for x in ub if x not in sa]
    # No field changes value through any operation.
    src = {**{int(r["uid"]): r for r in b}, **{int(r["uid"]): r for r in a}}
    for out in (u, i, d):
        for r in out:
            orig = src[int(r["uid"])]
            for n in a.dtype.names:
                np.testing.assert_array_equal(r[n], orig[n])
    # A ∩ B and A − B partition A.
    assert sorted((i["uid"].tolist() + d["uid"].tolist())) == sorted(ua)


@settings(max_examples=25, deadline=None)
@given(ua=_UIDS, ub=_UIDS)
def test_api_operators_match_functions(ua, ub) -> None:
    a, b = CsDataset(make(ua)), CsDataset(make(ub, seed=3))
    assert (a | b).data.tobytes() == ds.union(a.data, b.data).tobytes()
    assert (a & b).data.tobytes() == ds.intersect(a.data, b.data).tobytes()
    assert (a - b).data.tobytes() == ds.subtract(a.data, b.data).tobytes()


def test_union_needs_matching_fields(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / J24)
    b = read_cs(real_data / "cryosparc" / J2)
    with pytest.raises(FieldError, match=r"^B: fields do not match A: B lacks 'alignments3D/split'"):
        ds.union(a, b)
    c = make([1, 2]).astype([("uid", "<u8"), ("blob/path", "S6"), ("blob/idx", "<u8"),
                             ("blob/shape", "<u4", (2,)), ("ctf/df1_A", "<f4")])
    with pytest.raises(FieldError, match="field 'blob/idx' is <u8 but <u4 in A"):
        ds.union(make([3]), c)


def test_union_repeated_uid_in_b_is_added_once() -> None:
    out = ds.union(make([1, 2]), make([3, 3, 2, 4]))
    assert out["uid"].tolist() == [1, 2, 3, 4]


def test_real_file_set_operations(real_data: Path, tmp_path: Path) -> None:
    shutil.copy(real_data / "cryosparc" / J24, tmp_path / J24)
    full = CsDataset.load(tmp_path / J24)
    before = (tmp_path / J24).read_bytes()
    half1 = full[::2]
    mid = full[500:1500]
    assert len(half1 | mid) == len(half1) + len(mid[1::2])
    assert (half1 & mid).uids.tolist() == mid.uids[::2].tolist()
    rest = full - half1
    assert rest.uids.tolist() == full.uids[1::2].tolist()
    assert ((rest | half1) & full).data.dtype == full.data.dtype
    assert set((rest | half1).uids.tolist()) == set(full.uids.tolist())
    # Disjoint real files: nothing in common.
    j2 = CsDataset.load(real_data / "cryosparc" / J2)
    assert len(full & j2) == 0 and len(full - j2) == len(full)
    assert (tmp_path / J24).read_bytes() == before


def test_join_keeps_main_order_and_fields(demo) -> None:
    main = read_cs(demo.selected_cs)
    passthrough = read_cs(demo.passthrough_cs)
    shuffled = passthrough[np.random.default_rng(0).permutation(len(passthrough))][5:]
    out = ds.join(main, shuffled)
    keep = np.isin(main["uid"], shuffled["uid"])
    np.testing.assert_array_equal(out["uid"], main["uid"][keep])
    assert out.dtype.names[:len(main.dtype.names)] == main.dtype.names
    extra = [n for n in passthrough.dtype.names if n not in main.dtype.names]
    assert list(out.dtype.names[len(main.dtype.names):]) == extra
    by_uid = {int(r["uid"]): r for r in passthrough}
    for r in out[:20]:
        for n in extra:
            np.testing.assert_array_equal(r[n], by_uid[int(r["uid"])][n])


def test_join_takes_clashing_fields_from_main() -> None:
    a, b = make([1, 2, 3], seed=1), make([3, 2, 9], seed=2)
    out = ds.join(a, b)
    assert out["uid"].tolist() == [2, 3]
    np.testing.assert_array_equal(out["ctf/df1_A"], a["ctf/df1_A"][1:])


def test_dataset_selection_and_pandas_round_trip(real_data: Path, tmp_path: Path) -> None:
    d = CsDataset.load(real_data / "cryosparc" / J2)
    assert len(d[d["alignments2D/class"] == 4]) == int((d["alignments2D/class"] == 4).sum())
    assert d[[3, 1]].uids.tolist() == [d.data["uid"][3], d.data["uid"][1]]
    assert d[["uid", "ctf/"]].fields[:3] == ("uid", "ctf/type", "ctf/exp_group_id")
    with pytest.raises(IndexError):
        d[np.ones(3, bool)]
    with pytest.raises(FieldError):
        d["nope"]
    df = d.to_pandas()
    assert list(df.columns[:4]) == ["uid", "blob/path", "blob/idx", "blob/shape[0]"]
    assert df["blob/path"].iloc[0].startswith(">J1/imported/")
    back = CsDataset.from_pandas(df, dtype=d.dtype)
    assert back.data.tobytes() == d.data.tobytes()
    inferred = CsDataset.from_pandas(df)
    assert inferred.fields == d.fields
    assert inferred.dtype["uid"] == np.dtype("<u8")
    assert inferred.dtype["blob/shape"] == d.dtype["blob/shape"]
    for n in d.fields:
        np.testing.assert_array_equal(inferred[n], d[n])
    # Query and save keep exact dtypes; saving refuses to overwrite without asking.
    sel = d.query("alignments2D/class in [1, 4, 7]")
    out = sel.save(tmp_path / "sel.cs")
    assert read_cs(out).tobytes() == sel.data.tobytes()
    with pytest.raises(Exception, match="already exists"):
        sel.save(tmp_path / "sel.cs")


def test_write_and_reload_union_of_real_file(real_data: Path, tmp_path: Path) -> None:
    a = read_cs(real_data / "cryosparc" / J2)
    b = a.copy()
    b["uid"] += 1
    b = b.astype([(n, "S80" if n == "blob/path" else b.dtype.fields[n][0]) for n in b.dtype.names])
    u = ds.union(a, b)
    assert u.dtype["blob/path"] == np.dtype("S80") and len(u) == 44
    write_cs(tmp_path / "u.cs", u)
    assert np.load(tmp_path / "u.cs").tobytes() == u.tobytes()


def test_operations_on_the_empty_real_file(real_data: Path) -> None:
    empty = read_cs(real_data / "cryosparc" / "4k_dataset.cs")
    for out in (ds.union(empty, empty), ds.intersect(empty, empty), ds.subtract(empty, empty),
                ds.join(empty, empty), ds.dedupe_uid(empty)):
        assert len(out) == 0 and out.dtype.names == empty.dtype.names
    full = make([1, 2])
    assert ds.join(full, make([])).dtype.names == full.dtype.names
    assert len(ds.intersect(full, make([]))) == 0 and len(ds.subtract(full, make([]))) == 2


@settings(max_examples=40, deadline=None)
@given(ua=_UIDS, ub=st.lists(st.sampled_from([1, 2, 3, 5, 8, 13, 2**63 + 7, 2**64 - 1]), max_size=12))
def test_join_properties(ua, ub) -> None:
    main = make(ua, seed=1)
    other = np.zeros(len(ub), dtype=[("ctf/df1_A", "<f4"), ("uid", "<u8"), ("location/x", "<f4"),
                                     ("location/path", "S5"), ("pick/score", "<f8", (2,))])
    other["uid"] = ub
    other["ctf/df1_A"] = -1  # clashes with main: main's values must win
    other["location/x"] = np.arange(len(ub))
    other["location/path"] = [f"p{i}".encode() for i in range(len(ub))]
    other["pick/score"] = np.arange(2 * len(ub)).reshape(-1, 2)
    out = ds.join(main, other)
    assert out.dtype.names == main.dtype.names + ("location/x", "location/path", "pick/score")
    assert out["uid"].tolist() == [u for u in ua if u in set(ub)]
    first = {}
    for i, u in enumerate(ub):
        first.setdefault(u, i)
    by_uid = {int(r["uid"]): r for r in main}
    for r in out:
        m, o = by_uid[int(r["uid"])], other[first[int(r["uid"])]]
        for n in main.dtype.names:
            np.testing.assert_array_equal(r[n], m[n])
        for n in ("location/x", "location/path", "pick/score"):
            np.testing.assert_array_equal(r[n], o[n])


def test_load_selected_fields(real_data: Path) -> None:
    path = real_data / "cryosparc" / J24
    full = CsDataset.load(path)
    part = CsDataset.load(path, fields=["uid", "ctf/"])
    assert part.fields == ("uid",) + tuple(f for f in full.fields if f.startswith("ctf/"))
    for n in part.fields:
        np.testing.assert_array_equal(part[n], full[n])
    with pytest.raises(FieldError, match="no fields under 'nope/'"):
        CsDataset.load(path, fields=["nope/"])


def reference_join(main: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row by row, with a dict: main's rows whose uid ``other`` has, plus the first such
    row of ``other``'s fields that main lacks."""
    first: dict[int, int] = {}
    for i, u in enumerate(other["uid"].tolist()):
        first.setdefault(u, i)
    extra = [n for n in other.dtype.names if n not in main.dtype.names]
    dtype = [(n, main.dtype.fields[n][0]) for n in main.dtype.names] + \
        [(n, other.dtype.fields[n][0]) for n in extra]
    keep = [i for i, u in enumerate(main["uid"].tolist()) if u in first]
    out = np.zeros(len(keep), dtype)
    for j, i in enumerate(keep):
        for n in main.dtype.names:
            out[n][j] = main[n][i]
        for n in extra:
            out[n][j] = other[n][first[int(main["uid"][i])]]
    return out


def _passthrough_like(uids) -> np.ndarray:
    other = np.zeros(len(uids), dtype=[("uid", "<u8"), ("location/x", "<f4"), ("ctf/df1_A", "<f4"),
                                       ("location/path", "S5"), ("pick/score", "<f8", (2,))])
    other["uid"] = uids
    other["location/x"] = np.arange(len(uids))
    other["ctf/df1_A"] = -1
    other["location/path"] = [f"p{i}".encode() for i in range(len(uids))]
    other["pick/score"] = np.arange(2 * len(uids)).reshape(-1, 2)
    return other


_ANY_UIDS = st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, 2**32, 2**63 + 7, 2**64 - 1]) | st.integers(0, 2**64 - 1),
                     max_size=30)


@settings(max_examples=120, deadline=None)
@given(ua=_ANY_UIDS, ub=_ANY_UIDS, parallel=st.booleans(), chunk=st.sampled_from([1, 64, 1 << 20]),
       aligned=st.booleans())
def test_join_matches_reference_bytes(ua, ub, parallel, chunk, aligned) -> None:
    """Repeated, missing and unsorted uids, empty inputs, both code paths (threaded and
    not, any chunk size, plain-byte records or not): the same bytes as the reference."""
    main = make(ua, seed=4)
    if not aligned:  # a dtype with padding between fields takes the field-by-field path
        main = main.astype(np.dtype({"names": list(main.dtype.names),
                                     "formats": [main.dtype.fields[n][0] for n in main.dtype.names],
                                     "offsets": [8 * i for i in range(len(main.dtype.names))],
                                     "itemsize": 8 * len(main.dtype.names) + 8}))
    other = _passthrough_like(ub)
    saved = ds._PARALLEL_ROWS, ds._JOIN_CHUNK_BYTES
    ds._PARALLEL_ROWS = 1 if parallel else 10**12
    ds._JOIN_CHUNK_BYTES = chunk
    try:
        out = ds.join(main, other)
    finally:
        ds._PARALLEL_ROWS, ds._JOIN_CHUNK_BYTES = saved
    expect = reference_join(main, other)
    assert out.dtype == expect.dtype
    assert out.tobytes() == expect.tobytes()


def test_load_with_passthrough_writes_the_same_bytes(demo, tmp_path: Path) -> None:
    """The mapped, gathered join saves byte for byte what the reference join gives."""
    shuffled = read_cs(demo.passthrough_cs)
    shuffled = shuffled[np.random.default_rng(1).permutation(len(shuffled))]
    write_cs(tmp_path / "pt.cs", shuffled)
    joined = CsDataset.load(demo.selected_cs, passthrough=tmp_path / "pt.cs")
    out = joined.save(tmp_path / "joined.cs", result_group=False)
    expect = tmp_path / "expect.cs"
    with open(expect, "wb") as fh:
        np.save(fh, reference_join(np.load(demo.selected_cs), shuffled))
    assert out.read_bytes() == expect.read_bytes()
