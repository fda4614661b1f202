"""Check a particle set's stacks and pixels: what CryoSPARC's "Check for Corrupt
Particles" job does, for a ``.cs`` or a RELION STAR.

Every selected particle is read once: each thread takes whole stacks, reads a
batch of a few MiB (one ``pread`` per run of adjacent particles) into a reused
buffer, and runs NumPy's reductions on it while it is still in cache (they release
the GIL). Per particle one pass of two dot products gives the sum and the sum of
squares, in float32 blocks added in float64; they carry the NaN/inf and zero tests
too, and only the rare particles they leave in doubt (a mean large against the
spread, a constant, NaN/inf, squares out of float32's range) are looked at again.
float16 pixels are widened to float32 through their bits, never through float64.

A particle is bad when it

* holds NaN or ±inf (``nan``, ``inf``);
* is all zeros (``zeros``) or one value throughout (``constant``);
* lies, wholly or in part, past the end of a truncated stack (``truncated``);
* is in a stack whose box disagrees with the row's ``blob/shape`` (``shape``), or has
  an index past the end of its stack (``index``);
* with ``outliers=K``, has a mean or a standard deviation more than ``K`` robust
  deviations (1.4826 × the median absolute deviation) from the set's median
  (``outlier_mean``, ``outlier_std``; computed over the particles not already bad).

A stack file longer than its header declares is reported, but its particles are
still checked (some writers pad files).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stacktools.errors import StacktoolsError
from stacktools.formats.mrc import StackHeader, open_stack
from stacktools.particles import ParticleSet
from stacktools.stacks import read_exact

REASONS = ("nan", "inf", "zeros", "constant", "truncated", "shape", "index", "outlier_mean", "outlier_std")
# All cores by default: pread and NumPy's reductions release the GIL.
DEFAULT_THREADS = min(8, os.cpu_count() or 2)
# Small enough that a batch is still in cache for the passes after its read.
CHUNK_BYTES = 2 * 2**20
MAD_TO_SIGMA = 1.4826  # a normal distribution's sigma per median absolute deviation

Progress = Callable[[int], None]


class CheckError(StacktoolsError):
    """A check cannot run as asked (a bad option)."""


@dataclass
class StackProblem:
    """Something wrong with a stack file as a whole."""

    path: str
    problem: str
    rows: int  # selected rows in the stack

    def to_dict(self) -> dict:
        return {"path": self.path, "problem": self.problem, "rows": self.rows}


@dataclass
class CheckReport:
    """What :func:`check_particles` found.

    ``bad`` maps each bad row (its position in the set) to its reasons, in
    :data:`REASONS` order. ``mean`` and ``std`` are every row's pixel statistics
    (NaN where the particle could not be read or is not finite).
    """

    source: str
    particles: int
    stacks: int
    bytes_read: int
    stack_problems: list[StackProblem]
    bad: dict[int, list[str]]
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    outliers: float | None = None

    @property
    def clean(self) -> bool:
        return not self.bad and not self.stack_problems

    @property
    def counts(self) -> dict[str, int]:
        """Bad particles per reason (a particle may count under several)."""
        out = dict.fromkeys(REASONS, 0)
        for reasons in self.bad.values():
            for r in reasons:
                out[r] += 1
        return {r: n for r, n in out.items() if n}

    def bad_rows(self) -> np.ndarray:
        return np.array(sorted(self.bad), dtype=np.int64)

    def to_dict(self, pset: ParticleSet | None = None, limit: int | None = None) -> dict:
        rows = sorted(self.bad)
        listed = rows if limit is None else rows[:limit]
        stacks = [str(p) for p in pset.stack_paths] if pset is not None else None
        detail = []
        for r in listed:
            item = {"row": r, "reasons": self.bad[r]}
            if pset is not None:
                item.update(_describe(pset, stacks, r))
            detail.append(item)
        return {"source": self.source, "particles": self.particles, "stacks": self.stacks,
                "bytes_read": self.bytes_read, "clean": self.clean, "bad_particles": len(self.bad),
                "counts": self.counts, "outliers": self.outliers,
                "stack_problems": [p.to_dict() for p in self.stack_problems],
                "bad": detail, "bad_listed": len(detail)}


def _describe(pset: ParticleSet, stacks: list[str], row: int) -> dict:
    code = int(pset.stack_codes[row])
    out = {"stack": stacks[code], "index": int(pset.data["blob/idx"][row])}
    if "uid" in (pset.data.dtype.names or ()):
        out["uid"] = int(pset.data["uid"][row])
    return out


# Pixels summed in float32 before the sums go to float64: float32 keeps SIMD speed,
# the short blocks keep its rounding near 1e-7 of the block's magnitude.
_BLOCK = 1024
_F16_MAG = 0x7FFF
_F16_INF = 0x7C00  # float16 magnitude bits of inf; anything above is a NaN
_F16_TO_F32 = np.float32(2.0 ** 112)  # float16 exponent bias 15 -> float32 bias 127
_ONES = np.ones(_BLOCK, np.float32)
_vecdot = getattr(np, "vecdot", None)  # NumPy >= 2; add.reduce and einsum below it


def _sums(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``d`` (float32), the sum and the sum of squares in float64.

    Whole blocks go through ``vecdot`` (a BLAS dot per block, several times NumPy's
    float32 ``add.reduce``), their results are added in float64; the last partial
    block is summed in float64 directly.
    """
    n = d.shape[1]
    main = n - n % _BLOCK
    s = np.zeros(len(d))
    q = np.zeros(len(d))
    if main:
        blocks = d[:, :main].reshape(len(d), -1, _BLOCK)
        if _vecdot is not None:
            bs, bq = _vecdot(blocks, _ONES), _vecdot(blocks, blocks)
        else:
            bs, bq = np.add.reduce(blocks, axis=2), np.einsum("ijk,ijk->ij", blocks, blocks)
        s += bs.sum(axis=1, dtype=np.float64)
        q += bq.sum(axis=1, dtype=np.float64)
    if main < n:
        rest = d[:, main:]
        s += np.add.reduce(rest, axis=1, dtype=np.float64)
        q += np.einsum("ij,ij->i", rest, rest, dtype=np.float64)
    return s, q


