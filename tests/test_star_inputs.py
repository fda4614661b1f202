"""RELION particle STAR files as inputs: size, consolidate, verify and the cache.

Bytes are checked with tests/independent.py; RELION's own tools read the outputs
when they are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cache import Cache
from stacktools.cs.relion import cs_to_star, split_image_names
from stacktools.errors import StarFormatError
from stacktools.formats.cs import read_cs
from stacktools.formats.star import read_star
from stacktools.particles import ParticleSet, default_project_dir
from tests.helpers import assert_one_line_error, cli_json, run_cli, start_cli
from tests.independent import header, read_bytes, read_particle

HAVE_RELION = shutil.which("relion_stack_create") is not None and shutil.which("relion_image_handler") is not None
needs_relion = pytest.mark.skipif(not HAVE_RELION, reason="RELION binaries not installed")


def _star(demo, name="particles.star", job="Select/job007", float32_only=False) -> Path:
    """The demo's selected particles as a RELION 3.1 STAR inside a RELION job directory."""
    out = demo.project_dir / job / name
    out.parent.mkdir(parents=True, exist_ok=True)
    cs_to_star(demo.selected_cs, out, passthrough=demo.passthrough_cs)
    if float32_only:  # RELION 3.1 reads no float16
        blocks = starfile.read(out, always_dict=True)
        p = blocks["particles"]
        keep = [header(demo.project_dir / n.partition("@")[2])["dtype"].itemsize == 4
                for n in p["rlnImageName"]]
        blocks["particles"] = p[keep].reset_index(drop=True)
        out.unlink()
        starfile.write(blocks, out)
    return out


def _names(star: Path) -> list[tuple[str, int]]:
    """(stack path, 0-based index) of each row, read with starfile."""
    p = starfile.read(star, always_dict=True)
    block = p["particles"] if "particles" in p else next(iter(p.values()))
    return [(n.partition("@")[2], int(n.partition("@")[0]) - 1) for n in block["rlnImageName"]]


def _pixels(project: Path, star: Path) -> list[np.ndarray]:
    out = []
    for path, idx in _names(star):
        path = path.removesuffix(":mrcs")
        out.append(read_particle(path if os.path.isabs(path) else project / path, idx))
    return out


# --- reading -----------------------------------------------------------------------------

def test_star_opens_as_the_same_rows_as_its_cs(demo):
    star = _star(demo)
    from_star = ParticleSet.open(star)
    from_cs = ParticleSet.open(demo.selected_cs, demo.project_dir)
    assert from_star.project_dir == demo.project_dir.resolve()   # above Select/job007/
    assert from_star.star is not None and from_cs.star is None
    assert sorted(map(os.path.realpath, from_star.stack_paths)) == \
        sorted(map(os.path.realpath, from_cs.stack_paths))
    rows = [(os.path.realpath(from_star.stack_paths[c]), int(i))
            for c, i in zip(from_star.stack_codes, from_star.data["blob/idx"])]
    assert rows == [(os.path.realpath(demo.project_dir / p), i) for p, i in _names(star)]
    assert from_star.box() == 64 and (from_star.data["blob/shape"] == 64).all()


def test_default_project_dir_of_a_star(tmp_path, monkeypatch):
    job = tmp_path / "proj" / "Extract" / "job012"
    job.mkdir(parents=True)
    (job / "particles.star").write_text("data_\nloop_\n_rlnImageName #1\n1@x.mrcs\n")
    assert default_project_dir(job / "particles.star") == (tmp_path / "proj").resolve()
    (tmp_path / "loose.star").write_text("data_\nloop_\n_rlnImageName #1\n1@x.mrcs\n")
    monkeypatch.chdir(tmp_path / "proj")
    assert default_project_dir(tmp_path / "loose.star") == Path.cwd()


