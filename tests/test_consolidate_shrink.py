"""consolidate --crop / --fourier-crop / --dtype float16: pixels, metadata and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stacktools.consolidate import consolidate
from tests.helpers import assert_one_line_error, run_cli
from tests.independent import blob_file, header, read_cs, read_particle
from tests.test_shrink import reference_fourier_crop


def source_particles(cs: Path, project: Path) -> tuple[np.ndarray, np.ndarray]:
    data = read_cs(cs)
    pix = np.stack([read_particle(blob_file(project, p), int(i)).astype(np.float64)
                    for p, i in zip(data["blob/path"], data["blob/idx"])])
    return data, pix


def written_particles(cs: Path, project: Path) -> np.ndarray:
    data = read_cs(cs)
    return np.stack([read_particle(blob_file(project, p), int(i)).astype(np.float64)
                     for p, i in zip(data["blob/path"], data["blob/idx"])])


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


@pytest.mark.parametrize("layout", ["per-stack", "packed"])
def test_fourier_crop_pixels_and_metadata(demo, layout):
    old, src = source_particles(demo.selected_cs, demo.project_dir)
    box = int(old["blob/shape"][0][0])
    n = (box // 2) & ~1
    res = consolidate(demo.selected_cs, demo.project_dir / "J9", project_dir=demo.project_dir,
                      fourier_crop=n, dtype="float32", layout=layout)
    new = read_cs(res.cs)
    got = written_particles(Path(res.cs), demo.project_dir)
    want = reference_fourier_crop(src, n)
    assert got.shape == (len(src), n, n)
    for k in range(len(src)):
        assert np.max(np.abs(got[k] - want[k])) <= 1e-5 * max(np.std(src[k]), 1e-30) + 1e-6
    assert (new["blob/shape"] == n).all()
    np.testing.assert_allclose(new["blob/psize_A"], old["blob/psize_A"] * box / n, rtol=1e-6)
    for f in ("alignments2D/shift", "alignments3D/shift"):
        if f in old.dtype.names:
            np.testing.assert_allclose(new[f], old[f] * n / box, rtol=1e-6)
    for f in old.dtype.names:
        if f.startswith("ctf/"):
            np.testing.assert_array_equal(new[f], old[f])
    for o in res.outputs:
        h = header(o["path"])
        assert (h["nx"], h["ny"]) == (n, n) and os.path.getsize(o["path"]) == o["bytes"]


def test_crop_then_fourier_crop_to_float16(demo):
    old, src = source_particles(demo.selected_cs, demo.project_dir)
    box = int(old["blob/shape"][0][0])
    c = box - 6
    n = (c // 2) & ~1
    res = consolidate(demo.selected_cs, demo.project_dir / "J9", project_dir=demo.project_dir,
                      crop=c, fourier_crop=n, dtype="float16")
    new = read_cs(res.cs)
    lo = box // 2 - c // 2
    want = reference_fourier_crop(src[:, lo:lo + c, lo:lo + c], n)
    got = written_particles(Path(res.cs), demo.project_dir)
    assert header(res.outputs[0]["path"])["dtype"] == np.dtype("<f2")
    np.testing.assert_allclose(got, want, atol=float(np.abs(want).max()) * 2e-3)
    assert (new["blob/shape"] == n).all()
    np.testing.assert_allclose(new["blob/psize_A"], old["blob/psize_A"] * c / n, rtol=1e-6)


def test_crop_alone_keeps_pixel_size_and_shifts(demo):
    old, src = source_particles(demo.selected_cs, demo.project_dir)
    box = int(old["blob/shape"][0][0])
    c = box - 5
    res = consolidate(demo.selected_cs, demo.project_dir / "J9", project_dir=demo.project_dir,
                      crop=c, dtype="float32")
    new = read_cs(res.cs)
    lo = box // 2 - c // 2
    np.testing.assert_array_equal(written_particles(Path(res.cs), demo.project_dir),
                                  src[:, lo:lo + c, lo:lo + c].astype(np.float32))
    assert (new["blob/shape"] == c).all()
    np.testing.assert_array_equal(new["blob/psize_A"], old["blob/psize_A"])
    for f in ("alignments2D/shift", "alignments3D/shift"):
        if f in old.dtype.names:
            np.testing.assert_array_equal(new[f], old[f])


@pytest.mark.parametrize("args,fragment", [
    (["--fourier-crop", "31"], "even"),
    (["--fourier-crop", "BOX"], "smaller than"),
    (["--fourier-crop", "BOX2"], "smaller than"),
    (["--crop", "BOX1"], "cannot crop"),
])
def test_bad_sizes_are_one_line_exit_2_nothing_written(demo, args, fragment):
    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    args = [{"BOX": str(box), "BOX2": str(2 * box), "BOX1": str(box + 1)}.get(a, a) for a in args]
    out = demo.project_dir / "J9"
    res = run_cli("consolidate", demo.selected_cs, "--out", out, "--project-dir", demo.project_dir, *args)
    assert res.returncode == 2
    assert_one_line_error(res, fragment)
    assert files_under(out) == []


def test_float16_overflow_names_the_particle_and_leaves_nothing(demo):
    data = read_cs(demo.selected_cs)
    path = blob_file(demo.project_dir, data["blob/path"][0])
    idx = int(data["blob/idx"][0])
    h = header(path)
    if h["dtype"].itemsize != 4:
        pytest.skip("first selected particle is not float32 in the demo")
    pb = h["nx"] * h["ny"] * 4
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, np.full(h["nx"] * h["ny"], 1e6, h["dtype"]).tobytes(), h["offset"] + idx * pb)
    finally:
        os.close(fd)
    out = demo.project_dir / "J9"
    res = run_cli("consolidate", demo.selected_cs, "--out", out, "--project-dir", demo.project_dir,
                  "--dtype", "float16", "--threads", "1")
    assert res.returncode == 2
    assert_one_line_error(res, "float16", f"particle {idx}", path.name)
    finals = [f for f in files_under(out) if f.endswith((".mrc", ".cs")) and "stacktools-tmp" not in f]
    assert finals == []


def test_shrinking_a_star_input_is_refused_before_anything_is_written(demo, tmp_path):
    star = tmp_path / "particles.star"
    assert run_cli("cs", "to-star", demo.selected_cs, "-o", star).returncode == 0
    out = tmp_path / "out"
    res = run_cli("consolidate", star, "--project-dir", demo.project_dir, "--out", out, "--fourier-crop", "32")
    assert_one_line_error(res, str(star), "--fourier-crop")
    assert res.returncode == 2 and not out.exists()


def test_float16_sources_with_inf_are_copied_bit_exact_when_kept(demo):
    """A float16 source holding inf is copied bit-exact with keep: the range check is for conversions."""
    from tests.independent import assert_same_particles

    data = read_cs(demo.selected_cs)
    r = next(r for r in range(len(data))
             if header(blob_file(demo.project_dir, data["blob/path"][r]))["dtype"].itemsize == 2)
    path, idx = blob_file(demo.project_dir, data["blob/path"][r]), int(data["blob/idx"][r])
    h = header(path)
    img = read_particle(path, idx).copy()
    img[0, 0] = np.inf
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, img.tobytes(), h["offset"] + idx * img.nbytes)
    finally:
        os.close(fd)
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir, dtype="keep")
    assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)
