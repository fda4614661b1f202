"""Real-world .cs inputs: wide headers, non-UTF-8 stack names, paths outside the
project, where a missing stack was looked for, passthrough fields, and edited
DataFrames that no longer fit their dtype."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stacktools.consolidate import consolidate
from stacktools.cs.dataset import CsDataset
from stacktools.errors import CsFormatError, ExpressionError, FieldError, MissingStackError, PathEscapeError
from stacktools.formats.cs import read_cs, write_cs
from stacktools.formats.tabular import from_pandas
from stacktools.particles import ParticleSet
from stacktools.size import size_particles
from stacktools.verify import verify
from tests import independent
from tests.helpers import assert_one_line_error

DATA = Path(__file__).resolve().parent / "data"
WIDE_CLASSES = 66  # 1,213 fields once added to the demo's selected particles


def _class_group_descr() -> list[tuple]:
    """The real alignments_class_0/* fields of a multi-class job (tests/data/cryosparc/4k_dataset.cs)."""
    t = independent.read_cs(DATA / "cryosparc" / "4k_dataset.cs").dtype
    pre = "alignments_class_0/"
    return [(n[len(pre):], *rest) for n, *rest in t.descr if n.startswith(pre)]


def widen(data: np.ndarray, classes: int = WIDE_CLASSES, seed: int = 0) -> np.ndarray:
    """``data`` plus ``classes`` groups of alignments_class_N/* fields of random bytes."""
    group = _class_group_descr()
    extra = [(f"alignments_class_{k}/{n}", *rest) for k in range(classes) for n, *rest in group]
    out = np.zeros(len(data), dtype=data.dtype.descr + extra)
    raw = out.view(np.uint8).reshape(len(out), -1)
    raw[:] = np.random.default_rng(seed).integers(0, 256, raw.shape, dtype=np.uint8)
    for name in data.dtype.names:
        out[name] = data[name]
    return out


@pytest.fixture
def wide(demo):
    """The demo's selected particles as a 1,213-field file, its passthrough widened too."""
    data = widen(read_cs(demo.selected_cs))
    assert len(data.dtype.names) > 1204
    path = demo.selected_cs.with_name("J7_wide_particles.cs")
    with open(path, "wb") as fh:  # as CryoSPARC writes it: np.save into an open handle
        np.save(fh, data, allow_pickle=False)
    with open(path, "rb") as fh:
        head = fh.read(10)
    assert head[6] == 1 and int.from_bytes(head[8:10], "little") > 10_000  # past np.load's default
    pt = path.with_name("J7_passthrough_wide_particles.cs")
    with open(pt, "wb") as fh:
        np.save(fh, widen(read_cs(demo.passthrough_cs), 3, seed=1), allow_pickle=False)
    return demo, path, pt


# ---- 1. wide headers ---------------------------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
def test_wide_file_reads_bit_exact(wide, mmap) -> None:
    _, path, _ = wide
    ref = independent.read_cs(path)
    got = read_cs(path, mmap=mmap)
    assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()


def test_wide_file_field_subset_and_passthrough(wide) -> None:
    demo, path, pt = wide
    ref = independent.read_cs(path)
    sub = CsDataset.load(path, fields=["uid", "alignments_class_64/"])
    assert sub.fields[0] == "uid" and len(sub.fields) == 19
    assert sub["alignments_class_64/pose"].tobytes() == ref["alignments_class_64/pose"].tobytes()
    joined = CsDataset.load(demo.selected_cs, passthrough=pt)
    assert "alignments_class_2/class" in joined.fields and len(joined) == len(ref)
    ps = ParticleSet.open(path, passthrough=pt)
    assert len(ps) == len(ref)


def test_wide_file_size_and_info_cli(wide, run_cli) -> None:
    demo, path, _ = wide
    res = run_cli("size", path, "--json", check=True)
    assert json.loads(res.stdout)["particles"] == demo.selected
    res = run_cli("cs", "info", path, "--json", check=True)
    assert "1204" in res.stdout.replace(",", "") or "alignments_class_64" in res.stdout


def test_pickled_cs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.cs"
    with open(path, "wb") as fh:
        np.save(fh, np.array([(1, {"x": 1})], dtype=[("uid", "<u8"), ("o", "O")]),
                allow_pickle=True)
    with pytest.raises(CsFormatError, match="obj.cs"):
        read_cs(path)


# ---- 2. non-UTF-8 stack names -------------------------------------------------------

@pytest.fixture
def latin1(demo):
    """The demo with one stack renamed to a name holding a b"\\xe9" byte."""
    data = read_cs(demo.selected_cs)
    old = bytes(data["blob/path"][0])
    d, name = os.path.split(old)
    new = os.path.join(d, b"\xe9" + name[1:])
    os.rename(os.path.join(os.fsencode(demo.project_dir), old),
              os.path.join(os.fsencode(demo.project_dir), new))
    data["blob/path"][data["blob/path"] == old] = new
    write_cs(demo.selected_cs, data)
    return demo, new


def test_non_utf8_blob_path_size(latin1, run_cli) -> None:
    demo, new = latin1
    rep = size_particles(ParticleSet.open(demo.selected_cs))
    assert rep.particles == demo.selected
    res = run_cli("size", demo.selected_cs, "--json", "--per-stack", check=True)
    assert json.loads(res.stdout)["particles"] == demo.selected
    # The table prints the name's own bytes, as ls does.
    res = run_cli("size", demo.selected_cs, "--per-stack", check=True, text=False)
    assert b"\xe9" + os.path.basename(new)[1:20] in res.stdout


def _assert_bit_exact(src_cs: Path, src_proj: Path, out_cs: Path, out_proj: Path) -> None:
    src, out = independent.read_cs(src_cs), independent.read_cs(out_cs)
    assert len(src) == len(out)
    for a, b in zip(src, out):
        pa = os.path.join(os.fsencode(src_proj), bytes(a["blob/path"]))
        pb = os.path.join(os.fsencode(out_proj), bytes(b["blob/path"]))
        assert (independent.read_particle(pa, int(a["blob/idx"])).tobytes()
                == independent.read_particle(pb, int(b["blob/idx"])).tobytes())


def test_non_utf8_blob_path_consolidate_api(latin1) -> None:
    demo, new = latin1
    out = demo.project_dir / "J9"
    res = consolidate(demo.selected_cs, out)
    assert any(b"\xe9" in os.fsencode(o["path"]) for o in res.outputs)
    _assert_bit_exact(demo.selected_cs, demo.project_dir, Path(res.cs), demo.project_dir)
    assert verify(res.cs, demo.selected_cs).ok


def test_non_utf8_blob_path_consolidate_cli(latin1, run_cli) -> None:
    demo, _ = latin1
    out = demo.project_dir / "J9"
    res = run_cli("consolidate", demo.selected_cs, "-o", out, "--json", check=True)
    new_cs = Path(json.loads(res.stdout)["cs"])
    _assert_bit_exact(demo.selected_cs, demo.project_dir, new_cs, demo.project_dir)
    run_cli("verify", new_cs, "--against", demo.selected_cs, "--json", check=True)


# ---- 3. paths outside the project -------------------------------------------------

def _point_row_at(cs: Path, row: int, blob: bytes) -> None:
    data = read_cs(cs)
    data["blob/path"][row] = blob
    write_cs(cs, data)


@pytest.mark.parametrize("blob", [b"../../etc/passwd", b"/etc/passwd", b">J5/../../../etc/passwd"])
def test_escape_refused_everywhere(demo, run_cli, tmp_path, blob) -> None:
    _point_row_at(demo.selected_cs, 3, blob)
    for fn in (lambda: ParticleSet.open(demo.selected_cs).stack_headers(),
               lambda: consolidate(demo.selected_cs, tmp_path / "out"),
               lambda: verify(demo.selected_cs, demo.selected_cs)):
        with pytest.raises(PathEscapeError, match=r"J7_particles_selected\.cs row 3: blob/path"):
            fn()
    shown = blob.decode().lstrip(">")
    for args in (["size", demo.selected_cs],
                 ["consolidate", demo.selected_cs, "-o", tmp_path / "out"],
                 ["verify", demo.selected_cs, "--against", demo.selected_cs],
                 ["cache", "plan", demo.selected_cs, "--ssd-path", tmp_path / "ssd"]):
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert_one_line_error(res, "J7_particles_selected.cs row 3", shown,
                              "--allow-outside-project")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "ssd").rglob("*.mrc"))  # the cache copied nothing


def test_allow_outside_project_reads_stacks_elsewhere(demo, run_cli, tmp_path) -> None:
    data = read_cs(demo.selected_cs)
    data = data.astype([(n, "S400" if n == "blob/path" else data.dtype.fields[n][0])
                        for n in data.dtype.names])
    first = bytes(data["blob/path"][0])
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    moved = elsewhere / os.fsdecode(os.path.basename(first))
    shutil.move(demo.project_dir / os.fsdecode(first), moved)
    for blob in (os.fsencode(moved), os.fsencode(os.path.relpath(moved, demo.project_dir))):
        data["blob/path"][data["blob/path"] == bytes(data["blob/path"][0])] = blob
        write_cs(demo.selected_cs, data)
        with pytest.raises(PathEscapeError):
            ParticleSet.open(demo.selected_cs).stack_headers()
        ps = ParticleSet.open(demo.selected_cs, allow_outside_project=True)
        assert size_particles(ps).particles == demo.selected
        res = run_cli("size", demo.selected_cs, "--allow-outside-project", "--json", check=True)
        assert json.loads(res.stdout)["particles"] == demo.selected


def test_symlinked_job_dir_is_inside(demo, tmp_path) -> None:
    job = demo.project_dir / "J5"
    far = tmp_path / "far-disk" / "J5"
    shutil.move(job, far)
    job.symlink_to(far)
    assert size_particles(ParticleSet.open(demo.selected_cs)).particles == demo.selected


def test_consolidated_outside_project_still_verifies(demo, run_cli, tmp_path) -> None:
    out = tmp_path / "scratch"
    res = consolidate(demo.selected_cs, out)
    assert res.paths == "absolute"
    assert verify(res.cs, demo.selected_cs).ok
    run_cli("verify", res.cs, "--against", demo.selected_cs, check=True)


# ---- 4. where a missing stack was looked for ----------------------------------------

def test_missing_stack_names_project_dir(demo, run_cli) -> None:
    victim = demo.stacks[0]
    victim.unlink()
    with pytest.raises(MissingStackError) as exc:
        ParticleSet.open(demo.extracted_cs).stack_headers()
    msg = str(exc.value)
    # The library names its own argument; the command line names its flag.
    assert str(victim) in msg and str(demo.project_dir.resolve()) in msg and "project_dir" in msg
    assert "--project-dir" not in msg
    res = run_cli("size", demo.extracted_cs)
    assert res.returncode == 2
    assert_one_line_error(res, "stack not found", str(demo.project_dir.resolve()), "--project-dir")


def test_stack_beside_cs_is_suggested(demo, run_cli, tmp_path) -> None:
    dep = tmp_path / "EMPIAR-10000" / "data"
    dep.mkdir(parents=True)
    shutil.copy(demo.selected_cs, dep / "particles.cs")
    shutil.copytree(demo.project_dir / "J5", dep / "J5")
    res = run_cli("size", dep / "particles.cs")
    assert res.returncode == 2
    assert_one_line_error(res, "stack not found", str(dep.parent), "beside the .cs",
                          f"--project-dir {dep}")
    res = run_cli("size", dep / "particles.cs", "-p", dep, "--json", check=True)
    assert json.loads(res.stdout)["particles"] == demo.selected


# ---- 6. from_pandas with an explicit dtype never truncates ------------------------

def test_from_pandas_refuses_to_truncate(demo) -> None:
    ds = CsDataset.load(demo.selected_cs)
    df = ds.to_pandas()
    width = ds.dtype.fields["blob/path"][0].itemsize
    longer = "J5/extract/" + "x" * width + ".mrc"
    df.loc[df.index[4], "blob/path"] = longer
    with pytest.raises(FieldError, match=rf"row 4: field 'blob/path' is {len(longer)} bytes long, "
                                         rf"the dtype's S{width}"):
        CsDataset.from_pandas(df, dtype=ds.dtype)
    inferred = CsDataset.from_pandas(df)  # no dtype: the field is sized from the data
    assert inferred["blob/path"][4] == longer.encode()


@given(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=8), st.integers(1, 16))
def test_from_pandas_width_property(values, width) -> None:
    import pandas as pd
    df = pd.DataFrame({"uid": np.arange(len(values), dtype="<u8"), "name": values})
    dtype = np.dtype([("uid", "<u8"), ("name", f"S{width}")])
    encoded = [v.encode() for v in values]
    # NumPy byte strings cannot hold trailing NULs; leave those to the inferred path.
    assume(all(not e.endswith(b"\0") for e in encoded))
    if max(len(e) for e in encoded) > width:
        with pytest.raises(FieldError, match="'name'"):
            from_pandas(df, dtype)
    else:
        out = from_pandas(df, dtype)
        assert out.dtype == dtype and out["name"].tolist() == encoded


def test_from_pandas_keeps_bytes_columns(demo) -> None:
    ds = CsDataset.load(demo.selected_cs)
    back = CsDataset.from_pandas(ds.to_pandas(decode=False), dtype=ds.dtype)
    assert back.data.tobytes() == ds.data.tobytes()


# ---- 5. fields that live in the passthrough ----------------------------------------

def test_filter_names_the_passthrough_that_has_the_field(demo, run_cli, tmp_path) -> None:
    cond = "ctf/df1_A < 15000"
    with pytest.raises(ExpressionError, match=r"J7_passthrough_particles_selected\.cs has it: "
                                              r"add passthrough="):
        CsDataset.load(demo.selected_cs).query(cond)
    out = tmp_path / "f.cs"
    res = run_cli("cs", "filter", demo.selected_cs, "--where", cond, "-o", out)
    assert res.returncode == 2
    assert_one_line_error(res, "ctf/df1_A", str(demo.passthrough_cs), "--passthrough")
    assert not out.exists()
    run_cli("cs", "filter", demo.selected_cs, "--where", cond, "-o", out,
            "--passthrough", demo.passthrough_cs, check=True)
    main, pt = independent.read_cs(demo.selected_cs), independent.read_cs(demo.passthrough_cs)
    low = set(pt["uid"][pt["ctf/df1_A"] < 15000].tolist())
    want = main[np.isin(main["uid"], list(low))]
    got = independent.read_cs(out)
    assert 0 < len(got) < len(main)
    assert got.dtype == main.dtype and got.tobytes() == want.tobytes()


def test_unknown_field_without_passthrough_keeps_plain_message(demo) -> None:
    with pytest.raises(ExpressionError, match="no field 'ctf/nope'") as exc:
        CsDataset.load(demo.selected_cs).query("ctf/nope < 1")
    assert "--passthrough" not in str(exc.value)


@pytest.mark.parametrize("main, passthrough", [
    ("J7_particles_selected.cs", "J7_passthrough_particles_selected.cs"),
    ("J24_005_particles.cs", "J24_passthrough_particles.cs"),
    ("cryosparc_P12_J24_001_particles.cs", "cryosparc_P12_J24_passthrough_particles.cs"),
])
def test_find_passthrough_follows_cryosparc_names(tmp_path, main, passthrough) -> None:
    from stacktools.cs.dataset import find_passthrough
    write_cs(tmp_path / main, np.zeros(2, [("uid", "<u8"), ("blob/idx", "<u4")]))
    assert find_passthrough(tmp_path / main, ["ctf/df1_A"]) is None
    write_cs(tmp_path / passthrough, np.zeros(2, [("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    assert find_passthrough(tmp_path / main, ["ctf/df1_A"]) == tmp_path / passthrough
    assert find_passthrough(tmp_path / main, ["ctf/other"]) is None