def test_relion30_star_without_optics(demo, tmp_path):
    star = _star(demo)
    blocks = starfile.read(star, always_dict=True)
    old = demo.project_dir / "Old" / "job001" / "particles_30.star"
    old.parent.mkdir(parents=True)
    starfile.write({"": blocks["particles"].drop(columns=["rlnOpticsGroup"])}, old)
    pset = ParticleSet.open(old)
    assert len(pset) == demo.selected and pset.project_dir == demo.project_dir.resolve()
    assert "blob/shape" not in pset.data.dtype.names and pset.box() == 64
    out = cli_json("size", old)
    assert out["particles"] == demo.selected


def test_fast_reader_reads_what_starfile_reads(demo, real_data):
    for path in (real_data / "relion" / "relion31.star", _star(demo)):
        ours, theirs = read_star(path), starfile.read(path, always_dict=True)
        assert list(ours) == list(theirs)
        for k in ours:
            pd.testing.assert_frame_equal(ours[k], theirs[k])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.sampled_from(["a.mrcs", "d/b.mrc", "x y/c.mrcs:mrcs"])),
                min_size=1, max_size=40))
def test_split_image_names_round_trips(rows):
    names = [f"{i:06d}@{p}" for i, p in rows]
    got = split_image_names(pd.Series(names))
    assert [(got.paths[c], int(i) + 1) for c, i in zip(got.codes, got.idx)] == [(p, i) for i, p in rows]
    assert got.path_bytes().tolist() == [p.encode() for _, p in rows]


@pytest.mark.parametrize("bad", ["x.mrcs", "0@x.mrcs", "a@x.mrcs", "1.5@x.mrcs", "@x.mrcs", "3@"])
def test_bad_image_names_name_the_row(bad):
    with pytest.raises(StarFormatError, match="particle row 2"):
        split_image_names(pd.Series(["1@x.mrcs", bad]), "p.star")


def _edit(star: Path, row: int, name: str) -> None:
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"].loc[row, "rlnImageName"] = name
    star.unlink()
    starfile.write(blocks, star)


@pytest.mark.parametrize("command", [["size"], ["consolidate", "--out", "OUT"], ["cache", "plan"]])
@pytest.mark.parametrize("case", ["missing", "past_end", "escape"])
def test_bad_star_input_is_one_line_naming_file_and_row(demo, tmp_path, command, case):
    star = _star(demo)
    first = _names(star)[0][0]
    name = {"missing": "000001@J5/extract/nothing_here.mrc",
            "past_end": f"000999@{first}",
            "escape": "000001@../../etc/passwd"}[case]
    _edit(star, 4, name)
    if command[0] == "cache" and case == "past_end":
        pytest.skip("the cache copies whole stacks and checks no index, for a .cs as for a STAR")
    args = [a if a != "OUT" else tmp_path / "out" for a in command]
    extra = ["--ssd-path", tmp_path, "--reserve-mb", "0"] if command[0] == "cache" else []
    res = run_cli(*args[:1], *args[1:2], star, *args[2:], *extra) if command[0] == "cache" else \
        run_cli(args[0], star, *args[1:])
    assert res.returncode == 2
    if command[0] == "cache" and case == "missing":
        # The cache names the stack it cannot find, as it does for a .cs.
        assert_one_line_error(res, "nothing_here.mrc", "not found")
    else:
        assert_one_line_error(res, "particle row 5", str(star) if case != "past_end" else "")
    assert not (tmp_path / "out").exists()


def test_mixed_boxes_in_a_star_are_refused(demo, tmp_path):
    star = _star(demo)
    blocks = starfile.read(star, always_dict=True)
    blocks["optics"].loc[0, "rlnImageSize"] = 128
    star.unlink()
    starfile.write(blocks, star)
    res = run_cli("consolidate", star, "--out", tmp_path / "out")
    assert_one_line_error(res, "does not match blob/shape", "particle row 1")
    assert res.returncode == 2 and not (tmp_path / "out").exists()


# --- consolidate ---------------------------------------------------------------------------

