"""Carry out a consolidation plan: prepare OUTDIR, write the stacks and the ``.cs``.

:func:`run_plan` takes OUTDIR's lock, retires an earlier different consolidation
(its ``.cs`` first), keeps the stacks of an interrupted run of the same plan that
match their sources, writes the rest on a thread pool, then the ``.cs`` files and
the ``.csg`` result group that names them, and removes the earlier run's leftovers
last. After an error it removes what it wrote;
after Ctrl-C complete stacks stay for a rerun to keep. :func:`consolidate` is
planning and running in one call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from stacktools.consolidate.outdir import (
    MANIFEST,
    STACKS_DIR,
    is_run,
    listed_outputs,
    locked,
    read_manifest,
    sweep_temps,
    unlink_own,
    write_manifest,
)
from stacktools.consolidate.plan import (
    ConsolidationPlan,
    OutputStack,
    plan_consolidation,
)
from stacktools.cs.result_group import write_result_group
from stacktools.errors import (
    DiskFullError,
    Float16RangeError,
    Hint,
    OutputError,
    OutputExistsError,
    StacktoolsError,
    VerificationError,
    describe_os_error,
)
from stacktools.formats import cs as csfile
from stacktools.formats.atomic import atomic_fd, fsync_dir
from stacktools.formats.mrc import HEADER_BYTES
from stacktools.formats.star import write_star
from stacktools.stacks import CHUNK_BYTES, Cancelled, Progress, copy_to_file, write_all
from stacktools.verify import check_stack

DEFAULT_THREADS = 4
# Below this mean size stacks are written on one thread: each of a stack's dozen
# short system calls hands Python's lock to another thread, which costs more than
# the copies overlap (100,000 stacks of 2 kB: 28.9 s on one thread, 38.7 s on
# four; 2 MiB stacks take the same time either way; 20 MB stacks 2.6x less on two).
SMALL_STACK_BYTES = 1 << 20

# _write_all's signature: (plan, todo, written, *, threads, fsync, verify, progress, chunk_bytes)
StackWriter = Callable[..., None]


@dataclass
class ConsolidateResult:
    """What :func:`consolidate` wrote (or, with ``dry_run``, would write).

    ``bytes_written`` is the total size of the output stacks; ``source_bytes`` the
    size of the source stacks the set references (what a cache copies without
    consolidation). ``paths`` is ``"relative"`` when the new ``blob/path`` values are
    relative to the project directory, ``"absolute"`` otherwise.
    """

    cs: str | None
    passthrough: str | None
    outdir: str
    project_dir: str
    layout: str
    dtype: str
    paths: str
    stacks: int
    particles: int
    bytes_written: int
    source_bytes: int
    stacks_resumed: int = 0
    bytes_resumed: int = 0
    verified: bool = False
    dry_run: bool = False
    outputs: list[dict] = field(default_factory=list)
    csg: str | None = None  # the result group for CryoSPARC's Import Result Group
    star: str | None = None  # the new STAR, when the input was one (then cs is None)
    warnings: list[str] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.bytes_written

    def to_dict(self, outputs: bool = True) -> dict:
        # Field by field: asdict's deep copy costs seconds at 100,000 outputs.
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["warnings"] = list(self.warnings)
        if outputs:
            d["outputs"] = [dict(o) for o in self.outputs]
        else:
            d.pop("outputs")
        d["saved_bytes"] = self.saved_bytes
        d["saved_fraction"] = round(self.saved_bytes / self.source_bytes, 6) if self.source_bytes else 0.0
        return d


def _disk_error(path: Path, err: OSError) -> StacktoolsError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: no space left on the device while writing")
    return OutputError(f"{path}: {describe_os_error(err).split(': ', 1)[-1]}")


def _write_stack(plan: ConsolidationPlan, s: OutputStack, *, fsync: bool, progress: Progress | None,
                 cancel: threading.Event, chunk_bytes: int) -> None:
    """Write one output stack under a temporary name and rename it into place."""
    try:
        with atomic_fd(s.path, fsync=fsync) as fd:
            try:
                write_all(fd, memoryview(s.header()), 0)
                if progress:
                    progress(HEADER_BYTES)
                copy_to_file(fd, HEADER_BYTES, plan.headers, s.dtype, s.codes, s.indices,
                             chunk_bytes=chunk_bytes, progress=progress, cancel=cancel,
                             shrink=plan.shrink)
            except Float16RangeError as err:
                err.row = int(s.rows[err.position])  # run_plan names it, where the set is known
                raise
            except OSError as err:
                raise _disk_error(s.path, err) from err
    except OutputError as err:
        # atomic_fd reports a failed flush or rename; keep the disk-full kind.
        cause = err.__cause__
        if isinstance(cause, OSError) and not isinstance(err, DiskFullError):
            raise _disk_error(s.path, cause) from cause
        raise


def _free_bytes(path: Path) -> int | None:
    p = path
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _result(plan: ConsolidationPlan, *, resumed: list[OutputStack], verified: bool, dry_run: bool) -> ConsolidateResult:
    done = {id(s) for s in resumed}
    stacks_dir = os.path.join(os.path.abspath(plan.outdir), STACKS_DIR)
    outputs = [{"path": f"{stacks_dir}/{s.path.name}", "blob_path": s.blob_path, "particles": s.count,
                "bytes": s.nbytes, "mode": s.mode, "resumed": id(s) in done}
               for s in plan.stacks]
    pt = os.path.abspath(plan.out_passthrough) if plan.out_passthrough else None
    new_file = os.path.abspath(plan.out_cs)
    star = plan.new_star is not None
    return ConsolidateResult(
        cs=None if star else new_file, star=new_file if star else None, warnings=list(plan.warnings),
        passthrough=pt,
        outdir=os.path.abspath(plan.outdir), project_dir=str(plan.project_dir), layout=plan.layout,
        dtype=plan.dtype, paths="relative" if plan.relative else "absolute",
        stacks=len(plan.stacks), particles=len(plan.new_rows),
        bytes_written=plan.nbytes,
        source_bytes=sum(h.file_size for h in plan.headers),
        stacks_resumed=len(resumed), bytes_resumed=sum(s.nbytes for s in resumed),
        verified=verified, dry_run=dry_run, outputs=outputs,
        csg=os.path.abspath(plan.out_csg) if plan.out_csg else None)


def consolidate(particles: str | os.PathLike, out: str | os.PathLike, *,
                project_dir: str | os.PathLike | None = None,
                passthrough: str | os.PathLike | None = None,
                layout: str = "per-stack", particles_per_stack: int | None = None,
                threads: int = DEFAULT_THREADS, dtype: str = "auto", mrcs: bool = False,
                verify: bool = False, dry_run: bool = False, fsync: bool = False,
                force: bool = False, chunk_bytes: int = CHUNK_BYTES,
                progress: Progress | None = None,
                allow_outside_project: bool = False, crop: int | None = None,
                fourier_crop: int | None = None, cs_format: str | None = None) -> ConsolidateResult:
    """Write stacks holding only the selected particles, and a ``.cs`` pointing at them.

    Sources are never modified and outputs may not be written onto a source or into
    a directory holding source stacks. Each stack is written under a temporary name
    (``.NAME.*.stacktools-tmp``) and renamed into place; the ``.cs`` files are
    written last. ``OUTDIR/.stacktools-consolidate.json`` (written atomically before
    any stack) records a key of the inputs and options and the expected outputs.
    A rerun of the same command locks OUTDIR, removes the temporaries of a crashed
    run, compares each stack already under its final name byte for byte with its
    sources, keeps those that match and writes the rest. When a run fails with an
    error, the stacks it wrote are removed again, so nothing is left under a final
    name; after Ctrl-C, as after ``kill -9``, complete stacks stay for the rerun to
    keep. A different consolidation into the same OUTDIR needs ``force``: it removes
    the earlier run's ``.cs`` files before any stack is touched, records the earlier
    run's other files as stale in the new manifest, and removes them once the new
    ``.cs`` is in place, so a ``.cs`` under a final name always reads its own
    particles and a completed run leaves only its own outputs. Nothing is
    flushed to the device unless ``fsync=True``: renames alone keep a killed process
    from leaving partial files, but surviving a power cut needs the flush.

    Parameters
    ----------
    particles
        The subset's particles ``.cs`` (for example Select 2D's ``particles_selected``).
    out
        Output directory (OUTDIR). Stacks go to ``OUTDIR/stacks/``, the new ``.cs``
        to ``OUTDIR/<name>_consolidated.cs``. Created if missing.
    project_dir
        CryoSPARC project directory that ``blob/path`` is relative to; defaults to
        the parent of the ``.cs`` file's job directory. New paths are relative to it
        when OUTDIR is inside it, absolute otherwise.
    passthrough
        Passthrough ``.cs`` of the subset; a matching one (same uids and row order)
        is written next to the new ``.cs``.
    layout
        ``"per-stack"``: one output stack per source stack that has selected
        particles, holding them in ascending source index order, so that runs of
        adjacent particles are copied with one read and the per-micrograph
        organisation is kept; with ``dtype="keep"`` it writes exactly
        :attr:`stacktools.size.SizeReport.consolidated_bytes`. ``"packed"``: stacks
        of ``particles_per_stack`` particles in the input's row order.
    particles_per_stack
        Packed layout only: particles per output stack (default 1000).
    threads
        Output stacks written at the same time.
    dtype
        ``"auto"`` (bit-exact copies in the source mode, except that float16
        sources of a STAR input become float32, which RELION 3.1 reads), ``"keep"``
        (bit-exact copies always; for a STAR with float16 sources the result's
        ``warnings`` say that RELION before 5.0 cannot read them), ``"float32"`` or
        ``"float16"``.
    mrcs
        Name the stacks ``.mrcs`` (RELION reads stacks only under that name);
        always so for a STAR input, whose new STAR (``OUTDIR/<name>_consolidated.star``)
        keeps both blocks and every column, with only ``rlnImageName`` changed and
        the old names in ``rlnImageOriginalName`` when the file lacked it.
    verify
        Compare every written particle with its source before writing the ``.cs``
        (with a crop or Fourier crop: with the source shrunk again, bit for bit).
    dry_run
        Validate and plan only; write nothing.
    fsync
        Flush each stack to the device before renaming it (survives a power cut).
    force
        Replace the outputs of an earlier, different consolidation in OUTDIR (its
        ``.cs`` files go first, its stacks once the new ``.cs`` is written).
    chunk_bytes
        Size of each copy buffer; memory use is a few of these per thread.
    progress
        Called with the number of bytes written as the work proceeds.
    allow_outside_project
        Accept ``blob/path`` values outside the project directory; see
        :class:`~stacktools.particles.ParticleSet`.
    crop
        Crop every particle in real space to this box about its centre
        (``stacktools.shrink``); ``blob/shape`` becomes it (for a STAR, the optics
        table's ``rlnImageSize``: :func:`stacktools.shrink.shrink_star`).
    fourier_crop
        Then Fourier-crop to this even box, smaller than the (cropped) box; the
        pixel size grows by box/N and alignment shifts in pixels are rescaled to it.

    Returns
    -------
    ConsolidateResult

    Raises
    ------
    StacktoolsError
        The specific subclass for each kind of bad input or output problem
        (:class:`~stacktools.errors.FieldError`, :class:`~stacktools.errors.OutputError`,
        :class:`~stacktools.errors.DiskFullError`, ...); a dry run raises the same.
        Another consolidation's outputs in OUTDIR without ``force`` are an
        :class:`~stacktools.errors.OutputExistsError`.
    """
    plan = plan_consolidation(particles, out, project_dir=project_dir, passthrough=passthrough,
                              layout=layout, particles_per_stack=particles_per_stack,
                              dtype=dtype, mrcs=mrcs, allow_outside_project=allow_outside_project,
                              crop=crop, fourier_crop=fourier_crop, cs_format=cs_format)
    return run_plan(plan, threads=threads, verify=verify, dry_run=dry_run, fsync=fsync,
                    force=force, chunk_bytes=chunk_bytes, progress=progress)


def run_plan(plan: ConsolidationPlan, *, threads: int = DEFAULT_THREADS, verify: bool = False,
             dry_run: bool = False, fsync: bool = False, force: bool = False,
             chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None,
             write_stacks: StackWriter | None = None) -> ConsolidateResult:
    """Carry out a plan from :func:`plan_consolidation`; see :func:`consolidate`.

    ``plan.nbytes`` tells a caller the total bytes before any is written (for a
    progress bar).

    Args:
        plan: The plan.
        threads, verify, dry_run, fsync, force, chunk_bytes, progress: As for
            :func:`consolidate`.
        write_stacks: What writes the stacks still to write, in place of this
            process's thread pool (``stacktools.cluster`` writes them on a Dask
            cluster); called as ``_write_all`` is (adding each path to ``written``
            once its stack is under its final name), once OUTDIR is
            locked and prepared. Everything else (lock, manifest, resume, the
            ``.cs`` last, cleanup after an error) stays here.

    Returns:
        What was written, or with ``dry_run`` what would be.

    Raises:
        StacktoolsError: As for :func:`consolidate`.
    """
    if dry_run:
        # The same checks as a real run, short of reading the stacks already written.
        if plan.outdir.is_dir():
            manifest = read_manifest(plan.outdir)
            _check_outdir(plan, manifest, force=force)
            _check_space(plan, _pending(plan, manifest))
        else:
            _check_creatable(plan.outdir)
            _check_space(plan, plan.stacks)
        return _result(plan, resumed=[], verified=False, dry_run=True)
    outdir = plan.outdir
    created = []  # directories this run makes, deepest first, to remove after an error
    d = outdir / STACKS_DIR
    while not d.exists() and d.parent != d:
        created.append(d)
        d = d.parent
    try:
        (outdir / STACKS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_dirs(created)
        raise OutputError(f"{outdir}: cannot create output directory: "
                          f"{err.strerror or err}") from err
    try:
        with locked(outdir):
            resumed = _execute(plan, created, threads=threads, fsync=fsync,
                               verify=verify, force=force, progress=progress,
                               chunk_bytes=chunk_bytes, write_stacks=write_stacks or _write_all)
    except KeyboardInterrupt:
        raise  # complete stacks stay for a rerun to keep, as after kill -9
    except Float16RangeError as err:
        _remove_dirs(created)
        row = getattr(err, "row", None)
        if row is None:
            raise
        # Name the row too, as every bad-input error does (also for a stack a Dask worker wrote).
        raise Float16RangeError(f"{plan.pset.where(row)}: {err}") from None
    except BaseException:
        _remove_dirs(created)
        raise
    return _result(plan, resumed=resumed, verified=verify, dry_run=False)


def _check_creatable(outdir: Path) -> None:
    """What ``mkdir -p OUTDIR`` would hit: a file on the way or a directory we cannot write."""
    d = outdir
    while not os.path.lexists(d) and d.parent != d:
        d = d.parent
    reason = None
    if not d.is_dir():
        reason = "Not a directory"
    elif not os.access(d, os.W_OK | os.X_OK):
        reason = "Permission denied"
    if reason:
        raise OutputError(f"{outdir}: cannot create output directory: {reason}")


def _execute(plan: ConsolidationPlan, created: list[Path], *, threads: int,
             fsync: bool, verify: bool, force: bool, progress: Progress | None,
             chunk_bytes: int, write_stacks: StackWriter) -> list[OutputStack]:
    """The locked part of a run; returns the stacks kept from an earlier run."""
    written: list[Path] = []
    try:
        resumed = _prepare(plan, force=force, threads=threads, fsync=fsync)
        done = {id(s) for s in resumed}
        todo = [s for s in plan.stacks if id(s) not in done]
        _check_space(plan, todo)
        write_stacks(plan, todo, written, threads=threads, fsync=fsync, verify=verify,
                     progress=progress, chunk_bytes=chunk_bytes)
        if plan.pt_rows is not None:
            csfile.write_cs(plan.out_passthrough, plan.pt_rows, fsync=fsync, format=plan.pt_format)
            written.append(plan.out_passthrough)
        if plan.new_star is not None:
            write_star(plan.out_cs, plan.new_star, float_format=None, fsync=fsync)
        else:
            _write_new_cs(plan, fsync=fsync)
        written.append(plan.out_cs)
        # Last, once every file it names is complete under its final name.
        if plan.out_csg is not None and write_result_group(
                _group_files(plan), description=f"consolidated from {plan.cs_path.name}", fsync=fsync) is not None:
            written.append(plan.out_csg)
        _retire_stale(plan, fsync=fsync)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _clean_failed(plan, written, created)
        raise
    return resumed


def _write_new_cs(plan: ConsolidationPlan, *, fsync: bool) -> None:
    """The new set's ``.cs``: a NumPy-format one a chunk of rows at a time, so memory
    stays flat however many rows the set has (CSDAT is written from the whole array)."""
    rows = plan.new_rows
    if plan.cs_format == "numpy":
        csfile.write_cs_chunks(plan.out_cs, rows.dtype, len(rows), rows.chunks(), fsync=fsync)
    else:
        csfile.write_cs(plan.out_cs, rows.whole(), fsync=fsync, format=plan.cs_format)


def _group_files(plan: ConsolidationPlan) -> list[tuple]:
    """The files of the new set for its result group: the ``.cs``, then the passthrough."""
    files = [(plan.out_cs, plan.new_rows.dtype, len(plan.new_rows))]
    if plan.pt_rows is not None:
        files.append((plan.out_passthrough, plan.pt_rows.dtype, len(plan.pt_rows)))
    return files


def _check_outdir(plan: ConsolidationPlan, manifest: dict | None, *, force: bool) -> None:
    """Refuse to replace another consolidation's outputs (or foreign files) without force."""
    if force or is_run(manifest, plan.key):
        return
    existing = [p for p in [s.path for s in plan.stacks] + plan.cs_outputs if p.exists()]
    if manifest is not None and (existing or _any_listed(plan.outdir, manifest)):
        raise OutputExistsError(f"{plan.outdir}: holds a consolidation of another set or with "
                                "other options; choose another directory", hints=[Hint("force", " or use {}")])
    if existing:
        raise OutputExistsError(f"{existing[0]}: already exists", hints=[Hint("force", " (use {} to overwrite)")])


