"""stacktools consolidate: layouts, the new .cs, pixels, dtypes, resume and verify."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacktools.consolidate import MANIFEST, consolidate
from stacktools.demo import make_demo_project
from stacktools.errors import ModeMismatchError, OutputError, OutputExistsError
from stacktools.formats.cs import read_cs, write_cs
from stacktools.formats.mrc import read_header, read_particle
from stacktools.particles import ParticleSet, resolve_blob_path
from stacktools.size import size_particles
from stacktools.verify import verify, verify_bytes
from tests.helpers import run_cli


def particles_of(cs: Path, project: Path) -> list[np.ndarray]:
    """Every particle of a set, in row order, as stored (mode kept)."""
    data = read_cs(cs)
    out = []
    for p, i in zip(data["blob/path"], data["blob/idx"]):
        out.append(read_particle(resolve_blob_path(project, p), int(i)))
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_default_layout_writes_exactly_consolidated_bytes(demo, tmp_path):
    out = demo.project_dir / "J8"
    pset = ParticleSet.open(demo.selected_cs, demo.project_dir)
    expected = size_particles(pset).consolidated_bytes
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    on_disk = sum(f.stat().st_size for f in (out / "stacks").iterdir())
    assert res.bytes_written == expected == on_disk
    assert res.stacks == len(pset.stack_paths)
    assert res.particles == len(pset)
    assert res.saved_bytes == size_particles(pset).saved_bytes


def test_new_cs_keeps_fields_rows_and_uids(demo):
    out = demo.project_dir / "J8"
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    old, new = read_cs(demo.selected_cs), read_cs(res.cs)
    assert Path(res.cs).parent == out
    assert new.dtype.names == old.dtype.names
    assert np.array_equal(new["uid"], old["uid"])
    for name in old.dtype.names:
        if name not in ("blob/path", "blob/idx"):
            assert new.dtype[name] == old.dtype[name]
            assert new[name].tobytes() == old[name].tobytes(), name
    # OUTDIR is inside the project: paths relative to it, as CryoSPARC expects.
    assert res.paths == "relative"
    for p in np.unique(new["blob/path"]):
        text = p.decode()
        assert not text.startswith("/") and text.startswith("J8/stacks/")
        assert (demo.project_dir / text).is_file()
    # Within an output stack, particles are in ascending source index order.
    for p in np.unique(new["blob/path"]):
        rows = np.flatnonzero(new["blob/path"] == p)
        rows = rows[np.argsort(new["blob/idx"][rows])]
        assert np.array_equal(new["blob/idx"][rows], np.arange(len(rows)))
        assert len(set(old["blob/path"][rows])) == 1
        assert np.all(np.diff(old["blob/idx"][rows].astype(np.int64)) > 0)


def test_pixels_are_bit_exact_and_float16_stays_float16(demo):
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir)
    before = particles_of(demo.selected_cs, demo.project_dir)
    after = particles_of(Path(res.cs), demo.project_dir)
    assert len(before) == len(after) == demo.selected
    assert all(same_bits(a, b) for a, b in zip(before, after))
    assert {a.dtype for a in after} == {np.dtype(np.float32), np.dtype(np.float16)}
    # Each output keeps its source's mode and voxel size; no extended header.
    src = {read_header(p).mode for p in ParticleSet.open(demo.selected_cs, demo.project_dir).stack_paths}
    modes = set()
    for o in res.outputs:
        h = read_header(o["path"])
        modes.add(h.mode)
        assert h.nsymbt == 0 and h.voxel_size == pytest.approx(1.07)
        assert h.file_size == o["bytes"]
    assert modes == src


def test_float32_output_is_valid_mrc2014(demo):
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      dtype="float32")
    for o in res.outputs:
        assert mrcfile.validate(o["path"], print_file=open(os.devnull, "w"))
        with mrcfile.mmap(o["path"], mode="r") as m:
            assert m.is_image_stack()
            assert m.data.dtype == np.float32
            assert m.voxel_size.x == pytest.approx(1.07)


def test_dtype_conversion(demo):
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      dtype="float16")
    before = particles_of(demo.selected_cs, demo.project_dir)
    after = particles_of(Path(res.cs), demo.project_dir)
    assert all(b.dtype == np.float16 for b in after)
    assert all(same_bits(a.astype(np.float16), b) for a, b in zip(before, after))
    assert res.bytes_written < size_particles(
        ParticleSet.open(demo.selected_cs, demo.project_dir)).consolidated_bytes


def test_packed_layout_in_input_order(demo):
    with pytest.raises(ModeMismatchError):  # demo mixes float32 and float16 stacks
        consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                    layout="packed", particles_per_stack=40)
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      layout="packed", particles_per_stack=40, dtype="float32", mrcs=True)
    new = read_cs(res.cs)
    n = len(new)
    assert res.stacks == -(-n // 40)
    assert np.array_equal(new["blob/idx"], np.arange(n) % 40)
    names = [Path(p.decode()).name for p in new["blob/path"]]
    assert all(name.endswith(".mrcs") for name in names)
    assert [names[r] for r in range(0, n, 40)] == sorted(set(names))
    before = particles_of(demo.selected_cs, demo.project_dir)
    after = particles_of(Path(res.cs), demo.project_dir)
    assert all(same_bits(a.astype(np.float32), b) for a, b in zip(before, after))


def test_absolute_paths_outside_project_and_passthrough(demo, tmp_path):
    out = tmp_path / "elsewhere"
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                      passthrough=demo.passthrough_cs)
    assert res.paths == "absolute"
    new = read_cs(res.cs)
    assert all(Path(p.decode()).is_absolute() for p in new["blob/path"])
    pt_old, pt_new = read_cs(demo.passthrough_cs), read_cs(res.passthrough)
    assert Path(res.passthrough).parent == out
    assert np.array_equal(pt_new["uid"], new["uid"])
    assert pt_new.dtype == pt_old.dtype
    pos = {int(u): k for k, u in enumerate(pt_old["uid"])}
    assert pt_new.tobytes() == pt_old[[pos[int(u)] for u in new["uid"]]].tobytes()
    # The joined view still reads back the same particles.
    joined = ParticleSet.open(res.cs, demo.project_dir, res.passthrough)
    assert len(joined) == demo.selected


def test_duplicates_and_import_marker(demo, tmp_path):
    data = read_cs(demo.selected_cs)
    data = np.concatenate([data, data[:5]])  # the same particle twice
    width = data.dtype["blob/path"].itemsize + 1
    marked = np.empty(len(data), dtype=[(n, f"S{width}" if n == "blob/path" else data.dtype[n])
                                        for n in data.dtype.names])
    for n in data.dtype.names:
        marked[n] = data[n]
    marked["blob/path"] = [b">" + p for p in data["blob/path"]]
    cs = tmp_path / "J9" / "dup.cs"
    cs.parent.mkdir()
    write_cs(cs, marked)
    res = consolidate(cs, tmp_path / "out", project_dir=demo.project_dir)
    assert res.particles == len(data)
    before = particles_of(cs, demo.project_dir)
    after = particles_of(Path(res.cs), demo.project_dir)
    assert all(same_bits(a, b) for a, b in zip(before, after))


def test_dry_run_writes_nothing(demo, tmp_path):
    out = tmp_path / "never"
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dry_run=True)
    assert res.dry_run and not out.exists()
    assert res.bytes_written == size_particles(
        ParticleSet.open(demo.selected_cs, demo.project_dir)).consolidated_bytes
    proc = run_cli("consolidate", demo.selected_cs, "--project-dir",
                   demo.project_dir, "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would write" in proc.stdout and "saved" in proc.stdout
    assert not out.exists()


def test_cli_json_contract_and_verify(demo):
    out = demo.project_dir / "J8"
    proc = run_cli("consolidate", demo.selected_cs, "--project-dir",
                   demo.project_dir, "--out", out, "--json",
                   "--passthrough", demo.passthrough_cs, "--verify")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for key in ("cs", "stacks", "particles", "bytes_written"):
        assert key in doc
    assert Path(doc["cs"]).parent == out and Path(doc["cs"]).is_file()
    assert doc["particles"] == demo.selected and doc["verified"] is True
    ver = run_cli("verify", doc["cs"], "--against", demo.selected_cs,
                  "--project-dir", demo.project_dir, "--json")
    assert ver.returncode == 0, ver.stderr
    assert json.loads(ver.stdout)["ok"] is True
    # Flip one byte of one output particle: verify must find exactly that particle.
    target = Path(doc["outputs"][0]["path"])
    with open(target, "r+b") as fh:
        fh.seek(1024 + 10)
        b = fh.read(1)
        fh.seek(1024 + 10)
        fh.write(bytes([b[0] ^ 0x01]))
    res = verify(doc["cs"], demo.selected_cs, project_dir=demo.project_dir)
    assert not res.ok and res.particle_mismatches == 1 and res.field_mismatches == 0
    # The progress total the CLI shows is what verify reads: every output pixel.
    total = verify_bytes(doc["cs"], demo.selected_cs, project_dir=demo.project_dir)
    assert total == res.bytes_checked == doc["bytes_written"] - 1024 * doc["stacks"]
    bad = run_cli("verify", doc["cs"], "--against", demo.selected_cs,
                  "--project-dir", demo.project_dir, "--quiet")
    assert bad.returncode == 1


def test_rerun_keeps_complete_stacks_and_rewrites_bad_ones(demo):
    out = demo.project_dir / "J8"
    first = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    stats = {o["path"]: os.stat(o["path"]) for o in first.outputs}
    again = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    assert again.stacks_resumed == first.stacks
    for p, s in stats.items():
        assert os.stat(p).st_ino == s.st_ino and os.stat(p).st_mtime_ns == s.st_mtime_ns
    victim = Path(first.outputs[1]["path"])
    with open(victim, "r+b") as fh:
        fh.seek(2000)
        fh.write(b"\xff\xff\xff\xff")
    third = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    assert third.stacks_resumed == first.stacks - 1
    assert verify(third.cs, demo.selected_cs, project_dir=demo.project_dir).ok


def test_other_consolidation_in_outdir_needs_force(demo):
    out = demo.project_dir / "J8"
    consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    with pytest.raises(OutputError, match="force=True"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dtype="float32")
    # The library names its own keyword; the command line names its flag.
    with pytest.raises(OutputExistsError) as err:
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dtype="float32")
    assert "--force" not in str(err.value)
    proc = run_cli("consolidate", demo.selected_cs, "--project-dir", demo.project_dir,
                   "--out", out, "--dtype", "float32")
    assert proc.returncode == 2
    assert proc.stderr == (f"stacktools: error: {out}: holds a consolidation of another set or "
                           "with other options; choose another directory or use --force\n")
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dtype="float32",
                      force=True)
    assert verify(res.cs, demo.selected_cs, project_dir=demo.project_dir).ok
    assert json.loads((out / MANIFEST).read_text())["stacks"]


def test_empty_set(demo, tmp_path):
    data = read_cs(demo.selected_cs)[:0]
    cs = tmp_path / "J9" / "empty.cs"
    cs.parent.mkdir()
    write_cs(cs, data)
    res = consolidate(cs, tmp_path / "out", project_dir=demo.project_dir)
    assert res.stacks == 0 and res.particles == 0 and len(read_cs(res.cs)) == 0


# --- the property: any subset, any row order ------------------------------------------

@pytest.fixture(scope="module")
def prop_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    made = make_demo_project(root / "P1", micrographs=5, particles_per_micrograph=(6, 14),
                             box=16, float16_every=2, extended_header_stack=1)
    return made, root


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_particle_k_reads_back_equal(prop_project, data):
    made, root = prop_project
    full = read_cs(made.extracted_cs)
    rows = data.draw(st.lists(st.integers(0, len(full) - 1), min_size=1, max_size=len(full),
                              unique=True), label="rows in this order")
    layout = data.draw(st.sampled_from(["per-stack", "packed"]), label="layout")
    dtype = "float32" if layout == "packed" else data.draw(st.sampled_from(["keep", "float32"]))
    per = data.draw(st.integers(1, 9)) if layout == "packed" else None
    work = Path(os.path.join(root, f"case{data.draw(st.integers(0, 10**9))}"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "J9").mkdir(parents=True)
    cs = work / "J9" / "subset.cs"
    write_cs(cs, full[rows])
    res = consolidate(cs, work / "out", project_dir=made.project_dir, layout=layout,
                      particles_per_stack=per, dtype=dtype, threads=2)
    before = particles_of(cs, made.project_dir)
    after = particles_of(Path(res.cs), made.project_dir)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        assert same_bits(a if dtype == "keep" else a.astype(np.float32), b)
    assert np.array_equal(read_cs(res.cs)["uid"], full["uid"][rows])
    shutil.rmtree(work)


def test_demo_consolidates_its_subset(tmp_path):
    from stacktools.demo import run_demo
    summary = run_demo(tmp_path / "demo")
    step = next(s for s in summary["steps"] if s["name"] == "consolidate")
    size = next(s for s in summary["steps"] if s["name"] == "size")
    assert step["result"]["bytes_written"] == size["result"]["consolidated_bytes"]
    assert step["show"]["saved bytes"] == size["result"]["saved_bytes"] > 0
    assert step["result"]["verified"] is True
    assert Path(step["result"]["cs"]).is_relative_to(tmp_path / "demo" / "J8")


# --- the dry run decides what the run does ----------------------------------------------

def test_dry_run_checks_the_passthrough(demo, tmp_path):
    pt = read_cs(demo.passthrough_cs)
    short = tmp_path / "short_passthrough.cs"
    write_cs(short, pt[1:])  # one selected uid has no passthrough row
    out = demo.project_dir / "J8"
    from stacktools.errors import FieldError
    with pytest.raises(FieldError, match="no row for uid"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, passthrough=short,
                    dry_run=True)
    proc = run_cli("consolidate", demo.selected_cs, "--project-dir",
                   demo.project_dir, "--out", out, "--passthrough",
                   short, "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no row for uid" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_dry_run_refuses_another_consolidation_without_force(demo):
    out = demo.project_dir / "J8"
    consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(OutputError, match="force=True"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dtype="float32",
                    dry_run=True)
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir, dtype="float32",
                      dry_run=True, force=True)
    assert res.dry_run
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_dry_run_refuses_an_outdir_that_cannot_be_made(demo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create output directory"):
        consolidate(demo.selected_cs, blocker / "out", project_dir=demo.project_dir,
                    dry_run=True)


# --- names: long, odd, and never outside OUT ---------------------------------------------

def _rename_source(demo, old_blob: bytes, new_blob: str) -> None:
    """Move a source stack to ``new_blob`` (relative to the project) and repoint the set."""
    new_file = demo.project_dir / new_blob
    new_file.parent.mkdir(parents=True, exist_ok=True)
    os.rename(demo.project_dir / old_blob.decode(), os.path.normpath(new_file))
    data = read_cs(demo.selected_cs)
    width = max(data.dtype["blob/path"].itemsize, len(os.fsencode(new_blob)))
    descr = [(n, f"S{width}" if n == "blob/path" else data.dtype.fields[n][0])
             for n in data.dtype.names]
    wide = data.astype(descr)
    wide["blob/path"][data["blob/path"] == old_blob] = os.fsencode(new_blob)
    write_cs(demo.selected_cs, wide)


def _source_blobs(demo) -> list[bytes]:
    return sorted(np.unique(read_cs(demo.selected_cs)["blob/path"]))


def _check_outputs(res, out: Path, demo) -> None:
    from tests.independent import assert_same_particles
    names = [Path(o["path"]).name for o in res.outputs]
    assert len(set(names)) == len(names)
    for o in res.outputs:
        p = Path(o["path"])
        assert p.parent == (out / "stacks").absolute() and not p.name.startswith(".")
        assert len(os.fsencode(p.name)) <= 255
    assert len(os.fsencode(Path(res.cs).name)) <= 255
    assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)


def test_long_names_up_to_name_max(demo):
    blobs = _source_blobs(demo)
    # 231 to 255 bytes: legal names whose temporaries used to exceed NAME_MAX; with
    # --mrcs the output name grows by a byte, past 255 for the longest. Two names
    # that differ only at the end must stay two outputs.
    lengths = [231, 240, 254, 255, 255]
    for k, n in enumerate(lengths):
        stem = f"{k}" + "é" * ((n - 5) // 2) + "x" * ((n - 5) % 2)
        _rename_source(demo, blobs[k], f"J5/extract/{stem}.mrc")
    assert sorted(len(os.fsencode(Path(b.decode()).name)) for b in _source_blobs(demo)
                  if len(b) > 200) == sorted(lengths)
    long_cs = demo.selected_cs.with_name("c" * 250 + ".cs")
    os.rename(demo.selected_cs, long_cs)
    demo.selected_cs = long_cs
    out = demo.project_dir / "J8"
    res = consolidate(long_cs, out, project_dir=demo.project_dir, mrcs=True)
    _check_outputs(res, out, demo)
    # A rerun recognises the same (shortened) names and keeps every stack.
    again = consolidate(long_cs, out, project_dir=demo.project_dir, mrcs=True)
    assert again.stacks_resumed == again.stacks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                    max_size=20),
       fill=st.sampled_from(["a", "é", "€", "😀", "_."]), nbytes=st.integers(1, 255))
def test_atomic_output_fits_any_legal_name(tmp_path, head, fill, nbytes):
    from stacktools.formats.atomic import atomic_output, tmp_name_for
    name = head + fill * 255
    while len(os.fsencode(name)) > nbytes:
        name = name[:-1]
    if not name or name in (".", ".."):
        return
    final = tmp_path / name
    with atomic_output(final, fsync=False) as fh:
        fh.write(b"ok")
    assert final.read_bytes() == b"ok"
    assert tmp_name_for(final) == tmp_name_for(Path(name))  # deterministic, for the sweep
    final.unlink()


def test_outputs_never_leave_out(demo, tmp_path):
    blobs = _source_blobs(demo)
    _rename_source(demo, blobs[0], "J5/extract/..mrc")
    _rename_source(demo, blobs[1], "J5/extract/.hidden.mrc")
    _rename_source(demo, blobs[2], "J5/extract/../J5/extract/../../P1/J5/extract/up.mrc")
    _rename_source(demo, blobs[3], "J5/extract/.stacktools-consolidate.json.mrc")
    out = demo.project_dir / "J8"
    # A planted OUT/stacks symlink to somewhere else must not carry stacks out of OUT.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "stacks").symlink_to(elsewhere)
    proc = run_cli("consolidate", demo.selected_cs, "--project-dir",
                   demo.project_dir, "--out", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "outside" in proc.stderr and "Traceback" not in proc.stderr
    assert list(elsewhere.iterdir()) == []
    (out / "stacks").unlink()
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    _check_outputs(res, out, demo)
    assert list(elsewhere.iterdir()) == []
    assert json.loads((out / MANIFEST).read_text())["key"]  # not replaced by a stack
