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
    keep. A different consolidation into the same OUTDIR needs ``force``: it removes
    the earlier run's ``.cs`` files before any stack is touched, records the earlier
    run's other files as stale in the new manifest, and removes them once the new
    ``.cs`` is in place, so a ``.cs`` under a final name always reads its own
    particles and a completed run leaves only its own outputs. Nothing is
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
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stacktools.cs.rows import uid_lookup
from stacktools.errors import (
    BoxMismatchError,
    DiskFullError,
    FieldError,
    ModeMismatchError,
    OutputError,
    PathEscapeError,
    SourceOverwriteError,
    StacktoolsError,
    VerificationError,
    describe_os_error,
)
from stacktools.formats import cs as csfile
from stacktools.formats.atomic import (
    TMP_SUFFIX,
    atomic_output,
    fit_name,
    fsync_dir,
    tmp_name_for,
)
from stacktools.formats.mrc import HEADER_BYTES, StackHeader, make_header
from stacktools.particles import ParticleSet
from stacktools.stacks import CHUNK_BYTES, Cancelled, copy_to_file, write_all

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
    pt_rows: np.ndarray | None = None  # the passthrough rows to write, checked when planning


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


def _safe_stem(name: str) -> str:
    """A file name stem that is a plain, visible name in its directory, whatever the input.

    Leading dots are dropped, so no output is ``.``, ``..`` or hidden among the
    temporaries; only the last path component of the input is ever used.
    """
    stem = name.replace("\0", "").lstrip(".")
    return stem or "stack"


