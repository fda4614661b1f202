"""The particle-set model: path resolution, grouping and validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stacktools.errors import (
    BoxMismatchError,
    FieldError,
    IndexOutOfRangeError,
    MissingStackError,
    PathEscapeError,
    TruncatedStackError,
)
from stacktools.formats.cs import read_cs, write_cs
from stacktools.particles import ParticleSet, resolve_blob_path


def test_import_marker_stripped_and_resolved(real_data: Path, tmp_path: Path) -> None:
    ps = ParticleSet.open(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs", tmp_path)
    assert all(p.is_relative_to(tmp_path / "J1" / "imported") for p in ps.stack_paths)
    assert not any(">" in str(p) for p in ps.stack_paths)
    with pytest.raises(MissingStackError, match="J1/imported"):
        ps.check()


def test_real_refinement_set_groups(real_data: Path, tmp_path: Path) -> None:
    ps = ParticleSet.open(real_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs", tmp_path)
    groups = ps.groups()
    assert sum(len(g.rows) for g in groups) == 2019
    assert len(groups) == len(set(ps.data["blob/path"].tolist()))
    for g in groups[:5]:
        assert set(ps.data["blob/path"][g.rows].tolist()) == {g.blob_path.encode()}
        assert np.array_equal(ps.data["blob/idx"][g.rows], g.indices)
    assert ps.box() == 180


def test_default_project_dir_is_parent_of_job(demo) -> None:
    ps = ParticleSet.open(demo.selected_cs)
    assert ps.project_dir == demo.project_dir.resolve()
    assert len(ps.check()) == len(demo.stacks)


def test_passthrough_join(demo) -> None:
    ps = ParticleSet.open(demo.selected_cs, demo.project_dir, demo.passthrough_cs)
    main = read_cs(demo.selected_cs)
    assert np.array_equal(ps.data["uid"], main["uid"])
    assert "ctf/df1_A" in ps.data.dtype.names and "alignments2D/class" in ps.data.dtype.names
    full = read_cs(demo.extracted_cs)
    order = np.argsort(full["uid"])
    pos = order[np.searchsorted(full["uid"][order], main["uid"])]
    assert np.array_equal(ps.data["ctf/df1_A"], full["ctf/df1_A"][pos])


def test_missing_blob_fields(tmp_path: Path) -> None:
    p = tmp_path / "x.cs"
    write_cs(p, np.zeros(2, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    with pytest.raises(FieldError, match="blob/path"):
        ParticleSet.open(p, tmp_path)


def _edit(cs: Path, fn) -> None:
    a = read_cs(cs).copy()
    fn(a)
    write_cs(cs, a)


def test_index_past_end_names_file_and_row(demo) -> None:
    _edit(demo.extracted_cs, lambda a: a["blob/idx"].__setitem__(17, 10_000))
    ps = ParticleSet.open(demo.extracted_cs, demo.project_dir)
    with pytest.raises(IndexOutOfRangeError, match=r"row 17\b") as e:
        ps.check()
    assert "blob/idx 10000" in str(e.value) and ".mrc" in str(e.value)


def test_box_mismatch_names_row(demo) -> None:
    _edit(demo.extracted_cs, lambda a: a["blob/shape"].__setitem__(5, (32, 32)))
    ps = ParticleSet.open(demo.extracted_cs, demo.project_dir)
    with pytest.raises(BoxMismatchError, match=r"row 5\b"):
        ps.check()
    with pytest.raises(BoxMismatchError, match="mixed box sizes"):
        ps.box()


def test_truncated_stack_in_set(demo) -> None:
    victim = demo.stacks[2]
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size - 10)
    ps = ParticleSet.open(demo.extracted_cs, demo.project_dir)
    with pytest.raises(TruncatedStackError, match=victim.name):
        ps.check()


def test_blob_path_outside_project_is_refused_lexically(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    # A symlinked job directory is the project's own business: allowed.
    (root / "link").symlink_to(tmp_path / "outside")
    good = [b"a/b.mrc", b"link/x.mrc", b"a/../a/b.mrc", os.fsencode(root / "a" / "abs.mrc")]
    for blob in good:
        data = np.zeros(1, [("blob/path", "S200"), ("blob/idx", "<u4")])
        data["blob/path"] = blob
        assert len(ParticleSet(data, root, source=root / "a" / "x.cs").stack_paths) == 1
    for bad in [b"../x.mrc", b"a/../../x.mrc", b"/etc/passwd", b">../../etc/passwd",
                os.fsencode(tmp_path / "outside" / "x.mrc")]:
        data = np.zeros(3, [("blob/path", "S200"), ("blob/idx", "<u4")])
        data["blob/path"] = [b"a/b.mrc", b"a/b.mrc", bad]
        with pytest.raises(PathEscapeError, match=r"x\.cs row 2: blob/path .*outside the project"):
            _ = ParticleSet(data, root, source=root / "a" / "x.cs").stack_paths
        allowed = ParticleSet(data, root, source=root / "a" / "x.cs", allow_outside_project=True)
        assert len(allowed.stack_paths) == 2


def test_resolve_absolute_blob_path(tmp_path: Path) -> None:
    assert resolve_blob_path(tmp_path, b"/abs/x.mrc") == Path("/abs/x.mrc")
    assert resolve_blob_path(tmp_path, b">J1/x.mrcs") == tmp_path / "J1/x.mrcs"
