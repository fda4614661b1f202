"""The library's verbs, in one file: what a script or a notebook calls.

Each verb says what it takes, returns and raises, and calls the one module that
does the work (imported when first used, so ``import stacktools`` stays cheap).
Every error is a :class:`~stacktools.errors.StacktoolsError` with a one-line message.

===========================  ================================================
files                        :func:`read_cs`, :func:`write_cs`, :func:`read_star`,
                             :func:`write_star`, :func:`read_header`, :func:`read_particle`
.cs datasets                 :func:`load_cs`, :func:`cs_info`, :func:`cs_to_star`,
                             :func:`star_to_cs`
particle sets                :func:`open_particles`
size                         :func:`formula_bytes`, :func:`size_particles`
consolidation                :func:`plan_consolidation`, :func:`consolidate_particles`,
                             :func:`verify_consolidated`
checking                     :func:`check_particles`
SSD cache                    :func:`open_cache`, :func:`sync_particles`
placement                    :func:`load_nodes`, :func:`place_set`, :func:`place_queue`,
                             :func:`simulate_queue`
a Dask cluster               :func:`connect_cluster` (then ``client=`` of consolidate,
                             verify and check), :func:`prestage_sets`
===========================  ================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import numpy as np
    from distributed import Client as DaskClient  # stacktools[dask]; imported only when a client is passed

    from stacktools.cache import Cache, Inventory, SyncResult
    from stacktools.check import CheckReport
    from stacktools.cluster.prestage import PrestageResult
    from stacktools.consolidate import ConsolidateResult, ConsolidationPlan
    from stacktools.cs.dataset import CsDataset
    from stacktools.formats.mrc import StackHeader
    from stacktools.particles import ParticleSet
    from stacktools.placement import Node, Placement, QueuedSet, QueuePlan, QueueStep
    from stacktools.size import SizeReport
    from stacktools.verify import VerifyResult

__all__ = ["read_cs", "write_cs", "read_star", "write_star", "read_header", "read_particle",
           "load_cs", "cs_info", "cs_to_star", "star_to_cs", "open_particles",
           "formula_bytes", "size_particles", "connect_cluster", "plan_consolidation", "consolidate_particles",
           "verify_consolidated", "check_particles", "write_clean",
           "open_cache", "sync_particles", "load_nodes", "place_set", "place_queue",
           "simulate_queue", "prestage_sets"]

PathLike = str | os.PathLike


# ---- files ---------------------------------------------------------------------------

def read_cs(path: PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read a CryoSPARC ``.cs`` file.

    Args:
        path: The ``.cs`` (NumPy format; CSDAT with the ``stacktools[csdat]`` extra).
        mmap: Map the file instead of reading it (NumPy format only).

    Returns:
        A structured array with the file's exact dtype.

    Raises:
        CsFormatError: The file is not a readable ``.cs`` (truncated, pickled, unknown).
    """
    from stacktools.formats.cs import read_cs as read
    return read(path, mmap=mmap)


def write_cs(path: PathLike, data: np.ndarray, *, overwrite: bool = True, fsync: bool = True) -> Path:
    """Write a structured array as a NumPy-format ``.cs``, atomically.

    Args:
        path: Destination.
        data: A 1-D structured array.
        overwrite: Replace an existing file.
        fsync: Flush to the device before returning.

    Returns:
        ``path``.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false; DiskFullError when full.
    """
    from stacktools.formats.cs import write_cs as write
    return write(path, data, overwrite=overwrite, fsync=fsync)


def read_star(path: PathLike) -> dict:
    """Read every data block of a STAR file.

    Returns:
        Block name -> pandas DataFrame.

    Raises:
        StarFormatError: The file is not readable STAR, or has no data blocks.
    """
    from stacktools.formats.star import read_star as read
    return read(path)


def write_star(path: PathLike, blocks: dict, *, overwrite: bool = True) -> Path:
    """Write STAR data blocks (name -> DataFrame), atomically.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false.
    """
    from stacktools.formats.star import write_star as write
    return write(path, blocks, overwrite=overwrite)


