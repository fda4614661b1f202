"""The copy engine under consolidate: run coalescing, both copy paths, byte order."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import machine_stamp_from_byte_order

import stacktools.stacks as stackcopy
from stacktools.consolidate import consolidate
from stacktools.formats.cs import read_cs
from stacktools.formats.mrc import HEADER_BYTES, make_header, read_header, read_headers, read_particle
from stacktools.particles import resolve_blob_path
from stacktools.stacks import coalesce, read_to_array
from tests import independent
from tests.test_consolidate_gather import _stacks


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=60))
def test_coalesce_runs_are_maximal_and_ordered(pairs):
    codes = np.array([c for c, _ in pairs])
    idx = np.array([i for _, i in pairs])
    order, starts = coalesce(codes, idx, np.arange(len(pairs)))
    keys = list(zip(codes[order].tolist(), idx[order].tolist()))
    assert keys == sorted(keys)  # (stack, offset) order
    for a, b in zip(starts[:-1], starts[1:]):
        run = idx[order[a:b]]
        assert len(set(codes[order[a:b]])) == 1
        assert np.array_equal(run, np.arange(run[0], run[0] + len(run)))
    for b in starts[1:-1]:  # a run never continues across a boundary
        prev, nxt = order[b - 1], order[b]
        assert codes[prev] != codes[nxt] or idx[nxt] != idx[prev] + 1


def test_pread_pwrite_path_is_bit_exact(demo, monkeypatch):
    monkeypatch.setattr(stackcopy, "_COPY_FILE_RANGE", False)
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      chunk_bytes=20_000)  # smaller than a particle: one per buffer
    old, new = read_cs(demo.selected_cs), read_cs(res.cs)
    for (p0, i0), (p1, i1) in zip(zip(old["blob/path"], old["blob/idx"]),
                                  zip(new["blob/path"], new["blob/idx"])):
        a = read_particle(resolve_blob_path(demo.project_dir, p0), int(i0))
        b = read_particle(resolve_blob_path(demo.project_dir, p1), int(i1))
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _big_endian_stack(path, data: np.ndarray) -> None:
    raw = make_header(data.shape[2], data.shape[1], data.shape[0], 2, 1.5)
    hdr = np.frombuffer(raw, HEADER_DTYPE.newbyteorder("<"))[0]
    big = np.array(hdr, dtype=HEADER_DTYPE.newbyteorder(">"))
    big["machst"] = np.frombuffer(bytes(machine_stamp_from_byte_order(">")), np.uint8)
    path.write_bytes(big.tobytes() + data.astype(">f4").tobytes())


def test_big_endian_source_is_written_little_endian_with_same_values(demo, tmp_path):
    data = np.random.default_rng(1).standard_normal((7, 64, 64)).astype(np.float32)
    stack = demo.project_dir / "J5" / "extract" / "big.mrc"
    _big_endian_stack(stack, data)
    assert read_header(stack).byte_order == ">"
    rows = read_cs(demo.selected_cs)[:5].copy()
    rows["blob/path"] = b"J5/extract/big.mrc"
    rows["blob/idx"] = [6, 0, 3, 4, 1]
    from stacktools.formats.cs import write_cs
    cs = demo.project_dir / "J7" / "big.cs"
    write_cs(cs, rows)
    res = consolidate(cs, tmp_path / "out", project_dir=demo.project_dir)
    out = res.outputs[0]["path"]
    h = read_header(out)
    assert h.byte_order == "<" and h.mode == 2 and h.voxel_size == pytest.approx(1.5)
    new = read_cs(res.cs)
    for k, i in enumerate(rows["blob/idx"]):
        assert np.array_equal(read_particle(out, int(new["blob/idx"][k])), data[i])
    got = read_to_array([h], np.dtype("<f4"), np.zeros(5, np.int64), np.arange(5))
    assert np.array_equal(got, data[[0, 1, 3, 4, 6]])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       picks=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1, exclude_max=True)), min_size=1, max_size=40),
       mode=st.sampled_from([2, 12]), widen=st.booleans(), kernel=st.booleans(),
       chunk_particles=st.integers(1, 5), order=st.sampled_from(["source", "shuffled", "reversed"]))
def test_run_by_run_copy_is_bit_exact(tmp_path_factory, sizes, picks, mode, widen, kernel, chunk_particles,
                                      order):
    """Runs copied one by one (no covering read): runs longer than a buffer, destinations
    that do and do not follow one another, duplicates, both copy paths, float16 widened."""
    tmp = tmp_path_factory.mktemp("r")
    paths = _stacks(tmp, sizes, box=8, mode=mode)
    codes = [c % len(sizes) for c, _ in picks]
    idx = [int(f * sizes[c]) for c, (_, f) in zip(codes, picks)]
    keys = sorted(range(len(codes)), key=lambda k: (codes[k], idx[k]))
    perm = {"source": keys, "reversed": keys[::-1],
            "shuffled": np.random.default_rng(len(codes)).permutation(len(codes)).tolist()}[order]
    codes, idx = [codes[k] for k in perm], [idx[k] for k in perm]
    out_dtype = np.dtype("<f4") if mode == 2 or widen else np.dtype("<f2")
    headers = read_headers(paths)
    out = tmp / "out.bin"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stackcopy, "GATHER_GAP_BYTES", -1)
        mp.setattr(stackcopy, "_COPY_FILE_RANGE", kernel)
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            stackcopy.copy_to_file(fd, HEADER_BYTES, headers, out_dtype, np.asarray(codes), np.asarray(idx),
                                   chunk_bytes=chunk_particles * 8 * 8 * out_dtype.itemsize)
        finally:
            os.close(fd)
    want = b"".join(independent.read_particle(paths[c], i).astype(out_dtype).tobytes() for c, i in zip(codes, idx))
    assert out.read_bytes()[HEADER_BYTES:] == want
