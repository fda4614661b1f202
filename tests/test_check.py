"""``stacktools check``: exactly the injected corrupt particles are found, nothing else.

Particles are damaged with plain ``os.pwrite`` at the offsets an independent header
reader gives (tests/independent.py), not through stacktools.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.check import CheckError, check_particles
from stacktools.particles import ParticleSet
from tests import independent
from tests.helpers import assert_one_line_error, run_cli


def _locate(demo, row: int):
    """(stack file, particle index) of a selected row, read independently."""
    data = independent.read_cs(demo.selected_cs)
    return independent.blob_file(demo.project_dir, data["blob/path"][row]), int(data["blob/idx"][row])


def _poke(path, index: int, values) -> None:
    """Overwrite particle ``index`` of ``path`` with ``values`` (broadcast), in place."""
    h = independent.header(path)
    img = np.empty((h["ny"], h["nx"]), h["dtype"])
    img[...] = values
    fd = os.open(path, os.O_WRONLY)
    try:
        n = img.nbytes
        assert os.pwrite(fd, img.tobytes(), h["offset"] + index * n) == n
    finally:
        os.close(fd)


def _float_rows(demo, count: int, skip=()) -> list[int]:
    """Selected rows in float32 stacks (float16 ones are used on purpose elsewhere)."""
    data = independent.read_cs(demo.selected_cs)
    out = []
    for r in range(len(data)):
        path, _ = _locate(demo, r)
        if independent.header(path)["dtype"].kind == "f" and independent.header(path)["dtype"].itemsize == 4 \
                and r not in skip and path not in {_locate(demo, k)[0] for k in out}:
            out.append(r)
        if len(out) == count:
            break
    assert len(out) == count
    return out


def _check(demo, *args):
    res = run_cli("check", demo.selected_cs, "--json", *args)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def test_a_clean_set_is_clean(demo):
    rc, doc = _check(demo)
    assert rc == 0 and doc["clean"] and doc["bad_particles"] == 0 and not doc["stack_problems"]
    assert doc["particles"] == demo.selected
    # Every selected particle's pixels were read once.
    data = independent.read_cs(demo.selected_cs)
    want = 0
    for r in range(len(data)):
        h = independent.header(_locate(demo, r)[0])
        want += h["nx"] * h["ny"] * h["dtype"].itemsize
    assert doc["bytes_read"] == want


def test_finds_exactly_the_injected_particles(demo):
    nan_r, inf_r, ninf_r, zero_r, const_r = _float_rows(demo, 5)
    for r, v in ((zero_r, 0.0), (const_r, 3.5)):
        _poke(*_locate(demo, r), v)
    for r, v in ((nan_r, np.nan), (inf_r, np.inf), (ninf_r, -np.inf)):
        path, idx = _locate(demo, r)
        img = independent.read_particle(path, idx).copy()
        img[3, 5] = v  # one pixel is enough
        _poke(path, idx, img)
    rc, doc = _check(demo)
    assert rc == 1 and not doc["clean"]
    found = {b["row"]: b["reasons"] for b in doc["bad"]}
    assert found == {nan_r: ["nan"], inf_r: ["inf"], ninf_r: ["inf"], zero_r: ["zeros"], const_r: ["constant"]}
    assert doc["counts"] == {"nan": 1, "inf": 2, "zeros": 1, "constant": 1}
    for r in found:
        path, idx = _locate(demo, r)
        b = next(b for b in doc["bad"] if b["row"] == r)
        assert (os.path.realpath(b["stack"]), b["index"]) == (os.path.realpath(path), idx)


def test_float16_stacks_are_checked_too(demo):
    data = independent.read_cs(demo.selected_cs)
    r = next(r for r in range(len(data)) if independent.header(_locate(demo, r)[0])["dtype"].itemsize == 2)
    path, idx = _locate(demo, r)
    img = independent.read_particle(path, idx).copy()
    img[0, 0] = np.float16(np.inf)
    _poke(path, idx, img)
    rc, doc = _check(demo)
    assert rc == 1 and [(b["row"], b["reasons"]) for b in doc["bad"]] == [(r, ["inf"])]


def test_a_truncated_stack_flags_only_its_missing_particles(demo):
    data = independent.read_cs(demo.selected_cs)
    path, _ = _locate(demo, 0)
    h = independent.header(path)
    pb = h["nx"] * h["ny"] * h["dtype"].itemsize
    rows_here = [r for r in range(len(data)) if _locate(demo, r)[0] == path]
    idx_here = {r: _locate(demo, r)[1] for r in rows_here}
    keep = max(idx_here.values())  # the last selected particle loses its last bytes
    os.truncate(path, h["offset"] + keep * pb + pb // 2)
    rc, doc = _check(demo)
    assert rc == 1
    assert [p["path"] for p in doc["stack_problems"]] == [str(path)] or \
        [os.path.realpath(p["path"]) for p in doc["stack_problems"]] == [os.path.realpath(path)]
    assert "truncated" in doc["stack_problems"][0]["problem"]
    want = {r for r, i in idx_here.items() if i >= keep}
    assert {b["row"] for b in doc["bad"]} == want
    assert all(b["reasons"] == ["truncated"] for b in doc["bad"])


def test_outliers_are_flagged_only_when_asked(demo):
    (r,) = _float_rows(demo, 1)
    path, idx = _locate(demo, r)
    img = independent.read_particle(path, idx).astype(np.float64)
    _poke(path, idx, (img - img.mean()) * 1000 + img.mean())  # same mean, 1000x the spread
    rc, doc = _check(demo)
    assert rc == 0 and doc["clean"]
    rc, doc = _check(demo, "--outliers", "6")
    assert rc == 1 and {b["row"]: b["reasons"] for b in doc["bad"]} == {r: ["outlier_std"]}


def test_write_clean_leaves_out_the_bad_particles(demo, tmp_path):
    bad = _float_rows(demo, 2)
    for r in bad:
        _poke(*_locate(demo, r), np.nan)
    out = tmp_path / "clean.cs"
    res = run_cli("check", demo.selected_cs, "--write-clean", out, "--quiet")
    assert res.returncode == 1, res.stderr
    before, after = independent.read_cs(demo.selected_cs), independent.read_cs(out)
    keep = np.setdiff1d(np.arange(len(before)), bad)
    assert after.tobytes() == before[keep].tobytes()
    assert independent.result_group(out.with_suffix(".csg"))["results"]
    assert run_cli("check", out, "--project-dir", demo.project_dir, "--quiet").returncode == 0


def test_a_star_input_is_checked_and_cleaned(demo, tmp_path):
    star = tmp_path / "particles.star"
    assert run_cli("cs", "to-star", demo.selected_cs, "-o", star).returncode == 0
    (r,) = _float_rows(demo, 1)
    _poke(*_locate(demo, r), 0.0)
    res = run_cli("check", star, "--project-dir", demo.project_dir, "--json", "--write-clean",
                  tmp_path / "clean.star")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert [(b["row"], b["reasons"]) for b in doc["bad"]] == [(r, ["zeros"])]
    clean = ParticleSet.open(tmp_path / "clean.star", demo.project_dir)
    assert len(clean) == demo.selected - 1


@pytest.mark.parametrize("args, what", [
    (("--outliers", "0"), "outliers"),
    (("--outliers", "-3"), "outliers"),
])
def test_bad_options_are_one_line_and_write_nothing(demo, tmp_path, args, what):
    out = tmp_path / "clean.cs"
    res = run_cli("check", demo.selected_cs, "--write-clean", out, *args)
    assert_one_line_error(res, what)
    assert res.returncode == 2 and not out.exists()


def test_a_missing_stack_is_bad_input(demo, tmp_path):
    os.unlink(_locate(demo, 0)[0])
    out = tmp_path / "clean.cs"
    res = run_cli("check", demo.selected_cs, "--write-clean", out)
    assert_one_line_error(res, "stack not found")
    assert res.returncode == 2 and not out.exists()


def test_write_clean_refuses_its_own_input(demo):
    res = run_cli("check", demo.selected_cs, "--write-clean", demo.selected_cs)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_api_refuses_a_non_positive_outlier_threshold(demo):
    pset = ParticleSet.open(demo.selected_cs)
    with pytest.raises(CheckError):
        check_particles(pset, outliers=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(2, 64))
def test_threads_and_chunks_do_not_change_the_result(_demo_template, threads, chunk_kb):
    pset = ParticleSet.open(_demo_template.selected_cs)
    ref = check_particles(pset)
    got = check_particles(pset, threads=threads, chunk_bytes=chunk_kb * 1024)
    assert got.bad == ref.bad and got.bytes_read == ref.bytes_read
    np.testing.assert_array_equal(got.mean, ref.mean)
    np.testing.assert_array_equal(got.std, ref.std)


def _rows_of(demo, itemsize: int) -> list[tuple[int, str, int]]:
    """(row, stack, index) of every selected row in stacks of that pixel size."""
    data = independent.read_cs(demo.selected_cs)
    out = []
    for r in range(len(data)):
        path, idx = _locate(demo, r)
        if independent.header(path)["dtype"].itemsize == itemsize:
            out.append((r, path, idx))
    return out


def test_float16_nan_zeros_and_constant_are_found(demo):
    rows = _rows_of(demo, 2)
    (nan_r, p1, i1), (zero_r, p2, i2), (const_r, p3, i3) = rows[0], rows[1], rows[2]
    img = independent.read_particle(p1, i1).copy()
    img[-1, -1] = np.float16(np.nan)
    _poke(p1, i1, img)
    zeros = np.zeros((64, 64), np.float16)
    zeros[::2] = np.float16(-0.0)  # -0 and +0 are both zero
    _poke(p2, i2, zeros)
    _poke(p3, i3, np.float16(-2.5))
    rc, doc = _check(demo)
    assert rc == 1
    assert {b["row"]: b["reasons"] for b in doc["bad"]} == {nan_r: ["nan"], zero_r: ["zeros"],
                                                             const_r: ["constant"]}


def test_an_infinity_in_the_last_pixel_of_a_batch_is_found(demo):
    pset = ParticleSet.open(demo.selected_cs)
    rows = _rows_of(demo, 4)
    path = rows[0][1]
    here = sorted((i, r) for r, p, i in rows if p == path)
    assert len(here) >= 3
    h = independent.header(path)
    pb = h["nx"] * h["ny"] * 4
    idx, row = here[1]  # batches of two particles: this one ends the first batch
    img = independent.read_particle(path, idx).copy()
    img[-1, -1] = -np.inf
    _poke(path, idx, img)
    for chunk in (2 * pb, pb, 64 * pb):
        rep = check_particles(pset, chunk_bytes=chunk, threads=1)
        assert rep.bad == {row: ["inf"]}, chunk
        assert np.isnan(rep.mean[row]) and np.isnan(rep.std[row])


def test_statistics_match_float64_for_every_pixel_type_and_an_odd_box(tmp_path):
    """An odd box (rows off 64-byte alignment, a partial sum block), float16 and
    float32 stacks, and a particle whose mean is 10^4 its spread: mean and std agree
    with float64 NumPy over the independently read pixels."""
    from stacktools.demo import make_demo_project

    demo = make_demo_project(tmp_path / "P1", micrographs=4, particles_per_micrograph=(6, 9),
                             box=75, float16_every=2, select_fraction=1.0)
    (r, path, idx) = _rows_of(demo, 4)[0]
    img = independent.read_particle(path, idx).astype(np.float64)
    _poke(path, idx, 3e4 + (img - img.mean()) / img.std() * 3)  # mean 30000, std 3
    data = independent.read_cs(demo.selected_cs)
    want_mean, want_std = np.empty(len(data)), np.empty(len(data))
    for k in range(len(data)):
        v = independent.read_particle(*_locate(demo, k)).astype(np.float64)
        want_mean[k], want_std[k] = v.mean(), v.std()
    rep = check_particles(ParticleSet.open(demo.selected_cs), threads=2, chunk_bytes=3 * 75 * 75 * 4)
    assert rep.clean
    np.testing.assert_allclose(rep.mean, want_mean, rtol=1e-6, atol=1e-6 * want_std.max())
    np.testing.assert_allclose(rep.std, want_std, rtol=1e-5)
    assert abs(rep.std[r] - 3) < 1e-3


def _float64_truth(y: np.ndarray):
    v = y.astype(np.float64)
    finite = np.isfinite(v).all(axis=1)
    with np.errstate(invalid="ignore"):
        mean, std = v.mean(axis=1), v.std(axis=1)
    zeros = finite & (v == 0).all(axis=1)
    constant = finite & (v == v[:, :1]).all(axis=1) & ~zeros
    return mean, std, zeros, constant, finite


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 7, 1023, 1024, 1025, 3000, 4096]),
       st.floats(-1e6, 1e6), st.sampled_from([1e-3, 1.0, 3.0, 1e4]),
       st.sampled_from(["none", "nan", "inf", "-inf", "zeros", "constant", "huge", "tiny", "one-big"]),
       st.integers(0, 2**32 - 1))
def test_row_statistics_agree_with_float64_numpy(m, n, loc, scale, damage, seed):
    """The kernel's mean, std and flags, against float64 NumPy on the same float32
    pixels: particles with a mean far from their spread, constants, zeros, NaN and
    ±inf anywhere, squares that overflow or underflow float32, partial sum blocks."""
    from stacktools.check import _row_stats

    rng = np.random.default_rng(seed)
    y = (loc + scale * rng.standard_normal((m, n))).astype(np.float32)
    k, p = int(rng.integers(m)), int(rng.integers(n))
    if damage in ("nan", "inf", "-inf"):
        y[k, p] = float(damage)
    elif damage == "zeros":
        y[k] = 0.0
        y[k, ::2] = -0.0
    elif damage == "constant":
        y[k] = np.float32(loc)
    elif damage == "huge":  # squares past float32's range
        y[k] = (rng.standard_normal(n) * 1e25 + 3e25).astype(np.float32)
    elif damage == "tiny":  # squares below it
        y[k] = (rng.standard_normal(n) * 1e-25).astype(np.float32)
    elif damage == "one-big":
        y[k, p] = np.float32(1e30)
    mean, std, zeros, constant, finite = _row_stats(y, np.empty_like(y))
    t_mean, t_std, t_zeros, t_constant, t_finite = _float64_truth(y)
    np.testing.assert_array_equal(finite, t_finite)
    np.testing.assert_array_equal(zeros, t_zeros)
    np.testing.assert_array_equal(constant, t_constant)
    f = t_finite
    assert np.isnan(mean[~f]).all() and np.isnan(std[~f]).all()
    np.testing.assert_allclose(mean[f], t_mean[f], rtol=1e-6, atol=1e-6 * t_std[f].max(initial=0) + 1e-37)
    np.testing.assert_allclose(std[f], t_std[f], rtol=2e-5, atol=1e-37)
    assert (std[t_constant | t_zeros] == 0).all()