def read_header(path: PathLike) -> StackHeader:
    """Read an MRC stack's header (one 1024-byte read).

    Returns:
        :class:`~stacktools.formats.mrc.StackHeader`: box, count, mode, offsets, file size.

    Raises:
        MrcHeaderError: Not an MRC header stacktools can read; MissingStackError if absent.
    """
    from stacktools.formats.mrc import read_header as read
    return read(path)


def read_particle(path: PathLike, index: int, header: StackHeader | None = None) -> np.ndarray:
    """Read particle ``index`` (0-based) of a stack in one read.

    Args:
        path: The stack.
        index: 0-based particle index (``blob/idx``).
        header: The stack's header, if already read.

    Returns:
        A ``(ny, nx)`` array in the stack's own dtype.

    Raises:
        IndexOutOfRangeError: ``index`` is past the last particle; TruncatedStackError.
    """
    from stacktools.formats.mrc import read_particle as read
    return read(path, index, header)


# ---- .cs datasets ------------------------------------------------------------------------

def load_cs(path: PathLike, *, passthrough: PathLike | None = None, mmap: bool = False) -> CsDataset:
    """Load a ``.cs`` as a :class:`~stacktools.cs.dataset.CsDataset`.

    Args:
        path: The ``.cs``.
        passthrough: A passthrough ``.cs`` inner-joined on uid (``path``'s fields win).
        mmap: Map the file instead of reading it.

    Raises:
        CsFormatError: Unreadable file; FieldError if the passthrough lacks uids.
    """
    from stacktools.cs.dataset import CsDataset
    return CsDataset.load(path, passthrough=passthrough, mmap=mmap)


def cs_info(path: PathLike, *, stats: bool = True) -> dict:
    """What a ``.cs`` holds: rows, fields by group, stacks, box, pixel size, statistics.

    Returns:
        The dict that ``stacktools cs info --json`` prints.

    Raises:
        CsFormatError: Unreadable file.
    """
    from stacktools.cs.info import cs_info as info
    return info(path, stats=stats)


