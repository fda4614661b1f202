"""The particle model: a ``.cs`` dataset plus the project directory it lives in.

A :class:`ParticleSet` resolves ``blob/path`` (relative to the project directory,
with CryoSPARC's leading ``>`` for imported files stripped) to stack files, groups
rows by stack and validates them against the stacks' headers.
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
from stacktools.formats.mrc import StackHeader, read_headers

BLOB_FIELDS = ("blob/path", "blob/idx")
_JOB_DIR = re.compile(r"job\d+")


def default_project_dir(particles: str | os.PathLike) -> Path:
    """The project directory of a particle file: the parent of its job directory.

    ``P1/J7/J7_particles_selected.cs`` gives ``P1``. This is the one place the
    default is decided.
    """
    return Path(particles).resolve().parent.parent


def relion_project_dir(star_path: str | os.PathLike) -> Path:
    """Where a RELION STAR file's ``rlnImageName`` paths start: its project directory.

    ``P/Refine3D/job012/run_data.star`` gives ``P`` (the directory above a
    ``Type/jobNNN/`` job directory); any other file gives the current directory,
    where RELION is run from.
    """
    job = Path(star_path).resolve().parent
    if _JOB_DIR.fullmatch(job.name):
        return job.parent.parent
    return Path.cwd()


def resolve_blob_path(project_dir: Path, blob_path: bytes | str) -> Path:
    """Resolve one ``blob/path`` value against the project directory."""
    rel = strip_import_marker(blob_path)
    p = Path(rel)
    return p if p.is_absolute() else project_dir / p


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
                 allow_outside_project: bool = False):
        missing = [f for f in BLOB_FIELDS if f not in (data.dtype.names or ())]
        where = source or "dataset"
        if missing:
            raise FieldError(f"{where}: missing field {', '.join(missing)} "
                             "(not a particle dataset)")
        self.data = data
        self.project_dir = Path(project_dir)
        self.source = str(source) if source is not None else None
        self.allow_outside_project = allow_outside_project
        self._codes: np.ndarray | None = None
        self._blob_paths: list[str] | None = None
        self._stack_paths: list[Path] | None = None
        self._stack_names: list[str] | None = None
        self._headers: list[StackHeader] | None = None

    @classmethod
    def open(cls, cs_path: str | os.PathLike, project_dir: str | os.PathLike | None = None,
             passthrough: str | os.PathLike | None = None, *,
             allow_outside_project: bool = False) -> "ParticleSet":
        """Load a particle set from a ``.cs`` file.

        Parameters
        ----------
        cs_path
            The particles ``.cs``.
        project_dir
            The CryoSPARC project directory. Defaults to the parent of the job
            directory holding ``cs_path`` (``P1/J7/x.cs`` gives ``P1``).
        passthrough
            Optional passthrough ``.cs``; its fields are inner-joined on ``uid``
            (fields of ``cs_path`` win on clashes).
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
        data = csfile.read_cs(cs_path)
        if passthrough is not None:
            from stacktools.cs.rows import join
            data = join(data, csfile.read_cs(passthrough))
        if project_dir is None:
            project_dir = default_project_dir(cs_path)
        pset = cls(data, project_dir, source=cs_path, allow_outside_project=allow_outside_project)
        pset._stack_path_names()  # refuse an escaping blob/path before a command writes anything
        return pset

    def __len__(self) -> int:
        return len(self.data)

    def _where(self, row: int | None = None) -> str:
        base = self.source or "dataset"
        return f"{base} row {row}" if row is not None else base

    def _factorise(self) -> None:
        if self._codes is None:
            uniq, codes = factorize(np.asarray(self.data["blob/path"]))
            # ">J1/x.mrc" and "J1/x.mrc" name the same stack: merge them.
            stripped = [strip_import_marker(u) for u in uniq.tolist()]
            names = sorted(set(stripped))
            if len(names) != len(stripped):
                pos = {n: i for i, n in enumerate(names)}
                codes = np.array([pos[n] for n in stripped], np.int64)[codes]
            self._codes = codes
            self._blob_paths = names

    @property
    def blob_paths(self) -> list[str]:
        """Distinct ``blob/path`` values (marker stripped), sorted."""
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
                    f"{self._where(row)}: blob/path {blob!r} is outside the project directory "
                    f"{roots[0]} (it names {full})",
                    hints=[Hint("allow_outside_project", "; pass {} if the stacks really live there")])

    def _first_row(self, code: int) -> int:
        return int(np.flatnonzero(self.stack_codes == code)[0])

    def _missing_message(self, code: int) -> tuple[str, list[Hint]]:
        """Where a missing stack was looked for, and how to look elsewhere."""
        name, blob = self._stack_path_names()[code], self._blob_paths[code]
        proj = os.path.abspath(self.project_dir)
        msg = (f"{name}: stack not found: blob/path {blob!r} of {self._where(self._first_row(code))}, "
               f"resolved against the project directory {proj}")
        hints = [Hint("project_dir", "; set it with {}", None)]
        if self.source is not None and not os.path.isabs(blob):
            beside = os.path.dirname(os.path.abspath(self.source))
            if beside != proj and os.path.exists(os.path.join(beside, blob)):
                hints.append(Hint("project_dir", "; the stack exists beside the .cs: use {}", beside))
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
            names = self._stack_path_names()
            try:
                self._headers = read_headers(names, threads)
            except MissingStackError as err:
                missing = next((k for k, p in enumerate(names) if not os.path.exists(p)), None)
                if missing is None:
                    raise
                msg, hints = self._missing_message(missing)
                raise MissingStackError(msg, hints=hints) from err
        return self._headers

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
        return {h.nx for h in self.stack_headers()}

    def check(self, *, check_truncation: bool = True) -> list[StackHeader]:
        """Check the set against its stacks; return the headers in stack order.

        Checks that every stack exists and is a readable MRC stack, is not
        truncated, that each ``blob/idx`` is below the stack's ``nz``, and that
        each stack's box matches the rows' ``blob/shape``. Errors name the stack
        file and the first offending row.
        """
        hdr_list = self.stack_headers()
        idx = np.asarray(self.data["blob/idx"], dtype=np.int64)
        codes = self.stack_codes
        nz = np.array([h.nz for h in hdr_list], dtype=np.int64)
        bad = np.flatnonzero((idx >= nz[codes]) | (idx < 0))
        if len(bad):
            r = int(bad[0])
            h = hdr_list[codes[r]]
            raise IndexOutOfRangeError(
                f"{h.path}: blob/idx {idx[r]} past the end of the stack ({h.nz} particles) "
                f"at {self._where(r)}")
        if "blob/shape" in self.data.dtype.names and len(self):
            shape = np.asarray(self.data["blob/shape"]).reshape(len(self), -1)
            ny = np.array([h.ny for h in hdr_list])[codes]
            nx = np.array([h.nx for h in hdr_list])[codes]
            bad = np.flatnonzero((shape[:, 0] != ny) | (shape[:, -1] != nx))
            if len(bad):
                r = int(bad[0])
                h = hdr_list[codes[r]]
                raise BoxMismatchError(
                    f"{h.path}: stack box {h.ny}x{h.nx} does not match blob/shape "
                    f"{shape[r].tolist()} at {self._where(r)}")
        if check_truncation:
            for h in hdr_list:
                h.check_complete()
        return hdr_list


def open_particles(cs_path: str | os.PathLike, project_dir: str | os.PathLike | None = None,
                   passthrough: str | os.PathLike | None = None, *,
                   allow_outside_project: bool = False) -> ParticleSet:
    """Load a particle set; see :meth:`ParticleSet.open`."""
    return ParticleSet.open(cs_path, project_dir, passthrough,
                            allow_outside_project=allow_outside_project)

