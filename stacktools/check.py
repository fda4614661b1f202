"""Check a particle set's stacks and pixels: what CryoSPARC's "Check for Corrupt
Particles" job does, for a ``.cs`` or a RELION STAR.

Every selected particle is read once, in coalesced runs of bounded size, on a few
threads (``pread`` and NumPy's reductions release the GIL). Per particle, four
passes over its pixels give the sum, the sum of squares, the minimum and the
maximum (in float64); the rarer NaN/inf test runs only on particles whose sums are
not finite. A particle is bad when it

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
from stacktools.formats.mrc import StackHeader
from stacktools.particles import ParticleSet
from stacktools.stacks import read_to_array

REASONS = ("nan", "inf", "zeros", "constant", "truncated", "shape", "index", "outlier_mean", "outlier_std")
# All cores by default: pread and NumPy's reductions release the GIL.
DEFAULT_THREADS = min(8, os.cpu_count() or 2)
CHUNK_BYTES = 16 * 2**20
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


def _row_stats(x: np.ndarray, floating: bool) -> tuple[np.ndarray, ...]:
    """Per particle of ``x`` (n, ny, nx): mean, std, min, max and NaN/inf flags."""
    flat = x.reshape(len(x), -1)
    n = flat.shape[1]
    s = np.add.reduce(flat, axis=1, dtype=np.float64)
    sq = np.einsum("ij,ij->i", flat, flat, dtype=np.float64, casting="unsafe")
    lo = flat.min(axis=1).astype(np.float64)
    hi = flat.max(axis=1).astype(np.float64)
    nan = np.zeros(len(x), bool)
    inf = np.zeros(len(x), bool)
    if floating:
        # Finite sums mean finite pixels (float16/32 squares cannot overflow float64).
        odd = np.flatnonzero(~(np.isfinite(s) & np.isfinite(sq)))
        for k in odd.tolist():
            nan[k] = bool(np.isnan(flat[k]).any())
            inf[k] = bool(np.isinf(flat[k]).any())
    with np.errstate(invalid="ignore", over="ignore"):
        mean = s / n
        std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    return mean, std, lo, hi, nan, inf


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
        dtype = h.dtype.newbyteorder("=")
        floating = dtype.kind == "f"
        step = max(1, self.chunk_bytes // h.particle_bytes)
        for a in range(0, len(rows), step):
            r, i = rows[a:a + step], idx[a:a + step]
            x = read_to_array([h], dtype, np.zeros(len(i), np.int64), i, chunk_bytes=self.chunk_bytes)
            mean, std, lo, hi, nan, inf = _row_stats(x, floating)
            self.mean[r], self.std[r] = mean, std
            self.flags["nan"][r] = nan
            self.flags["inf"][r] = inf
            finite = ~(nan | inf)
            self.flags["zeros"][r] = finite & (lo == 0) & (hi == 0)
            self.flags["constant"][r] = finite & (lo == hi) & (hi != 0)
            nbytes = len(i) * h.particle_bytes
            with self._lock:
                self.bytes_read += nbytes
            if self.progress is not None:
                self.progress(nbytes)


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
    per_stack = np.array([h.particle_bytes for h in pset.stack_headers()], dtype=np.int64)
    return int(per_stack[pset.stack_codes].sum()) if len(pset) else 0


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
    if outliers is not None and not outliers > 0:
        raise CheckError(f"outliers must be a positive number of deviations, not {outliers}")
    if threads < 1:
        raise CheckError(f"threads must be 1 or more, not {threads}")
    headers = pset.stack_headers()
    chk = _Checker(pset, headers, chunk_bytes, progress)
    # groups() are in stack order: a group's position is its stack's code. Largest
    # stacks first, so that no thread is left with a big one at the end.
    work = sorted(((k, g.rows, g.indices) for k, g in enumerate(pset.groups()) if len(g.rows)),
                  key=lambda w: -len(w[1]))
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