def test_consolidate_star_keeps_every_column_and_converts_float16(demo):
    star = _star(demo)
    out = demo.project_dir / "Cons" / "job008"
    res = cli_json("consolidate", star, "--out", out)
    new = Path(res["star"])
    assert res["cs"] is None and new == out / "particles_consolidated.star" and res["dtype"] == "auto"
    manifest = json.loads((out / ".stacktools-consolidate.json").read_text())
    assert manifest["star"] == new.name
    old_b, new_b = starfile.read(star, always_dict=True), starfile.read(new, always_dict=True)
    pd.testing.assert_frame_equal(old_b["optics"], new_b["optics"], check_dtype=False)
    old_p, new_p = old_b["particles"], new_b["particles"]
    assert list(new_p.columns) == list(old_p.columns) + ["rlnImageOriginalName"]
    for col in old_p.columns:
        if col != "rlnImageName":
            assert np.array_equal(new_p[col].to_numpy(), old_p[col].to_numpy()), col
    assert new_p["rlnImageOriginalName"].tolist() == old_p["rlnImageName"].tolist()
    assert all(p.startswith("Cons/job008/stacks/") and p.endswith(".mrcs") for p, _ in _names(new))
    for a, b in zip(_pixels(demo.project_dir, new), _pixels(demo.project_dir, star)):
        assert a.dtype == np.float32
        if b.dtype == np.float32:
            assert a.tobytes() == b.tobytes()                      # bit-exact copy
        else:
            assert a.tobytes() == b.astype(np.float32).tobytes()   # exact widening
    verified = run_cli("verify", new, "--against", star, "--json", check=True)
    assert json.loads(verified.stdout)["ok"]