def _any_listed(outdir: Path, manifest: dict) -> bool:
    """Whether anything the manifest lists is still in OUTDIR."""
    return any(os.path.lexists(outdir / rel) for rel in listed_outputs(outdir, manifest))


def _pending(plan: ConsolidationPlan, manifest: dict | None) -> list[OutputStack]:
    """Stacks that a run must (re)write: all but complete-looking ones of the same plan."""
    if not is_run(manifest, plan.key):
        return list(plan.stacks)
    return [s for s in plan.stacks
            if not (s.path.is_file() and s.path.stat().st_size == s.nbytes)]


def _check_space(plan: ConsolidationPlan, todo: list[OutputStack]) -> None:
    need = sum(s.nbytes for s in todo)
    free = _free_bytes(plan.outdir)
    if free is not None and need > free:
        raise DiskFullError(f"{plan.outdir}: not enough space: {need} bytes to write, "
                            f"{free} free")


def _prepare(plan: ConsolidationPlan, *, force: bool, threads: int, fsync: bool) -> list[OutputStack]:
    """Check OUTDIR against the manifest, retire an earlier run, sweep temporaries,
    and find stacks to keep.

    Before a stack of a different consolidation is touched, every ``.cs`` of that
    run is removed, then the new manifest (which lists the earlier run's files as
    stale) replaces the old one. So no ``.cs`` under a final name ever points at a
    stack being rewritten, and a killed run leaves a record of what to clean up.
    """
    manifest = read_manifest(plan.outdir)
    _check_outdir(plan, manifest, force=force)
    same = is_run(manifest, plan.key)
    if same:
        stale = list(manifest.get("stale", []))
    else:
        old = listed_outputs(plan.outdir, manifest) if manifest is not None else []
        for p in plan.cs_outputs:  # also whatever force replaces under these names
            unlink_own(plan.outdir, p.name)
        # The .csg first: it must never name a .cs that is gone; the particle files
        # (.csg, .cs, .star) go before any stack.
        for rel in sorted(old, key=lambda r: not r.endswith(".csg")):
            if rel.endswith((".cs", ".csg", ".star")):
                unlink_own(plan.outdir, rel)
        if fsync:
            fsync_dir(plan.outdir)
        stale = sorted(set(old) - set(plan.own_outputs()))
    _record(plan, stale, fsync=fsync)
    # The temporaries of a crashed run: of this plan's outputs and of stale ones.
    sweep_temps([s.path for s in plan.stacks] + plan.cs_outputs + [plan.outdir / MANIFEST]
                + [plan.outdir / rel for rel in stale])
    resumed = []
    if same:
        # Complete stacks of a killed run are kept only if they match their sources.
        pending = {id(s) for s in _pending(plan, manifest)}
        present = [s for s in plan.stacks if id(s) not in pending]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            checks = list(pool.map(lambda s: check_stack(s, plan.headers, shrink=plan.shrink), present))
        resumed = [s for s, problem in zip(present, checks) if problem is None]
    return resumed


