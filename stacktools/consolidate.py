"""Consolidate a particle subset: new stacks holding only the selected particles.

After Select 2D or a picking threshold, a subset ``.cs`` still points into the full
extract stacks, so a cache copies every particle of every stack it references.
:func:`consolidate` writes new stacks holding only the selected particles and a new
``.cs`` that points at them. Only ``blob/path`` and ``blob/idx`` change; every other
field, the row order and the ``uid`` values are kept.

Layouts
    ``per-stack`` (default): one output stack per source stack that has selected
    particles, holding them in ascending source index order, so that runs of
    adjacent particles are copied with one read and the per-micrograph organisation
    is kept. With ``dtype="keep"`` it writes exactly
    :attr:`stacktools.size.SizeReport.consolidated_bytes`.
    ``packed``: stacks of ``particles_per_stack`` particles in the input's row order.

Safety and resuming
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
    keep. A different consolidation into the same OUTDIR needs ``force``. Nothing is
    flushed to the device unless ``fsync=True``: renames alone keep a killed process
    from leaving partial files, but surviving a power cut needs the flush.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import csfile
from .atomic import TMP_SUFFIX, atomic_output, tmp_name_for
from .dataset import uid_lookup
from .errors import (BoxMismatchError, DiskFullError, FieldError, ModeMismatchError,
                     OutputError, SourceOverwriteError, StacktoolsError, VerificationError,
                     describe_os_error)
from .mrc import HEADER_BYTES, StackHeader, make_header
from .particles import ParticleSet
from .stackcopy import CHUNK_BYTES, Cancelled, copy_to_file, write_all

LAYOUTS = ("per-stack", "packed")
DTYPES = {"keep": None, "float32": 2, "float16": 12}
DEFAULT_PARTICLES_PER_STACK = 1000
DEFAULT_THREADS = 4
MANIFEST = ".stacktools-consolidate.json"
STACKS_DIR = "stacks"
_MODE_DTYPE = {0: "i1", 1: "<i2", 2: "<f4", 6: "<u2", 12: "<f2"}

Progress = Callable[[int], None]


@dataclass
class OutputStack:
    """One stack to write: its name and, per position, where the particle comes from.

    ``codes[k]`` indexes the source headers, ``indices[k]`` is the particle in that
    source, and ``rows[k]`` is the row of the set that ends up at ``blob/idx == k``.
    """

    path: Path
    blob_path: str
    nx: int
    ny: int
    mode: int
    voxel_size: float
    rows: np.ndarray
    codes: np.ndarray
    indices: np.ndarray

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype written (always little-endian)."""
        return np.dtype(_MODE_DTYPE[self.mode])

    @property
    def nbytes(self) -> int:
        """Exact size of the stack file: header plus pixels, no extended header."""
        return HEADER_BYTES + self.count * self.ny * self.nx * self.dtype.itemsize

    def header(self) -> bytes:
        return make_header(self.nx, self.ny, self.count, self.mode, self.voxel_size,
                           label="stacktools consolidate")


@dataclass
class ConsolidateResult:
    """What :func:`consolidate` wrote (or, with ``dry_run``, would write).

    ``bytes_written`` is the total size of the output stacks; ``source_bytes`` the
    size of the source stacks the set references (what a cache copies without
    consolidation). ``paths`` is ``"relative"`` when the new ``blob/path`` values are
    relative to the project directory, ``"absolute"`` otherwise.
    """

    cs: str
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

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.bytes_written

    def to_dict(self, outputs: bool = True) -> dict:
        d = asdict(self)
        if not outputs:
            d.pop("outputs")
        d["saved_bytes"] = self.saved_bytes
        d["saved_fraction"] = round(self.saved_bytes / self.source_bytes, 6) if self.source_bytes else 0.0
        return d


