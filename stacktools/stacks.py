"""Move particle images between MRC stacks with coalesced reads and bounded buffers.

A copy is described per destination position ``k``: the source stack (an index into
a list of :class:`~stacktools.formats.mrc.StackHeader`) and the particle index in it. Reads
are issued in (stack, offset) order, and each run of adjacent source particles is
one read. When source and destination share pixel mode and byte order, bytes are
moved as they are and never decoded; otherwise each chunk is decoded and converted
with NumPy. Memory stays within a few chunks whatever the size of the stacks.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from stacktools.errors import Float16RangeError, TruncatedStackError
from stacktools.formats.mrc import StackHeader, open_stack
from stacktools.shrink import ShrinkSpec

CHUNK_BYTES = 8 * 2**20
# Runs of one source this close are read together and gathered in memory: reading
# a gap this size from the page cache costs less than a system call per run
# (negative: never gather).
GATHER_GAP_BYTES = 96 * 2**10

Progress = Callable[[int], None]


class Cancelled(Exception):
    """Raised inside a copy when another worker has failed."""


def coalesce(codes: np.ndarray, idx: np.ndarray, dst: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Order particles for reading and split them into runs of adjacent particles.

    Parameters
    ----------
    codes
        Source stack of each particle.
    idx
        Index of each particle in its source stack.
    dst
        Destination position of each particle (breaks ties so duplicates keep order).

    Returns
    -------
    order, starts
        ``order`` sorts the particles by (stack, index); ``starts`` are the positions
        in that order where a new run begins, with ``len(order)`` appended.
    """
    n = len(codes)
    order = np.lexsort((dst, idx, codes))
    if n == 0:
        return order, np.zeros(1, np.int64)
    c, i = codes[order], idx[order]
    brk = np.ones(n, bool)
    brk[1:] = (c[1:] != c[:-1]) | (i[1:] != i[:-1] + 1)
    starts = np.append(np.flatnonzero(brk), n)
    return order, starts


