"""Duplicate removal (by uid and by distance), split and sample."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cs.dataset import CsDataset
from stacktools.cs.dedupe import close_pairs, dedupe_distance, particle_centres_A
from stacktools.cs.rows import dedupe_uid, join
from stacktools.cs.subsets import sample, split_by_field, split_random
from stacktools.errors import FieldError
from stacktools.formats.cs import read_cs


def picks(xy_frac, mics, scores, shape=(4000, 3000), psize=1.0) -> np.ndarray:
    n = len(mics)
    a = np.zeros(n, dtype=[("uid", "<u8"), ("location/micrograph_uid", "<u8"),
                           ("location/micrograph_shape", "<u4", (2,)),
                           ("location/micrograph_psize_A", "<f4"),
                           ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
                           ("pick_stats/ncc_score", "<f4")])
    a["uid"] = np.arange(n) + 100
    a["location/micrograph_uid"] = mics
    a["location/micrograph_shape"] = shape
    a["location/micrograph_psize_A"] = psize
    a["location/center_x_frac"] = [p[0] for p in xy_frac]
    a["location/center_y_frac"] = [p[1] for p in xy_frac]
    a["pick_stats/ncc_score"] = scores
    return a


def greedy_reference(a: np.ndarray, distance: float, by: str | None, highest: bool) -> np.ndarray:
    """The rule spelled out slowly: best first, keep unless a kept pick is too close."""
    xy = particle_centres_A(a)
    mic = a["location/micrograph_uid"]
    n = len(a)
    if by is None:
        order = list(range(n))
    else:
        s = a[by].astype(np.float64)
        order = sorted(range(n), key=lambda i: ((-s[i] if highest else s[i]), i))
    kept: list[int] = []
    for i in order:
        if all(mic[i] != mic[k] or np.sum((xy[i] - xy[k]) ** 2) >= distance ** 2 for k in kept):
            kept.append(i)
    keep = np.zeros(n, bool)
    keep[kept] = True
    return keep


_FRAC = st.floats(0, 0.05, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(pts=st.lists(st.tuples(_FRAC, _FRAC, st.integers(0, 2), st.integers(0, 5)), max_size=40),
       distance=st.sampled_from([5.0, 20.0, 60.0, 150.0]), highest=st.booleans(),
       use_score=st.booleans())
def test_distance_dedupe_equals_greedy_rule(pts, distance, highest, use_score) -> None:
    a = picks([(x, y) for x, y, _, _ in pts], [m for *_, m, _ in pts], [s for *_, s in pts])
    by = "pick_stats/ncc_score" if use_score else None
    res = dedupe_distance(a, distance, by=by, highest=highest)
    np.testing.assert_array_equal(res.keep, greedy_reference(a, distance, by, highest))
    # What remains has no close pair on one micrograph.
    kept = a[res.keep]
    i, _ = close_pairs(np.asarray(kept["location/micrograph_uid"], np.int64),
                       particle_centres_A(kept), distance)
    assert len(i) == 0


def test_close_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 500, (400, 2))
    groups = rng.integers(0, 3, 400)
    i, j = close_pairs(groups, xy, 25.0)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    same = groups[:, None] == groups[None]
    bi, bj = np.nonzero(np.triu((d < 25.0) & same, 1))
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(bi.tolist(), bj.tolist()))


def test_distance_dedupe_on_demo_with_passthrough(demo) -> None:
    main = read_cs(demo.selected_cs)
    full = join(main, read_cs(demo.passthrough_cs))
    # Duplicate every tenth pick 3 Å away with a worse score: exactly those go.
    dup = full[::10].copy()
    dup["uid"] += 1
    dup["location/center_x_frac"] += np.float32(3.0) / (dup["location/micrograph_shape"][:, 1]
                                                       * dup["location/micrograph_psize_A"])
    dup["pick_stats/ncc_score"] -= 1
    both = np.concatenate([full, dup])
    res = dedupe_distance(both, 10.0, by="pick_stats/ncc_score")
    np.testing.assert_array_equal(res.keep, greedy_reference(both, 10.0, "pick_stats/ncc_score", True))
    # A copy is dropped whenever its original is kept.
    original_kept = res.keep[:len(full)][::10]
    assert not (res.keep[len(full):] & original_kept).any()
    assert res.removed >= original_kept.sum()
    with pytest.raises(FieldError, match="location/micrograph_uid"):
        dedupe_distance(main, 10.0)
    no_centres = join(main, read_cs(demo.passthrough_cs)[["uid", "location/micrograph_uid"]])
    with pytest.raises(FieldError, match="location/center_x_frac"):
        dedupe_distance(no_centres, 10.0)


def test_dedupe_by_uid_keeps_first() -> None:
    a = picks([(0, 0)] * 5, [1] * 5, [1, 2, 3, 4, 5])
    a["uid"] = [7, 8, 7, 9, 8]
    out = dedupe_uid(a)
    assert out["uid"].tolist() == [7, 8, 9]
    assert out["pick_stats/ncc_score"].tolist() == [1, 2, 4]


def test_split_by_field_and_random(real_data) -> None:
    a = read_cs(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    parts = split_by_field(a, "alignments2D/class")
    assert sorted(parts) == sorted(set(a["alignments2D/class"].tolist()))
    assert sum(len(p) for p in parts.values()) == len(a)
    for k, p in parts.items():
        assert (p["alignments2D/class"] == k).all()
        assert p.dtype == a.dtype
    by_type = split_by_field(a, "ctf/type")
    assert list(by_type) == ["imported"]
    subsets = split_random(a, 3, seed=5)
    assert sorted(len(s) for s in subsets) == [7, 7, 8]
    uids = np.concatenate([s["uid"] for s in subsets])
    assert sorted(uids.tolist()) == sorted(a["uid"].tolist())
    for s in subsets:  # input order kept
        pos = np.searchsorted(a["uid"], s["uid"], sorter=np.argsort(a["uid"]))
        order = np.argsort(a["uid"])[pos]
        assert (np.diff(order) > 0).all()
    assert [s.tobytes() for s in split_random(a, 3, seed=5)] == [s.tobytes() for s in subsets]
    with pytest.raises(FieldError):
        split_by_field(a, "blob/shape")


def test_sample_is_seeded_and_ordered(real_data) -> None:
    d = CsDataset.load(real_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")
    s1, s2 = d.sample(100, seed=3), d.sample(100, seed=3)
    assert len(s1) == 100 and s1.data.tobytes() == s2.data.tobytes()
    assert d.sample(100, seed=4).data.tobytes() != s1.data.tobytes()
    assert len(d.sample(fraction=0.25)) == round(len(d) * 0.25)
    assert len(sample(d.data, 10_000)) == len(d)
    rows = np.flatnonzero(np.isin(d.uids, s1.uids))
    np.testing.assert_array_equal(d.uids[rows], s1.uids)
    with pytest.raises(ValueError):
        d.sample(5, 0.5)