# A particle whose squared mean is at most this share of its mean square is summed
# as it is: E[y²] − mean² then keeps all but 2 bits of the sums' precision. Others
# (raw counts, a constant) are summed less an estimate of their mean.
_UNSHIFTED_MAX = 0.25
_SAMPLE = 512  # pixels per particle that estimate its mean, to choose that shift
_TINY_MEAN_SQUARE = 1e-30  # float32's smallest normal is 1.2e-38: squares below it lose bits


def _shift_of(y: np.ndarray) -> np.ndarray:
    """Per particle, what to subtract before summing: 0 for a particle whose mean is
    small against its spread, else its mean estimated from its first pixels (a
    constant particle's own value, exactly). A sample with NaN or inf gives 0."""
    sample = y[:, :_SAMPLE]  # contiguous: a strided sample costs a cache miss a pixel
    with np.errstate(invalid="ignore", over="ignore"):
        smean = sample.mean(axis=1, dtype=np.float64)
        smeansq = np.einsum("ij,ij->i", sample, sample, dtype=np.float64) / sample.shape[1]
        c = np.where(smean * smean > _UNSHIFTED_MAX * smeansq, smean, 0.0).astype(np.float32)
    c[~np.isfinite(c)] = 0.0
    return c


def _row_stats(y: np.ndarray, d: np.ndarray, finite: np.ndarray | None = None
               ) -> tuple[np.ndarray, ...]:
    """Per particle of ``y`` (n, pixels) float32: mean, std, whether it is all zeros,
    one value throughout, and finite; ``d`` is scratch of ``y``'s shape.

    One pass of two dot products gives the sum and the sum of squares, of the pixels
    as they are or (a batch with a particle whose mean is large against its spread)
    less each such particle's estimated mean, so that the mean does not cancel the
    variance away. The sums carry the NaN/inf test (a NaN or an infinity makes one
    of them non-finite; a particle whose squares overflow float32, past ~1e19, is
    then told apart and summed in float64) and the zero and constant tests (a sum of
    squares of 0, confirmed on the pixels; pixels so small that their squares
    underflow are summed in float64). A constant particle's std is exactly 0.
    ``finite`` overrides the NaN/inf test (float16 converted through its bits, whose
    infinities are not infinities in ``y``).
    """
    m, n = y.shape
    zeros = np.zeros(m, bool)
    constant = np.zeros(m, bool)
    finite = np.ones(m, bool) if finite is None else finite.copy()  # until shown otherwise
    c = _shift_of(y)
    with np.errstate(invalid="ignore", over="ignore"):
        if c.any():
            np.subtract(y, c[:, None], out=d)  # exact for the rows whose shift is 0
            z = d
        else:
            z = y
        s, q = _sums(z)
        summed = np.isfinite(s) & np.isfinite(q)
        mean = s / n
        meansq = q / n
        # A shift the sample chose badly (rare): sum that particle again less its mean.
        for k in np.flatnonzero(summed & finite & (mean * mean > _UNSHIFTED_MAX * meansq)).tolist():
            c[k] = np.float32(c[k] + mean[k])
            row = d[k]
            np.subtract(y[k], c[k], out=row)
            sk, qk = _sums(row[None])
            mean[k], meansq[k], s[k], q[k] = sk[0] / n, qk[0] / n, sk[0], qk[0]
        std = np.sqrt(np.maximum(meansq - mean * mean, 0.0))
        mean += c
    # rare: a constant (less its shift, all zeros), all zeros, or pixels so small
    # (below ~1e-19) that their float32 squares underflow; float64 has the range
    for k in np.flatnonzero(finite & summed & (meansq < _TINY_MEAN_SQUARE)).tolist():
        v = y[k].astype(np.float64)
        mean[k], std[k] = v.mean(), v.std()
        zeros[k] = not y[k].any()
        constant[k] = not zeros[k] and bool((v == v[0]).all())
        if constant[k]:
            std[k] = 0.0
    for k in np.flatnonzero(finite & ~summed).tolist():  # rare: NaN or inf, or float32 squares overflowed
        v = y[k].astype(np.float64)
        if np.isfinite(v).all():
            mean[k], std[k] = v.mean(), v.std()
            constant[k] = bool((v == v[0]).all())
        else:
            finite[k] = False
    mean[~finite] = np.nan
    std[~finite] = np.nan
    return mean, std, zeros, constant, finite


