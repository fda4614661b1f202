"""Consolidation on a Dask cluster: each output stack is one task.

:func:`stack_writer` gives :func:`stacktools.consolidate.run_plan` a
``write_stacks`` that sends the stacks still to write to the workers; everything
else stays on the client as in a local run: OUTDIR's lock and manifest, keeping
an interrupted run's stacks, the ``.cs`` (STAR, ``.csg``) written last, once every
task has reported success, and the cleanup after an error. Workers write into the
shared OUTDIR under temporary names and rename, exactly as the local path does,
so a task rerun after its worker died rewrites the same bytes under the same name,
and the result is byte for byte that of a local run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stacktools.cluster.tasks import TaskReporter, run_tasks
from stacktools.consolidate.outdir import sweep_temps
from stacktools.consolidate.plan import ConsolidationPlan, OutputStack
from stacktools.consolidate.run import StackWriter, _write_stack
from stacktools.errors import VerificationError
from stacktools.formats.mrc import StackHeader
from stacktools.shrink import ShrinkSpec
from stacktools.stacks import Progress
from stacktools.verify import check_stack


@dataclass
class StackJob:
    """One output stack as its task receives it: the stack (its ``codes`` index
    ``headers``, only the sources it reads) and the crop, not the whole plan.

    It has the ``headers`` and ``shrink`` that the one-stack writer reads from a plan.
    """

    stack: OutputStack
    headers: list[StackHeader]
    shrink: ShrinkSpec


def stack_job(plan: ConsolidationPlan, s: OutputStack) -> StackJob:
    """The task's description of stack ``s`` of ``plan``."""
    used, codes = np.unique(s.codes, return_inverse=True)
    return StackJob(dataclasses.replace(s, codes=codes.reshape(-1).astype(np.int64)),
                    [plan.headers[int(k)] for k in used], plan.shrink)


def write_stack_task(job: StackJob, report: TaskReporter, *, fsync: bool, verify: bool,
                     chunk_bytes: int) -> str:
    """On a worker: write one stack atomically (and with ``verify`` check it); its path."""
    _write_stack(job, job.stack, fsync=fsync, progress=report, cancel=report, chunk_bytes=chunk_bytes)
    if verify:
        problem = check_stack(job.stack, job.headers, shrink=job.shrink)
        if problem is not None:
            raise VerificationError(problem)
    return str(job.stack.path)


def stack_writer(client: Any) -> StackWriter:
    """A ``write_stacks`` for :func:`~stacktools.consolidate.run_plan` that writes on ``client``'s cluster.

    ``threads`` is not used: the cluster's workers and their threads decide how
    many stacks are written at once.
    """
    def write(plan: ConsolidationPlan, todo: list[OutputStack], written: list[Path], *, threads: int,
              fsync: bool, verify: bool, progress: Progress | None, chunk_bytes: int) -> None:
        if not todo:
            return
        run_tasks(client, write_stack_task, [stack_job(plan, s) for s in todo], label="consolidate",
                  what=lambda i: str(todo[i].path), progress=progress, sizes=[s.nbytes for s in todo],
                  on_done=lambda i: written.append(todo[i].path),
                  kwargs={"fsync": fsync, "verify": verify, "chunk_bytes": chunk_bytes})
        # What workers killed mid-stack left behind (their task was rerun elsewhere).
        sweep_temps([s.path for s in todo])
    return write
