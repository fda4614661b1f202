"""Plan a consolidation: validate the inputs and decide every output, writing nothing.

:func:`plan_consolidation` reads the set, its stack headers and the passthrough,
checks them (one box size, pixel modes a packed stack can hold, passthrough uids,
no output onto a source or outside OUTDIR), names the output stacks and builds the
new ``.cs`` rows. The :class:`ConsolidationPlan` it returns is all that
:func:`stacktools.consolidate.run_plan` needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stacktools.consolidate.outdir import STACKS_DIR
from stacktools.cs.result_group import csg_path
from stacktools.cs.rows import blob_path_column, uid_lookup, with_blob_paths
from stacktools.errors import (
    BoxMismatchError,
    FieldError,
    Hint,
    ModeMismatchError,
    PathEscapeError,
    SourceOverwriteError,
)
from stacktools.formats import cs as csfile
from stacktools.formats.atomic import NAME_MAX, fit_name
from stacktools.formats.mrc import (
    FLOAT16_MODE,
    HEADER_BYTES,
    RELION_FLOAT16_WARNING,
    StackHeader,
    make_header,
    mode_dtype,
    mode_name,
    mode_of_dtype,
)
from stacktools.particles import ParticleSet
from stacktools.shrink import ShrinkSpec, shrink_fields, shrink_star

LAYOUTS = ("per-stack", "packed")
# dtype option -> MRC mode written (None: each source's own). "auto" is "keep" for a
# .cs; for a STAR it turns float16 sources into float32, which RELION 3.1 reads.
DTYPES = {"auto": None, "keep": None, **{name: mode_of_dtype(name) for name in ("float32", "float16")}}
DEFAULT_PARTICLES_PER_STACK = 1000


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
        return mode_dtype(self.mode)

    @property
    def nbytes(self) -> int:
        """Exact size of the stack file: header plus pixels, no extended header."""
        return HEADER_BYTES + self.count * self.ny * self.nx * self.dtype.itemsize

    def header(self) -> bytes:
        return _header(self.nx, self.ny, self.count, self.mode, self.voxel_size,
                       label="stacktools consolidate")


# Stacks of a plan share a handful of (box, count, mode) headers: make each once.
_header = functools.lru_cache(maxsize=1024)(make_header)


@dataclass
class NewRows:
    """The new ``.cs`` rows, made a chunk at a time (:meth:`chunks`): the set's rows
    with ``blob/path`` and ``blob/idx`` pointing at the output stacks (and the
    fields a crop changes). The set's rows are read again from its NumPy-format
    ``.cs`` (``source`` a path), so the new set is never held whole, or taken from
    memory (``source`` the rows, for a STAR or CSDAT input).
    """

    source: Path | np.ndarray
    column: np.ndarray  # blob_path_column of the output stacks
    stack_of_row: np.ndarray
    idx_of_row: np.ndarray
    dtype: np.dtype
    shrink: ShrinkSpec
    box: int

    def __len__(self) -> int:
        return len(self.stack_of_row)

    def chunks(self):
        parts = (csfile.iter_rows(self.source) if isinstance(self.source, Path)
                 else (self.source[a:a + csfile.CHUNK_ROWS] for a in range(0, len(self), csfile.CHUNK_ROWS)))
        start = 0
        for part in parts:
            stop = start + len(part)
            rows = with_blob_paths(part, self.column, self.stack_of_row[start:stop],
                                   self.idx_of_row[start:stop])
            yield shrink_fields(rows, self.shrink, self.box, copy=False) if self.shrink else rows
            start = stop

    def whole(self) -> np.ndarray:
        """All the rows in one array (what a CSDAT ``.cs`` is written from)."""
        rows = list(self.chunks())
        return np.concatenate(rows) if rows else np.empty(0, self.dtype)


def _new_rows(pset: ParticleSet, cs_path: Path, paths: list[str], stack_of_row: np.ndarray,
              idx_of_row: np.ndarray, shrink: ShrinkSpec, box: int) -> NewRows:
    lean = "blob/path" not in pset.data.dtype.names
    dtype = csfile.numpy_layout(cs_path)[0] if lean else pset.data.dtype
    column = blob_path_column(dtype, paths)
    new_dtype = with_blob_paths(np.empty(0, dtype), column, stack_of_row[:0]).dtype
    return NewRows(cs_path if lean else pset.data, column, stack_of_row, idx_of_row, new_dtype, shrink, box)


@dataclass
class ConsolidationPlan:
    """Everything a consolidation decided before writing.

    ``stacks`` are the output stacks in the order their rows appear in ``new_rows``
    (the new ``.cs`` rows); ``key`` is a digest of the inputs and options, recorded
    in OUTDIR's manifest so that a rerun of the same plan can keep its stacks.
    """

    pset: ParticleSet
    cs_path: Path
    passthrough_path: Path | None
    outdir: Path
    project_dir: Path
    headers: list[StackHeader]
    stacks: list[OutputStack]
    new_rows: NewRows
    out_cs: Path
    out_passthrough: Path | None
    relative: bool
    key: str
    layout: str
    dtype: str
    pt_rows: np.ndarray | None = None  # the passthrough rows to write, checked when planning
    new_star: dict | None = None  # for a STAR input: the new STAR's blocks (out_cs is the .star)
    warnings: list[str] = dataclasses.field(default_factory=list)
    shrink: ShrinkSpec = field(default_factory=ShrinkSpec)  # crop / Fourier crop of every particle
    cs_format: str = "numpy"  # of the new .cs ("numpy" or "csdat")
    pt_format: str = "numpy"  # of the new passthrough

    @property
    def nbytes(self) -> int:
        """Total size of the output stacks: what a run writes when it keeps none."""
        return sum(s.nbytes for s in self.stacks)

    @property
    def cs_outputs(self) -> list[Path]:
        """The metadata files a run writes, in the order a rerun removes them: the
        ``.csg`` that names the others, the new set's ``.cs`` (or STAR), then the passthrough's."""
        return [p for p in (self.out_csg, self.out_cs, self.out_passthrough) if p is not None]

    @property
    def out_csg(self) -> Path | None:
        """The result group beside the new ``.cs``, for CryoSPARC's Import Result Group
        (None for a STAR input's run: its output is a STAR for RELION)."""
        return None if self.new_star is not None else csg_path(self.out_cs)

    def own_outputs(self) -> list[str]:
        """Every output of the plan, relative to OUTDIR."""
        return [f"{STACKS_DIR}/{s.path.name}" for s in self.stacks] + [p.name for p in self.cs_outputs]


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _real_paths(paths: list[str]) -> list[str]:
    """``os.path.realpath`` of each path, resolving each distinct directory once.

    A directory's real path joined with a name is already the file's real path
    unless the file itself is a symlink (one ``lstat`` tells).
    """
    dirs: dict[str, str] = {}
    out = []
    split, join, islink = os.path.split, os.path.join, os.path.islink
    for p in paths:
        d, name = split(p)
        real_dir = dirs.get(d)
        if real_dir is None:
            real_dir = dirs[d] = os.path.realpath(d or ".")
        full = join(real_dir, name)
        out.append(os.path.realpath(full) if name in ("", ".", "..") or islink(full) else full)
    return out


def _check_boxes(pset: ParticleSet, headers: list[StackHeader]) -> None:
    boxes: dict[tuple[int, int], int] = {}
    for k, h in enumerate(headers):
        boxes.setdefault((h.ny, h.nx), k)
    if len(boxes) > 1:
        (b0, k0), (b1, k1) = list(boxes.items())[:2]
        row = int(np.flatnonzero(pset.stack_codes == k1)[0])
        raise BoxMismatchError(
            f"{pset.source}: mixed box sizes in one set: {b0[0]}x{b0[1]} ({headers[k0].path}) "
            f"and {b1[0]}x{b1[1]} ({headers[k1].path}) at {pset.where(row).removeprefix(str(pset.source) + ' ')}")


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


def _check_not_source(outputs: list[Path], outdir: Path, sources: list[str],
                      sources_real: list[str]) -> None:
    """Refuse outputs onto a source file (by path or by inode) or into a source directory.

    Outputs are plain names in OUTDIR or OUTDIR/stacks (``_check_inside``), so each
    directory is resolved once and only the outputs already there are ``stat``-ed.
    """
    src_real = set(sources_real)
    src_dirs = {os.path.dirname(s) for s in src_real}
    for d in (outdir, outdir / STACKS_DIR):
        if os.path.realpath(d) in src_dirs:
            raise SourceOverwriteError(f"{d}: holds source stacks; choose an output "
                                       "directory that does not")
    by_dir: dict[Path, list[Path]] = {}
    for p in outputs:
        by_dir.setdefault(p.parent, []).append(p)
    src_ids: set | None = None
    for d, outs in by_dir.items():
        real_dir = os.path.realpath(d)
        try:
            present = set(os.listdir(d))
        except OSError:
            present = set()
        for p in outs:
            if os.path.join(real_dir, p.name) in src_real:
                raise SourceOverwriteError(f"{p}: is a source file; refusing to overwrite it")
            if p.name not in present:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if src_ids is None:
                src_ids = _file_ids(sources)
            if (st.st_dev, st.st_ino) in src_ids:
                raise SourceOverwriteError(f"{p}: is the same file as a source; "
                                           "refusing to overwrite it")


def _file_ids(paths: list[str]) -> set[tuple[int, int]]:
    ids = set()
    for src in paths:
        with contextlib.suppress(OSError):
            st = os.stat(src)
            ids.add((st.st_dev, st.st_ino))
    return ids


def _plan_key(cs_path: Path, passthrough: Path | None, headers: list[StackHeader],
              headers_real: list[str], options: dict) -> str:
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


def _output_modes(dtype: str, star: bool, headers: list[StackHeader]):
    """The MRC mode to write for each source header, and the warnings the choice calls for."""
    want_mode = DTYPES[dtype]
    warnings = []
    if star and dtype == "keep" and any(h.mode == FLOAT16_MODE for h in headers):
        warnings.append(RELION_FLOAT16_WARNING)

    def mode_for(h: StackHeader) -> int:
        if want_mode is not None:
            return want_mode
        if dtype == "auto" and star and h.mode == FLOAT16_MODE:
            return mode_of_dtype("float32")
        return h.mode
    return mode_for, warnings


def _shrink_spec(crop: int | None, fourier_crop: int | None, headers: list[StackHeader]) -> ShrinkSpec:
    """The crop and Fourier crop asked for, checked against every stack's box."""
    shrink = ShrinkSpec(crop, fourier_crop)
    for h in headers:
        shrink.check(h.nx, h.path)
    return shrink


def _output_formats(cs_path: Path | None, pt_path: Path | None, asked: str | None,
                    options: dict) -> tuple[str, str]:
    """The formats of the new ``.cs`` and passthrough (a STAR input's run has no
    ``.cs``: ``cs_path`` is None); recorded in the plan's ``options`` unless both
    are NumPy, so that earlier runs' keys stay valid."""
    out = _format_of(cs_path, asked) if cs_path is not None else "numpy"
    pt = _format_of(pt_path, asked) if pt_path is not None else "numpy"
    if (out, pt) != ("numpy", "numpy"):
        options["formats"] = [out, pt]
    return out, pt


def _format_of(path: Path, asked: str | None) -> str:
    """The format to write a ``.cs`` made from ``path`` in: as asked, else the input's own."""
    if asked is not None:
        if asked not in csfile.FORMATS:
            raise ValueError(f"cs_format must be one of {', '.join(csfile.FORMATS)}, not {asked!r}")
        return asked
    return csfile.detect_format(path)


def _particles_per_stack(layout: str, dtype: str, particles_per_stack: int | None) -> int:
    """Check the option values before any input is read; the packed stacks' size."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if particles_per_stack is not None and layout != "packed":
        raise ValueError("particles_per_stack applies to the packed layout only")
    per = particles_per_stack or DEFAULT_PARTICLES_PER_STACK
    if per < 1:
        raise ValueError("particles_per_stack must be at least 1")
    return per


def plan_consolidation(particles: str | os.PathLike, out: str | os.PathLike, *,
                       project_dir: str | os.PathLike | None = None,
                       passthrough: str | os.PathLike | None = None,
                       layout: str = "per-stack", particles_per_stack: int | None = None,
                       dtype: str = "auto", mrcs: bool = False,
                       allow_outside_project: bool = False, crop: int | None = None,
                       fourier_crop: int | None = None, cs_format: str | None = None) -> ConsolidationPlan:
    """Validate the inputs and decide every output, without writing anything.

    Args:
        particles, out, project_dir, passthrough, layout, particles_per_stack, dtype,
        mrcs, allow_outside_project, crop, fourier_crop: As for
            :func:`stacktools.consolidate.consolidate`.

    Returns:
        The plan, for :func:`stacktools.consolidate.run_plan`.

    Raises:
        ValueError: An option has a value it cannot take.
        StacktoolsError: The specific subclass for each kind of bad input
            (:class:`~stacktools.errors.BoxMismatchError`,
            :class:`~stacktools.errors.ModeMismatchError`,
            :class:`~stacktools.errors.SourceOverwriteError`, ...).
    """
    per = _particles_per_stack(layout, dtype, particles_per_stack)
    cs_path = Path(particles)
    # Only the columns planning reads: the rows are read again as the new .cs is written.
    fields = ("blob/idx", "blob/shape") + (("uid",) if passthrough is not None else ())
    pset = ParticleSet.open_lean(cs_path, project_dir, fields=fields, allow_outside_project=allow_outside_project)
    headers = pset.check()
    _check_boxes(pset, headers)
    star = pset.star is not None
    mrcs = mrcs or star  # RELION reads stacks only under .mrcs
    mode_for, warnings = _output_modes(dtype, star, headers)
    shrink = _shrink_spec(crop, fourier_crop, headers)
    outdir = Path(out)
    proj = _resolved(pset.project_dir)
    out_real = _resolved(outdir)
    relative = out_real == proj or proj in out_real.parents
    ext = ".mrcs" if mrcs else ".mrc"
    data = pset.data
    n = len(data)
    idx_all = np.asarray(data["blob/idx"], np.int64)
    codes_all = pset.stack_codes
    stacks_dir = outdir / STACKS_DIR

    stacks_real = _resolved(stacks_dir)
    headers_real = _real_paths([h.path for h in headers])
    if os.path.lexists(stacks_dir) and stacks_real.parent != out_real:
        # A symlinked OUTDIR/stacks would put the stacks outside OUTDIR.
        _check_not_source([], outdir, [], headers_real)
        raise PathEscapeError(f"{stacks_dir}: leads outside {outdir} (to {stacks_real}); "
                              "remove it or choose another output directory")
    prefix = os.path.relpath(stacks_real, proj) if relative else str(stacks_real)

    if layout == "per-stack":
        stacks, stack_of_row, idx_of_row = _per_stack(pset, headers, codes_all, idx_all, stacks_dir,
                                                      ext, prefix, shrink, mode_for)
    else:
        modes = {mode_for(h) for h in headers}
        if len(modes) > 1:
            raise ModeMismatchError(
                f"{cs_path}: stacks of mixed pixel modes ({', '.join(mode_name(m) for m in sorted(modes))}) "
                "cannot share packed stacks", hints=[Hint("dtype", "; use {} or the per-stack layout", "float32")])
        rows_all = np.arange(n)
        stacks = []
        for j, start in enumerate(range(0, n, per)):
            end = min(n, start + per)
            h = headers[int(codes_all[start])]
            path = stacks_dir / fit_name(_safe_stem(cs_path.stem), f"_packed_{j:06d}{ext}")
            stacks.append(OutputStack(path, f"{prefix}/{path.name}", shrink.out_box(h.nx), shrink.out_box(h.ny),
                                      mode_for(h), h.voxel_size * shrink.pixel_factor(h.nx),
                                      rows_all[start:end], codes_all[start:end], idx_all[start:end]))
        stack_of_row, idx_of_row = rows_all // per, rows_all % per
    new_paths = [s.blob_path for s in stacks]
    new_rows = _new_rows(pset, cs_path, new_paths, stack_of_row, idx_of_row, shrink,
                         headers[0].nx if headers else 0)

    # One byte short of the limit, so that the .csg beside a .cs fits too.
    out_cs = outdir / fit_name(_safe_stem(cs_path.stem), "_consolidated.star" if star else "_consolidated.cs",
                               NAME_MAX - 1)
    out_pt = None
    pt_path = Path(passthrough) if passthrough is not None else None
    if pt_path is not None:
        out_pt = outdir / fit_name(_safe_stem(pt_path.stem), "_consolidated.cs")
        if out_pt.name == out_cs.name:
            out_pt = outdir / fit_name(_safe_stem(pt_path.stem), "_passthrough_consolidated.cs")
    meta = [out_cs] + ([] if star else [csg_path(out_cs)]) + ([out_pt] if out_pt else [])
    for p in meta:
        _check_inside(p, outdir)
    for s in stacks:  # all in stacks_dir by construction: only the names need checking
        _check_name(s.path, outdir)
    outputs = [s.path for s in stacks] + meta
    inputs = [cs_path] + ([pt_path] if pt_path else [])
    _check_not_source(outputs, outdir, [h.path for h in headers] + [os.fspath(p) for p in inputs],
                      headers_real + _real_paths([os.fspath(p) for p in inputs]))
    options = {"layout": layout, "per": per, "dtype": dtype, "mrcs": mrcs,
               "project": str(proj), "outdir": str(out_real), "version": 1}
    if shrink:  # only then, so that earlier runs' keys stay valid
        options["shrink"] = [crop, fourier_crop]
    out_format, pt_format = _output_formats(None if star else cs_path, pt_path, cs_format, options)
    key = _plan_key(cs_path, pt_path, headers, headers_real, options)
    plan = ConsolidationPlan(pset, cs_path, pt_path, outdir, proj, headers, stacks, new_rows, out_cs, out_pt,
                             relative, key, layout, dtype, warnings=warnings, shrink=shrink,
                             cs_format=out_format, pt_format=pt_format)
    if star:
        plan.new_star = shrink_star(pset.star.with_image_names(new_paths, stack_of_row, idx_of_row,
                                                               keep_original=True),
                                    pset.star.particles_key, shrink, headers[0].nx if headers else 0, str(cs_path))
    if pt_path is not None:
        plan.pt_rows = _passthrough_rows(plan, new_paths, stack_of_row, idx_of_row)
    return plan


def _check_inside(path: Path, outdir: Path) -> None:
    """Every output is a plain name directly in OUTDIR or OUTDIR/stacks."""
    if path.parent not in (outdir, outdir / STACKS_DIR):
        raise PathEscapeError(f"{path}: output name would leave {outdir}")
    _check_name(path, outdir)


def _check_name(path: Path, outdir: Path) -> None:
    """An output's name is a plain, visible name (never ``.``, ``..`` or hidden)."""
    name = path.name
    if name in ("", ".", "..") or name.startswith(".") or "/" in name:
        raise PathEscapeError(f"{path}: output name would leave {outdir}")


def _per_stack(pset: ParticleSet, headers: list[StackHeader], codes: np.ndarray, idx: np.ndarray,
               stacks_dir: Path, ext: str, prefix: str, shrink: ShrinkSpec, mode_for):
    """One output stack per source stack, its particles in source order (ties in row
    order); returns the stacks and each row's new stack and index.

    One sort of all rows; each stack holds views of the sorted arrays, so planning
    costs a few NumPy passes and one small object per stack.
    """
    n = len(codes)
    rows_all = np.arange(n)
    order = np.lexsort((rows_all, idx, codes))
    sorted_codes = codes[order]
    sorted_idx = idx[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(headers) + 1))
    stack_of_row = codes  # output stack k holds source stack k's particles
    idx_of_row = np.empty(n, np.int64)
    idx_of_row[order] = rows_all - bounds[sorted_codes]
    taken: set[str] = set()
    stacks = []
    stacks_dir_name = os.fspath(stacks_dir)
    for k, (blob_path, h) in enumerate(zip(pset.blob_paths, headers)):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        name = _out_name(blob_path, ext, taken)
        stacks.append(OutputStack(Path(stacks_dir_name, name), f"{prefix}/{name}", shrink.out_box(h.nx),
                                  shrink.out_box(h.ny), mode_for(h), h.voxel_size * shrink.pixel_factor(h.nx),
                                  order[lo:hi], sorted_codes[lo:hi], sorted_idx[lo:hi]))
    return stacks, stack_of_row, idx_of_row


def _passthrough_rows(plan: ConsolidationPlan, new_paths: list[str], stack_of_row: np.ndarray,
                      idx_of_row: np.ndarray) -> np.ndarray:
    """The passthrough filtered to the set's uids, in the set's row order, pointing
    where the new set's rows point."""
    pt = csfile.read_cs(plan.passthrough_path)
    for arr, label in ((plan.pset.data, plan.cs_path), (pt, plan.passthrough_path)):
        if "uid" not in (arr.dtype.names or ()):
            raise FieldError(f"{label}: missing field 'uid' (needed to match the passthrough)")
    uids = plan.pset.data["uid"]
    found = uid_lookup(uids, pt["uid"])
    if (found < 0).any():
        r = int(np.flatnonzero(found < 0)[0])
        raise FieldError(f"{plan.passthrough_path}: no row for uid {int(uids[r])} "
                         f"(row {r} of {plan.cs_path})")
    rows = pt[found]
    names = pt.dtype.names
    if "blob/path" in names and "blob/idx" in names:
        rows = with_blob_paths(rows, new_paths, stack_of_row, idx_of_row)
    return rows