def _retire_stale(plan: ConsolidationPlan, *, fsync: bool) -> None:
    """Once the new ``.cs`` is in place: remove the earlier runs' outputs, then their record."""
    manifest = read_manifest(plan.outdir) or {}
    stale = manifest.get("stale", [])
    if not stale:
        return
    own = set(plan.own_outputs())
    for rel in stale:
        if rel not in own:
            unlink_own(plan.outdir, rel)
    _record(plan, [], fsync=fsync)


def _record(plan: ConsolidationPlan, stale: list[str], *, fsync: bool) -> None:
    """Write OUTDIR's manifest: this plan's outputs and the earlier runs' files to remove."""
    star = plan.new_star is not None
    write_manifest(plan.outdir, key=plan.key, cs=None if star else plan.out_cs.name,
                   csg=plan.out_csg.name if plan.out_csg else None,
                   star=plan.out_cs.name if star else None,
                   passthrough=plan.out_passthrough.name if plan.out_passthrough else None,
                   stacks=[{"path": f"{STACKS_DIR}/{s.path.name}", "bytes": s.nbytes,
                            "particles": s.count} for s in plan.stacks],
                   stale=stale, fsync=fsync, shrink=plan.shrink)


def _write_all(plan: ConsolidationPlan, todo: list[OutputStack], written: list[Path], *,
               threads: int, fsync: bool, verify: bool, progress: Progress | None,
               chunk_bytes: int) -> None:
    """Write stacks on a thread pool (small stacks on this thread: see
    :data:`SMALL_STACK_BYTES`); with ``verify``, check each one once it is written."""
    cancel = threading.Event()
    lock = threading.Lock()

    def one(s: OutputStack) -> None:
        try:
            _write_stack(plan, s, fsync=fsync, progress=progress, cancel=cancel,
                         chunk_bytes=chunk_bytes)
            with lock:
                written.append(s.path)
            if verify:
                problem = check_stack(s, plan.headers, shrink=plan.shrink)
                if problem is not None:
                    raise VerificationError(problem)
        except BaseException:
            cancel.set()
            raise

    if threads <= 1 or len(todo) <= 1 or sum(s.nbytes for s in todo) < SMALL_STACK_BYTES * len(todo):
        for s in todo:
            one(s)
        return
    # Each worker takes the next stack when it is done with one: only `threads`
    # stacks are in flight, however many the plan has.
    queue = iter(todo)

    def worker() -> None:
        while not cancel.is_set():
            with lock:
                s = next(queue, None)
            if s is None:
                return
            one(s)

    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker) for _ in range(min(threads, len(todo)))]
        try:
            for f in futures:
                err = f.exception()
                if err is not None and not isinstance(err, Cancelled):
                    errors.append(err)
        except BaseException:  # Ctrl-C: stop the workers at their next run
            cancel.set()
            raise
    if errors:
        raise errors[0]


def _clean_failed(plan: ConsolidationPlan, written: list[Path], created: list[Path]) -> None:
    """After an error: remove what this run renamed into place, then its new directories.

    Stacks kept from an earlier run stay, and so does the manifest that vouches for them
    (and lists any earlier run's files still to be removed).
    """
    for path in reversed(written):  # the .csg, then the .cs, then the stacks they name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    manifest = read_manifest(plan.outdir)
    if is_run(manifest, plan.key) and not _any_listed(plan.outdir, manifest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plan.outdir / MANIFEST)
    _remove_dirs(created)


def _remove_dirs(dirs: list[Path]) -> None:
    """Remove directories (deepest first) that are empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()
