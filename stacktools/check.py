"""Check a particle set's stacks and pixels: what CryoSPARC's "Check for Corrupt Particles" finds.

Every selected particle is read once (coalesced reads, bounded batches, stacks
checked in parallel threads: reads and NumPy reductions release the GIL). Found:

- stacks that are missing, truncated, longer than their header says, or whose box
  disagrees with ``blob/shape`` (every row of such a stack is bad);
- particles with NaN or ±inf;
- particles that are all zeros, or constant;
- with ``outliers=K``: particles whose mean or std lies more than K robust
  deviations (1.4826·MAD about the median) from the set's.

Works on a :class:`~stacktools.particles.ParticleSet`, so on whatever it opens.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from stacktools.formats import cs as csfile
from stacktools.formats.atomic import check_output
from stacktools.formats.mrc import StackHeader
from stacktools.particles import ParticleSet
from stacktools.stacks import read_to_array

DEFAULT_OUTLIER_K = 6.0
BATCH_PARTICLES = 256
MAD_TO_SIGMA = 1.4826

REASONS = ("stack", "nonfinite", "zeros", "constant", "outlier")


@dataclass
class Problem:
    """One bad row: why, and where."""

    row: int
    stack: str
    index: int
    reason: str
    detail: str

    def to_dict(self) -> dict:
        return {"row": self.row, "stack": self.stack, "index": self.index,
                "reason": self.reason, "detail": self.detail}


@dataclass
class CheckResult:
    """What ``stacktools check`` found: bad rows in row order, and per-stack problems."""

    source: str
    particles: int
    stacks: int
    bytes_read: int
    problems: list[Problem] = field(default_factory=list)
    stack_problems: dict[str, str] = field(default_factory=dict)
    clean_cs: str | None = None

    @property
    def bad_rows(self) -> np.ndarray:
        return np.unique(np.array([p.row for p in self.problems], np.int64))

    @property
    def clean(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return {r: sum(p.reason == r for p in self.problems) for r in REASONS}

    def to_dict(self) -> dict:
        return {"source": self.source, "particles": self.particles, "stacks": self.stacks,
                "bytes_read": self.bytes_read, "bad_particles": int(len(self.bad_rows)),
                "counts": self.counts(), "stack_problems": self.stack_problems,
                "problems": [p.to_dict() for p in self.problems], "clean_cs": self.clean_cs}


def _stack_problem(h: StackHeader, box: tuple[int, int] | None) -> str | None:
    if h.file_size < h.expected_size:
        return (f"truncated: {h.file_size} bytes on disk, header declares {h.nz} x "
                f"{h.ny}x{h.nx} = {h.expected_size} bytes")
    if h.file_size != h.expected_size:
        return f"header declares {h.expected_size} bytes but the file holds {h.file_size}"
    if box is not None and box != (h.ny, h.nx):
        return f"stack box {h.ny}x{h.nx} does not match blob/shape {box[0]}x{box[1]}"
    return None


def _stats(headers: list[StackHeader], code: int, idx: np.ndarray) -> np.ndarray:
    """Per particle: [nonfinite, max, min, mean, std], read in bounded batches."""
    out = np.empty((len(idx), 5), np.float64)
    order = np.argsort(idx, kind="stable")
    for s in range(0, len(idx), BATCH_PARTICLES):
        sel = order[s:s + BATCH_PARTICLES]
        x = read_to_array(headers, np.float32, np.full(len(sel), code), idx[sel])
        flat = x.reshape(len(sel), -1)
        finite = np.isfinite(flat)
        out[sel, 0] = (~finite).sum(axis=1)
        safe = np.where(finite, flat, 0)
        out[sel, 1] = safe.max(axis=1)
        out[sel, 2] = safe.min(axis=1)
        out[sel, 3] = safe.mean(axis=1, dtype=np.float64)
        out[sel, 4] = safe.std(axis=1, dtype=np.float64)
    return out


def _add_outliers(stats: np.ndarray, good: np.ndarray, k: float, add) -> None:
    """Flag rows whose mean or std is more than ``k`` robust deviations from the median."""
    far = np.zeros(len(stats), bool)
    for col, name in ((3, "mean"), (4, "std")):
        v = stats[good, col]
        if not len(v):
            continue
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * MAD_TO_SIGMA
        if mad > 0:
            dev = np.abs(stats[:, col] - med) / mad
            hit = good & (dev > k) & ~far
            add(np.flatnonzero(hit), "outlier",
                lambda r, col=col, name=name, med=med, mad=mad:
                f"{name} {stats[r, col]:.4g} is {abs(stats[r, col] - med) / mad:.1f} robust deviations "
                f"from the set's {med:.4g}")
            far |= hit


def check_set(pset: ParticleSet, *, outliers: float | None = None, threads: int | None = None,
              write_clean: str | os.PathLike | None = None) -> CheckResult:
    """Read every selected particle once and report the bad ones; see the module docstring."""
    if write_clean is not None:  # refused before any reading
        check_output(write_clean, [pset.source] + list(pset.stack_paths), overwrite=True)
    headers = pset.stack_headers()
    groups = pset.groups()
    n = len(pset)
    shape = None
    if n and "blob/shape" in (pset.data.dtype.names or ()):
        shape = np.asarray(pset.data["blob/shape"]).reshape(n, -1)
    result = CheckResult(str(pset.source), n, len(headers), 0)
    stats = np.full((n, 5), np.nan)
    readable: list[int] = []
    for k, (h, g) in enumerate(zip(headers, groups)):
        box = None if shape is None or not len(g.rows) else (int(shape[g.rows[0], 0]), int(shape[g.rows[0], -1]))
        why = _stack_problem(h, box)
        if why is None and len(g.indices) and int(g.indices.max()) >= h.nz:
            why = f"blob/idx {int(g.indices.max())} past the end ({h.nz} particles)"
        if why is not None:
            result.stack_problems[h.path] = why
            for r, i in zip(g.rows, g.indices):
                result.problems.append(Problem(int(r), h.path, int(i), "stack", why))
        else:
            readable.append(k)

    def one(k: int) -> None:
        g = groups[k]
        if len(g.rows):
            stats[g.rows] = _stats(headers, k, g.indices)

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        list(pool.map(one, readable))
    result.bytes_read = sum(headers[k].particle_bytes * len(groups[k].rows) for k in readable)
    codes = pset.stack_codes
    idx = np.asarray(pset.data["blob/idx"], np.int64)

    def add(rows: np.ndarray, reason: str, detail) -> None:
        for r in rows:
            r = int(r)
            result.problems.append(Problem(r, headers[codes[r]].path, int(idx[r]), reason, detail(r)))

    ok = ~np.isnan(stats[:, 3])
    nonfinite = np.flatnonzero(ok & (stats[:, 0] > 0))
    add(nonfinite, "nonfinite", lambda r: f"{int(stats[r, 0])} NaN or inf pixels")
    const = ok & (stats[:, 0] == 0) & (stats[:, 1] == stats[:, 2])
    add(np.flatnonzero(const & (stats[:, 1] == 0)), "zeros", lambda r: "all pixels zero")
    add(np.flatnonzero(const & (stats[:, 1] != 0)), "constant", lambda r: f"all pixels {stats[r, 1]:g}")
    if outliers is not None:
        _add_outliers(stats, ok & (stats[:, 0] == 0) & ~const, outliers, add)
    result.problems.sort(key=lambda p: (p.row, REASONS.index(p.reason)))
    if write_clean is not None:
        keep = np.ones(n, bool)
        keep[result.bad_rows] = False
        result.clean_cs = str(csfile.write_cs(write_clean, pset.data[keep]))
    return result

