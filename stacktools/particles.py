"""The particle model: a ``.cs`` dataset or a RELION particle STAR, plus the project
directory it lives in.

A :class:`ParticleSet` resolves ``blob/path`` (relative to the project directory,
with CryoSPARC's leading ``>`` for imported files stripped) to stack files, groups
rows by stack and validates them against the stacks' headers.

:meth:`ParticleSet.open` reads either format. A STAR (RELION 3.1+ with
``data_optics``, or 3.0 with one table) becomes the same rows: ``blob/path`` and
``blob/idx`` from ``rlnImageName`` (``N@path``, 1-based), ``blob/shape`` from
``rlnImageSize`` when the file has it; the STAR's own blocks are kept in
:attr:`ParticleSet.star` for the commands that write a STAR back. Commands never
ask which format they were given, except to choose what metadata to write.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stacktools.cs.arrays import factorize
from stacktools.errors import (
    BoxMismatchError,
    FieldError,
    Hint,
    IndexOutOfRangeError,
    MissingStackError,
    PathEscapeError,
)
from stacktools.formats import cs as csfile
from stacktools.formats.cs import strip_import_marker
from stacktools.formats.mrc import HeaderTable, StackHeader, read_header_table
from stacktools.formats.star import is_star

BLOB_FIELDS = ("blob/path", "blob/idx")
_RELION_JOB = re.compile(r"job\d+")
# RELION's type suffix: "N@x.mrc:mrcs" reads x.mrc as a stack.
RELION_STACK_SUFFIX = ":mrcs"


@dataclass
class StarTables:
    """The blocks of a particle STAR (name -> DataFrame, in file order) and which
    block holds the particles (``"particles"``, or a RELION 3.0 file's one table)."""

    blocks: dict
    particles_key: str

    @property
    def particles(self):
        return self.blocks[self.particles_key]

    def with_image_names(self, paths: list[str], stack_of_row: np.ndarray, idx_of_row: np.ndarray,
                         *, keep_original: bool = False) -> dict:
        """The blocks with each particle's ``rlnImageName`` set to ``idx+1@paths[stack]``.

        Every other block and column is kept as it is. With ``keep_original`` the old
        names go to ``rlnImageOriginalName``, unless the file already has that column
        (then it is kept: it names where the particle came from first).
        """
        import pandas as pd

        old = self.particles
        names = pd.Series(np.asarray(paths, dtype=object)[stack_of_row], index=old.index, dtype=object)
        number = pd.Series(np.asarray(idx_of_row, np.int64) + 1, index=old.index).astype(str).str.zfill(6)
        new = old.copy(deep=False)
        new["rlnImageName"] = (number + "@" + names).astype(old["rlnImageName"].dtype)
        if keep_original and "rlnImageOriginalName" not in old:
            new["rlnImageOriginalName"] = old["rlnImageName"]
        blocks = dict(self.blocks)
        blocks[self.particles_key] = new
        return blocks


def read_particle_star(path: str | os.PathLike) -> tuple[np.ndarray, StarTables]:
    """The rows of a particle STAR as a ``blob/*`` dataset, and its blocks.

    Raises:
        StarFormatError: Unreadable, no particles table with ``rlnImageName``, or a
            value that is not ``N@path`` (the message names the 1-based row).
    """
    import pandas as pd

    from stacktools.cs.relion import split_image_names
    from stacktools.errors import StarFormatError
    from stacktools.formats.star import read_star

    blocks = read_star(path)
    key = "particles" if "particles" in blocks else next(
        (k for k, b in blocks.items() if isinstance(b, pd.DataFrame) and "rlnImageName" in b), None)
    table = blocks.get(key) if key is not None else None
    if not isinstance(table, pd.DataFrame) or "rlnImageName" not in table:
        raise StarFormatError(f"{path}: no particles table with rlnImageName")
    images = split_image_names(table["rlnImageName"], str(path))
    # RELION's ":mrcs" names the stack x.mrc; the file is what the set reads.
    paths = [p[:-len(RELION_STACK_SUFFIX)] if p.endswith(RELION_STACK_SUFFIX) else p
             for p in images.paths]
    size = _image_sizes(blocks, table)
    n = len(table)
    width = max([1] + [len(p.encode("utf-8", "surrogateescape")) for p in paths])
    descr = [("blob/path", f"S{width}"), ("blob/idx", "<u4")]
    if size is not None:
        descr.append(("blob/shape", "<u4", (2,)))
    data = np.zeros(n, dtype=descr)
    if n:
        encoded = np.array([p.encode("utf-8", "surrogateescape") for p in paths], dtype=f"S{width}")
        data["blob/path"] = encoded[images.codes]
    data["blob/idx"] = images.idx
    if size is not None:
        data["blob/shape"] = size[:, None]
    return data, StarTables(blocks, key)


def _image_sizes(blocks: dict, table) -> np.ndarray | None:
    """Each row's box from ``rlnImageSize`` (the row's or its optics group's), if known."""
    import pandas as pd

    if "rlnImageSize" in table:
        v = pd.to_numeric(table["rlnImageSize"], errors="coerce").to_numpy(np.float64)
    else:
        optics = blocks.get("optics")
        if not isinstance(optics, pd.DataFrame) or not {"rlnImageSize", "rlnOpticsGroup"} <= set(optics) \
                or "rlnOpticsGroup" not in table:
            return None
        by_group = dict(zip(optics["rlnOpticsGroup"].tolist(), optics["rlnImageSize"].tolist()))
        v = table["rlnOpticsGroup"].map(by_group).to_numpy(np.float64)
    if np.isnan(v).any() or (v <= 0).any():
        return None
    return v.astype(np.int64)


def default_project_dir(particles: str | os.PathLike) -> Path:
    """The project directory of a particle file; this is the one place it is decided.

    For a ``.cs``, the parent of its job directory: ``P1/J7/J7_particles_selected.cs``
    gives ``P1``. For a RELION STAR, the directory above its ``Type/jobNNN/`` job
    directory (``proj/Extract/job012/particles.star`` gives ``proj``), else the
    current directory (where RELION itself resolves ``rlnImageName``).
    """
    path = Path(particles).resolve()
    if not is_star(particles):
        return path.parent.parent
    if _RELION_JOB.fullmatch(path.parent.name) and path.parent.parent != path.parent:
        return path.parent.parent.parent
    return Path.cwd()


def stack_key(blob_path: bytes | str) -> str:
    """The one spelling of a stack path that every command groups rows by.

    CryoSPARC's leading ``>`` is stripped, and ``.`` components and repeated
    slashes are dropped, so ``>J1/x.mrc``, ``./Extract/job1/x.mrcs`` and
    ``Extract//job1/x.mrcs`` each name one stack. ``..`` is kept: through a
    symlinked directory ``a/../b`` need not be ``b``.
    """
    path = strip_import_marker(blob_path)
    if "/." not in path and "//" not in path and not path.startswith("./"):
        return path  # the usual case, at no cost
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return ("/" if path.startswith("/") else "") + "/".join(parts)


def resolve_blob_path(project_dir: Path, blob_path: bytes | str) -> Path:
    """Resolve one ``blob/path`` value against the project directory."""
    rel = strip_import_marker(blob_path)
    p = Path(rel)
    return p if p.is_absolute() else project_dir / p


def _stack_codes(values: list, codes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes into the sorted :func:`stack_key` spellings of distinct ``blob/path``
    ``values`` (``codes`` index ``values``), and those spellings."""
    # ">J1/x.mrc", "./J1/x.mrc" and "J1//x.mrc" name the same stack: merge them.
    stripped = [stack_key(u) for u in values]
    names = sorted(set(stripped))
    if names != stripped:
        pos = {n: i for i, n in enumerate(names)}
        codes = np.array([pos[n] for n in stripped], np.int64)[codes]
    return codes, names


@dataclass(frozen=True)
class StackGroup:
    """The rows of a set that live in one stack.

    ``rows`` are positions in the set (ascending), ``indices`` the matching
    ``blob/idx`` values.
    """

    path: Path
    blob_path: str
    rows: np.ndarray
    indices: np.ndarray


class ParticleSet:
    """Particles of a ``.cs`` dataset and the stacks they live in.

    Parameters
    ----------
    data
        Structured array with at least ``blob/path`` and ``blob/idx``.
    project_dir
        Directory that relative ``blob/path`` values are resolved against.
    source
        Where ``data`` came from (the ``.cs`` file), for messages; its directory is
        also a place stacks may live (see ``allow_outside_project``).
    allow_outside_project
        Accept ``blob/path`` values that lie outside both the project directory and
        the directory of ``source``. By default such a value (``/etc/passwd``,
        ``../../x.mrc``) raises :class:`PathEscapeError` the first time the
        stacks are named (:meth:`open` does that at once), before any is
        opened. The check is lexical (:func:`os.path.normpath`, no symlinks
        followed: a project may symlink job directories to other disks) and is
        made once per distinct stack.

    Raises
    ------
    FieldError
        ``data`` lacks ``blob/path`` or ``blob/idx``.
    """

    def __init__(self, data: np.ndarray, project_dir: str | os.PathLike,
                 source: str | os.PathLike | None = None, *,
                 allow_outside_project: bool = False,
                 stacks: tuple[list, np.ndarray] | None = None):
        # ``stacks``: the distinct blob/path values and each row's code into them,
        # for a ``data`` without its blob/path column (:meth:`open_lean`).
        need = BLOB_FIELDS if stacks is None else ("blob/idx",)
        missing = [f for f in need if f not in (data.dtype.names or ())]
        where = source or "dataset"
        if missing:
            raise FieldError(f"{where}: missing field {', '.join(missing)} "
                             "(not a particle dataset)")
        self.data = data
        self.project_dir = Path(project_dir)
        self.source = str(source) if source is not None else None
        self.allow_outside_project = allow_outside_project
        self.star: StarTables | None = None  # set when read from a STAR
        self._codes: np.ndarray | None = None
        self._blob_paths: list[str] | None = None
        self._stack_paths: list[Path] | None = None
        self._stack_names: list[str] | None = None
        self._headers: list[StackHeader] | None = None
        self._table: HeaderTable | None = None
        if stacks is not None:
            self._codes, self._blob_paths = _stack_codes(*stacks)

    @classmethod
    def open(cls, cs_path: str | os.PathLike, project_dir: str | os.PathLike | None = None,
             passthrough: str | os.PathLike | None = None, *,
             allow_outside_project: bool = False) -> "ParticleSet":
        """Load a particle set from a ``.cs`` file or a RELION particle STAR.

        Parameters
        ----------
        cs_path
            The particles ``.cs``, or a particle STAR (``.star``, or any file whose
            first block is a ``data_`` block).
        project_dir
            The project directory; see :func:`default_project_dir` for the default
            (``P1/J7/x.cs`` gives ``P1``, ``proj/Extract/job012/x.star`` gives ``proj``).
        passthrough
            Optional passthrough ``.cs``; its fields are inner-joined on ``uid``
            (fields of ``cs_path`` win on clashes). Not for a STAR.
        allow_outside_project
            See :class:`ParticleSet`.

        Returns
        -------
        ParticleSet

        Raises
        ------
        CsFormatError, FieldError
            The ``.cs`` is unreadable or not a particle dataset.
        PathEscapeError
            A ``blob/path`` leads outside the project (see ``allow_outside_project``).
        """
        star = None
        if is_star(cs_path):
            if passthrough is not None:
                raise FieldError(f"{cs_path}: a STAR file has no passthrough; "
                                 "its particles table holds every column")
            data, star = read_particle_star(cs_path)
        else:
            data = csfile.read_cs(cs_path)
            if passthrough is not None:
                from stacktools.cs.rows import join
                data = join(data, csfile.read_cs(passthrough))
        if project_dir is None:
            project_dir = default_project_dir(cs_path)
        pset = cls(data, project_dir, source=cs_path, allow_outside_project=allow_outside_project)
        pset.star = star
        pset._stack_path_names()  # refuse an escaping blob/path before a command writes anything
        return pset

    @classmethod
    def open_lean(cls, cs_path: str | os.PathLike, project_dir: str | os.PathLike | None = None, *,
                  fields: tuple[str, ...] = ("blob/idx", "blob/shape"),
                  allow_outside_project: bool = False) -> "ParticleSet":
        """:meth:`open` for a set too large to hold twice: of a NumPy-format ``.cs``
        only ``fields`` (those it has) are kept in :attr:`data`, and ``blob/path`` as
        each row's stack code, read a chunk at a time. A STAR or CSDAT file is read
        whole, as :meth:`open` reads it.
        """
        if is_star(cs_path) or csfile.detect_format(cs_path) != "numpy":
            return cls.open(cs_path, project_dir, allow_outside_project=allow_outside_project)
        dtype, n, _ = csfile.numpy_layout(cs_path)
        names = dtype.names or ()
        missing = [f for f in BLOB_FIELDS if f not in names]
        if missing:
            raise FieldError(f"{cs_path}: missing field {', '.join(missing)} (not a particle dataset)")
        kept = [f for f in dict.fromkeys(("blob/idx", *fields)) if f in names]
        data = np.empty(n, dtype=[(f, dtype.fields[f][0]) for f in kept])
        codes = np.empty(n, np.int64)
        seen: dict = {}  # blob/path value -> code, in order of first appearance
        start = 0
        for chunk in csfile.iter_rows(cs_path):
            stop = start + len(chunk)
            for f in kept:
                data[f][start:stop] = chunk[f]
            uniq, at = factorize(np.asarray(chunk["blob/path"]))
            lut = np.array([seen.setdefault(v, len(seen)) for v in uniq.tolist()], np.int64)
            codes[start:stop] = lut[at]
            start = stop
        if project_dir is None:
            project_dir = default_project_dir(cs_path)
        pset = cls(data, project_dir, source=cs_path, allow_outside_project=allow_outside_project,
                   stacks=(list(seen), codes))
        pset._stack_path_names()  # refuse an escaping blob/path before a command writes anything
        return pset

    def __len__(self) -> int:
        return len(self.data)

    def where(self, row: int | None = None) -> str:
        """The set, or one of its rows, as messages name it: ``x.cs row 5`` (0-based,
        as CryoSPARC counts) or ``x.star particle row 6`` (1-based, as RELION does)."""
        base = self.source or "dataset"
        if row is None:
            return base
        return f"{base} particle row {row + 1}" if self.star is not None else f"{base} row {row}"

    _where = where

    @property
    def path_field(self) -> str:
        """What the input calls a row's stack path, for messages."""
        return "rlnImageName path" if self.star is not None else "blob/path"

    def _factorise(self) -> None:
        if self._codes is None:
            uniq, codes = factorize(np.asarray(self.data["blob/path"]))
            self._codes, self._blob_paths = _stack_codes(uniq.tolist(), codes)

    @property
    def blob_paths(self) -> list[str]:
        """Distinct stack paths as :func:`stack_key` spells them, sorted."""
        self._factorise()
        return list(self._blob_paths)

    @property
    def stack_codes(self) -> np.ndarray:
        """For each row, the position of its stack in :attr:`stack_paths`."""
        self._factorise()
        return self._codes

    @property
    def stack_paths(self) -> list[Path]:
        """Absolute paths of the distinct stacks the set references."""
        if self._stack_paths is None:
            self._stack_paths = [Path(p) for p in self._stack_path_names()]
        return list(self._stack_paths)

    def _stack_path_names(self) -> list[str]:
        # Strings are several times cheaper than Path objects for 10,000s of stacks.
        if self._stack_names is None:
            self._factorise()
            root = os.fspath(self.project_dir)
            if not self.allow_outside_project:
                self._check_inside_project()
            self._stack_names = [os.path.join(root, b) for b in self._blob_paths]
        return self._stack_names

    def _allowed_roots(self) -> list[str]:
        roots = [os.fspath(self.project_dir)]
        if self.source is not None:
            # Stacks beside their .cs (consolidate's output outside the project).
            roots.append(os.path.dirname(os.path.abspath(self.source)))
        return [os.path.normpath(os.path.abspath(r)) for r in roots]

    def _check_inside_project(self) -> None:
        roots = self._allowed_roots()
        prefixes = tuple(r.rstrip("/") + "/" for r in roots)
        for k, blob in enumerate(self._blob_paths):
            if ".." not in blob and not blob.startswith("/"):
                continue  # relative without "..": cannot leave the project (the usual case)
            full = os.path.normpath(os.path.join(roots[0], blob))
            if full not in roots and not full.startswith(prefixes):
                row = self._first_row(k)
                raise PathEscapeError(
                    f"{self._where(row)}: {self.path_field} {blob!r} is outside the project directory "
                    f"{roots[0]} (it names {full})",
                    hints=[Hint("allow_outside_project", "; pass {} if the stacks really live there")])

    def _first_row(self, code: int) -> int:
        return int(np.flatnonzero(self.stack_codes == code)[0])

    def _missing_message(self, code: int) -> tuple[str, list[Hint]]:
        """Where a missing stack was looked for, and how to look elsewhere."""
        name, blob = self._stack_path_names()[code], self._blob_paths[code]
        proj = os.path.abspath(self.project_dir)
        msg = (f"{name}: stack not found: {self.path_field} {blob!r} of {self._where(self._first_row(code))}, "
               f"resolved against the project directory {proj}")
        hints = [Hint("project_dir", "; set it with {}", None)]
        if self.source is not None and not os.path.isabs(blob):
            beside = os.path.dirname(os.path.abspath(self.source))
            if beside != proj and os.path.exists(os.path.join(beside, blob)):
                kind = "STAR" if self.star is not None else ".cs"
                hints.append(Hint("project_dir", f"; the stack exists beside the {kind}: use {{}}", beside))
        return msg, hints

    def groups(self) -> list[StackGroup]:
        """Rows grouped by stack, in :attr:`stack_paths` order."""
        codes = self.stack_codes
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(self.blob_paths) + 1))
        idx = self.data["blob/idx"]
        out = []
        for k, (path, blob) in enumerate(zip(self.stack_paths, self.blob_paths)):
            rows = order[bounds[k]:bounds[k + 1]]
            out.append(StackGroup(path, blob, rows, np.asarray(idx[rows], dtype=np.int64)))
        return out

    def stack_headers(self, threads: int = 4) -> list[StackHeader]:
        """Each referenced stack's header, in :attr:`stack_paths` order.

        Read once (one ``pread`` each) and cached on the set. ``threads`` overlap
        the reads on slow storage.
        """
        if self._headers is None:
            self._headers = self.header_table(threads).headers()
        return self._headers

    def header_table(self, threads: int = 4) -> HeaderTable:
        """:meth:`stack_headers` as columns (a :class:`HeaderTable`), for code over
        many stacks. Read once and cached on the set."""
        if self._table is None:
            names = self._stack_path_names()
            try:
                self._table = read_header_table(names, threads)
            except MissingStackError as err:
                missing = next((k for k, p in enumerate(names) if not os.path.exists(p)), None)
                if missing is None:
                    raise
                msg, hints = self._missing_message(missing)
                raise MissingStackError(msg, hints=hints) from err
        return self._table

    def box(self) -> int:
        """The box size in pixels, from ``blob/shape`` (or from the stacks)."""
        boxes = self.boxes()
        if len(boxes) != 1:
            raise BoxMismatchError(f"{self._where()}: mixed box sizes {sorted(boxes)} in one set")
        return next(iter(boxes))

    def boxes(self) -> set[int]:
        """Distinct box sizes of the set."""
        if len(self) == 0:
            return set()
        if "blob/shape" in self.data.dtype.names:
            shape = np.asarray(self.data["blob/shape"]).reshape(len(self), -1)
            return set(np.unique(shape[:, -1]).tolist())
        return set(np.unique(self.header_table().nx).tolist())

    def check(self, *, check_truncation: bool = True) -> list[StackHeader]:
        """Check the set against its stacks; return the headers in stack order.

        Checks that every stack exists and is a readable MRC stack, is not
        truncated, that each ``blob/idx`` is below the stack's ``nz``, and that
        each stack's box matches the rows' ``blob/shape``. Errors name the stack
        file and the first offending row.
        """
        self.check_table(check_truncation=check_truncation)
        return self.stack_headers()

    def check_table(self, *, check_truncation: bool = True) -> HeaderTable:
        """:meth:`check`, returning the headers as a :class:`HeaderTable`."""
        table = self.header_table()
        idx = np.asarray(self.data["blob/idx"], dtype=np.int64)
        codes = self.stack_codes
        bad = np.flatnonzero((idx >= table.nz[codes]) | (idx < 0))
        if len(bad):
            r = int(bad[0])
            h = table.header(int(codes[r]))
            raise IndexOutOfRangeError(
                f"{h.path}: blob/idx {idx[r]} past the end of the stack ({h.nz} particles) "
                f"at {self._where(r)}")
        if "blob/shape" in self.data.dtype.names and len(self):
            shape = np.asarray(self.data["blob/shape"]).reshape(len(self), -1)
            bad = np.flatnonzero((shape[:, 0] != table.ny[codes]) | (shape[:, -1] != table.nx[codes]))
            if len(bad):
                r = int(bad[0])
                h = table.header(int(codes[r]))
                raise BoxMismatchError(
                    f"{h.path}: stack box {h.ny}x{h.nx} does not match blob/shape "
                    f"{shape[r].tolist()} at {self._where(r)}")
        if check_truncation:
            short = np.flatnonzero(table.file_size < table.expected_size)
            if len(short):
                table.header(int(short[0])).check_complete()
        return table


def open_particles(cs_path: str | os.PathLike, project_dir: str | os.PathLike | None = None,
                   passthrough: str | os.PathLike | None = None, *,
                   allow_outside_project: bool = False) -> ParticleSet:
    """Load a particle set; see :meth:`ParticleSet.open`."""
    return ParticleSet.open(cs_path, project_dir, passthrough,
                            allow_outside_project=allow_outside_project)

