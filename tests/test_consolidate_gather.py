"""Short runs of small particles: one covering read, gathered in memory.

Every byte is checked with the independent reader, for windows cut by the chunk
size (runs straddling a buffer boundary), windows ending at a stack's last
particle, duplicates, both byte orders of destination position, and both layouts.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import stacktools.stacks as stackcopy
from stacktools.consolidate import consolidate
from stacktools.formats.cs import write_cs
from stacktools.formats.mrc import HEADER_BYTES, make_header, read_headers
from stacktools.stacks import copy_to_file
from tests import independent


def _stacks(tmp_path, sizes, box, mode, seed=0):
    """Stacks of distinct random pixels (every particle different), written by hand."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if mode == 12 else np.float32
    paths = []
    for k, nz in enumerate(sizes):
        p = tmp_path / f"s{k}.mrc"
        px = rng.standard_normal((nz, box, box)).astype(dtype)
        p.write_bytes(make_header(box, box, nz, mode, 1.0) + px.tobytes())
        paths.append(p)
    return paths


def _copy(tmp_path, paths, codes, idx, chunk_bytes) -> bytes:
    headers = read_headers(paths)
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        copy_to_file(fd, HEADER_BYTES, headers, headers[0].dtype, np.asarray(codes), np.asarray(idx),
                     chunk_bytes=chunk_bytes)
    finally:
        os.close(fd)
    return out.read_bytes()[HEADER_BYTES:]


def _expected(paths, codes, idx) -> bytes:
    return b"".join(independent.read_particle(paths[c], int(i)).tobytes() for c, i in zip(codes, idx))


def _count_gathers(monkeypatch) -> list:
    calls = []
    real = stackcopy._gather

    def counted(*args, **kw):
        calls.append(args[7:9])  # the window's runs r0, r1
        return real(*args, **kw)
    monkeypatch.setattr(stackcopy, "_gather", counted)
    return calls


def test_every_other_particle_is_gathered_to_the_last_one(tmp_path, monkeypatch):
    paths = _stacks(tmp_path, [9, 5], box=8, mode=2)
    codes = [0] * 5 + [1] * 3
    idx = [0, 2, 4, 6, 8, 0, 2, 4]  # gaps of one particle, up to each stack's last
    calls = _count_gathers(monkeypatch)
    assert _copy(tmp_path, paths, codes, idx, 1 << 20) == _expected(paths, codes, idx)
    assert calls == [(0, 5), (5, 8)]  # one covering read per stack


def test_windows_are_cut_at_the_chunk_size(tmp_path, monkeypatch):
    paths = _stacks(tmp_path, [40], box=8, mode=12)
    pb = 8 * 8 * 2
    idx = list(range(0, 40, 3)) + [39]
    calls = _count_gathers(monkeypatch)
    got = _copy(tmp_path, paths, [0] * len(idx), idx, chunk_bytes=7 * pb)
    assert got == _expected(paths, [0] * len(idx), idx)
    assert len(calls) > 2  # several windows, each within 7 particles
    assert all(b - a >= 2 for a, b in calls)


def test_large_gaps_are_not_read(tmp_path, monkeypatch):
    box = 64  # 16 KiB particles: a gap of 8 is past GATHER_GAP_BYTES
    paths = _stacks(tmp_path, [30], box=box, mode=2)
    assert 8 * box * box * 4 > stackcopy.GATHER_GAP_BYTES
    idx = [0, 9, 18, 27]
    calls = _count_gathers(monkeypatch)
    assert _copy(tmp_path, paths, [0] * 4, idx, 1 << 20) == _expected(paths, [0] * 4, idx)
    assert calls == []


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
       picks=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1, exclude_max=True)), min_size=1, max_size=80),
       mode=st.sampled_from([2, 12]), chunk_particles=st.integers(1, 12), shuffle=st.booleans())
def test_copy_is_bit_exact_whatever_the_windows(tmp_path_factory, sizes, picks, mode, chunk_particles,
                                                shuffle):
    tmp = tmp_path_factory.mktemp("g")
    paths = _stacks(tmp, sizes, box=4, mode=mode)
    codes = [c % len(sizes) for c, _ in picks]
    idx = [int(f * sizes[c]) for c, (_, f) in zip(codes, picks)]  # duplicates and last particles too
    if not shuffle:  # destination in source order: gathered runs write contiguously
        order = sorted(range(len(codes)), key=lambda k: (codes[k], idx[k]))
        codes, idx = [codes[k] for k in order], [idx[k] for k in order]
    pb = 4 * 4 * (2 if mode == 12 else 4)
    got = _copy(tmp, paths, codes, idx, chunk_bytes=chunk_particles * pb)
    assert got == _expected(paths, codes, idx)