def _float16_to_float32(u: np.ndarray, out: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """float16 bits ``u`` (uint16) as float32 in ``out``, through their bits.

    NumPy's own cast is a scalar loop (~1 GB/s); shifting the bits into place and
    rescaling the exponent is exact for every finite value, subnormals included,
    at about twice that. ``mag`` (uint32 scratch) is left holding each pixel's
    magnitude bits shifted by 13, from which the caller tells inf and NaN apart.
    Returns per row whether every pixel is finite.
    """
    a = out.view(np.uint32)
    np.copyto(a, u)
    np.left_shift(a, 13, out=a)  # sign at bit 28, exponent and mantissa below
    np.bitwise_and(a, _F16_MAG << 13, out=mag)
    np.bitwise_and(a, 0x8000 << 13, out=a)
    np.left_shift(a, 3, out=a)
    np.bitwise_or(a, mag, out=a)
    np.multiply(out, _F16_TO_F32, out=out)
    return np.maximum.reduce(mag, axis=1) < (_F16_INF << 13)


_local = threading.local()


def _scratch(name: str, nbytes: int) -> np.ndarray:
    """A per-thread reused buffer, 64-byte aligned: fresh pages per batch cost page
    faults, and a batch that stays in cache is read again at cache speed."""
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < nbytes:
        raw = np.empty(nbytes + 64, np.uint8)
        start = (-raw.ctypes.data) % 64
        buf = raw[start:start + nbytes]
        setattr(_local, name, buf)
    return buf[:nbytes]


class _Checker:
    """The per-stack work of :func:`check_particles`, run on several threads."""

    def __init__(self, pset: ParticleSet, headers: list[StackHeader], chunk_bytes: int,
                 progress: Progress | None):
        n = len(pset)
        self.pset, self.headers, self.chunk_bytes, self.progress = pset, headers, chunk_bytes, progress
        self.mean = np.full(n, np.nan)
        self.std = np.full(n, np.nan)
        self.flags = {r: np.zeros(n, bool) for r in REASONS}
        self.problems: list[tuple[int, StackProblem]] = []  # (stack code, problem)
        self.bytes_read = 0
        self._lock = threading.Lock()
        self.shape = (np.asarray(pset.data["blob/shape"]).reshape(n, -1)
                      if "blob/shape" in (pset.data.dtype.names or ()) and n else None)

    def problem(self, code: int, text: str, rows: int) -> None:
        with self._lock:
            self.problems.append((code, StackProblem(self.headers[code].path, text, rows)))

    def stack(self, code: int, rows: np.ndarray, idx: np.ndarray) -> None:
        h = self.headers[code]
        if self.shape is not None:
            wrong = (self.shape[rows, 0] != h.ny) | (self.shape[rows, -1] != h.nx)
            if wrong.any():
                self.flags["shape"][rows[wrong]] = True
                self.problem(code, f"box {h.ny}x{h.nx} in the header, blob/shape "
                                f"{self.shape[rows[wrong][0]].tolist()} in the metadata", int(wrong.sum()))
                keep = ~wrong
                rows, idx = rows[keep], idx[keep]
        past = idx >= h.nz
        self.flags["index"][rows[past]] = True
        rows, idx = rows[~past], idx[~past]
        if h.file_size < h.expected_size:
            # Particles wholly inside the file are still checked.
            whole = (h.file_size - h.data_offset) // h.particle_bytes if h.file_size > h.data_offset else 0
            cut = idx >= whole
            self.problem(code, f"truncated: {h.file_size:,} bytes on disk, the header declares "
                            f"{h.expected_size:,} ({h.nz} particles; {max(whole, 0)} complete)", int(cut.sum()))
            self.flags["truncated"][rows[cut]] = True
            rows, idx = rows[~cut], idx[~cut]
        elif h.file_size > h.expected_size:
            self.problem(code, f"{h.file_size - h.expected_size:,} bytes beyond what the header declares",
                         len(rows))
        self._pixels(h, rows, idx)

    def _pixels(self, h: StackHeader, rows: np.ndarray, idx: np.ndarray) -> None:
        if not len(rows):
            return
        order = np.argsort(idx, kind="stable")
        rows, idx = rows[order], idx[order]
        dtype, pb, npix = h.dtype, h.particle_bytes, h.nx * h.ny
        f16 = dtype == np.dtype("=f2")
        # The sums run on rows that start 64-byte aligned, so that a particle's sums
        # never depend on where in a batch it lands: float32 whose particles are a
        # multiple of 64 bytes are summed where they were read, the rest converted
        # into such rows first.
        as_is = dtype == np.dtype("=f4") and pb % 64 == 0
        stride = -(-npix // 16) * 16
        step = max(1, self.chunk_bytes // pb)
        fd = open_stack(h.path)
        try:
            for a in range(0, len(rows), step):
                r, i = rows[a:a + step], idx[a:a + step]
                m = len(i)
                raw = _scratch("raw", m * pb)
                _read_runs(fd, h, i, raw)
                x = raw.view(dtype).reshape(m, npix)
                finite = None
                if as_is:
                    y = x
                else:
                    y = _scratch("work", m * stride * 4).view(np.float32).reshape(m, stride)[:, :npix]
                    if f16:
                        mag = _scratch("diff", m * stride * 4).view(np.uint32).reshape(m, stride)[:, :npix]
                        finite = _float16_to_float32(x.view(np.uint16), y, mag)
                    else:
                        np.copyto(y, x)  # exact: int8/int16/uint16 and any byte order fit float32
                d = _scratch("diff", m * stride * 4).view(np.float32).reshape(m, stride)[:, :npix]
                mean, std, zeros, constant, finite = _row_stats(y, d, finite)
                nan = np.zeros(m, bool)
                inf = np.zeros(m, bool)
                for k in np.flatnonzero(~finite).tolist():  # rare: which of NaN and inf
                    if f16:
                        bits = x[k].view(np.uint16) & _F16_MAG
                        nan[k], inf[k] = bool((bits > _F16_INF).any()), bool((bits == _F16_INF).any())
                    else:
                        nan[k], inf[k] = bool(np.isnan(y[k]).any()), bool(np.isinf(y[k]).any())
                self.mean[r], self.std[r] = mean, std
                self.flags["nan"][r] = nan
                self.flags["inf"][r] = inf
                self.flags["zeros"][r] = zeros
                self.flags["constant"][r] = constant
                nbytes = m * pb
                with self._lock:
                    self.bytes_read += nbytes
                if self.progress is not None:
                    self.progress(nbytes)
        finally:
            os.close(fd)


def _read_runs(fd: int, h: StackHeader, idx: np.ndarray, out: np.ndarray) -> None:
    """Read particles ``idx`` (sorted) of ``h`` into ``out`` back to back: one
    ``pread`` per run of adjacent indices."""
    pb = h.particle_bytes
    mv = memoryview(out)
    starts = np.flatnonzero(np.diff(idx) != 1) + 1
    bounds = [0, *starts.tolist(), len(idx)]
    first = idx[bounds[:-1]].tolist()
    for (a, b), f in zip(zip(bounds[:-1], bounds[1:]), first):
        read_exact(fd, mv[a * pb:b * pb], h.offset_of(f), h.path)


def _flag_outliers(flags: dict[str, np.ndarray], mean: np.ndarray, std: np.ndarray, k: float) -> None:
    bad = np.zeros(len(mean), bool)
    for r in REASONS:
        bad |= flags[r]
    good = ~bad & np.isfinite(mean) & np.isfinite(std)
    for name, values in (("outlier_mean", mean), ("outlier_std", std)):
        v = values[good]
        if len(v) < 3:
            continue
        med = np.median(v)
        mad = np.median(np.abs(v - med)) * MAD_TO_SIGMA
        if mad == 0:
            continue  # most particles share one value: no scale to judge by
        out = np.zeros(len(values), bool)
        out[good] = np.abs(v - med) > k * mad
        flags[name] |= out


def bytes_to_read(pset: ParticleSet) -> int:
    """The pixel bytes a check of ``pset`` reads (for a progress bar's total)."""
    return int(pset.header_table().particle_bytes[pset.stack_codes].sum()) if len(pset) else 0


def require_positive_outliers(outliers: float | None) -> None:
    """Raise :class:`CheckError` unless ``outliers`` is None or a positive number."""
    if outliers is not None and not outliers > 0:
        raise CheckError(f"outliers must be a positive number of deviations, not {outliers}")


def stacks_largest_first(pset: ParticleSet) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(stack code, rows, indices)`` of each stack with selected rows, the largest
    first, so that no worker is left with a big one at the end."""
    # groups() are in stack order: a group's position is its stack's code.
    return sorted(((k, g.rows, g.indices) for k, g in enumerate(pset.groups()) if len(g.rows)),
                  key=lambda w: -len(w[1]))


def check_particles(pset: ParticleSet, *, outliers: float | None = None, threads: int = DEFAULT_THREADS,
                    chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None) -> CheckReport:
    """Read every selected particle once and report the bad ones and the bad stacks.

    Args:
        pset: The particle set (a ``.cs`` or STAR, see :class:`ParticleSet`).
        outliers: Also flag particles whose mean or standard deviation lies more
            than this many robust deviations from the set's median; None: don't.
        threads: Stacks checked at the same time.
        chunk_bytes: Bytes read at a time per thread (memory stays within
            ``threads`` × a few of these, whatever the size of the set).
        progress: Called with the number of bytes read after each chunk.

    Returns:
        :class:`CheckReport`.

    Raises:
        CheckError: ``outliers`` is not positive, or ``threads`` < 1.
        MissingStackError, MrcHeaderError: A stack is missing or not a readable MRC
            stack (the set cannot be checked; nothing is reported).
    """
    require_positive_outliers(outliers)
    if threads < 1:
        raise CheckError(f"threads must be 1 or more, not {threads}")
    headers = pset.stack_headers()
    chk = _Checker(pset, headers, chunk_bytes, progress)
    work = stacks_largest_first(pset)
    if threads == 1 or len(work) < 2:
        for w in work:
            chk.stack(*w)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda w: chk.stack(*w), work))
    problems = [p for _, p in sorted(chk.problems, key=lambda cp: cp[0])]  # in stack order
    return finish_report(pset, len(headers), chk.flags, chk.mean, chk.std, problems, chk.bytes_read, outliers)


def finish_report(pset: ParticleSet, stacks: int, flags: dict[str, np.ndarray], mean: np.ndarray,
                  std: np.ndarray, problems: list[StackProblem], bytes_read: int,
                  outliers: float | None) -> CheckReport:
    """The report of a whole set from its per-row ``flags`` (one array per reason) and
    statistics, however the stacks were read: outliers are judged here, over every row."""
    if outliers is not None:
        _flag_outliers(flags, mean, std, outliers)
    any_bad = np.zeros(len(pset), bool)
    for r in REASONS:
        any_bad |= flags[r]
    bad = {int(row): [r for r in REASONS if flags[r][row]] for row in np.flatnonzero(any_bad)}
    return CheckReport(source=pset.source or "dataset", particles=len(pset), stacks=stacks,
                       bytes_read=bytes_read, stack_problems=problems, bad=bad,
                       mean=mean, std=std, outliers=outliers)


def write_clean(pset: ParticleSet, report: CheckReport, out: str | os.PathLike, *,
                overwrite: bool = False) -> Path:
    """Write ``pset`` without the rows ``report`` found bad, in the input's format
    (see :func:`stacktools.api.write_clean`)."""
    from stacktools.formats.atomic import check_output

    check_output(out, [pset.source] if pset.source else [], overwrite=overwrite)
    keep = np.ones(len(pset), bool)
    keep[report.bad_rows()] = False
    if pset.star is not None:
        from stacktools.formats.star import write_star

        blocks = dict(pset.star.blocks)
        table = pset.star.particles
        blocks[pset.star.particles_key] = table.iloc[np.flatnonzero(keep)].reset_index(drop=True)
        return write_star(out, blocks, overwrite=True, float_format=None)
    from stacktools.cs.dataset import CsDataset
    from stacktools.cs.rows import take

    return CsDataset(take(pset.data, keep), source=pset.source).save(out, overwrite=True)