def test_dtype_keep_keeps_float16_with_one_warning(demo, tmp_path):
    star = _star(demo)
    res = run_cli("consolidate", star, "--out", tmp_path / "out", "--dtype", "keep", "--json", check=True)
    warn = [ln for ln in res.stderr.splitlines() if ln]
    assert len(warn) == 1 and "RELION before 5.0" in warn[0]
    new = Path(json.loads(res.stdout)["star"])
    for a, b in zip(_pixels(demo.project_dir, new), _pixels(demo.project_dir, star)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_rlnImageOriginalName_is_kept_when_present(demo, tmp_path):
    star = _star(demo)
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"]["rlnImageOriginalName"] = [f"{i + 1:06d}@first.mrcs" for i in range(demo.selected)]
    star.unlink()
    starfile.write(blocks, star)
    new = Path(cli_json("consolidate", star, "--out", tmp_path / "out")["star"])
    assert starfile.read(new)["particles"]["rlnImageOriginalName"].tolist() == \
        blocks["particles"]["rlnImageOriginalName"].tolist()


def test_consolidate_star_resumes_and_force_replaces(demo, tmp_path):
    star = _star(demo)
    out = tmp_path / "out"
    first = cli_json("consolidate", star, "--out", out)
    new = Path(first["star"])
    # A killed run: the STAR never got written.
    new.unlink()
    again = cli_json("consolidate", star, "--out", out)
    assert again["stacks_resumed"] == again["stacks"] and new.exists()
    res = run_cli("consolidate", star, "--out", out, "--layout", "packed")
    assert_one_line_error(res, "--force")
    packed = cli_json("consolidate", star, "--out", out, "--layout", "packed", "--force")
    left = sorted(p.name for p in (out / "stacks").iterdir())
    assert left == sorted(Path(o["path"]).name for o in packed["outputs"])
    assert sorted(p.name for p in out.iterdir()) == [".stacktools-consolidate.json",
                                                     "particles_consolidated.star", "stacks"]
    assert run_cli("verify", new, "--against", star).returncode == 0


def test_verify_star_finds_a_changed_column(demo, tmp_path):
    star = _star(demo)
    new = Path(cli_json("consolidate", star, "--out", tmp_path / "out")["star"])
    blocks = starfile.read(new, always_dict=True)
    blocks["particles"].loc[3, "rlnDefocusU"] += 1.0
    new.unlink()
    starfile.write(blocks, new)
    res = run_cli("verify", new, "--against", star)
    assert res.returncode == 1 and "rlnDefocusU" in res.stderr and "particle row 4" in res.stderr


@needs_relion
def test_relion_reads_every_consolidated_particle_bit_exact(demo, tmp_path):
    star = _star(demo)
    new = Path(cli_json("consolidate", star, "--out", demo.project_dir / "Cons" / "job008")["star"])
    expected = [p.astype(np.float32) for p in _pixels(demo.project_dir, star)]
    subprocess.run(["relion_stack_create", "--i", new, "--o", tmp_path / "check"], cwd=demo.project_dir,
                   check=True, capture_output=True)
    h = header(tmp_path / "check.mrcs")
    assert h["nz"] == len(expected)
    for k, want in enumerate(expected):
        assert read_particle(tmp_path / "check.mrcs", k).tobytes() == want.tobytes(), k
    path, idx = _names(new)[7]
    subprocess.run(["relion_image_handler", "--i", f"{idx + 1:06d}@{path}", "--o", tmp_path / "one.mrc"],
                   cwd=demo.project_dir, check=True, capture_output=True)
    assert read_particle(tmp_path / "one.mrc", 0).tobytes() == expected[7].tobytes()


# --- the cache -------------------------------------------------------------------------------

def _sync(star, ssd, *extra):
    return run_cli("cache", "sync", star, "--ssd-path", ssd, "--reserve-mb", "0", "--quiet", *extra)


def test_write_star_points_at_the_copies(demo, tmp_path):
    star, ssd = _star(demo), tmp_path / "ssd"
    ssd.mkdir()
    cached = tmp_path / "cached.star"
    _sync(star, ssd, "--write-star", cached).check_returncode()
    old_b, new_b = starfile.read(star, always_dict=True), starfile.read(cached, always_dict=True)
    for col in old_b["particles"].columns:
        if col != "rlnImageName":
            assert np.array_equal(new_b["particles"][col].to_numpy(), old_b["particles"][col].to_numpy())
    assert "rlnImageOriginalName" not in new_b["particles"]
    for (path, idx), (src, sidx) in zip(_names(cached), _names(star)):
        assert os.path.isabs(path) and path.startswith(str(ssd)) and path.endswith(".mrc:mrcs")
        assert idx == sidx
        assert read_bytes(path.removesuffix(":mrcs")) == read_bytes(demo.project_dir / src)


@needs_relion
def test_relion_reads_the_cached_star(demo, tmp_path):
    star, ssd = _star(demo, float32_only=True), tmp_path / "ssd"
    ssd.mkdir()
    cached = tmp_path / "cached.star"
    res = _sync(star, ssd, "--write-star", cached, "--", "relion_stack_create", "--i", cached,
                "--o", tmp_path / "check")
    assert res.returncode == 0, res.stderr
    expected = _pixels(demo.project_dir, star)
    assert header(tmp_path / "check.mrcs")["nz"] == len(expected)
    for k, want in enumerate(expected):
        assert read_particle(tmp_path / "check.mrcs", k).tobytes() == want.tobytes()


def test_second_star_job_does_not_touch_the_first_jobs_copies(demo, tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    first = _star(demo)
    second = demo.project_dir / "Extract" / "job003" / "all.star"
    second.parent.mkdir(parents=True)
    cs_to_star(demo.extracted_cs, second)
    _sync(first, ssd, "--write-star", tmp_path / "a.star").check_returncode()
    copies = {p: os.stat(p.removesuffix(":mrcs")).st_ino for p, _ in _names(tmp_path / "a.star")}
    _sync(second, ssd, "--write-star", tmp_path / "b.star").check_returncode()
    for p, ino in copies.items():
        assert os.stat(p.removesuffix(":mrcs")).st_ino == ino
    for (path, _), (src, _) in zip(_names(tmp_path / "a.star"), _names(first)):
        assert read_bytes(path.removesuffix(":mrcs")) == read_bytes(demo.project_dir / src)


def test_a_running_star_jobs_copies_survive_cache_clear(demo, tmp_path):
    star, ssd = _star(demo), tmp_path / "ssd"
    ssd.mkdir()
    cached, stop = tmp_path / "cached.star", tmp_path / "stop"
    job = ("import os, sys, time\n"
           "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n")
    wrapper = start_cli("cache", "sync", star, "--ssd-path", ssd, "--reserve-mb", "0", "--quiet",
                        "--write-star", cached, "--", sys.executable, "-c", job, stop,
                        stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not cached.exists():
            assert wrapper.poll() is None and time.monotonic() < end, wrapper.stderr.read()
            time.sleep(0.05)
        stacks = {p.removesuffix(":mrcs") for p, _ in _names(cached)}
        out = Cache(ssd, reserve_mb=0).clear()
        assert out["removed"] == 0 and out["skipped_in_use"] == len(stacks)
        for (path, _), (src, _) in zip(_names(cached), _names(star)):
            assert read_bytes(path.removesuffix(":mrcs")) == read_bytes(demo.project_dir / src)
    finally:
        stop.touch()
        wrapper.wait(timeout=120)
    assert wrapper.returncode == 0
    assert Cache(ssd, reserve_mb=0).clear()["removed"] == len(stacks)


def test_write_star_needs_a_star(demo, tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    res = run_cli("cache", "sync", demo.selected_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                  "--reserve-mb", "0", "--write-star", tmp_path / "x.star")
    assert_one_line_error(res, "not a STAR file", "--write-cs")
    assert res.returncode == 2 and not (tmp_path / "x.star").exists()


def test_cache_place_takes_a_star(demo, tmp_path):
    star = _star(demo)
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(f'[[node]]\nname = "gpu01"\nquota_mb = 100000\nreserve_mb = 0\nssd_path = "{ssd}"\n')
    from_star = cli_json("cache", "place", nodes, star)["placements"][0]
    from_cs = cli_json("cache", "place", nodes, demo.selected_cs, "-p", demo.project_dir)["placements"][0]
    assert from_star["node"] == "gpu01" and from_star["bytes_to_copy"] == from_cs["bytes_to_copy"] > 0


_values = st.one_of(
    st.lists(st.integers(-10**9, 10**9), min_size=3, max_size=3),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 6)), min_size=3, max_size=3),
    # STAR reserves a leading "_" for names (such a value must be quoted, which
    # starfile's writer does not do), so generated values do not start with one.
    st.lists(st.text("abcXYZ09_./@-", min_size=1, max_size=12).filter(lambda v: not v.startswith("_")),
             min_size=3, max_size=3))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=6).map(lambda s: "rln" + s), _values,
                       min_size=1, max_size=6))
