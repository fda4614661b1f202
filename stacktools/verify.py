"""Check a consolidated particle set against the set it was made from.

Every particle of the new set is read and compared, bit for bit, with its source
particle (shrunk as the set was, then converted to the new stack's pixel mode when
the two differ), and every field other than ``blob/path`` and ``blob/idx`` is
compared row by row (with the source's box, pixel size and shifts as the shrink
makes them). Rows are matched on ``uid``. Reads are coalesced and memory stays bounded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from stacktools.cs.rows import uid_lookup
from stacktools.errors import FieldError, Hint, ShrinkError, StacktoolsError
from stacktools.formats.mrc import StackHeader, read_header
from stacktools.particles import ParticleSet, default_project_dir
from stacktools.shrink import ShrinkSpec, shrink_fields, shrink_star
from stacktools.stacks import read_to_array

MAX_PROBLEMS = 20
# Two buffers of this size per thread (the stack and its sources) bound the memory.
VERIFY_CHUNK_BYTES = 4 * 2**20


class PlannedStack(Protocol):
    """What :func:`check_stack` needs of a stack a consolidation planned to write.

    :class:`stacktools.consolidate.OutputStack` is one; position ``k`` holds particle
    ``indices[k]`` of source ``codes[k]``.
    """

    path: Path
    nx: int
    ny: int
    mode: int
    codes: np.ndarray
    indices: np.ndarray

    @property
    def count(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`.

    ``ok`` is true when every particle and field matched. ``problems`` lists the
    first few differences, one line each.
    """

    cs: str
    against: str
    particles: int
    stacks: int
    fields: int
    bytes_checked: int
    particle_mismatches: int = 0
    field_mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.particle_mismatches or self.field_mismatches or self.problems)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def mismatched_particles(header: StackHeader, positions: np.ndarray,
                         sources: Sequence[StackHeader], codes: np.ndarray,
                         indices: np.ndarray, *, chunk_bytes: int = VERIFY_CHUNK_BYTES,
                         shrink: ShrinkSpec | None = None) -> np.ndarray:
    """Positions ``k`` where particle ``positions[k]`` of a stack differs from its source.

    Parameters
    ----------
    header
        Header of the stack being checked.
    positions
        Particle indices in that stack.
    sources, codes, indices
        The source of each checked particle: stack ``sources[codes[k]]``, particle
        ``indices[k]``. Sources are converted to the checked stack's mode first.
    chunk_bytes
        Bytes read per side at a time.
    shrink
        The crop and Fourier crop the stack was written with: sources are shrunk
        again and compared bit for bit (the result does not depend on the batches).
    """
    positions = np.asarray(positions, np.int64)
    order = np.argsort(positions, kind="stable")
    dtype = header.dtype.newbyteorder("=")
    pb = header.particle_bytes
    step = max(1, chunk_bytes // pb)
    bad = []
    for a in range(0, len(order), step):
        sel = order[a:a + step]
        mine = read_to_array([header], dtype, np.zeros(len(sel), np.int64), positions[sel],
                             chunk_bytes=chunk_bytes)
        theirs = read_to_array(sources, dtype, np.asarray(codes)[sel], np.asarray(indices)[sel],
                               chunk_bytes=chunk_bytes, shrink=shrink)
        word = np.uint64 if pb % 8 == 0 else np.uint8  # fewer, wider comparisons
        differ = (mine.reshape(len(sel), -1).view(word)
                  != theirs.reshape(len(sel), -1).view(word)).any(axis=1)
        bad.extend(sel[differ].tolist())
    return np.sort(np.asarray(bad, np.int64))


def check_stack(stack: PlannedStack, sources: Sequence[StackHeader], *,
                chunk_bytes: int = VERIFY_CHUNK_BYTES, shrink: ShrinkSpec | None = None) -> str | None:
    """Check a written output stack of a consolidation plan.

    Args:
        stack: The planned stack; its file is read.
        sources: The headers of the stacks its particles come from.
        chunk_bytes: Bytes read per side at a time.
        shrink: The plan's crop and Fourier crop, if any (see :func:`mismatched_particles`).

    Returns:
        ``None`` when the file has exactly the planned header, size and particles,
        or a one-line description of the first difference.
    """
    try:
        h = read_header(stack.path)
    except StacktoolsError as err:
        return str(err)
    if (h.nx, h.ny, h.nz, h.mode) != (stack.nx, stack.ny, stack.count, stack.mode):
        return (f"{stack.path}: header says {h.nz} x {h.ny}x{h.nx} mode {h.mode}, expected "
                f"{stack.count} x {stack.ny}x{stack.nx} mode {stack.mode}")
    if h.file_size != stack.nbytes:
        return f"{stack.path}: {h.file_size} bytes, expected {stack.nbytes}"
    bad = mismatched_particles(h, np.arange(stack.count), sources, stack.codes, stack.indices,
                               chunk_bytes=chunk_bytes, shrink=shrink)
    if len(bad):
        k = int(bad[0])
        return f"{stack.path}: particle {k} differs from its source (and {len(bad) - 1} more)"
    return None


def _project_of(against: str | os.PathLike, project_dir: str | os.PathLike | None
                ) -> str | os.PathLike:
    """The project both sets resolve against: given, or the parent of ``against``'s job."""
    return default_project_dir(against) if project_dir is None else project_dir


def verify_bytes(new_cs: str | os.PathLike, against: str | os.PathLike, *,
                 project_dir: str | os.PathLike | None = None,
                 allow_outside_project: bool = False) -> int:
    """The pixel bytes :func:`verify` will compare: the total its ``progress`` counts to.

    Only the new set's stack headers are read.

    Args:
        new_cs, against, project_dir, allow_outside_project: As for :func:`verify`.

    Returns:
        The bytes of the new set's particles.

    Raises:
        StacktoolsError: The new set or one of its stacks is unreadable.
    """
    new = ParticleSet.open(new_cs, _project_of(against, project_dir),
                           allow_outside_project=allow_outside_project)
    return sum(h.particle_bytes * len(g.rows) for h, g in zip(new.stack_headers(), new.groups()))


def _raw_rows(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(len(a), -1)


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, whether ``a`` and ``b`` differ: bit for bit when their dtypes match."""
    if a.dtype == b.dtype:
        return (_raw_rows(a) != _raw_rows(b)).any(axis=1) if len(a) else np.zeros(0, bool)
    return (np.asarray(a) != np.asarray(b)).reshape(len(a), -1).any(axis=1)


def _old_rows(nd: np.ndarray, od: np.ndarray, new_cs: str | os.PathLike,
              against: str | os.PathLike) -> np.ndarray:
    """For each row of the new set, its row in the original: by ``uid``, else by position."""
    if "uid" in nd.dtype.names and "uid" in od.dtype.names:
        old_rows = uid_lookup(nd["uid"], od["uid"])
        if (old_rows < 0).any():
            r = int(np.flatnonzero(old_rows < 0)[0])
            raise FieldError(f"{new_cs}: uid {int(nd['uid'][r])} at row {r} is not in {against}")
        return old_rows
    if len(nd) != len(od):
        raise FieldError(f"{new_cs}: {len(nd)} rows but {against} has {len(od)} and "
                         "there is no uid field to match them")
    return np.arange(len(od))


# What a consolidation of a STAR changes: the names, and the record of the old ones.
STAR_NAME_COLUMNS = ("rlnImageName", "rlnImageOriginalName")


def _same_values(a, b) -> np.ndarray:
    """Per row, whether two columns hold the same values (numbers by value, NaN == NaN)."""
    import pandas as pd

    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
        return (x == y) | (np.isnan(x) & np.isnan(y))
    return (pd.Series(a).astype(str).to_numpy() == pd.Series(b).astype(str).to_numpy())


def _star_differences(new: ParticleSet, old: ParticleSet, old_rows: np.ndarray, shrink: ShrinkSpec,
                      box: int, note: Callable[[str], None]) -> tuple[int, list[str]]:
    """Compare two STARs' blocks: every particles column but the names, row by row, and
    every other block whole (the old blocks as ``shrink`` rewrites them from ``box``).
    Returns the number of differing columns and the columns compared."""
    if new.star is None or old.star is None:
        note(f"{new.source}: one of the two sets is a STAR and the other is not; "
             "only particles were compared")
        return 1, []
    bad, compared = 0, []
    old_blocks = shrink_star(old.star.blocks, old.star.particles_key, shrink, box, str(old.source))
    for key, old_block in old_blocks.items():
        new_key = new.star.particles_key if key == old.star.particles_key else key
        new_block = new.star.blocks.get(new_key)
        if new_block is None:
            bad += 1
            note(f"{new.source}: block data_{key} of {old.source} is missing")
            continue
        particles = key == old.star.particles_key
        old_part = old_block.iloc[old_rows].reset_index(drop=True) if particles else old_block
        for col in old_block.columns:
            if particles and col in STAR_NAME_COLUMNS:
                continue
            compared.append(f"data_{key}/{col}")
            if col not in new_block:
                bad += 1
                note(f"{new.source}: column {col} of data_{key} is missing")
                continue
            if len(new_block) != len(old_part):
                bad += 1
                note(f"{new.source}: data_{key} has {len(new_block)} rows, {old.source} {len(old_part)}")
                break
            same = _same_values(new_block[col].reset_index(drop=True), old_part[col])
            if not same.all():
                bad += 1
                r = int(np.flatnonzero(~same)[0])
                note(f"{new.source}: column {col} of data_{key} differs at particle row {r + 1}")
    return bad, compared


@dataclass
class StackComparison:
    """One stack of the new set against its sources: all that :func:`compare_stack` reads.

    ``rows`` are the new set's rows in the stack, ``positions`` their ``blob/idx`` in
    it; ``codes`` index ``sources`` (the old stacks they come from) and ``indices``
    are the particles there; ``shrink`` is what the consolidation did to them.
    """

    new: StackHeader
    rows: np.ndarray
    positions: np.ndarray
    sources: list[StackHeader]
    codes: np.ndarray
    indices: np.ndarray
    shrink: ShrinkSpec = field(default_factory=ShrinkSpec)


def compare_stack(job: StackComparison, *, chunk_bytes: int = VERIFY_CHUNK_BYTES,
                  progress: Callable[[int], None] | None = None) -> tuple[int, str | None, int]:
    """Compare one stack's particles with their sources.

    Returns:
        The number of particles that differ, a line naming the first (or None), and
        the bytes of the new stack compared.
    """
    h = job.new
    bad = mismatched_particles(h, job.positions, job.sources, job.codes, job.indices, chunk_bytes=chunk_bytes,
                               shrink=job.shrink or None)
    nbytes = len(job.rows) * h.particle_bytes
    if progress:
        progress(nbytes)
    msg = None
    if len(bad):
        b = int(bad[0])
        msg = (f"{h.path}: particle {int(job.positions[b])} (row {int(job.rows[b])}) differs from particle "
               f"{int(job.indices[b])} of {job.sources[job.codes[b]].path}")
    return len(bad), msg, nbytes


# compare_here's signature: (jobs, *, threads, chunk_bytes, progress) -> one compare_stack outcome per job
Comparer = Callable[..., list]


def compare_here(jobs: list[StackComparison], *, threads: int, chunk_bytes: int,
                 progress: Callable[[int], None] | None) -> list[tuple[int, str | None, int]]:
    """:func:`compare_stack` for every job, on ``threads`` threads of this process."""
    def one(job: StackComparison) -> tuple[int, str | None, int]:
        return compare_stack(job, chunk_bytes=chunk_bytes, progress=progress)

    if threads > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, jobs))
    return [one(j) for j in jobs]


def claimed_shrink(crop: int | None, fourier_crop: int | None, recorded: ShrinkSpec | None,
                   where: str | os.PathLike) -> ShrinkSpec:
    """The shrink to verify a set against: as given, else as its consolidation recorded it.

    Args:
        crop, fourier_crop: Given by the user (``None``: not given).
        recorded: What the output directory's manifest records
            (:func:`stacktools.consolidate.recorded_shrink`), or ``None``.
        where: The new set, for the message.

    Raises:
        ShrinkError: The sizes given are not the ones recorded.
    """
    given = ShrinkSpec(crop, fourier_crop)
    if crop is None and fourier_crop is None:
        return recorded or ShrinkSpec()
    if recorded is not None and recorded != given:
        raise ShrinkError(f"{where}: consolidated with {describe_shrink(recorded)} (its manifest says so), "
                          f"not {describe_shrink(given)}")
    return given


def describe_shrink(spec: ShrinkSpec) -> str:
    """``crop 200, Fourier crop 64``, or ``no crop or Fourier crop``."""
    parts = ([f"crop {spec.crop}"] if spec.crop else []) + \
        ([f"Fourier crop {spec.fourier_crop}"] if spec.fourier_crop else [])
    return ", ".join(parts) or "no crop or Fourier crop"


def _check_shrink(shrink: ShrinkSpec, jobs: list[StackComparison], nd: np.ndarray, want_rows: np.ndarray,
                  new_cs: str | os.PathLike) -> None:
    """Refuse a claimed shrink that the new stacks' box and pixel size, or the new
    rows' ``blob/shape`` and ``blob/psize_A`` (``want_rows``: the source rows as the
    shrink rewrites them), contradict: comparing pixels then would only report every
    particle as different."""
    def refuse(what: str, got, want, src: str) -> None:
        raise ShrinkError(f"{what} is {got} but {src} with {describe_shrink(shrink)} gives {want}; "
                          "give the sizes it was consolidated with",
                          hints=[Hint("crop", " ({}", None), Hint("fourier_crop", ", {})", None)])

    for job in jobs:
        h = job.new
        for src in job.sources:
            box = shrink.out_box(src.nx)
            if (h.nx, h.ny) != (box, shrink.out_box(src.ny)):
                refuse(f"{h.path}: the box", f"{h.nx}x{h.ny}", f"{box}x{shrink.out_box(src.ny)}", str(src.path))
            # Only a Fourier crop changes the pixel size; other writers' headers may not
            # carry one, so without it the box alone is checked.
            want = src.voxel_size * shrink.pixel_factor(src.nx)
            if shrink.fourier_crop and h.voxel_size > 0 and src.voxel_size > 0 \
                    and not np.isclose(h.voxel_size, want, rtol=1e-4):
                refuse(f"{h.path}: the pixel size", f"{h.voxel_size:.6g} Å", f"{want:.6g} Å", str(src.path))
    names = set(nd.dtype.names) & set(want_rows.dtype.names)
    if shrink and "blob/shape" in names:  # else compared with the other fields
        got, want = np.asarray(nd["blob/shape"]), np.asarray(want_rows["blob/shape"])
        differ = (got != want).reshape(len(nd), -1).any(axis=1)
        if differ.any():
            r = int(np.flatnonzero(differ)[0])
            refuse(f"{new_cs}: blob/shape at row {r}", got[r].tolist(), want[r].tolist(), "its source row")
    if shrink.fourier_crop and "blob/psize_A" in names:  # else compared with the other fields
        got, want = np.asarray(nd["blob/psize_A"], np.float64), np.asarray(want_rows["blob/psize_A"], np.float64)
        differ = ~np.isclose(got, want, rtol=1e-4)
        if differ.any():
            r = int(np.flatnonzero(differ)[0])
            refuse(f"{new_cs}: blob/psize_A at row {r}", f"{got[r]:.6g} Å", f"{want[r]:.6g} Å", "its source row")


def verify(new_cs: str | os.PathLike, against: str | os.PathLike, *,
           project_dir: str | os.PathLike | None = None, threads: int = 4,
           chunk_bytes: int = VERIFY_CHUNK_BYTES,
           progress: Callable[[int], None] | None = None,
           allow_outside_project: bool = False, compare: Comparer | None = None,
           shrink: ShrinkSpec | None = None) -> VerifyResult:
    """Check every particle and field of a consolidated set against the original.

    Parameters
    ----------
    new_cs
        The consolidated ``.cs`` or STAR.
    against
        The ``.cs`` or STAR it was made from. For STARs, every block and every
        particles column except ``rlnImageName`` and ``rlnImageOriginalName`` is
        compared too (rows by position: a STAR has no uids).
    project_dir
        Project directory both sets' relative ``blob/path`` values resolve against;
        defaults to the parent of ``against``'s job directory.
    threads
        Stacks checked at the same time.
    chunk_bytes
        Bytes read per side at a time, per thread.
    progress
        Called with the number of bytes of the new stacks checked.
    allow_outside_project
        Accept ``blob/path`` values outside the project directory; see
        :class:`~stacktools.particles.ParticleSet`.
    compare
        What compares the stacks' particles, in place of :func:`compare_here`
        (``stacktools.cluster`` compares them on a Dask cluster).
    shrink
        The crop and Fourier crop the set was consolidated with (see
        :func:`claimed_shrink`): sources are shrunk the same way and compared bit
        for bit, and their box, pixel size and shifts are compared as it changes them.

    Returns
    -------
    VerifyResult
        Bad input (missing stacks, truncated files) raises instead; so does a
        ``shrink`` that the new stacks' box or pixel size contradict
        (:class:`~stacktools.errors.ShrinkError`).
    """
    shrink = shrink or ShrinkSpec()
    project_dir = _project_of(against, project_dir)
    new = ParticleSet.open(new_cs, project_dir, allow_outside_project=allow_outside_project)
    old = ParticleSet.open(against, project_dir, allow_outside_project=allow_outside_project)
    new_list = new.check()
    old_list = old.check()
    problems: list[str] = []

    def note(msg: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(msg)

    nd, od = new.data, old.data
    names_new = nd.dtype.names
    old_rows = _old_rows(nd, od, new_cs, against)
    if len(nd) != len(od):
        note(f"{new_cs}: {len(nd)} rows, {against} has {len(od)}")

    old_codes = old.stack_codes[old_rows]
    old_idx = np.asarray(od["blob/idx"], np.int64)[old_rows]
    new_idx = np.asarray(nd["blob/idx"], np.int64)
    groups = new.groups()
    jobs = []
    for k, g in enumerate(groups):
        used, codes = np.unique(old_codes[g.rows], return_inverse=True)
        jobs.append(StackComparison(new_list[k], g.rows, new_idx[g.rows], [old_list[c] for c in used],
                                    codes.reshape(-1).astype(np.int64), old_idx[g.rows], shrink))
    box = old_list[0].nx if old_list else 0
    # The source rows as the consolidation rewrote them; a consolidation checks that
    # every stack has one box, so one box is enough.
    od_rows = shrink_fields(od[old_rows], shrink, box, copy=False)  # od[old_rows] is a copy already
    _check_shrink(shrink, jobs, nd, od_rows, new_cs)

    field_bad = 0
    fields = [n for n in od.dtype.names if n not in ("blob/path", "blob/idx")]
    for name in fields:
        if name not in names_new:
            field_bad += 1
            note(f"{new_cs}: field {name!r} of {against} is missing")
            continue
        differ = _rows_differ(nd[name], od_rows[name])
        if differ.any():
            field_bad += 1
            note(f"{new_cs}: field {name!r} differs at row {int(np.flatnonzero(differ)[0])}")

    if new.star is not None or old.star is not None:
        star_bad, star_fields = _star_differences(new, old, old_rows, shrink, box, note)
        field_bad += star_bad
        fields += star_fields

    outcomes = (compare or compare_here)(jobs, threads=threads, chunk_bytes=chunk_bytes, progress=progress)
    particle_bad = 0
    for n_bad, msg, _ in outcomes:
        particle_bad += n_bad
        if msg:
            note(msg)
    return VerifyResult(cs=str(new_cs), against=str(against), particles=len(nd),
                        stacks=len(groups), fields=len(fields),
                        bytes_checked=sum(o[2] for o in outcomes),
                        particle_mismatches=particle_bad, field_mismatches=field_bad,
                        problems=problems)