@dataclass
class Plan:
    """Everything :func:`consolidate` decided before writing."""

    pset: ParticleSet
    cs_path: Path
    passthrough_path: Path | None
    outdir: Path
    project_dir: Path
    headers: list[StackHeader]
    stacks: list[OutputStack]
    new_data: np.ndarray
    out_cs: Path
    out_passthrough: Path | None
    relative: bool
    key: str
    layout: str
    dtype: str


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _check_boxes(pset: ParticleSet, headers: list[StackHeader]) -> None:
    boxes: dict[tuple[int, int], int] = {}
    for k, h in enumerate(headers):
        boxes.setdefault((h.ny, h.nx), k)
    if len(boxes) > 1:
        (b0, k0), (b1, k1) = list(boxes.items())[:2]
        row = int(np.flatnonzero(pset.stack_codes == k1)[0])
        raise BoxMismatchError(
            f"{pset.source}: mixed box sizes in one set: {b0[0]}x{b0[1]} ({headers[k0].path}) "
            f"and {b1[0]}x{b1[1]} ({headers[k1].path}) at row {row}")


def _out_name(source: str, ext: str, taken: set[str]) -> str:
    stem = Path(source).name
    for suffix in (".mrcs", ".mrc"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    name, n = f"{stem}{ext}", 2
    while name in taken:  # same file name in two source directories
        name, n = f"{stem}_{n}{ext}", n + 1
    taken.add(name)
    return name


def _check_not_source(outputs: list[Path], outdir: Path, sources: list[Path],
                      sources_real: list[Path]) -> None:
    """Refuse outputs onto a source file (by path or by inode) or into a source directory."""
    src_real = set(sources_real)
    src_dirs = {s.parent for s in src_real}
    for d in (outdir, outdir / STACKS_DIR):
        if _resolved(d) in src_dirs:
            raise SourceOverwriteError(f"{d}: holds source stacks; choose an output "
                                       "directory that does not")
    src_ids = set()
    for src in sources:
        with contextlib.suppress(OSError):
            st = os.stat(src)
            src_ids.add((st.st_dev, st.st_ino))
    parents: dict[Path, Path] = {}
    for p in outputs:
        if p.parent not in parents:
            parents[p.parent] = _resolved(p.parent)
        if parents[p.parent] / p.name in src_real:
            raise SourceOverwriteError(f"{p}: is a source file; refusing to overwrite it")
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in src_ids:
            raise SourceOverwriteError(f"{p}: is the same file as a source; "
                                       "refusing to overwrite it")


def _plan_key(cs_path: Path, passthrough: Path | None, headers: list[StackHeader],
              headers_real: list[Path], options: dict) -> str:
    """A digest of everything the outputs depend on: inputs, source identities, options."""
    h = hashlib.sha256()
    for p in (cs_path, passthrough):
        if p is None:
            h.update(b"-")
            continue
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    for s, real in zip(headers, headers_real):
        h.update(os.fsencode(f"{real}|{s.file_size}|{s.mtime_ns}\n"))
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


def _new_dataset(data: np.ndarray, out_paths: list[str], stack_of_row: np.ndarray,
                 idx_of_row: np.ndarray) -> np.ndarray:
    """Copy ``data`` with rewritten ``blob/path`` and ``blob/idx`` (field order kept)."""
    encoded = [os.fsencode(p) for p in out_paths]
    old = data.dtype.fields["blob/path"][0]
    width = max([old.itemsize // (4 if old.kind == "U" else 1)] + [len(e) for e in encoded])
    kind = "U" if old.kind == "U" else "S"
    descr = []
    for name in data.dtype.names:
        dt = data.dtype.fields[name][0]
        descr.append((name, np.dtype(f"{kind}{width}") if name == "blob/path" else dt))
    out = np.empty(len(data), dtype=descr)
    for name in data.dtype.names:
        if name not in ("blob/path", "blob/idx"):
            out[name] = data[name]
    values = np.array(out_paths if kind == "U" else encoded, dtype=f"{kind}{width}")
    out["blob/path"] = values[stack_of_row] if len(data) else values[:0]
    out["blob/idx"] = idx_of_row
    return out


def plan_consolidation(particles: str | os.PathLike, out: str | os.PathLike, *,
                       project_dir: str | os.PathLike | None = None,
                       passthrough: str | os.PathLike | None = None,
                       layout: str = "per-stack", particles_per_stack: int | None = None,
                       dtype: str = "keep", mrcs: bool = False,
                       allow_outside_project: bool = False) -> Plan:
    """Validate the inputs and decide every output, without writing anything.

    Parameters are those of :func:`consolidate`. Raises the specific
    :class:`~stacktools.errors.StacktoolsError` for each kind of bad input.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if particles_per_stack is not None and layout != "packed":
        raise ValueError("particles_per_stack applies to the packed layout only")
    per = particles_per_stack or DEFAULT_PARTICLES_PER_STACK
    if per < 1:
        raise ValueError("particles_per_stack must be at least 1")
    cs_path = Path(particles)
    pset = ParticleSet.open(cs_path, project_dir, allow_outside_project=allow_outside_project)
    headers = pset.check()
    _check_boxes(pset, headers)
    outdir = Path(out)
    proj = _resolved(pset.project_dir)
    out_real = _resolved(outdir)
    relative = out_real == proj or proj in out_real.parents
    ext = ".mrcs" if mrcs else ".mrc"
    want_mode = DTYPES[dtype]
    data = pset.data
    n = len(data)
    idx_all = np.asarray(data["blob/idx"], np.int64)
    stack_of_row = np.zeros(n, np.int64)
    idx_of_row = np.zeros(n, np.int64)
    stacks: list[OutputStack] = []
    stacks_dir = outdir / STACKS_DIR

    stacks_real = _resolved(stacks_dir)
    prefix = os.path.relpath(stacks_real, proj) if relative else str(stacks_real)

    def blob(path: Path) -> str:
        return f"{prefix}/{path.name}"

    if layout == "per-stack":
        taken: set[str] = set()
        for k, g in enumerate(pset.groups()):
            h = headers[k]
            order = np.lexsort((g.rows, g.indices))
            rows = g.rows[order]
            path = stacks_dir / _out_name(g.blob_path, ext, taken)
            mode = h.mode if want_mode is None else want_mode
            stacks.append(OutputStack(path, blob(path), h.nx, h.ny, mode, h.voxel_size, rows,
                                      np.full(len(rows), k, np.int64), g.indices[order]))
    else:
        modes = {h.mode for h in headers}
        if want_mode is None and len(modes) > 1:
            names = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
            raise ModeMismatchError(
                f"{cs_path}: stacks of mixed pixel modes ({', '.join(names.get(m, str(m)) for m in sorted(modes))}) "
                "cannot share packed stacks; use --dtype float32 or the per-stack layout")
        codes_all = pset.stack_codes
        for j, start in enumerate(range(0, n, per)):
            rows = np.arange(start, min(n, start + per))
            h = headers[int(codes_all[rows[0]])]
            mode = h.mode if want_mode is None else want_mode
            path = stacks_dir / f"{cs_path.stem}_packed_{j:06d}{ext}"
            stacks.append(OutputStack(path, blob(path), h.nx, h.ny, mode, h.voxel_size, rows,
                                      codes_all[rows], idx_all[rows]))
    for s_no, s in enumerate(stacks):
        stack_of_row[s.rows] = s_no
        idx_of_row[s.rows] = np.arange(s.count)
    new_data = _new_dataset(data, [s.blob_path for s in stacks], stack_of_row, idx_of_row)

    out_cs = outdir / f"{cs_path.stem}_consolidated.cs"
    out_pt = None
    pt_path = Path(passthrough) if passthrough is not None else None
    if pt_path is not None:
        out_pt = outdir / f"{pt_path.stem}_consolidated.cs"
        if out_pt.name == out_cs.name:
            out_pt = outdir / f"{pt_path.stem}_passthrough_consolidated.cs"
    inputs = [cs_path] + ([pt_path] if pt_path else [])
    headers_real = [_resolved(Path(h.path)) for h in headers]
    _check_not_source([s.path for s in stacks] + [out_cs] + ([out_pt] if out_pt else []),
                      outdir, [Path(h.path) for h in headers] + inputs,
                      headers_real + [_resolved(p) for p in inputs])
    options = {"layout": layout, "per": per, "dtype": dtype, "mrcs": mrcs,
               "project": str(proj), "outdir": str(out_real), "version": 1}
    key = _plan_key(cs_path, pt_path, headers, headers_real, options)
    return Plan(pset, cs_path, pt_path, outdir, proj, headers, stacks, new_data, out_cs, out_pt,
                relative, key, layout, dtype)


def _passthrough_rows(plan: Plan) -> np.ndarray:
    """The passthrough filtered to the set's uids, in the set's row order."""
    pt = csfile.read_cs(plan.passthrough_path)
    for arr, where in ((plan.pset.data, plan.cs_path), (pt, plan.passthrough_path)):
        if "uid" not in (arr.dtype.names or ()):
            raise FieldError(f"{where}: missing field 'uid' (needed to match the passthrough)")
    uids = plan.pset.data["uid"]
    found = uid_lookup(uids, pt["uid"])
    if (found < 0).any():
        r = int(np.flatnonzero(found < 0)[0])
        raise FieldError(f"{plan.passthrough_path}: no row for uid {int(uids[r])} "
                         f"(row {r} of {plan.cs_path})")
    rows = pt[found]
    names = pt.dtype.names
    if "blob/path" in names and "blob/idx" in names:
        rows = _rewrite_like(rows, plan.new_data)
    return rows


def _rewrite_like(rows: np.ndarray, new_data: np.ndarray) -> np.ndarray:
    """Give passthrough rows the new ``blob/path`` and ``blob/idx`` of the main set."""
    descr = [(n, new_data.dtype.fields["blob/path"][0] if n == "blob/path" else rows.dtype.fields[n][0])
             for n in rows.dtype.names]
    out = np.empty(len(rows), dtype=descr)
    for n in rows.dtype.names:
        out[n] = new_data[n] if n in ("blob/path", "blob/idx") else rows[n]
    return out


@contextlib.contextmanager
def _locked(outdir: Path):
    fd = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise OutputError(f"{outdir}: another stacktools consolidate is writing here") from err
        yield
    finally:
        os.close(fd)


def _sweep_temps(plan: Plan) -> int:
    finals = [s.path for s in plan.stacks] + [plan.out_cs, plan.outdir / MANIFEST]
    if plan.out_passthrough:
        finals.append(plan.out_passthrough)
    prefixes: dict[Path, list[str]] = {}
    for f in finals:
        prefixes.setdefault(f.parent, []).append(tmp_name_for(f))
    removed = 0
    for d, pre in prefixes.items():
        if not d.is_dir():
            continue
        for entry in os.scandir(d):
            if entry.name.endswith(TMP_SUFFIX) and any(entry.name.startswith(p) for p in pre):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _read_manifest(outdir: Path) -> dict | None:
    try:
        return json.loads((outdir / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_manifest(plan: Plan, *, fsync: bool) -> None:
    doc = {"tool": "stacktools consolidate", "version": 1, "key": plan.key,
           "cs": plan.out_cs.name,
           "stacks": [{"path": str(s.path.relative_to(plan.outdir)), "bytes": s.nbytes,
                       "particles": s.count} for s in plan.stacks]}
    with atomic_output(plan.outdir / MANIFEST, fsync=fsync) as fh:
        fh.write(json.dumps(doc, indent=1).encode())


def _disk_error(path: Path, err: OSError) -> StacktoolsError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: no space left on the device while writing")
    return OutputError(f"{path}: {describe_os_error(err).split(': ', 1)[-1]}")


def _write_stack(plan: Plan, s: OutputStack, *, fsync: bool, progress: Progress | None,
                 cancel: threading.Event, chunk_bytes: int) -> None:
    """Write one output stack under a temporary name and rename it into place."""
    try:
        with atomic_output(s.path, fsync=fsync) as fh:
            fd = fh.fileno()
            try:
                write_all(fd, memoryview(s.header()), 0)
                if progress:
                    progress(HEADER_BYTES)
                copy_to_file(fd, HEADER_BYTES, plan.headers, s.dtype, s.codes, s.indices,
                             chunk_bytes=chunk_bytes, progress=progress, cancel=cancel)
            except OSError as err:
                raise _disk_error(s.path, err) from err
    except OutputError as err:
        # atomic_output reports a failed flush or rename; keep the disk-full kind.
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


def _result(plan: Plan, *, resumed: list[OutputStack], verified: bool, dry_run: bool) -> ConsolidateResult:
    done = {id(s) for s in resumed}
    outputs = [{"path": os.path.abspath(s.path), "blob_path": s.blob_path, "particles": s.count,
                "bytes": s.nbytes, "mode": s.mode, "resumed": id(s) in done}
               for s in plan.stacks]
    pt = os.path.abspath(plan.out_passthrough) if plan.out_passthrough else None
    return ConsolidateResult(
        cs=os.path.abspath(plan.out_cs), passthrough=pt,
        outdir=os.path.abspath(plan.outdir), project_dir=str(plan.project_dir), layout=plan.layout,
        dtype=plan.dtype, paths="relative" if plan.relative else "absolute",
        stacks=len(plan.stacks), particles=len(plan.new_data),
        bytes_written=sum(s.nbytes for s in plan.stacks),
        source_bytes=sum(h.file_size for h in plan.headers),
        stacks_resumed=len(resumed), bytes_resumed=sum(s.nbytes for s in resumed),
        verified=verified, dry_run=dry_run, outputs=outputs)


def consolidate(particles: str | os.PathLike, out: str | os.PathLike, *,
                project_dir: str | os.PathLike | None = None,
                passthrough: str | os.PathLike | None = None,
                layout: str = "per-stack", particles_per_stack: int | None = None,
                threads: int = DEFAULT_THREADS, dtype: str = "keep", mrcs: bool = False,
                verify: bool = False, dry_run: bool = False, fsync: bool = False,
                force: bool = False, chunk_bytes: int = CHUNK_BYTES,
                progress: Progress | None = None,
                allow_outside_project: bool = False) -> ConsolidateResult:
    """Write stacks holding only the selected particles, and a ``.cs`` pointing at them.

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
        ``"per-stack"`` (one output per source stack) or ``"packed"``.
    particles_per_stack
        Packed layout only: particles per output stack (default 1000).
    threads
        Output stacks written at the same time.
    dtype
        ``"keep"`` (bit-exact copies in the source mode), ``"float32"`` or ``"float16"``.
    mrcs
        Name the stacks ``.mrcs`` (RELION reads stacks only under that name).
    verify
        Compare every written particle with its source before writing the ``.cs``.
    dry_run
        Validate and plan only; write nothing.
    fsync
        Flush each stack to the device before renaming it (survives a power cut).
    force
        Replace the outputs of an earlier, different consolidation in OUTDIR.
    chunk_bytes
        Size of each copy buffer; memory use is a few of these per thread.
    progress
        Called with the number of bytes written as the work proceeds.
    allow_outside_project
        Accept ``blob/path`` values outside the project directory; see
        :class:`~stacktools.particles.ParticleSet`.

    Returns
    -------
    ConsolidateResult
    """
    plan = plan_consolidation(particles, out, project_dir=project_dir, passthrough=passthrough,
                              layout=layout, particles_per_stack=particles_per_stack,
                              dtype=dtype, mrcs=mrcs, allow_outside_project=allow_outside_project)
    return run_plan(plan, threads=threads, verify=verify, dry_run=dry_run, fsync=fsync,
                    force=force, chunk_bytes=chunk_bytes, progress=progress)


def run_plan(plan: Plan, *, threads: int = DEFAULT_THREADS, verify: bool = False,
             dry_run: bool = False, fsync: bool = False, force: bool = False,
             chunk_bytes: int = CHUNK_BYTES, progress: Progress | None = None
             ) -> ConsolidateResult:
    """Carry out a plan from :func:`plan_consolidation`; see :func:`consolidate`.

    ``plan.stacks`` tells a caller the total bytes before any is written (for a
    progress bar).
    """
    if dry_run:
        return _result(plan, resumed=[], verified=False, dry_run=True)
    pt_rows = _passthrough_rows(plan) if plan.passthrough_path else None

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
        with _locked(outdir):
            resumed = _execute(plan, pt_rows, created, threads=threads, fsync=fsync,
                               verify=verify, force=force, progress=progress,
                               chunk_bytes=chunk_bytes)
    except KeyboardInterrupt:
        raise  # complete stacks stay for a rerun to keep, as after kill -9
    except BaseException:
        _remove_dirs(created)
        raise
    return _result(plan, resumed=resumed, verified=verify, dry_run=False)


def _execute(plan: Plan, pt_rows: np.ndarray | None, created: list[Path], *, threads: int,
             fsync: bool, verify: bool, force: bool, progress: Progress | None,
             chunk_bytes: int) -> list[OutputStack]:
    """The locked part of a run; returns the stacks kept from an earlier run."""
    written: list[Path] = []
    try:
        resumed = _prepare(plan, force=force, threads=threads, fsync=fsync)
        done = {id(s) for s in resumed}
        todo = [s for s in plan.stacks if id(s) not in done]
        need = sum(s.nbytes for s in todo)
        free = _free_bytes(plan.outdir)
        if free is not None and need > free:
            raise DiskFullError(f"{plan.outdir}: not enough space: {need} bytes to write, "
                                f"{free} free")
        _write_all(plan, todo, written, threads=threads, fsync=fsync, verify=verify,
                   progress=progress, chunk_bytes=chunk_bytes)
        if pt_rows is not None:
            csfile.write_cs(plan.out_passthrough, pt_rows, fsync=fsync)
            written.append(plan.out_passthrough)
        csfile.write_cs(plan.out_cs, plan.new_data, fsync=fsync)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _clean_failed(plan, written, created)
        raise
    return resumed


def _prepare(plan: Plan, *, force: bool, threads: int, fsync: bool) -> list[OutputStack]:
    """Check OUTDIR against the manifest, sweep temporaries, and find stacks to keep."""
    from .verify import check_stack
    manifest = _read_manifest(plan.outdir)
    same = manifest is not None and manifest.get("key") == plan.key
    finals = [s.path for s in plan.stacks] + [plan.out_cs] + \
        ([plan.out_passthrough] if plan.out_passthrough else [])
    if not same and not force:
        existing = [p for p in finals if p.exists()]
        if manifest is not None and existing:
            raise OutputError(f"{plan.outdir}: holds a consolidation of another set or with "
                              "other options; choose another directory or use --force")
        if existing:
            raise OutputError(f"{existing[0]}: already exists (use --force to overwrite)")
    _sweep_temps(plan)
    resumed = []
    if same:
        # Complete stacks of a killed run are kept only if they match their sources.
        present = [s for s in plan.stacks if s.path.is_file() and s.path.stat().st_size == s.nbytes]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            checks = list(pool.map(lambda s: check_stack(s, plan.headers), present))
        resumed = [s for s, problem in zip(present, checks) if problem is None]
    _write_manifest(plan, fsync=fsync)
    return resumed


def _write_all(plan: Plan, todo: list[OutputStack], written: list[Path], *,
               threads: int, fsync: bool, verify: bool, progress: Progress | None,
               chunk_bytes: int) -> None:
    """Write stacks on a thread pool; with ``verify``, check each one once it is written."""
    from .verify import check_stack
    cancel = threading.Event()
    lock = threading.Lock()

    def one(s: OutputStack) -> None:
        try:
            _write_stack(plan, s, fsync=fsync, progress=progress, cancel=cancel,
                         chunk_bytes=chunk_bytes)
            with lock:
                written.append(s.path)
            if verify:
                problem = check_stack(s, plan.headers)
                if problem is not None:
                    raise VerificationError(problem)
        except BaseException:
            cancel.set()
            raise

    if threads <= 1 or len(todo) <= 1:
        for s in todo:
            one(s)
        return
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(one, s) for s in todo]
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


def _clean_failed(plan: Plan, written: list[Path], created: list[Path]) -> None:
    """After an error: remove what this run renamed into place, then its new directories.

    Stacks kept from an earlier run stay, and so does the manifest that vouches for them.
    """
    for path in written:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if not any(s.path.exists() for s in plan.stacks):
        manifest = _read_manifest(plan.outdir)
        if manifest is not None and manifest.get("key") == plan.key:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(plan.outdir / MANIFEST)
    _remove_dirs(created)


def _remove_dirs(dirs: list[Path]) -> None:
    """Remove directories (deepest first) that are empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


# The package-level name: ``stacktools.consolidate`` is this module once imported.
consolidate_particles = consolidate