def test_fast_reader_agrees_with_starfile_on_any_plain_table(tmp_path_factory, columns):
    path = tmp_path_factory.mktemp("star") / "t.star"
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1]}), "particles": pd.DataFrame(columns)}, path)
    ours, theirs = read_star(path), starfile.read(path, always_dict=True)
    assert list(ours) == list(theirs)
    for k in ours:
        pd.testing.assert_frame_equal(ours[k], theirs[k])


def test_a_star_without_the_extension_is_recognised(demo, tmp_path):
    star = _star(demo)
    other = star.with_name("particles.txt")
    shutil.copy(star, other)
    assert ParticleSet.open(other).star is not None
    assert cli_json("size", other)["particles"] == demo.selected


def test_write_star_of_a_float16_set_warns_in_one_line(demo, tmp_path):
    from stacktools.formats.mrc import RELION_FLOAT16_WARNING

    star, ssd = _star(demo), tmp_path / "ssd"
    ssd.mkdir()
    assert any(header(demo.project_dir / p)["dtype"].itemsize == 2 for p, _ in _names(star))
    res = _sync(star, ssd, "--write-star", tmp_path / "cached.star")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [f"stacktools: warning: {RELION_FLOAT16_WARNING}"]
    # consolidate --dtype keep says the same words
    res = run_cli("consolidate", star, "--out", tmp_path / "cons", "--dtype", "keep", "--quiet")
    assert res.returncode == 0 and f"stacktools: warning: {RELION_FLOAT16_WARNING}" in res.stderr
    assert _sync(star, ssd).stderr == ""  # no STAR written: no warning


