"""consolidate --crop / --fourier-crop / --dtype float16: pixels, metadata and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from stacktools.consolidate import consolidate
from tests.helpers import assert_one_line_error, run_cli
from tests.independent import blob_file, header, read_bytes, read_cs, read_particle
from tests.test_shrink import reference_fourier_crop

DATA = Path(__file__).parent / "data"
needs_relion = pytest.mark.skipif(shutil.which("relion_stack_create") is None
                                  or shutil.which("relion_image_handler") is None,
                                  reason="RELION binaries not installed")


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


def _overwrite_particle(path: Path, idx: int, value: float) -> None:
    h = header(path)
    pb = h["nx"] * h["ny"] * h["dtype"].itemsize
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, np.full(h["nx"] * h["ny"], value, h["dtype"]).tobytes(), h["offset"] + idx * pb)
    finally:
        os.close(fd)


@pytest.mark.parametrize("shrink", [[], ["--fourier-crop", "16"]])
def test_float16_overflow_names_the_row_and_particle_and_leaves_nothing(demo, shrink):
    data = read_cs(demo.selected_cs)
    row = next(r for r in range(3, len(data))
               if header(blob_file(demo.project_dir, data["blob/path"][r]))["dtype"].itemsize == 4)
    path = blob_file(demo.project_dir, data["blob/path"][row])
    idx = int(data["blob/idx"][row])
    _overwrite_particle(path, idx, 1e6)
    out = demo.project_dir / "J9"
    res = run_cli("consolidate", demo.selected_cs, "--out", out, "--project-dir", demo.project_dir,
                  "--dtype", "float16", *shrink)
    assert res.returncode == 2
    assert_one_line_error(res, "float16", f"{demo.selected_cs} row {row}:", f"{path}: particle {idx}:")
    finals = [f for f in files_under(out) if f.endswith((".mrc", ".cs")) and "stacktools-tmp" not in f]
    assert finals == []


def test_float16_overflow_in_a_star_names_its_1_based_row(tmp_path):
    proj = _relion31_project(tmp_path)
    _overwrite_particle(proj / "relion31.mrcs", 3, -1e5)
    out = proj / "out"
    res = run_cli("consolidate", proj / "relion31.star", "--out", out, "--project-dir", proj,
                  "--dtype", "float16", "--fourier-crop", "64")
    assert res.returncode == 2
    assert_one_line_error(res, "float16", "relion31.star particle row 4:", "relion31.mrcs: particle 3:")
    assert not out.exists()


def _relion31_project(tmp_path: Path) -> Path:
    """The real RELION 3.1 STAR and its stack, copied to a project of their own."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("relion31.star", "relion31.mrcs"):
        shutil.copy(DATA / "relion" / name, proj / name)
    return proj


def _star_stack_particles(star: Path, project: Path) -> np.ndarray:
    blocks = starfile.read(star, always_dict=True)
    names = [n.partition("@") for n in blocks["particles"]["rlnImageName"]]
    return np.stack([read_particle(project / p, int(i) - 1) for i, _, p in names])


@needs_relion
@pytest.mark.parametrize("args", [["--fourier-crop", "128"], ["--crop", "200", "--fourier-crop", "96"],
                                  ["--crop", "171"]])
def test_shrunk_star_is_read_by_relion_and_matches_the_cs_path(tmp_path, args):
    proj = _relion31_project(tmp_path)
    star = proj / "relion31.star"
    res = run_cli("consolidate", star, "--project-dir", proj, "--out", proj / "star_out", "--quiet", "--json", *args)
    assert res.returncode == 0, res.stderr
    new_star = Path(json.loads(res.stdout)["star"])
    # The same particles through the .cs path.
    cs = proj / "relion31.cs"
    assert run_cli("cs", "from-star", star, "-o", cs, "--project-dir", proj).returncode == 0
    res = run_cli("consolidate", cs, "--project-dir", proj, "--out", proj / "cs_out", "--quiet", "--json", *args)
    assert res.returncode == 0, res.stderr
    from_cs = written_particles(Path(json.loads(res.stdout)["cs"]), proj).astype(np.float32)
    n = from_cs.shape[-1]
    subprocess.run(["relion_stack_create", "--i", new_star, "--o", tmp_path / "check"], cwd=proj,
                   check=True, capture_output=True)
    h = header(tmp_path / "check.mrcs")
    assert (h["nz"], h["ny"], h["nx"]) == (len(from_cs), n, n)
    for k in range(len(from_cs)):
        assert read_particle(tmp_path / "check.mrcs", k).tobytes() == from_cs[k].tobytes(), k
    stats = subprocess.run(["relion_image_handler", "--i", new_star, "--stats"], cwd=proj,
                           check=True, capture_output=True, text=True).stdout
    assert stats.count(f"{n} x {n} x 1 x 1") == len(from_cs)
    np.testing.assert_array_equal(_star_stack_particles(new_star, proj), from_cs)


