"""``check`` and ``verify`` on a Dask cluster: one task per stack, the results merged on the client.

Check: each task checks one stack's rows as a set of their own
(:func:`stacktools.check.check_particles`), and the client merges the rows'
flags and statistics and judges outliers over the whole set
(:func:`stacktools.check.finish_report`), so the report is the one a local check
gives. Verify: the client compares the fields as :func:`stacktools.verify.verify`
always does; the pixels of each new stack are compared with their sources by one
task (:func:`stacktools.verify.compare_stack`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from stacktools.check import (
    CHUNK_BYTES,
    REASONS,
    CheckReport,
    StackProblem,
    check_particles,
    finish_report,
    require_positive_outliers,
    stacks_largest_first,
)
from stacktools.cluster.tasks import Progress, TaskReporter, run_tasks
from stacktools.particles import ParticleSet
from stacktools.verify import Comparer, StackComparison, compare_stack

STACK_FIELDS = ("blob/path", "blob/idx", "blob/shape")  # all that checking a stack reads of its rows


@dataclass
class StackRows:
    """One stack's rows as a check task receives them: the fields it reads, and how
    the set resolves its paths."""

    data: np.ndarray
    project_dir: str
    source: str | None
    allow_outside_project: bool


def check_stack_task(job: StackRows, report: TaskReporter, *, chunk_bytes: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, list[str]], list[StackProblem], int]:
    """On a worker: check one stack's rows; their statistics, bad rows (positions in
    ``job.data``), the stack's problems and the bytes read."""
    sub = ParticleSet(job.data, job.project_dir, job.source, allow_outside_project=job.allow_outside_project)
    r = check_particles(sub, threads=1, chunk_bytes=chunk_bytes, progress=report)
    return r.mean, r.std, r.bad, r.stack_problems, r.bytes_read


def _stack_rows(pset: ParticleSet, rows: np.ndarray) -> np.ndarray:
    names = [f for f in STACK_FIELDS if f in (pset.data.dtype.names or ())]
    out = np.empty(len(rows), [(n, pset.data.dtype[n]) for n in names])
    for n in names:
        out[n] = pset.data[n][rows]
    return out


def check_on_cluster(client: Any, pset: ParticleSet, *, outliers: float | None = None,
                     chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None) -> CheckReport:
    """:func:`stacktools.check.check_particles` with each stack checked by one task on ``client``'s cluster.

    Raises:
        The errors of :func:`~stacktools.check.check_particles` (a missing or
        unreadable stack before any task runs).
    """
    require_positive_outliers(outliers)
    headers = pset.stack_headers()
    n = len(pset)
    work = [(k, rows) for k, rows, _ in stacks_largest_first(pset)]
    jobs = [StackRows(_stack_rows(pset, rows), os.fspath(pset.project_dir), pset.source,
                      pset.allow_outside_project) for _, rows in work]
    outcomes = run_tasks(client, check_stack_task, jobs, label="check", what=lambda i: str(headers[work[i][0]].path),
                         progress=progress, sizes=[len(rows) * headers[k].particle_bytes for k, rows in work],
                         kwargs={"chunk_bytes": chunk_bytes})
    mean, std = np.full(n, np.nan), np.full(n, np.nan)
    flags = {r: np.zeros(n, bool) for r in REASONS}
    problems: list[tuple[int, StackProblem]] = []
    bytes_read = 0
    for (k, rows), (m, s, bad, probs, nbytes) in zip(work, outcomes):
        mean[rows], std[rows] = m, s
        for local, reasons in bad.items():
            for r in reasons:
                flags[r][rows[local]] = True
        problems += [(k, p) for p in probs]
        bytes_read += nbytes
    problems.sort(key=lambda kp: kp[0])  # in stack order, as a local check lists them
    return finish_report(pset, len(headers), flags, mean, std, [p for _, p in problems], bytes_read, outliers)


def compare_stack_task(job: StackComparison, report: TaskReporter, *, chunk_bytes: int) -> tuple:
    """On a worker: :func:`stacktools.verify.compare_stack` for one stack."""
    return compare_stack(job, chunk_bytes=chunk_bytes, progress=report)


def stack_comparer(client: Any) -> Comparer:
    """A ``compare`` for :func:`stacktools.verify.verify` that compares each stack as one task."""
    def compare(jobs: list[StackComparison], *, threads: int, chunk_bytes: int,
                progress: Progress | None) -> list:
        return run_tasks(client, compare_stack_task, jobs, label="verify", what=lambda i: str(jobs[i].new.path),
                         progress=progress, sizes=[len(j.rows) * j.new.particle_bytes for j in jobs],
                         kwargs={"chunk_bytes": chunk_bytes})
    return compare