def test_consolidate_small_box_subset_both_layouts(tmp_path):
    proj = tmp_path / "P1"
    (proj / "J5").mkdir(parents=True)
    sizes = [50, 37, 64]
    paths = _stacks(proj / "J5", sizes, box=16, mode=2, seed=3)
    rng = np.random.default_rng(4)
    rows = [(k, i) for k, nz in enumerate(sizes) for i in range(nz) if rng.random() < 0.3]
    rows += [(k, nz - 1) for k, nz in enumerate(sizes)]  # every stack's last particle
    rows = [rows[j] for j in rng.permutation(len(rows))]
    names = [f"J5/{p.name}".encode() for p in paths]
    data = np.zeros(len(rows), [("uid", "<u8"), ("blob/path", "S16"), ("blob/idx", "<u4")])
    data["uid"] = np.arange(1, len(rows) + 1)
    data["blob/path"] = [names[k] for k, _ in rows]
    data["blob/idx"] = [i for _, i in rows]
    (proj / "J7").mkdir()
    cs = proj / "J7" / "sel.cs"
    write_cs(cs, data)
    for layout in ("per-stack", "packed"):
        res = consolidate(cs, tmp_path / layout, project_dir=proj, layout=layout, chunk_bytes=4096)
        independent.assert_same_particles(res.cs, proj, cs, proj)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), gap=st.sampled_from([-1, 0, 256, 96 << 10]), chunk=st.sampled_from([512, 4096, 1 << 20]))
def test_small_one_source_stack_in_one_read_is_bit_exact(tmp_path_factory, data, gap, chunk):
    """A whole small stack from one source (any order, duplicates, gaps) is read as one
    region and written with one write when it can be, and is exact either way."""
    tmp_path = tmp_path_factory.mktemp("region")
    paths = _stacks(tmp_path, [40, 5], 4, data.draw(st.sampled_from([2, 12])))
    idx = data.draw(st.lists(st.integers(0, 39), min_size=1, max_size=30))
    codes = [0] * len(idx)
    if data.draw(st.booleans()):  # a second source: never one region
        codes[-1], idx[-1] = 1, idx[-1] % 5
    old = stackcopy.GATHER_GAP_BYTES
    stackcopy.GATHER_GAP_BYTES = gap
    regions = []
    real = stackcopy._copy_region
    stackcopy._copy_region = lambda *a: regions.append(real(*a)) or regions[-1]
    try:
        got = _copy(tmp_path, paths, codes, idx, chunk)
    finally:
        stackcopy.GATHER_GAP_BYTES, stackcopy._copy_region = old, real
    assert got == _expected(paths, codes, idx)
    if gap < 0 or len(set(codes)) > 1:
        assert regions == [False]
    if gap >= 96 << 10 and len(set(codes)) == 1 and chunk >= 1 << 20:
        assert regions == [True]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=2100), cap=st.integers(1, 200))
def test_pieces_written_back_to_back_through_short_writes(tmp_path_factory, sizes, cap):
    """write_pieces puts every byte in order even when each pwritev writes at most
    ``cap`` bytes (and when there are more pieces than one pwritev takes)."""
    out = tmp_path_factory.mktemp("pieces") / "out.bin"
    data = bytes(np.random.default_rng(len(sizes)).integers(0, 256, sum(sizes), np.uint8))
    view, pieces, at = memoryview(data), [], 0
    for n in sizes:
        pieces.append(view[at:at + n])
        at += n
    real = os.pwritev
    calls = []

    def short(fd, buffers, offset):
        calls.append(len(buffers))
        return real(fd, [bytes(b"".join(buffers)[:cap])], offset)

    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        stackcopy.os.pwritev = short
        stackcopy.write_pieces(fd, pieces, 7)
    finally:
        stackcopy.os.pwritev = real
        os.close(fd)
    assert out.read_bytes() == (b"\0" * 7 + data if data else b"")
    assert max(calls) <= 1024