def _out_name(source: str, ext: str, taken: set[str]) -> str:
    stem = os.path.basename(source.rstrip("/"))
    for suffix in (".mrcs", ".mrc"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    stem = _safe_stem(stem)
    name, n = fit_name(stem, ext), 2
    while name in taken:  # same file name in two source directories
        name, n = fit_name(stem, f"_{n}{ext}"), n + 1
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
    if os.path.lexists(stacks_dir) and stacks_real.parent != out_real:
        # A symlinked OUTDIR/stacks would put the stacks outside OUTDIR.
        _check_not_source([], outdir, [], [_resolved(Path(h.path)) for h in headers])
        raise PathEscapeError(f"{stacks_dir}: leads outside {outdir} (to {stacks_real}); "
                              "remove it or choose another output directory")
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
            path = stacks_dir / fit_name(_safe_stem(cs_path.stem), f"_packed_{j:06d}{ext}")
            stacks.append(OutputStack(path, blob(path), h.nx, h.ny, mode, h.voxel_size, rows,
                                      codes_all[rows], idx_all[rows]))
    for s_no, s in enumerate(stacks):
        stack_of_row[s.rows] = s_no
        idx_of_row[s.rows] = np.arange(s.count)
    new_data = _new_dataset(data, [s.blob_path for s in stacks], stack_of_row, idx_of_row)

    out_cs = outdir / fit_name(_safe_stem(cs_path.stem), "_consolidated.cs")
    out_pt = None
    pt_path = Path(passthrough) if passthrough is not None else None
    if pt_path is not None:
        out_pt = outdir / fit_name(_safe_stem(pt_path.stem), "_consolidated.cs")
        if out_pt.name == out_cs.name:
            out_pt = outdir / fit_name(_safe_stem(pt_path.stem), "_passthrough_consolidated.cs")
    outputs = [s.path for s in stacks] + [out_cs] + ([out_pt] if out_pt else [])
    for p in outputs:
        _check_inside(p, outdir)
    inputs = [cs_path] + ([pt_path] if pt_path else [])
    headers_real = [_resolved(Path(h.path)) for h in headers]
    _check_not_source(outputs, outdir, [Path(h.path) for h in headers] + inputs,
                      headers_real + [_resolved(p) for p in inputs])
    options = {"layout": layout, "per": per, "dtype": dtype, "mrcs": mrcs,
               "project": str(proj), "outdir": str(out_real), "version": 1}
    key = _plan_key(cs_path, pt_path, headers, headers_real, options)
    plan = Plan(pset, cs_path, pt_path, outdir, proj, headers, stacks, new_data, out_cs, out_pt,
                relative, key, layout, dtype)
    if pt_path is not None:
        plan.pt_rows = _passthrough_rows(plan)
    return plan


def _check_inside(path: Path, outdir: Path) -> None:
    """Every output is a plain name directly in OUTDIR or OUTDIR/stacks."""
    if path.parent not in (outdir, outdir / STACKS_DIR) or path.name in ("", ".", "..") \
            or path.name.startswith("."):
        raise PathEscapeError(f"{path}: output name would leave {outdir}")


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


def _sweep_temps(plan: Plan, stale: list[str]) -> int:
    """Remove the temporaries of a crashed run: of this plan's outputs and of stale ones."""
    finals = [s.path for s in plan.stacks] + _cs_outputs(plan) + [plan.outdir / MANIFEST]
    finals += [plan.outdir / rel for rel in stale]
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


def _write_manifest(plan: Plan, stale: list[str], *, fsync: bool) -> None:
    """Record everything this run writes, and what earlier runs left that it will remove."""
    doc = {"tool": "stacktools consolidate", "version": 2, "key": plan.key,
           "cs": plan.out_cs.name,
           "passthrough": plan.out_passthrough.name if plan.out_passthrough else None,
           "stacks": [{"path": str(s.path.relative_to(plan.outdir)), "bytes": s.nbytes,
                       "particles": s.count} for s in plan.stacks],
           "stale": stale}
    with atomic_output(plan.outdir / MANIFEST, fsync=fsync) as fh:
        fh.write(json.dumps(doc, indent=1).encode())


def _own_outputs(plan: Plan) -> list[str]:
    """This run's outputs, relative to OUTDIR."""
    return [str(p.relative_to(plan.outdir)) for p in
            [s.path for s in plan.stacks] + _cs_outputs(plan)]


def _cs_outputs(plan: Plan) -> list[Path]:
    return [plan.out_cs] + ([plan.out_passthrough] if plan.out_passthrough else [])


def _listed_outputs(outdir: Path, manifest: dict) -> list[str]:
    """Everything a manifest says its run wrote or still has to remove (relative paths)."""
    listed = [s["path"] for s in manifest.get("stacks", ())]
    listed += [n for n in (manifest.get("cs"), manifest.get("passthrough")) if n]
    listed += manifest.get("stale", [])
    if manifest.get("version", 1) < 2:
        # Version 1 did not record the passthrough; its .cs outputs all end like this.
        with contextlib.suppress(OSError):
            listed += [e.name for e in os.scandir(outdir)
                       if e.name.endswith("_consolidated.cs") and e.is_file(follow_symlinks=False)]
    return listed


def _unlink_own(outdir: Path, rel: str) -> None:
    """Remove OUTDIR/rel if it is a regular file, following no symlink on the way.

    ``rel`` comes from a manifest: anything that is not a plain relative path below
    OUTDIR is ignored rather than trusted.
    """
    parts = rel.split("/")
    if os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            os.unlink(parts[-1], dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        if err.errno != errno.ELOOP:  # a symlink where a directory was: not ours
            raise OutputError(f"{outdir / rel}: cannot remove: "
                              f"{describe_os_error(err).split(': ', 1)[-1]}") from err
    finally:
        os.close(fd)


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
        Replace the outputs of an earlier, different consolidation in OUTDIR (its
        ``.cs`` files go first, its stacks once the new ``.cs`` is written).
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

    Raises
    ------
    StacktoolsError
        The specific subclass for each kind of bad input or output problem
        (:class:`~stacktools.errors.FieldError`, :class:`~stacktools.errors.OutputError`,
        :class:`~stacktools.errors.DiskFullError`, ...); a dry run raises the same.
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
        # The same checks as a real run, short of reading the stacks already written.
        if plan.outdir.is_dir():
            manifest = _read_manifest(plan.outdir)
            _check_outdir(plan, manifest, force=force)
            _check_space(plan, _pending(plan, manifest))
        else:
            _check_creatable(plan.outdir)
            _check_space(plan, plan.stacks)
        return _result(plan, resumed=[], verified=False, dry_run=True)
    pt_rows = plan.pt_rows

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


def _execute(plan: Plan, pt_rows: np.ndarray | None, created: list[Path], *, threads: int,
             fsync: bool, verify: bool, force: bool, progress: Progress | None,
             chunk_bytes: int) -> list[OutputStack]:
    """The locked part of a run; returns the stacks kept from an earlier run."""
    written: list[Path] = []
    try:
        resumed = _prepare(plan, force=force, threads=threads, fsync=fsync)
        done = {id(s) for s in resumed}
        todo = [s for s in plan.stacks if id(s) not in done]
        _check_space(plan, todo)
        _write_all(plan, todo, written, threads=threads, fsync=fsync, verify=verify,
                   progress=progress, chunk_bytes=chunk_bytes)
        if pt_rows is not None:
            csfile.write_cs(plan.out_passthrough, pt_rows, fsync=fsync)
            written.append(plan.out_passthrough)
        csfile.write_cs(plan.out_cs, plan.new_data, fsync=fsync)
        written.append(plan.out_cs)
        _retire_stale(plan, fsync=fsync)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _clean_failed(plan, written, created)
        raise
    return resumed


def _check_outdir(plan: Plan, manifest: dict | None, *, force: bool) -> None:
    """Refuse to replace another consolidation's outputs (or foreign files) without force."""
    if force or (manifest is not None and manifest.get("key") == plan.key):
        return
    existing = [p for p in [s.path for s in plan.stacks] + _cs_outputs(plan) if p.exists()]
    if manifest is not None and (existing or any(
            os.path.lexists(plan.outdir / rel) for rel in _listed_outputs(plan.outdir, manifest))):
        raise OutputError(f"{plan.outdir}: holds a consolidation of another set or with "
                          "other options; choose another directory or use --force")
    if existing:
        raise OutputError(f"{existing[0]}: already exists (use --force to overwrite)")


def _pending(plan: Plan, manifest: dict | None) -> list[OutputStack]:
    """Stacks that a run must (re)write: all but complete-looking ones of the same plan."""
    if manifest is None or manifest.get("key") != plan.key:
        return list(plan.stacks)
    return [s for s in plan.stacks
            if not (s.path.is_file() and s.path.stat().st_size == s.nbytes)]


def _check_space(plan: Plan, todo: list[OutputStack]) -> None:
    need = sum(s.nbytes for s in todo)
    free = _free_bytes(plan.outdir)
    if free is not None and need > free:
        raise DiskFullError(f"{plan.outdir}: not enough space: {need} bytes to write, "
                            f"{free} free")


def _prepare(plan: Plan, *, force: bool, threads: int, fsync: bool) -> list[OutputStack]:
    """Check OUTDIR against the manifest, retire an earlier run, sweep temporaries,
    and find stacks to keep.

    Before a stack of a different consolidation is touched, every ``.cs`` of that
    run is removed, then the new manifest (which lists the earlier run's files as
    stale) replaces the old one. So no ``.cs`` under a final name ever points at a
    stack being rewritten, and a killed run leaves a record of what to clean up.
    """
    from stacktools.verify import check_stack
    manifest = _read_manifest(plan.outdir)
    _check_outdir(plan, manifest, force=force)
    same = manifest is not None and manifest.get("key") == plan.key
    if same:
        stale = list(manifest.get("stale", []))
    else:
        old = _listed_outputs(plan.outdir, manifest) if manifest is not None else []
        for p in _cs_outputs(plan):  # also whatever --force replaces under these names
            _unlink_own(plan.outdir, p.name)
        for rel in old:
            if rel.endswith(".cs"):
                _unlink_own(plan.outdir, rel)
        if fsync:
            fsync_dir(plan.outdir)
        own = set(_own_outputs(plan))
        stale = sorted(set(old) - own)
    _write_manifest(plan, stale, fsync=fsync)
    _sweep_temps(plan, stale)
    resumed = []
    if same:
        # Complete stacks of a killed run are kept only if they match their sources.
        pending = {id(s) for s in _pending(plan, manifest)}
        present = [s for s in plan.stacks if id(s) not in pending]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            checks = list(pool.map(lambda s: check_stack(s, plan.headers), present))
        resumed = [s for s, problem in zip(present, checks) if problem is None]
    return resumed


def _retire_stale(plan: Plan, *, fsync: bool) -> None:
    """Once the new ``.cs`` is in place: remove the earlier runs' outputs, then their record."""
    manifest = _read_manifest(plan.outdir) or {}
    stale = manifest.get("stale", [])
    if not stale:
        return
    own = set(_own_outputs(plan))
    for rel in stale:
        if rel not in own:
            _unlink_own(plan.outdir, rel)
    _write_manifest(plan, [], fsync=fsync)


def _write_all(plan: Plan, todo: list[OutputStack], written: list[Path], *,
               threads: int, fsync: bool, verify: bool, progress: Progress | None,
               chunk_bytes: int) -> None:
    """Write stacks on a thread pool; with ``verify``, check each one once it is written."""
    from stacktools.verify import check_stack
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

    Stacks kept from an earlier run stay, and so does the manifest that vouches for them
    (and lists any earlier run's files still to be removed).
    """
    for path in written:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    manifest = _read_manifest(plan.outdir)
    if manifest is not None and manifest.get("key") == plan.key and not any(
            os.path.lexists(plan.outdir / rel) for rel in _listed_outputs(plan.outdir, manifest)):
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