def test_shrunk_star_metadata_follows_relion_31(tmp_path):
    proj = _relion31_project(tmp_path)
    star = proj / "relion31.star"
    res = consolidate(star, proj / "out", project_dir=proj, crop=200, fourier_crop=100)
    old = starfile.read(star, always_dict=True)
    new = starfile.read(res.star, always_dict=True)
    assert new["optics"]["rlnImageSize"].tolist() == [100]
    np.testing.assert_allclose(new["optics"]["rlnImagePixelSize"], old["optics"]["rlnImagePixelSize"] * 2.0,
                               rtol=1e-12)
    for col in old["optics"]:
        if col not in ("rlnImageSize", "rlnImagePixelSize"):
            assert new["optics"][col].tolist() == old["optics"][col].tolist(), col
    moved = {"rlnImageName", "rlnImageOriginalName"}
    for col in old["particles"]:  # Å origins, coordinates, CTF: as they were
        if col not in moved:
            assert new["particles"][col].tolist() == old["particles"][col].tolist(), col


def test_shrunk_star_without_image_size_gets_it(tmp_path):
    proj = _relion31_project(tmp_path)
    blocks = starfile.read(proj / "relion31.star", always_dict=True)
    blocks["optics"] = blocks["optics"].drop(columns=["rlnImageSize"])
    star = proj / "nosize.star"
    starfile.write(blocks, star)
    res = consolidate(star, proj / "out", project_dir=proj, fourier_crop=64)
    assert starfile.read(res.star, always_dict=True)["optics"]["rlnImageSize"].tolist() == [64]