def test_write_star_of_a_float32_set_warns_nothing(demo, tmp_path):
    star, ssd = _star(demo, float32_only=True), tmp_path / "ssd"
    ssd.mkdir()
    assert _sync(star, ssd, "--write-star", tmp_path / "c32.star").stderr == ""


def _tampered(new: Path, change) -> None:
    blocks = starfile.read(new, always_dict=True)
    change(blocks["particles"])
    new.unlink()
    starfile.write(blocks, new)


def test_verify_star_catches_swapped_rows(demo, tmp_path):
    star = _star(demo)
    new = Path(cli_json("consolidate", star, "--out", tmp_path / "out")["star"])
    assert run_cli("verify", new, "--against", star).returncode == 0

    def swap(p):  # rows 2 and 5 trade places, whole rows: names, CTF, angles and all
        p.iloc[[2, 5]] = p.iloc[[5, 2]].to_numpy()
    _tampered(new, swap)
    res = run_cli("verify", new, "--against", star)
    assert res.returncode == 1 and "particle row 3" in res.stderr, res.stderr


def test_verify_star_catches_a_name_pointing_at_the_wrong_particle(demo, tmp_path):
    star = _star(demo)
    new = Path(cli_json("consolidate", star, "--out", tmp_path / "out")["star"])
    names = _names(new)
    path, idx = names[4]
    other = next(i for p, i in names if p == path and i != idx)

    def repoint(p):  # row 5 now names another particle of the same output stack
        p.loc[4, "rlnImageName"] = f"{other + 1:06d}@{path}"
    _tampered(new, repoint)
    res = run_cli("verify", new, "--against", star, "--json")
    assert res.returncode == 1
    import json
    report = json.loads(res.stdout)
    assert report["particle_mismatches"] >= 1 and any("(row 4)" in p for p in report["problems"]), report


def test_spellings_of_one_stack_path_are_one_stack(demo, tmp_path):
    """./Extract/x.mrcs, Extract//x.mrcs and Extract/x.mrcs: size counts the stack once,
    consolidate writes it once, from-star gives every row the same blob/path."""
    star = _star(demo)
    blocks = starfile.read(star, always_dict=True)
    p = blocks["particles"]
    path = p["rlnImageName"].iloc[0].partition("@")[2]
    rows = p[p["rlnImageName"].str.endswith("@" + path)].head(3).reset_index(drop=True)
    assert len(rows) == 3
    head, _, tail = path.rpartition("/")
    spellings = ["./" + path, head + "//" + tail, path]
    for k, spelled in enumerate(spellings):
        rows.loc[k, "rlnImageName"] = rows.loc[k, "rlnImageName"].partition("@")[0] + "@" + spelled
    blocks["particles"] = rows
    odd = star.with_name("spellings.star")
    starfile.write(blocks, odd)
    size = cli_json("size", odd)
    assert size["stacks"] == 1, size
    cons = cli_json("consolidate", odd, "--out", tmp_path / "out", "--quiet")
    assert cons["stacks"] == 1 and len(cons["outputs"]) == 1
    assert run_cli("verify", cons["star"], "--against", odd).returncode == 0
    run_cli("cs", "from-star", odd, "-o", tmp_path / "fs.cs", check=True)
    assert set(read_cs(tmp_path / "fs.cs")["blob/path"].tolist()) == {path.encode()}