def cs_to_star(cs_path: PathLike, star_path: PathLike, *, passthrough: PathLike | None = None,
               mrcs: bool = False, link_mrcs: bool | PathLike = False,
               prefix_map: tuple[str, str] | None = None, invert_y: bool = False,
               project_dir: PathLike | None = None, overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> dict:
    """Convert a ``.cs`` (with its passthrough) to a RELION 3.1 particle STAR file.

    Args:
        mrcs: Name stacks ``.mrcs`` in ``rlnImageName``, as RELION expects.
        link_mrcs: Also make the ``.mrcs`` names exist: ``True`` links
            ``x.mrcs -> x.mrc`` beside each stack, a directory puts the links there
            (and names them there in the STAR file). Implies ``mrcs``.
        prefix_map: ``(old, new)``: stack and micrograph paths starting with
            ``old`` start with ``new`` in the STAR file.
        invert_y: ``rlnCoordinateY`` = height - y, as pyem's csparc2star does by
            default (for micrographs from another motion correction).
        project_dir: Where the stacks are, for ``link_mrcs`` (default: above the
            ``.cs`` file's job directory).
        progress: Called with the number of particle rows each time a chunk is written.

    Returns:
        ``{"particles": N, "optics_groups": M, "columns": C}``, plus
        ``"links"`` (made, already there) with ``link_mrcs``.

    Raises:
        FieldError: A field RELION needs is missing, or an optics group mixes values;
        OutputError (exists, no overwrite, or a link name holds another file).
    """
    from stacktools.cs.relion import cs_to_star as convert
    from stacktools.formats.atomic import check_output
    check_output(star_path, [cs_path, passthrough], overwrite=overwrite)
    links = None
    if link_mrcs:
        from stacktools.mrcs_links import link_mrcs as make_links
        mrcs = True
        links = make_links(cs_path, passthrough=passthrough, project_dir=project_dir,
                           into=None if link_mrcs is True else Path(link_mrcs))
    result = convert(cs_path, star_path, passthrough=passthrough, mrcs=mrcs, prefix_map=prefix_map,
                     invert_y=invert_y, stack_names=links.names if links else None,
                     overwrite=overwrite, progress=progress)
    if links is not None:
        result["links"] = {"made": links.made, "existing": links.existing}
    return result


def star_to_cs(star_path: PathLike, cs_path: PathLike, *, uid_column: str | None = None,
               psize: float | None = None, box: int | None = None,
               micrograph_shape: tuple[int, int] | None = None, project_dir: PathLike | None = None,
               allow_premultiplied: bool = False, format: str = "numpy",
               overwrite: bool = False) -> np.ndarray:
    """Convert a RELION particle STAR file (3.0 or 3.1) to a ``.cs``.

    Columns that have no ``.cs`` field are named in one
    :class:`~stacktools.errors.DroppedColumnsWarning` (``warnings`` module).

    Args:
        uid_column: Take uids from this column instead of hashing image names.
        psize: Pixel size (Å) for a file that gives none.
        box: Box (pixels) for a file without ``rlnImageSize`` whose stacks are absent.
        micrograph_shape: ``(height, width)`` for coordinates whose micrographs are absent.
        project_dir: Where ``rlnImageName`` and ``rlnMicrographName`` paths start
            (default: above the STAR file's ``Type/jobNNN/`` directory, else the
            current directory).
        allow_premultiplied: Convert CTF-premultiplied images (CryoSPARC cannot
            tell they are).
        format: ``"numpy"`` or ``"csdat"``.

    Returns:
        The dataset written.

    Raises:
        StarFormatError: Unreadable STAR, missing or unrepresentable columns, a
        repeated image name; MissingStackError: stacks or micrographs needed for
        a size are absent; OutputError.
    """
    from functools import partial

    from stacktools.cs.relion import star_to_cs as convert
    from stacktools.particles import default_project_dir, resolve_blob_path, stack_key
    root = Path(project_dir) if project_dir is not None else default_project_dir(star_path)
    return convert(star_path, cs_path, uid_column=uid_column, psize=psize, box=box,
                   micrograph_shape=micrograph_shape, resolve=partial(resolve_blob_path, root),
                   allow_premultiplied=allow_premultiplied, format=format, overwrite=overwrite,
                   stack_key=stack_key)


# ---- particle sets -----------------------------------------------------------------------

def open_particles(cs_path: PathLike, project_dir: PathLike | None = None,
                   passthrough: PathLike | None = None, *,
                   allow_outside_project: bool = False) -> ParticleSet:
    """Open a particle set: a ``.cs`` or RELION particle STAR whose rows resolve their
    stacks in a project.

    Args:
        cs_path: The particles ``.cs``, or a RELION 3.0/3.1+ particle STAR.
        project_dir: The project directory (default: for a ``.cs`` the parent of the
            job directory; for a STAR the directory above its ``Type/jobNNN/``
            directory, else the current directory).
        passthrough: A passthrough ``.cs`` inner-joined on uid.
        allow_outside_project: Accept ``blob/path`` values that lead outside the project.

    Returns:
        :class:`~stacktools.particles.ParticleSet`.

    Raises:
        CsFormatError, FieldError, StarFormatError: Not a particle ``.cs`` or STAR;
        PathEscapeError: a stack path leads outside the project.
    """
    from stacktools.particles import ParticleSet
    return ParticleSet.open(cs_path, project_dir, passthrough, allow_outside_project=allow_outside_project)


# ---- size ----------------------------------------------------------------------------------

def formula_bytes(box: int, count: int, nsymbt: int = 128, header_length: int = 1024) -> int:
    """The CryoSPARC guide's estimate ``(4·box² + nsymbt + header_length)·count``.

    Raises:
        ValueError: A negative or zero box or count.
    """
    from stacktools.size import formula_bytes as formula
    return formula(box, count, nsymbt, header_length)


def size_particles(pset: ParticleSet, *, validate: bool = True) -> SizeReport:
    """Exact bytes of a particle set from its stacks' headers: whole referenced stacks
    (what a cache copies) against the selected particles alone (consolidated).

    Args:
        pset: From :func:`open_particles`.
        validate: Also check indices, boxes and truncation.

    Returns:
        :class:`~stacktools.size.SizeReport`.

    Raises:
        MissingStackError, TruncatedStackError, IndexOutOfRangeError, BoxMismatchError.
    """
    from stacktools.size import size_particles as size
    return size(pset, validate=validate)


# ---- consolidation ---------------------------------------------------------------------------

def connect_cluster(address: str):
    """Connect to a Dask cluster (``stacktools[dask]``), for the ``client=`` of the verbs below.

    Args:
        address: ``local:N`` (a LocalCluster of N single-threaded worker processes
            here), a scheduler file (``dask scheduler --scheduler-file``) or a
            scheduler address (``tcp://host:8786``).

    Returns:
        A context manager giving a ``distributed.Client``; leaving it closes the
        client and any cluster it started.

    Raises:
        ClusterError: ``distributed`` is missing, or the scheduler cannot be reached.
    """
    from stacktools.cluster.tasks import connect
    return connect(address)


def plan_consolidation(particles: PathLike, out: PathLike, *, project_dir: PathLike | None = None,
                       passthrough: PathLike | None = None, layout: str = "per-stack",
                       particles_per_stack: int | None = None, dtype: str = "auto",
                       mrcs: bool = False, allow_outside_project: bool = False, crop: int | None = None,
                       fourier_crop: int | None = None, cs_format: str | None = None) -> ConsolidationPlan:
    """Decide what a consolidation would write, and write nothing.

    Args:
        particles: The subset's ``.cs`` or RELION particle STAR (then a new STAR is
            written, and the stacks are ``.mrcs``).
        out: Output directory (its ``stacks/`` gets the new stacks).
        project_dir: See :func:`open_particles`.
        passthrough: The subset's passthrough ``.cs``, rewritten alongside.
        layout: ``"per-stack"`` (one output per source stack) or ``"packed"``.
        particles_per_stack: Particles per output stack with ``"packed"``.
        dtype: ``"auto"`` (``"keep"``, except that a STAR's float16 sources become
            float32, which RELION 3.1 reads), ``"keep"``, ``"float32"`` or ``"float16"``.
        mrcs: Name the stacks ``.mrcs`` (RELION's extension).
        allow_outside_project: See :func:`open_particles`.
        crop, fourier_crop: See :func:`consolidate_particles`.
        cs_format: ``"numpy"`` or ``"csdat"`` for the new ``.cs`` files (default: each
            input's own format, so a CSDAT input gives CSDAT).

    Returns:
        :class:`~stacktools.consolidate.ConsolidationPlan`: run it with
        :func:`stacktools.consolidate.run_plan`.

    Raises:
        The input errors of :func:`open_particles` and :func:`size_particles`;
        SourceOverwriteError: ``out`` would overwrite a source.
    """
    from stacktools.consolidate import plan_consolidation as plan
    return plan(particles, out, project_dir=project_dir, passthrough=passthrough, layout=layout,
                particles_per_stack=particles_per_stack, dtype=dtype, mrcs=mrcs,
                allow_outside_project=allow_outside_project, crop=crop, fourier_crop=fourier_crop,
                cs_format=cs_format)


def consolidate_particles(particles: PathLike, out: PathLike, *, project_dir: PathLike | None = None,
                          passthrough: PathLike | None = None, layout: str = "per-stack",
                          particles_per_stack: int | None = None, threads: int = 4,
                          dtype: str = "auto", mrcs: bool = False, verify: bool = False,
                          dry_run: bool = False, fsync: bool = False, force: bool = False,
                          progress: Callable[[int], None] | None = None,
                          allow_outside_project: bool = False, crop: int | None = None,
                          fourier_crop: int | None = None, cs_format: str | None = None,
                          client: DaskClient | None = None) -> ConsolidateResult:
    """Rewrite a subset's stacks so that only its particles remain, with a new ``.cs``.

    Bit-exact (or converted as ``dtype`` asks), bounded memory, atomic and resumable:
    a rerun after a kill finishes the job; ``force`` replaces another run's output.

    Args:
        particles, out, project_dir, passthrough, layout, particles_per_stack, dtype,
        mrcs, allow_outside_project, cs_format: See :func:`plan_consolidation`.
        crop: Crop each particle about its centre to this box (pixel size kept).
        fourier_crop: Then Fourier-crop to this even box (pixel size × box/N, shifts
            rescaled, mean kept); see :mod:`stacktools.shrink`.
        threads: Output stacks written at the same time (one at a time when they
            average under 1 MiB, where threads only wait for each other).
        verify: Read every particle back against its source afterwards.
        dry_run: Plan and check (space, outdir), write nothing.
        fsync: Flush every output to the device.
        force: Replace a different earlier consolidation in ``out``.
        progress: Called with byte counts as stacks are written.
        client: A ``distributed.Client`` (``stacktools[dask]``): write each stack as
            one task on its cluster, whose workers see ``out`` at the same path; the
            ``.cs`` is still written here, last, and the result is the same bytes.

    Returns:
        :class:`~stacktools.consolidate.ConsolidateResult` (what ``consolidate --json`` prints).

    Raises:
        The errors of :func:`plan_consolidation`; OutputError (another run in ``out``
        without ``force``); DiskFullError; VerificationError with ``verify``;
        ShrinkError (a crop size that cannot apply); Float16RangeError (a value
        beyond float16's range with ``dtype="float16"``; nothing is left at a final name).
    """
    from stacktools.consolidate import consolidate, plan_consolidation, run_plan

    if client is None:
        return consolidate(particles, out, project_dir=project_dir, passthrough=passthrough, layout=layout,
                           particles_per_stack=particles_per_stack, threads=threads, dtype=dtype,
                           mrcs=mrcs, verify=verify, dry_run=dry_run, fsync=fsync, force=force,
                           progress=progress, allow_outside_project=allow_outside_project,
                           crop=crop, fourier_crop=fourier_crop, cs_format=cs_format)
    from stacktools.cluster.consolidate import stack_writer

    plan = plan_consolidation(particles, out, project_dir=project_dir, passthrough=passthrough, layout=layout,
                              particles_per_stack=particles_per_stack, dtype=dtype, mrcs=mrcs,
                              allow_outside_project=allow_outside_project, crop=crop,
                              fourier_crop=fourier_crop, cs_format=cs_format)
    return run_plan(plan, threads=threads, verify=verify, dry_run=dry_run, fsync=fsync, force=force,
                    progress=progress, write_stacks=stack_writer(client))


def verify_consolidated(new_cs: PathLike, against: PathLike, *, project_dir: PathLike | None = None,
                        threads: int = 4, progress: Callable[[int], None] | None = None,
                        allow_outside_project: bool = False, client: DaskClient | None = None,
                        crop: int | None = None, fourier_crop: int | None = None) -> VerifyResult:
    """Check every particle and field of a consolidated set against the set it came from.

    A set consolidated with a crop, a Fourier crop or float16 is checked against its
    sources shrunk and converted the same way, bit for bit; the crop and Fourier
    crop are read from the manifest consolidate left beside ``new_cs``.

    Args:
        new_cs: The consolidated ``.cs`` or STAR.
        against: The ``.cs`` or STAR it was made from.
        project_dir: See :func:`open_particles` (default: from ``against``).
        threads: Stacks checked at the same time.
        progress: Called with byte counts as particles are compared.
        client: A ``distributed.Client`` (``stacktools[dask]``): compare each new
            stack as one task on its cluster (the fields are compared here).
        crop, fourier_crop: The sizes the set was consolidated with, for a set whose
            manifest is gone (a copy elsewhere); given beside a manifest, they must
            be the ones it records.

    Returns:
        :class:`~stacktools.verify.VerifyResult`: ``ok``, mismatches, problems.

    Raises:
        ShrinkError: The crop and Fourier crop (given or recorded) disagree with the
            new stacks' box or pixel size, or with the manifest.
        The input errors of :func:`open_particles` (missing or truncated stacks).
    """
    from stacktools.consolidate import recorded_shrink
    from stacktools.verify import claimed_shrink, verify
    shrink = claimed_shrink(crop, fourier_crop, recorded_shrink(new_cs), new_cs)
    compare = None
    if client is not None:
        from stacktools.cluster.inspect import stack_comparer
        compare = stack_comparer(client)
    return verify(new_cs, against, project_dir=project_dir, threads=threads, progress=progress,
                  allow_outside_project=allow_outside_project, compare=compare, shrink=shrink)


def check_particles(pset: ParticleSet, *, outliers: float | None = None, threads: int | None = None,
                    progress: Callable[[int], None] | None = None,
                    client: DaskClient | None = None) -> CheckReport:
    """Read every selected particle once; report NaN/inf, all-zero and constant particles,
    truncated stacks, boxes that disagree with the metadata and, optionally, outliers.

    Args:
        pset: The set, from :func:`open_particles` (a ``.cs`` or a RELION STAR).
        outliers: Also flag particles whose mean or standard deviation lies more than
            this many robust deviations (1.4826 × MAD) from the set's median.
        threads: Stacks read at the same time (default: the number of cores, at most 8).
        progress: Called with byte counts as particles are read.
        client: A ``distributed.Client`` (``stacktools[dask]``): check each stack as
            one task on its cluster (``threads`` is then the workers' business); the
            report is the same.

    Returns:
        :class:`~stacktools.check.CheckReport`: ``clean``, ``bad`` (row → reasons),
        ``counts``, ``stack_problems``.

    Raises:
        CheckError: A bad option.
        MissingStackError, MrcHeaderError: A stack is missing or unreadable.
    """
    if client is not None:
        from stacktools.cluster.inspect import check_on_cluster
        return check_on_cluster(client, pset, outliers=outliers, progress=progress)
    from stacktools.check import DEFAULT_THREADS
    from stacktools.check import check_particles as check
    return check(pset, outliers=outliers, threads=threads or DEFAULT_THREADS, progress=progress)


def write_clean(pset: ParticleSet, report: CheckReport, out: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``pset`` without the particles ``report`` found bad, in the input's format
    (a ``.cs`` with its ``.csg``, or a STAR with every block kept).

    Args:
        pset: The set that was checked.
        report: From :func:`check_particles`.
        out: The file to write (atomically).
        overwrite: Replace ``out`` if it exists.

    Returns:
        ``out``.

    Raises:
        OutputError: ``out`` exists (without ``overwrite``) or is an input.
    """
    from stacktools.check import write_clean as write
    return write(pset, report, out, overwrite=overwrite)


# ---- SSD cache -----------------------------------------------------------------------------

def open_cache(ssd_path: PathLike | None = None, *, quota_mb: float | None = None,
               reserve_mb: float | None = None, lifetime_days: float | None = None,
               threads: int | None = None, config_file: PathLike | None = None,
               create: bool = False) -> Cache:
    """Open the node-local SSD cache under ``ssd_path/stacktools-cache``.

    Settings not given come from the config file, then ``STACKTOOLS_*`` and
    ``CRYOSPARC_*`` environment variables (see :mod:`stacktools.cache.config`).

    Args:
        ssd_path: The SSD directory.
        quota_mb, reserve_mb: Space policy, in MB (10⁶ bytes), as CryoSPARC's.
        lifetime_days: Entries unused this long expire (default 30).
        threads: Copy threads (default 2).
        config_file: A TOML config to read instead of the default one.
        create: Create a missing ``ssd_path`` (otherwise it is an error: a typo or
            an unmounted disk must not fill the root filesystem).

    Returns:
        :class:`~stacktools.cache.Cache`: ``plan``, ``execute``, ``ensure``, ``status``,
        ``verify``, ``clean``, ``evict``, ``clear``.

    Raises:
        CacheConfigError: No SSD path, a missing one without ``create``, bad settings;
        CacheForeignPathError: a path the cache owns is a symlink or not its own.
    """
    from stacktools.cache import Cache
    return Cache(ssd_path, quota_mb=quota_mb, reserve_mb=reserve_mb, lifetime_days=lifetime_days,
                 threads=threads, config_file=config_file, create=create)


def sync_particles(pset: ParticleSet, cache: Cache, *, use_cache: bool | None = None,
                   partial: bool = False, hold: bool = False, check_content: bool = False,
                   write_cs: PathLike | None = None, write_star: PathLike | None = None) -> SyncResult:
    """Make every stack of a set present and valid in the SSD cache, as ``cache sync`` does.

    Args:
        pset: From :func:`open_particles`.
        cache: From :func:`open_cache`.
        use_cache: Override the project's default (``None`` follows it; a project that
            does not use the cache reads its sources).
        partial: Cache what fits, in the set's order; read the rest from the source.
        hold: Keep the set pinned after returning: use the result as a context
            manager, or pass ``result.pin_fd`` to the job's process.
        check_content: Hash the sources before serving copies.
        write_cs: Also write a ``.cs`` whose ``blob/path`` points at what to read.
        write_star: For a set opened from a RELION STAR: also write that STAR with
            every ``rlnImageName`` pointing, by absolute path, at what to read.

    Returns:
        :class:`~stacktools.cache.SyncResult`: ``paths`` maps each source to what to read.

    Raises:
        CacheFullError: The set does not fit even after evicting everything evictable.
    """
    from stacktools.cache import sync_particles as sync
    return sync(pset, lambda: cache, use_cache=use_cache, partial=partial, hold=hold,
                check_content=check_content, write_cs=write_cs, write_star=write_star)


# ---- placement -------------------------------------------------------------------------------

def load_nodes(path: PathLike) -> list[Node]:
    """Read a nodes file (TOML or JSON: one entry per GPU node with its cache policy)
    and take each node's inventory (from its SSD or an exported snapshot).

    Raises:
        NodesFileError: Missing, malformed or incomplete file or snapshot.
    """
    from stacktools.placement import load_nodes as load
    return load(path)


def place_set(qset: QueuedSet, nodes: Sequence[Node], position: int = 0) -> Placement:
    """Choose the node whose SSD cache should hold a set (most already cached, then
    least to copy and evict).

    Raises:
        PlacementError: No nodes.
    """
    from stacktools.placement import place_set as place
    return place(qset, nodes, position)


def place_queue(sets: Sequence[QueuedSet], nodes: Sequence[Node], order: str = "given") -> QueuePlan:
    """Place a queue of sets, one after another, each against the nodes as the earlier
    placements leave them.

    Args:
        order: ``"given"`` or ``"biggest"`` first.

    Raises:
        PlacementError: No nodes, or an unknown order.
    """
    from stacktools.placement import place_queue as place
    return place(sets, nodes, order)


def prestage_sets(client: DaskClient, nodes_file: PathLike, sets: Sequence[PathLike], *,
                  project_dir: PathLike | None = None, order: str = "given", hold: bool = False,
                  progress_for: Callable[[int], Callable[[int], None] | None] | None = None,
                  allow_outside_project: bool = False) -> PrestageResult:
    """Place a queue of sets as :func:`place_queue` does and copy each into the SSD
    cache of its node, by a task on that node's worker of a Dask cluster.

    A worker with the Dask resource ``node-<name>`` is node ``<name>``; one without is
    the node named by its ``$STACKTOOLS_NODE``, else by its host name (short names
    match); see :mod:`stacktools.cluster.prestage`.

    Args:
        client: A ``distributed.Client`` (``stacktools[dask]``, see :func:`connect_cluster`).
        nodes_file: The nodes file (see :func:`load_nodes`).
        sets: Particles ``.cs`` or STAR files, in queue order.
        project_dir: Their project directory (default: each file's own).
        order: ``"given"`` or ``"biggest"`` first.
        hold: Keep each set pinned on its node while the worker lives (staging it
            again without ``hold`` unpins it).
        progress_for: Called with the bytes to copy once known; returns the
            progress callback for the copies.
        allow_outside_project: See :func:`open_particles`.

    Returns:
        :class:`~stacktools.cluster.prestage.PrestageResult`: per node what was
        copied; ``missing_nodes`` (placed on but absent from the cluster, not
        staged) and ``unplaced`` sets; ``ok`` when every set is staged.

    Raises:
        NodesFileError, PlacementError: As for :func:`place_queue`.
        StacktoolsError: The first error of a node's sync (e.g. CacheFullError).
    """
    from stacktools.cluster.prestage import prestage
    return prestage(client, nodes_file, sets, project_dir=project_dir, order=order, hold=hold,
                    progress_for=progress_for, allow_outside_project=allow_outside_project)


def simulate_queue(sets: Sequence[QueuedSet], inventory: Inventory, *, hold: bool = False,
                   step_s: float = 60.0) -> list[QueueStep]:
    """Run a queue of sets through one node's cache on paper: what each sync would
    copy, expire and evict, and the space after each step.

    Args:
        hold: Keep every set pinned (jobs that all run at once).
        step_s: Seconds between jobs (for lifetime expiry).
    """
    from stacktools.placement import simulate_queue as simulate
    return simulate(sets, inventory, hold=hold, step_s=step_s)