def _relion30_project(tmp_path: Path, drop: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The real RELION 3.0 STAR, with random box-64 stacks where its rlnImageName points."""
    proj = tmp_path / "proj30"
    blocks = starfile.read(DATA / "relion" / "relion30_pfcrt.star", always_dict=True)
    (key, table), = blocks.items()
    rng = np.random.default_rng(3)
    for path, group in table.groupby(table["rlnImageName"].str.partition("@")[2]):
        count = int(group["rlnImageName"].str.partition("@")[0].astype(int).max())
        (proj / path).parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(proj / path) as m:
            m.set_data(rng.normal(size=(count, 64, 64)).astype(np.float32))
    star = proj / "Refine3D" / "job020" / "run_data.star"
    star.parent.mkdir(parents=True)
    starfile.write({key: table.drop(columns=list(drop))}, star)
    return proj, star


def test_shrunk_relion30_star_rescales_what_relion_30_reads(tmp_path):
    proj, star = _relion30_project(tmp_path)
    res = consolidate(star, proj / "out", project_dir=proj, fourier_crop=32)
    (old,) = starfile.read(star, always_dict=True).values()
    blocks = starfile.read(res.star, always_dict=True)
    assert list(blocks) == list(starfile.read(star, always_dict=True))  # still one table
    (new,) = blocks.values()
    np.testing.assert_allclose(new["rlnDetectorPixelSize"], old["rlnDetectorPixelSize"] * 2, rtol=1e-12)
    assert new["rlnMagnification"].tolist() == old["rlnMagnification"].tolist()
    for col in ("rlnOriginX", "rlnOriginY"):
        np.testing.assert_allclose(new[col], old[col] / 2, rtol=1e-12)
    for col in ("rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV", "rlnAnglePsi"):
        assert new[col].tolist() == old[col].tolist(), col
    assert header(blob_file(proj, new["rlnImageName"][0].partition("@")[2]))["nx"] == 32


def test_fourier_cropping_a_relion30_star_without_pixel_size_is_refused(tmp_path):
    proj, star = _relion30_project(tmp_path, drop=("rlnDetectorPixelSize",))
    out = proj / "out"
    res = run_cli("consolidate", star, "--project-dir", proj, "--out", out, "--fourier-crop", "32")
    assert res.returncode == 2
    assert_one_line_error(res, str(star), "pixel size")
    assert not out.exists()
    # A crop alone keeps the pixel size, so it needs none.
    assert run_cli("consolidate", star, "--project-dir", proj, "--out", out, "--crop", "40").returncode == 0


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


def _final_bytes(out: Path) -> dict[str, bytes]:
    """Every output file's bytes; the .csg's one line that records when it was made is left out."""
    files = {str(p.relative_to(out)): read_bytes(p) for p in sorted(out.rglob("*"))
             if p.is_file() and not p.name.startswith(".")}
    return {k: b"".join(line for line in v.splitlines(True) if not line.startswith(b"created:"))
            if k.endswith(".csg") else v for k, v in files.items()}


def test_shrunk_consolidation_resumes_after_kill_9_bit_identical(demo):
    from tests.test_consolidate_safety import kill_mid_run, start_slow

    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    n = (box // 2) & ~1
    out = demo.project_dir / "J8"
    args = ["consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir), "--out", str(out),
            "--threads", "1", "--quiet", "--crop", str(box - 2), "--fourier-crop", str(n), "--dtype", "float16"]
    assert run_cli(*args).returncode == 0
    want = _final_bytes(out)
    shutil.rmtree(out)

    proc = start_slow(args)
    stacks = out / "stacks"
    kill_mid_run(proc, stacks)
    kept = {p.name: p.stat().st_ino for p in stacks.iterdir() if not p.name.startswith(".")}
    n_stacks = sum(1 for k in want if k.startswith("stacks/"))
    assert 0 < len(kept) < n_stacks, "the kill did not land mid-work"

    res = run_cli(*args, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["stacks_resumed"] == len(kept)
    for name, ino in kept.items():
        assert (stacks / name).stat().st_ino == ino  # kept, not rewritten
    assert _final_bytes(out) == want

    # Another shrink is another consolidation: refused without --force, and with it
    # no stack written for the first spec is kept.
    other = [a if a != str(n) else str(n - 2) for a in args]
    res = run_cli(*other)
    assert res.returncode == 2 and "other options" in res.stderr
    res = run_cli(*other, "--force", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["stacks_resumed"] == 0
    for o in doc["outputs"]:
        assert header(o["path"])["nx"] == n - 2


def test_verify_with_a_fourier_crop_checks_against_the_shrunk_sources(demo, monkeypatch):
    import stacktools.consolidate.run as run_mod
    from stacktools.errors import VerificationError

    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    n = (box // 2) & ~1
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      fourier_crop=n, dtype="float32", verify=True)
    assert res.verified
    real = run_mod.copy_to_file

    def one_bit_off(fd, data_offset, *a, **kw):  # the written stack loses a bit of its last byte
        real(fd, data_offset, *a, **kw)
        end = os.fstat(fd).st_size - 1
        os.pwrite(fd, bytes([os.pread(fd, 1, end)[0] ^ 1]), end)

    monkeypatch.setattr(run_mod, "copy_to_file", one_bit_off)
    with pytest.raises(VerificationError, match="differs from its source"):
        consolidate(demo.selected_cs, demo.project_dir / "J9", project_dir=demo.project_dir,
                    fourier_crop=n, dtype="float32", verify=True)
    assert files_under(demo.project_dir / "J9") == []


def _star_project(tmp_path: Path, box: int) -> Path:
    """A stack of ``box``-pixel random particles and a RELION 3.1 STAR naming them."""
    proj = tmp_path / f"proj{box}"
    proj.mkdir()
    with mrcfile.new(proj / "parts.mrcs") as m:
        m.set_data(np.random.default_rng(box).normal(size=(3, box, box)).astype(np.float32))
    import pandas as pd
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [1.1], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{k:06d}@parts.mrcs" for k in (1, 2, 3)], "rlnOpticsGroup": [1] * 3})
    starfile.write({"optics": optics, "particles": parts}, proj / "parts.star")
    return proj


@needs_relion
@pytest.mark.parametrize("box", [256, 33])
@pytest.mark.parametrize("parity", [0, 1])
def test_crop_matches_relion_new_box(tmp_path, box, parity):
    if box == 256:
        proj, star, stack = _relion31_project(tmp_path), "relion31.star", "relion31.mrcs"
    else:
        proj, star, stack = _star_project(tmp_path, box), "parts.star", "parts.mrcs"
    n = box - 13 - parity if box > 100 else 20 + parity
    res = run_cli("consolidate", proj / star, "--project-dir", proj, "--out", proj / "out", "--quiet", "--json",
                  "--crop", str(n))
    assert res.returncode == 0, res.stderr
    ours = _star_stack_particles(Path(json.loads(res.stdout)["star"]), proj)
    subprocess.run(["relion_image_handler", "--i", stack, "--o", tmp_path / "relion.mrcs", "--new_box", str(n)],
                   cwd=proj, check=True, capture_output=True)
    theirs = np.stack([read_particle(tmp_path / "relion.mrcs", k) for k in range(len(ours))])
    assert theirs.shape == ours.shape == (len(ours), n, n)
    np.testing.assert_array_equal(ours, theirs)


# --- stacktools verify of a shrunk set ---------------------------------------------


def _shrink_args(box: int, which: str) -> list[str]:
    n = (box // 2) & ~1
    return {"fourier": ["--fourier-crop", n, "--dtype", "float32"],
            "crop+fourier": ["--crop", box - 6, "--fourier-crop", ((box - 6) // 2) & ~1, "--dtype", "float32"],
            "float16": ["--dtype", "float16"],
            "crop+fourier+float16": ["--crop", box - 2, "--fourier-crop", n, "--dtype", "float16"]}[which]


def _consolidated(demo, which: str, out: str = "J9") -> Path:
    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    res = run_cli("consolidate", demo.selected_cs, "--out", demo.project_dir / out, "--project-dir", demo.project_dir,
                  *_shrink_args(box, which), "--quiet", "--json", check=True)
    return Path(json.loads(res.stdout)["cs"])


@pytest.mark.parametrize("which", ["fourier", "crop+fourier", "float16", "crop+fourier+float16"])
def test_verify_of_a_shrunk_set_learns_the_shrink_from_its_manifest(demo, which):
    new_cs = _consolidated(demo, which)
    res = run_cli("verify", new_cs, "--against", demo.selected_cs, "--project-dir", demo.project_dir, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["particles"] == len(read_cs(demo.selected_cs))
    # every pixel byte of the new stacks was compared
    new = read_cs(new_cs)
    h = header(blob_file(demo.project_dir, new["blob/path"][0]))
    assert doc["bytes_checked"] == len(new) * h["nx"] * h["ny"] * h["dtype"].itemsize


@pytest.mark.parametrize("which", ["crop+fourier", "crop+fourier+float16"])
def test_verify_of_a_shrunk_set_finds_and_names_a_tampered_pixel(demo, which):
    new_cs = _consolidated(demo, which)
    new = read_cs(new_cs)
    row = len(new) // 2
    stack = blob_file(demo.project_dir, new["blob/path"][row])
    idx = int(new["blob/idx"][row])
    h = header(stack)
    pb = h["nx"] * h["ny"] * h["dtype"].itemsize
    where = h["offset"] + idx * pb + pb // 2 + 1  # one byte inside the particle: a low bit of one pixel
    fd = os.open(stack, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([os.pread(fd, 1, where)[0] ^ 1]), where)
    finally:
        os.close(fd)
    res = run_cli("verify", new_cs, "--against", demo.selected_cs, "--project-dir", demo.project_dir, "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["particle_mismatches"] == 1 and doc["field_mismatches"] == 0
    src = blob_file(demo.project_dir, read_cs(demo.selected_cs)["blob/path"][row])
    assert doc["problems"] == [f"{stack}: particle {idx} (row {row}) differs from particle "
                               f"{int(read_cs(demo.selected_cs)['blob/idx'][row])} of {src}"]


def test_verify_refuses_a_shrink_the_output_contradicts_in_one_line(demo):
    new_cs = _consolidated(demo, "crop+fourier")
    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    c, n = box - 6, ((box - 6) // 2) & ~1
    base = ("verify", new_cs, "--against", demo.selected_cs, "--project-dir", demo.project_dir)
    # given sizes that are not the recorded ones
    res = run_cli(*base, "--fourier-crop", n - 2)
    assert res.returncode == 2
    assert_one_line_error(res, str(new_cs), f"crop {c}, Fourier crop {n}", f"not Fourier crop {n - 2}")
    # a manifest that records another shrink than the stacks and metadata show
    manifest = new_cs.parent / ".stacktools-consolidate.json"
    doc = json.loads(manifest.read_text())
    assert doc["shrink"] == {"crop": c, "fourier_crop": n}
    doc["shrink"] = {"crop": None, "fourier_crop": n}
    manifest.write_text(json.dumps(doc))
    res = run_cli(*base)
    assert res.returncode == 2
    assert_one_line_error(res, "the pixel size", "Fourier crop", "consolidated with")
    # no manifest at all (a copied set): the box says it was shrunk; the right sizes verify it
    manifest.unlink()
    res = run_cli(*base)
    assert res.returncode == 2
    assert_one_line_error(res, f"the box is {n}x{n}", f"gives {box}x{box}", "(--crop, --fourier-crop)")
    res = run_cli(*base, "--crop", c, "--fourier-crop", n, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stderr


def test_verify_api_of_a_shrunk_star(tmp_path):
    import stacktools

    proj = _star_project(tmp_path, 64)
    res = consolidate(proj / "parts.star", proj / "out", project_dir=proj, crop=60, fourier_crop=32,
                      dtype="float16")
    result = stacktools.verify_consolidated(res.star, proj / "parts.star", project_dir=proj)
    assert result.ok, result.problems
    assert result.fields > 0 and result.bytes_checked == 3 * 32 * 32 * 2
