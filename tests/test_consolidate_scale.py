"""Consolidate at scale: the new .cs streamed in row chunks, the set planned from a
few columns. Each streamed path must give the bytes of the whole-array one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacktools.consolidate import consolidate
from stacktools.errors import CsFormatError, OutputError
from stacktools.formats import cs as csfile
from stacktools.particles import ParticleSet
from tests import independent

FIELD_TYPES = ["<u8", "<u4", "<f4", "<f8", "S1", "S37", ("<f4", (2,)), ("<u4", (3,))]


@st.composite
def structured(draw):
    """A structured array of random fields (sometimes enough for a version 2.0 header) and rows."""
    wide = draw(st.booleans())
    k = draw(st.integers(1, 6)) + (2000 if wide else 0)  # 2000 fields: header past 64 KiB
    n = draw(st.integers(0, 40 if wide else 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # the bytes: from a drawn seed
    descr = []
    for i, t in enumerate(rng.integers(0, len(FIELD_TYPES), k)):
        ft = FIELD_TYPES[t]
        descr.append((f"f{i}/x", *([ft] if isinstance(ft, str) else ft)))
    dtype = np.dtype(descr)
    return np.frombuffer(rng.bytes(n * dtype.itemsize), dtype).copy()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=structured(), step=st.integers(1, 50))
def test_chunked_write_is_the_whole_array_write_byte_for_byte(tmp_path, data, step):
    whole, chunked = tmp_path / "whole.cs", tmp_path / "chunked.cs"
    csfile.write_cs(whole, data, fsync=False)
    parts = (data[a:a + step] for a in range(0, len(data), step))
    csfile.write_cs_chunks(chunked, data.dtype, len(data), parts, fsync=False)
    assert chunked.read_bytes() == whole.read_bytes()
    back = independent.read_cs(chunked)
    assert back.dtype == data.dtype and back.tobytes() == data.tobytes()
    # and read back in chunks, any size
    got = list(csfile.iter_rows(chunked, step))
    assert all(len(g) <= step for g in got)
    joined = np.concatenate(got) if got else np.empty(0, data.dtype)
    assert joined.tobytes() == data.tobytes()


def test_chunked_write_of_the_wrong_row_count_leaves_nothing(tmp_path):
    data = np.zeros(10, [("uid", "<u8")])
    out = tmp_path / "x.cs"
    with pytest.raises(OutputError, match="9 rows written, 10 expected"):
        csfile.write_cs_chunks(out, data.dtype, 10, [data[:9]], fsync=False)
    assert os.listdir(tmp_path) == []


def test_chunked_read_of_a_truncated_cs_is_a_format_error(tmp_path):
    data = np.zeros(100, [("uid", "<u8")])
    data["uid"] = np.arange(100)
    path = tmp_path / "x.cs"
    csfile.write_cs(path, data, fsync=False)
    os.truncate(path, path.stat().st_size - 3)
    with pytest.raises(CsFormatError):
        list(csfile.iter_rows(path, 7))


def test_lean_open_plans_as_the_whole_read(demo, monkeypatch):
    """Stack codes and kept columns are those of the whole-array open, in chunks of
    a few rows and with spellings that name one stack ('>', './', '//')."""
    data = independent.read_cs(demo.selected_cs)
    paths = data["blob/path"].astype(object)
    for k, p in enumerate(paths):
        paths[k] = [b">" + p, b"./" + p, p.replace(b"/", b"//", 1), p][k % 4]
    wide = data.dtype.descr
    wide = [(n, "S200") if n == "blob/path" else (n, *rest) for n, *rest in wide]
    data = data.astype(wide)
    data["blob/path"] = paths
    csfile.write_cs(demo.selected_cs, data, fsync=False)
    monkeypatch.setattr(csfile, "CHUNK_ROWS", 5)
    whole = ParticleSet.open(demo.selected_cs, demo.project_dir)
    lean = ParticleSet.open_lean(demo.selected_cs, demo.project_dir, fields=("blob/idx", "uid"))
    assert lean.data.dtype.names == ("blob/idx", "uid")
    assert lean.blob_paths == whole.blob_paths
    assert np.array_equal(lean.stack_codes, whole.stack_codes)
    for f in ("blob/idx", "uid"):
        assert np.array_equal(lean.data[f], data[f])
    assert [h.path for h in lean.check()] == [h.path for h in whole.check()]


@pytest.mark.parametrize("options", [{}, {"layout": "packed", "particles_per_stack": 7, "dtype": "float32"},
                                     {"crop": 48}, {"passthrough": True}])
def test_new_cs_in_small_chunks_equals_one_chunk(demo, tmp_path, monkeypatch, options):
    """The new .cs (and passthrough) written a few rows at a time is byte for byte the
    one written in a single chunk, and its rows point at their own particles."""
    options = dict(options)
    if options.pop("passthrough", False):
        options["passthrough"] = demo.passthrough_cs
    out = {}
    for tag, rows in (("a", 3), ("b", 1 << 20)):
        monkeypatch.setattr(csfile, "CHUNK_ROWS", rows)
        out[tag] = consolidate(demo.selected_cs, tmp_path / f"out{tag}", project_dir=demo.project_dir, **options)
    a, b = out["a"], out["b"]
    # Paths differ only by the OUTDIR name (of one length): compare with it replaced.
    cs_a, cs_b = (independent.read_cs(r.cs) for r in (a, b))
    assert cs_a.dtype == cs_b.dtype and len(cs_a) == len(independent.read_cs(demo.selected_cs))
    for n in cs_a.dtype.names:
        if n != "blob/path":
            assert cs_a[n].tobytes() == cs_b[n].tobytes(), n
    assert [p.replace(b"/outa/", b"/outX/") for p in cs_a["blob/path"]] == \
           [p.replace(b"/outb/", b"/outX/") for p in cs_b["blob/path"]]
    src = independent.read_cs(demo.selected_cs)
    assert np.array_equal(cs_a["uid"], src["uid"])
    if "crop" not in options and "dtype" not in options:
        for k in range(0, len(src), 17):
            want = independent.read_particle(independent.blob_file(demo.project_dir, src["blob/path"][k]),
                                             int(src["blob/idx"][k]))
            got = independent.read_particle(independent.blob_file(demo.project_dir, cs_a["blob/path"][k]),
                                            int(cs_a["blob/idx"][k]))
            assert want.tobytes() == got.tobytes()
    if a.passthrough:
        pa, pb = independent.read_cs(a.passthrough), independent.read_cs(b.passthrough)
        assert pa.dtype == pb.dtype and np.array_equal(pa["uid"], cs_a["uid"])


def test_atomic_fd_renames_on_success_and_leaves_nothing_after_an_error(tmp_path):
    from stacktools.formats.atomic import FILE_MODE, TMP_SUFFIX, atomic_fd
    out = tmp_path / "x.mrc"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_fd(out, fsync=False) as fd:
            os.pwrite(fd, b"partial", 0)
            assert [p.name for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]
            raise RuntimeError("stop")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.mrc"]
    with atomic_fd(out, fsync=True) as fd:
        os.pwrite(fd, b"new bytes", 0)
        assert out.read_bytes() == b"old"  # not in place until the end
    assert out.read_bytes() == b"new bytes" and os.listdir(tmp_path) == ["x.mrc"]
    assert out.stat().st_mode & 0o777 == FILE_MODE


def test_many_one_source_stacks_each_read_their_own_particles(tmp_path):
    """Many output stacks from one plan (each reading one of many sources) hold
    their own particles: the per-copy source lookup picks each stack's source."""
    from stacktools.demo import make_demo_project
    made = make_demo_project(tmp_path / "P1", micrographs=60, particles_per_micrograph=(2, 6), box=16,
                             select_fraction=0.5, seed=3)
    res = consolidate(made.selected_cs, tmp_path / "out", project_dir=made.project_dir)
    src, new = independent.read_cs(made.selected_cs), independent.read_cs(res.cs)
    assert res.stacks > 40
    for k in range(len(src)):
        want = independent.read_particle(independent.blob_file(made.project_dir, src["blob/path"][k]),
                                         int(src["blob/idx"][k]))
        got = independent.read_particle(independent.blob_file(made.project_dir, new["blob/path"][k]),
                                        int(new["blob/idx"][k]))
        assert want.tobytes() == got.tobytes()