def read_exact(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; a short file is a truncated stack."""
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise TruncatedStackError(f"{path}: truncated stack: file ends at byte "
                                      f"{offset + done}, {len(buf) - done} bytes short")
        done += got


def write_all(fd: int, buf: memoryview, offset: int) -> None:
    """``pwrite`` all of ``buf`` at ``offset``, looping over short writes."""
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


_IOV_MAX = 1024  # Linux's limit of buffers in one pwritev


def write_pieces(fd: int, pieces: list[memoryview], offset: int) -> None:
    """Write ``pieces`` back to back from ``offset``, up to ``_IOV_MAX`` in one
    ``pwritev``; after a short write, the rest goes piece by piece."""
    for k in range(0, len(pieces), _IOV_MAX):
        group = pieces[k:k + _IOV_MAX]
        done = os.pwritev(fd, group, offset)
        total = sum(map(len, group))
        if done == total:
            offset += total
            continue
        for p in group:
            if done < len(p):
                write_all(fd, p[done:], offset + done)
                done = 0
            else:
                done -= len(p)
            offset += len(p)


_COPY_FILE_RANGE = hasattr(os, "copy_file_range")
_local = threading.local()


def _buffer(name: str, nbytes: int) -> memoryview:
    """A per-thread reusable buffer: fresh pages for every stack cost page faults.

    Mapped anonymously rather than allocated: when its thread ends, the pages go back
    to the system at once, where malloc would keep them in its heap for later (and
    a consolidation's next step, writing the new ``.cs``, would add to them).
    """
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < nbytes:
        buf = memoryview(mmap.mmap(-1, max(nbytes, 1)))
        setattr(_local, name, buf)
    return buf[:nbytes]


class _FileSink:
    """Buffers destination-contiguous particles and writes them with one ``pwrite``.

    Runs whose bytes need no conversion are handed to the kernel with
    ``copy_file_range`` where the platform has it: the data then never enters
    user space.
    """

    def __init__(self, fd: int, data_offset: int, particle_bytes: int, chunk_bytes: int,
                 progress: Progress | None):
        self.fd, self.base, self.pb = fd, data_offset, particle_bytes
        self.cap = max(1, chunk_bytes // particle_bytes)
        self.buf: memoryview | None = None  # only the pread/pwrite path needs one
        self.start = 0
        self.count = 0
        self.progress = progress
        self.kernel_copy = _COPY_FILE_RANGE

    def copy_from(self, src_fd: int, offset: int, dst: int, m: int, path: str) -> bool:
        """Copy ``m`` particles in the kernel; ``False`` if it cannot be done here."""
        if not self.kernel_copy:
            return False
        self.flush()
        nbytes, done = m * self.pb, 0
        out = self.base + dst * self.pb
        while done < nbytes:
            try:
                got = os.copy_file_range(src_fd, self.fd, nbytes - done, offset + done, out + done)
            except OSError as err:
                if done == 0 and err.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                               errno.EOPNOTSUPP, errno.EBADF):
                    self.kernel_copy = False  # e.g. across file systems: use pread/pwrite
                    return False
                raise
            if got == 0:
                raise TruncatedStackError(f"{path}: truncated stack: file ends at byte "
                                          f"{offset + done}, {nbytes - done} bytes short")
            done += got
        if self.progress:
            self.progress(nbytes)
        return True

    def reserve(self, dst: int, m: int) -> memoryview:
        if self.count and (dst != self.start + self.count or self.count + m > self.cap):
            self.flush()
        if not self.count:
            self.start = dst
        if self.buf is None:
            self.buf = _buffer("write", self.cap * self.pb)
        return self.buf[self.count * self.pb:(self.count + m) * self.pb]

    def commit(self, m: int) -> None:
        self.count += m

    def flush(self) -> None:
        if self.count:
            n = self.count * self.pb
            write_all(self.fd, self.buf[:n], self.base + self.start * self.pb)
            self.count = 0
            if self.progress:
                self.progress(n)


class _ArraySink:
    """Writes particles straight into a contiguous in-memory array."""

    def __init__(self, target: np.ndarray, particle_bytes: int):
        self.mv = memoryview(target).cast("B")
        self.pb = particle_bytes
        self.cap = len(target)
        self.dst = 0

    def reserve(self, dst: int, m: int) -> memoryview:
        self.dst = dst
        return self.mv[dst * self.pb:(dst + m) * self.pb]

    def commit(self, m: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def copy_from(self, src_fd: int, offset: int, dst: int, m: int, path: str) -> bool:
        return False


class _SourceFiles:
    """Read-only descriptors of source stacks, opened on first use."""

    def __init__(self, headers: Sequence[StackHeader]):
        self.headers = headers
        self.fds: dict[int, int] = {}

    def fd(self, code: int) -> int:
        fd = self.fds.get(code)
        if fd is None:
            fd = open_stack(self.headers[code].path)
            self.fds[code] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _shrink_pool() -> ThreadPoolExecutor:
    """The threads that shrink and convert batches, one per core, shared by every copy.

    NumPy's FFT and conversions release the GIL, so a single stack uses every core
    and several stacks written at once share them rather than oversubscribe.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=SHRINK_WORKERS, thread_name_prefix="stacktools-shrink")
        return _POOL


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
SHRINK_WORKERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _put(sink, dpos: np.ndarray, data: memoryview, out_pb: int) -> None:
    """Write converted particles to their destination positions."""
    m = len(dpos)
    if m == 1 or bool(np.all(np.diff(dpos) == 1)):
        sink.reserve(int(dpos[0]), m)[:] = data
        sink.commit(m)
        return
    for j in range(m):
        sink.reserve(int(dpos[j]), 1)[:] = data[j * out_pb:(j + 1) * out_pb]
        sink.commit(1)


def _transfer(sink, headers: Sequence[StackHeader], out_dtype: np.dtype,
              codes: np.ndarray, idx: np.ndarray, dst: np.ndarray, chunk_bytes: int,
              cancel: threading.Event | None, shrink: ShrinkSpec | None = None) -> None:
    out_dtype = np.dtype(out_dtype)
    shrink = shrink or ShrinkSpec()
    out_f16 = out_dtype.kind == "f" and out_dtype.itemsize == 2
    order, starts = coalesce(codes, idx, dst)
    runs = len(starts) - 1
    gather_to = _gather_windows(headers, out_dtype, codes, idx, order, starts, chunk_bytes, bool(shrink)).tolist()
    # Each run's source, first index, bounds and whether its destinations follow one
    # another, computed once: NumPy calls and header properties per run cost as much
    # as the kernel's copy of a short run of small particles.
    heads = order[starts[:-1]]
    run_code, run_first = codes[heads].tolist(), idx[heads].tolist()
    run_start = starts.tolist()
    dst_sorted = dst[order]
    breaks = np.zeros(len(order), np.int64)  # destinations not one after the previous, so far
    np.cumsum(dst_sorted[1:] != dst_sorted[:-1] + 1, out=breaks[1:])
    run_consecutive = (breaks[starts[1:] - 1] == breaks[starts[:-1]]).tolist()
    per_source: dict[int, tuple] = {}
    sources = _SourceFiles(headers)
    scratch: memoryview | None = None
    # Shrunk or range-checked batches in flight on the pool, oldest first, written in
    # that order; at most one per worker, so memory stays a few chunks per copy.
    pending: deque = deque()
    batches = 0

    def drain(keep: int) -> None:
        while len(pending) > keep:
            dpos, out_pb, fut = pending.popleft()
            _put(sink, dpos, memoryview(fut.result()).cast("B"), out_pb)

    r = 0
    try:
        while r < runs:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            code = run_code[r]
            src = per_source.get(code)
            if src is None:
                h = headers[code]
                # A conversion to float16 is range-checked, never a silent infinity; a
                # float16 source is already float16 and is copied as it is.
                checked = bool(shrink) or (out_f16 and h.dtype.itemsize != 2)
                same = h.dtype == out_dtype and not shrink
                in_pb = h.particle_bytes
                box = shrink.out_box(h.nx)
                out_pb = box * box * out_dtype.itemsize if shrink else h.nx * h.ny * out_dtype.itemsize
                step = max(1, chunk_bytes // max(in_pb, out_pb))
                src = per_source[code] = (h, sources.fd(code), checked, same, in_pb, out_pb, step,
                                          h.data_offset)
            h, fd, checked, same, in_pb, out_pb, step, data_offset = src
            if gather_to[r] > r + 1:
                drain(0)  # the sink takes writes in order
                scratch = _gather(sink, fd, h, order, starts, idx, dst, r, gather_to[r], scratch,
                                  chunk_bytes)
                r = gather_to[r]
                continue
            first, lo, hi, consecutive = run_first[r], run_start[r], run_start[r + 1], run_consecutive[r]
            r += 1
            for p in range(0, hi - lo, step):
                dpos = dst_sorted[lo + p:min(hi, lo + p + step)]
                m = len(dpos)
                offset = data_offset + (first + p) * in_pb
                if checked:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    # One buffer per batch in flight, reused: a batch's buffer comes round
                    # again only after that batch has been drained.
                    raw = _buffer(f"shrink{batches % (SHRINK_WORKERS + 1)}", m * in_pb)
                    batches += 1
                    read_exact(fd, raw, offset, h.path)
                    batch = np.frombuffer(raw, dtype=h.dtype).reshape(m, h.ny, h.nx)
                    pending.append((dpos, out_pb, _shrink_pool().submit(
                        _shrunk, shrink, batch, out_dtype, h.path, first + p, dpos)))
                    drain(SHRINK_WORKERS)
                    continue
                drain(0)
                contiguous = consecutive or m == 1 or bool(np.all(np.diff(dpos) == 1))
                if same and contiguous:
                    if sink.copy_from(fd, offset, int(dpos[0]), m, h.path):
                        continue
                    # Read straight into the write buffer: no copy, no decode.
                    view = sink.reserve(int(dpos[0]), m)
                    read_exact(fd, view, offset, h.path)
                    sink.commit(m)
                    continue
                if scratch is None or len(scratch) < step * max(in_pb, out_pb):
                    scratch = _buffer("read", max(chunk_bytes, step * max(in_pb, out_pb)))
                raw = scratch[:m * in_pb]
                read_exact(fd, raw, offset, h.path)
                if same:
                    data = raw
                else:
                    conv = np.frombuffer(raw, dtype=h.dtype).astype(out_dtype)
                    data = memoryview(conv).cast("B")
                _put(sink, dpos, data, out_pb)
        drain(0)
        sink.flush()
    finally:
        for *_, fut in pending:
            fut.cancel()
        sources.close()


def _shrunk(shrink: ShrinkSpec, batch: np.ndarray, out_dtype: np.dtype, path: str, start: int,
            dpos: np.ndarray) -> np.ndarray:
    """One batch shrunk and converted; a float16 range error names its source particle
    and carries its destination position (``position``) for the caller to name the row."""
    try:
        return np.ascontiguousarray(shrink.apply(batch, out_dtype, lambda k: f"{path}: particle {start + k}"))
    except Float16RangeError as err:
        err.position = int(dpos[err.particle])
        raise


def _gather_windows(headers: Sequence[StackHeader], out_dtype: np.dtype, codes: np.ndarray,
                    idx: np.ndarray, order: np.ndarray, starts: np.ndarray, chunk_bytes: int,
                    shrink: bool) -> np.ndarray:
    """For each run, the run after the last one that one covering read serves with it.

    Runs of one source whose gaps are at most :data:`GATHER_GAP_BYTES` and whose span
    fits in a chunk are read with one ``pread`` and gathered in memory: for short runs
    of small particles a system call per run costs more than reading the gaps. Only
    copies without conversion or shrink are gathered. ``out[r] == r + 1`` means run
    ``r`` is copied on its own.
    """
    runs = len(starts) - 1
    out = np.arange(1, runs + 1)
    if runs < 2 or shrink or GATHER_GAP_BYTES < 0:
        return out
    first = order[starts[:-1]]
    run_code = codes[first]
    lo = idx[first]
    hi = lo + np.diff(starts)  # one past each run's last particle
    # Only the sources this copy reads: a plan's stacks share one list of every source.
    used, used_at = np.unique(run_code, return_inverse=True)
    pb = np.array([headers[k].particle_bytes if headers[k].dtype == out_dtype else 0
                   for k in used.tolist()], np.int64)[used_at.reshape(-1)]
    joins = np.flatnonzero((run_code[1:] == run_code[:-1]) & (pb[1:] > 0)
                           & ((lo[1:] - hi[:-1]) * pb[1:] <= GATHER_GAP_BYTES))
    if not len(joins):
        return out
    # Walk the joinable pairs, closing a window where a pair does not join or the
    # window's span would pass a chunk.
    lo_l, hi_l, pb_l = lo.tolist(), hi.tolist(), pb.tolist()
    joinable = np.zeros(runs, bool)
    joinable[joins] = True
    joinable_l = joinable.tolist()
    r = int(joins[0])
    while r < runs - 1:
        if not joinable_l[r]:
            r += 1
            continue
        w = r
        cap = max(1, chunk_bytes // pb_l[r])
        while w < runs - 1 and joinable_l[w] and hi_l[w + 1] - lo_l[r] <= cap:
            w += 1
        out[r] = w + 1
        r = w + 1
    return out


def _gather(sink, fd: int, h: StackHeader, order: np.ndarray, starts: np.ndarray, idx: np.ndarray,
            dst: np.ndarray, r0: int, r1: int, scratch: memoryview | None, chunk_bytes: int) -> memoryview:
    """Copy runs ``r0..r1-1`` of one source with one read of the region covering them."""
    pb = h.particle_bytes
    lo = int(idx[order[starts[r0]]])
    hi = int(idx[order[starts[r1] - 1]]) + 1
    if scratch is None or len(scratch) < (hi - lo) * pb:
        scratch = _buffer("read", max(chunk_bytes, (hi - lo) * pb))
    region = scratch[:(hi - lo) * pb]
    read_exact(fd, region, h.offset_of(lo), h.path)
    for r in range(r0, r1):
        sel = order[starts[r]:starts[r + 1]]
        m = len(sel)
        at = (int(idx[sel[0]]) - lo) * pb
        _put(sink, dst[sel], region[at:at + m * pb], pb)
    return scratch


def copy_to_file(fd: int, data_offset: int, headers: Sequence[StackHeader],
                 out_dtype: np.dtype, codes: np.ndarray, idx: np.ndarray, *,
                 chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None,
                 cancel: threading.Event | None = None, shrink: ShrinkSpec | None = None) -> None:
    """Write particles ``k = 0..n-1`` into an open stack file.

    Parameters
    ----------
    fd
        Writable descriptor of the destination stack.
    data_offset
        Byte offset of destination particle 0 (the header length).
    headers
        Source stacks; ``codes`` index into this list.
    out_dtype
        Pixel dtype of the destination, with its byte order.
    codes, idx
        For destination particle ``k``: its source stack and index in that stack.
    chunk_bytes
        Upper bound of each buffer (and so of the memory used).
    progress
        Called with the number of bytes written after each write.
    cancel
        When set by another thread, the copy stops with :class:`Cancelled`.
    shrink
        Crop and Fourier crop applied to each batch (``stacktools.shrink``); the
        destination's box is then ``shrink.out_box(nx)``.
    """
    codes = np.asarray(codes, np.int64)
    idx = np.asarray(idx, np.int64)
    if not len(codes):
        return
    h = headers[int(codes[0])]
    box = shrink.out_box(h.nx) if shrink else None
    pb = (box * box if box else h.nx * h.ny) * np.dtype(out_dtype).itemsize
    if not shrink and _copy_region(fd, data_offset, h, out_dtype, codes, idx, chunk_bytes, progress, cancel):
        return
    sink = _FileSink(fd, data_offset, pb, chunk_bytes, progress)
    _transfer(sink, headers, out_dtype, codes, idx, np.arange(len(codes)), chunk_bytes, cancel, shrink)


def _copy_region(fd: int, data_offset: int, h: StackHeader, out_dtype: np.dtype, codes: np.ndarray,
                 idx: np.ndarray, chunk_bytes: int, progress: Progress | None,
                 cancel: threading.Event | None) -> bool:
    """A whole small stack from one source in two system calls, if it is one: a read
    of the region covering its particles (gaps within :data:`GATHER_GAP_BYTES` per
    particle) and one ``pwritev`` of its runs of consecutive particles, as slices of
    the region (no gathering copy in Python). ``False`` (nothing done) for any other
    copy. Most of the cost of 100,000s of tiny stacks is per call, not per byte.

    (Writing the runs straight from a map of the source, which reads no gaps, was
    slower: the kernel faults the mapped pages in one at a time.)"""
    n, pb = len(idx), h.particle_bytes
    if h.dtype != out_dtype or GATHER_GAP_BYTES < 0 or n * pb > chunk_bytes:
        return False
    lo, hi = int(idx.min()), int(idx.max()) + 1
    span = (hi - lo) * pb
    if span > chunk_bytes or span - n * pb > GATHER_GAP_BYTES * max(1, n - 1) \
            or int(codes.min()) != int(codes.max()):
        return False
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    fd_src = open_stack(h.path)
    try:
        region = _buffer("read", max(chunk_bytes, span))[:span]
        read_exact(fd_src, region, h.offset_of(lo), h.path)
    finally:
        os.close(fd_src)
    rel = idx - lo
    cut = np.flatnonzero(np.diff(rel) != 1) + 1
    begin = (rel[np.concatenate(([0], cut))] * pb).tolist()
    end = ((rel[np.concatenate((cut, [n])) - 1] + 1) * pb).tolist()
    write_pieces(fd, [region[b:e] for b, e in zip(begin, end)], data_offset)
    if progress:
        progress(n * pb)
    return True


def read_to_array(headers: Sequence[StackHeader], out_dtype: np.dtype, codes: np.ndarray,
                  idx: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES,
                  shrink: ShrinkSpec | None = None) -> np.ndarray:
    """Read particles from several stacks into one ``(n, ny, nx)`` array.

    Reads are coalesced and issued in (stack, offset) order; row ``k`` of the result
    is particle ``idx[k]`` of stack ``codes[k]``, converted to ``out_dtype`` (and
    shrunk by ``shrink``: the same pixels :func:`copy_to_file` writes, whatever the batches).
    """
    codes = np.asarray(codes, np.int64)
    idx = np.asarray(idx, np.int64)
    if not len(codes):
        return np.zeros((0, 0, 0), out_dtype)
    h = headers[int(codes[0])]
    ny, nx = (shrink.out_box(h.ny), shrink.out_box(h.nx)) if shrink else (h.ny, h.nx)
    out = np.empty((len(codes), ny, nx), dtype=out_dtype)
    sink = _ArraySink(out, out[0].nbytes)
    _transfer(sink, headers, out_dtype, codes, idx, np.arange(len(codes)), chunk_bytes, None, shrink)
    return out
