"""``CsDataset``: a ``.cs`` dataset as one object with selection, queries and set algebra.

A thin wrapper over a NumPy structured array (:attr:`CsDataset.data`) and the
modules that do the work: :mod:`stacktools.cs.query` (queries),
:mod:`stacktools.cs.rows` (set operations and join), :mod:`stacktools.cs.dedupe`,
:mod:`stacktools.cs.subsets`, :mod:`stacktools.cs.relion` and :mod:`stacktools.formats.tabular`.
Every operation returns a new ``CsDataset``; none modifies its input.

>>> ds = CsDataset.load("J7/J7_particles_selected.cs")
>>> good = ds.query("alignments2D/class in [1, 4, 7]")
>>> rest = ds - good                      # set difference by uid
>>> df = good.to_pandas()
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from stacktools.cs import rows as _ds
from stacktools.errors import CsFormatError, ExpressionError, FieldError, Hint

# CryoSPARC names a job's outputs J<n>[_<iteration>]_<rest>.cs and the passthrough
# beside them J<n>_passthrough_<rest>.cs (J7_particles_selected.cs and
# J7_passthrough_particles_selected.cs; J24_005_particles.cs and
# J24_passthrough_particles.cs).
_JOB_FILE_RE = re.compile(r"^(?P<job>.*?J\d+)(?:_\d+)?_(?P<rest>.+)\.cs$")

if TYPE_CHECKING:
    from stacktools.cs.dedupe import Deduplicated


class CsDataset:
    """A ``.cs`` dataset: rows of particles, fields named like ``ctf/df1_A``.

    Parameters
    ----------
    data
        One-dimensional structured array; used as is (not copied).
    source
        Where the data came from (a file name), for error messages.

    Indexing
    --------
    ``ds["ctf/df1_A"]`` is a field's column (a NumPy view); ``ds[["uid", "ctf/"]]``
    keeps only those fields (a name ending in ``/`` takes the whole group);
    ``ds[mask]`` (boolean), ``ds[[0, 5, 9]]`` (positions) and ``ds[10:20]`` select
    rows; ``ds[3]`` is one row.
    """

    def __init__(self, data: np.ndarray, source: str | os.PathLike | None = None,
                 format: str | None = None):
        if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
            raise FieldError(f"{source or 'dataset'}: a CsDataset needs a 1-D structured array")
        self.data = data
        self.source = str(source) if source is not None else None
        # The .cs format read (numpy or csdat); save() keeps it unless told otherwise.
        self.format = format

    # ---- construction and output ---------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, passthrough: str | os.PathLike | None = None,
             mmap: bool = False, fields: Sequence[str] | None = None) -> "CsDataset":
        """Read a ``.cs`` file (NumPy or CSDAT format).

        Parameters
        ----------
        path
            The ``.cs`` file.
        passthrough
            Optional passthrough ``.cs`` to inner-join on ``uid`` (``path`` wins on
            clashing fields).
        mmap
            Map a NumPy-format file read-only instead of reading it.
        fields
            Read only these fields (``ctf/`` takes a group), e.g. ``["uid"]`` when
            only uids are needed: the rest of the file is never copied.
        """
        from stacktools.formats.cs import detect_format, read_cs
        if fields is not None:
            data = _ds.select_fields(read_cs(path, mmap=True), fields, str(path))
        else:
            # With a passthrough the join copies every row into a new array, so both
            # files are mapped and read once, straight into it.
            data = read_cs(path, mmap=mmap or passthrough is not None)
        if passthrough is not None:
            data = _ds.join(data, read_cs(passthrough, mmap=True), label=(str(path), str(passthrough)))
        return cls(data, path, detect_format(path))

    @classmethod
    def from_pandas(cls, df, dtype: np.dtype | None = None) -> "CsDataset":
        """Build from a DataFrame shaped like :meth:`to_pandas` output.

        ``dtype`` (e.g. the original dataset's) restores exact types and field order.
        """
        from stacktools.formats.tabular import from_pandas
        return cls(from_pandas(df, dtype))

    @classmethod
    def from_star(cls, path: str | os.PathLike, *, uid_column: str | None = None,
                  **options) -> "CsDataset":
        """Read RELION particles from a STAR file (see :func:`stacktools.cs.relion.from_star_blocks`)."""
        from stacktools.cs.relion import from_star_blocks
        from stacktools.formats.star import read_star
        return cls(from_star_blocks(read_star(path), uid_column=uid_column,
                                    label=str(path), **options), path)

    def to_pandas(self, decode: bool = True):
        """A DataFrame with one column per field; see :func:`stacktools.formats.tabular.to_pandas`."""
        from stacktools.formats.tabular import to_pandas
        return to_pandas(self.data, decode)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False,
             result_group: bool = True, format: str | None = None) -> Path:
        """Write a ``.cs`` file atomically (exact dtype and field order), in
        ``format`` (``"numpy"`` or ``"csdat"``; default: the format read, else NumPy).

        With ``result_group``, a particle set also gets ``NAME.csg`` beside it, written
        after the ``.cs`` (see :mod:`stacktools.cs.result_group`), for CryoSPARC's
        Import Result Group.

        Raises:
            SourceOverwriteError: ``path`` is the file this dataset was read from.
            OutputError: ``path`` (or its ``.csg``) exists and ``overwrite`` is false.
        """
        from stacktools.cs.result_group import clear_result_group, write_result_group
        from stacktools.formats.cs import write_cs
        out = self._output(path, overwrite)
        if result_group:
            clear_result_group(out, overwrite=overwrite)
        write_cs(out, self.data, overwrite=overwrite, format=format or self.format or "numpy")
        if result_group:
            write_result_group([(out, self.dtype, len(self))], description=self._made_from())
        return out

    def to_star(self, path: str | os.PathLike, *, mrcs: bool = False,
                overwrite: bool = False) -> Path:
        """Write a RELION 3.1 STAR file (``optics`` and ``particles`` blocks)."""
        from stacktools.cs.relion import to_star_blocks
        from stacktools.formats.star import write_star
        out = self._output(path, overwrite)
        return write_star(out, to_star_blocks(self.data, mrcs=mrcs, label=self.label),
                          overwrite=overwrite)

    def to_csv(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write CSV, one column per field (per element of array fields)."""
        from stacktools.formats.tabular import write_csv
        return write_csv(self._output(path, overwrite), self.data, overwrite=overwrite)

    def to_parquet(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write Parquet (needs pyarrow), same columns as :meth:`to_csv`."""
        from stacktools.formats.tabular import write_parquet
        return write_parquet(self._output(path, overwrite), self.data, overwrite=overwrite)

    def _made_from(self) -> str:
        return f"from {Path(self.source).name}" if self.source else ""

    def _output(self, path: str | os.PathLike, overwrite: bool) -> Path:
        """Refuse, before any work, to write over the file this dataset came from."""
        from stacktools.formats.atomic import check_output
        return check_output(path, [self.source], overwrite=overwrite)

    # ---- inspection ----------------------------------------------------------------

    @property
    def label(self) -> str:
        return self.source or "dataset"

    @property
    def fields(self) -> tuple[str, ...]:
        """Field names in file order."""
        return self.data.dtype.names

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def uids(self) -> np.ndarray:
        """The ``uid`` column."""
        _ds.require_fields(self.data, ["uid"], self.label)
        return self.data["uid"]

    def info(self, stats: bool = True) -> dict:
        """Rows, fields by group, stacks, box, pixel size and per-field statistics."""
        from stacktools.cs.info import summarize
        return summarize(self.data, stats=stats)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator:
        return iter(self.data)

    def __contains__(self, field: str) -> bool:
        return field in self.data.dtype.names

    def __repr__(self) -> str:
        src = f" from {self.source}" if self.source else ""
        return f"<CsDataset {len(self):,} rows × {len(self.fields)} fields{src}>"

    def __getitem__(self, key):
        if isinstance(key, str):
            _ds.require_fields(self.data, [key], self.label)
            return self.data[key]
        if isinstance(key, (int, np.integer)):
            return self.data[key]
        if isinstance(key, slice):
            return self._new(self.data[key])
        if isinstance(key, (list, tuple)) and key and all(isinstance(k, str) for k in key):
            return self._new(_ds.select_fields(self.data, key, self.label))
        idx = np.asarray(key)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise IndexError(f"{self.label}: boolean mask has {idx.size} entries for {len(self)} rows")
            return self._new(_ds.take(self.data, idx))
        if idx.dtype.kind in "iu" or idx.size == 0:
            return self._new(_ds.take(self.data, idx.astype(np.int64)))
        raise TypeError(f"cannot index a CsDataset with {type(key).__name__}")

    def _new(self, data: np.ndarray) -> "CsDataset":
        return CsDataset(data, self.source, self.format)

    # ---- queries -------------------------------------------------------------------

    def mask(self, expression: str) -> np.ndarray:
        """Boolean mask of the rows matching ``expression`` (see :mod:`stacktools.cs.query`).

        Raises
        ------
        ExpressionError
            The expression is malformed or names a field the dataset lacks; when
            the CryoSPARC passthrough file beside :attr:`source` has that field,
            the message names it.
        """
        from stacktools.cs.query import evaluate, fields_used
        missing = [f for f in fields_used(expression) if f not in self.data.dtype.names]
        if missing and self.source is not None:
            pt = find_passthrough(self.source, missing)
            if pt is not None:
                raise ExpressionError(
                    f"{self.label}: no field {missing[0]!r} in expression {expression!r}; "
                    f"the passthrough file {pt} has it",
                    hints=[Hint("passthrough", ": add {}", str(pt))])
        return evaluate(expression, self.data, self.label)

    def query(self, expression: str,
              passthrough: "CsDataset | np.ndarray | None" = None) -> "CsDataset":
        """The rows matching ``expression``, e.g. ``"ctf/df1_A < 20000 and ctf/type == 'patchctf'"``.

        Parameters
        ----------
        expression
            The condition (see :mod:`stacktools.cs.query`).
        passthrough
            A passthrough dataset whose fields the condition may also use, joined
            on ``uid``. The result keeps only this dataset's fields, in its row
            order; rows the passthrough lacks are dropped.

        Returns
        -------
        CsDataset

        Raises
        ------
        ExpressionError, FieldError
            See :meth:`mask` and :meth:`join`.
        """
        if passthrough is None:
            return self[self.mask(expression)]
        full = self.join(passthrough)
        return self.intersect(full[full.mask(expression)])

    # ---- set algebra by uid --------------------------------------------------------

    def union(self, other: "CsDataset | np.ndarray") -> "CsDataset":
        """This dataset's rows then ``other``'s new uids; fields must match (strings may widen)."""
        o, w = _unwrap(other)
        return self._new(_ds.union(self.data, o, (self.label, w)))

    def intersect(self, other: "CsDataset | np.ndarray") -> "CsDataset":
        """The rows whose uid is also in ``other``, in this dataset's order."""
        o, w = _unwrap(other)
        return self._new(_ds.intersect(self.data, o, (self.label, w)))

    def subtract(self, other: "CsDataset | np.ndarray") -> "CsDataset":
        """The rows whose uid is not in ``other``, in this dataset's order."""
        o, w = _unwrap(other)
        return self._new(_ds.subtract(self.data, o, (self.label, w)))

    def join(self, other: "CsDataset | np.ndarray") -> "CsDataset":
        """Inner join on uid: this dataset's rows and fields plus ``other``'s extra fields."""
        o, w = _unwrap(other)
        return self._new(_ds.join(self.data, o, (self.label, w)))

    __or__ = union
    __and__ = intersect
    __sub__ = subtract

    # ---- cleaning and subsets ------------------------------------------------------

    def dedupe(self) -> "CsDataset":
        """Without repeated uids (the first row of each is kept)."""
        return self._new(_ds.dedupe_uid(self.data, self.label))

    def dedupe_distance(self, distance_A: float, by: str | None = None,
                        highest: bool = True) -> "CsDataset":
        """Without particles closer than ``distance_A`` to a better one on the same micrograph.

        ``by`` names the field that ranks particles (higher is better unless
        ``highest`` is false); see :func:`stacktools.cs.dedupe.dedupe_distance`.
        """
        from stacktools.cs.dedupe import dedupe_distance
        res = dedupe_distance(self.data, distance_A, by=by, highest=highest, label=self.label)
        return self._new(_ds.take(self.data, res.keep))

    def remove_duplicates(self, distance_A: float | None = None, *, by: str | None = None,
                          highest: bool = True,
                          passthrough: "CsDataset | None" = None) -> "Deduplicated":
        """Without repeated uids and, with ``distance_A``, without close picks.

        Args:
            distance_A: Also drop particles closer than this to a better one on the same
                micrograph (CryoSPARC's Remove Duplicate Particles).
            by: Field ranking close particles (higher is better unless ``highest`` is
                false); default: the earlier row wins.
            passthrough: A dataset holding ``location/*`` (and ``by``) for these uids;
                the result keeps only this dataset's fields.

        Returns:
            :class:`~stacktools.cs.dedupe.Deduplicated`: the result and what was removed.

        Raises:
            FieldError: A field the distance rule needs is in neither dataset.
        """
        from stacktools.cs.dedupe import Deduplicated, dedupe_distance
        res = self.dedupe()
        uid_removed = len(self) - len(res)
        if distance_A is None:
            return Deduplicated(res, uid_removed)
        full = res.join(passthrough) if passthrough is not None else res
        found = dedupe_distance(full.data, distance_A, by=by, highest=highest, label=full.label)
        kept = full[found.keep]
        before = len(res)
        res = res.intersect(kept) if passthrough is not None else kept
        return Deduplicated(res, uid_removed, found.pairs, before - len(res))

    def split_by(self, field: str) -> dict:
        """One dataset per distinct value of ``field`` (e.g. ``alignments2D/class``)."""
        from stacktools.cs.subsets import split_by_field
        return {k: self._new(v) for k, v in split_by_field(self.data, field, self.label).items()}

    def split_files(self, stem: str, *, by: str | None = None, into: int | None = None,
                    seed: int | None = 0, max_files: int = 1000) -> list[tuple[str, object, "CsDataset"]]:
        """Subsets to write, named as ``stacktools cs split`` names them.

        Args:
            stem: The start of every name (e.g. the input's stem).
            by: Split by this field's value: ``STEM_FIELD_VALUE.cs``.
            into: Or into this many random subsets: ``STEM_subsetK.cs``.
            seed: Random seed for ``into``.
            max_files: Refuse to make more subsets than this.

        Returns:
            ``(file name, value or subset number, dataset)`` for each subset.

        Raises:
            ValueError: Neither or both of ``by`` and ``into``.
            OutputError: More subsets than ``max_files``, or values whose names clash.
        """
        from stacktools.cs.subsets import split_files
        return [(name, v, self._new(d)) for name, v, d in
                split_files(self.data, stem, by=by, into=into, seed=seed, max_files=max_files,
                            label=self.label)]

    def split_random(self, parts: int, seed: int | None = 0) -> list["CsDataset"]:
        """``parts`` random, disjoint subsets of near-equal size (seeded)."""
        from stacktools.cs.subsets import split_random
        return [self._new(v) for v in split_random(self.data, parts, seed)]

    def sample(self, count: int | None = None, fraction: float | None = None,
               seed: int | None = 0) -> "CsDataset":
        """A random ``count`` rows or ``fraction`` of them, seeded, in the original order."""
        from stacktools.cs.subsets import sample
        return self._new(sample(self.data, count, fraction, seed))


def _unwrap(other) -> tuple[np.ndarray, str]:
    if isinstance(other, CsDataset):
        return other.data, other.label
    if isinstance(other, np.ndarray):
        return other, "other dataset"
    raise TypeError(f"expected a CsDataset or a structured array, got {type(other).__name__}")


def find_passthrough(path: str | os.PathLike, fields: Sequence[str]) -> Path | None:
    """The CryoSPARC passthrough file beside ``path`` that has all of ``fields``, if any.

    Parameters
    ----------
    path
        A job's output ``.cs``, e.g. ``J7/J7_particles_selected.cs``.
    fields
        Field names the passthrough must hold.

    Returns
    -------
    pathlib.Path or None
        ``J7/J7_passthrough_particles_selected.cs`` (or another
        ``J7_passthrough_*.cs`` beside it) when it exists and has the fields; only
        its header is read.
    """
    from stacktools.formats.cs import read_cs
    p = Path(path)
    m = _JOB_FILE_RE.match(p.name)
    if m is None or "_passthrough_" in p.name:
        return None
    exact = p.with_name(f"{m['job']}_passthrough_{m['rest']}.cs")
    for cand in [exact] + sorted(set(p.parent.glob(f"{m['job']}_passthrough_*.cs")) - {exact}):
        if not cand.is_file():
            continue
        try:
            names = read_cs(cand, mmap=True).dtype.names
        except CsFormatError:
            continue
        if all(f in names for f in fields):
            return cand
    return None


def load_cs(path: str | os.PathLike, *, passthrough: str | os.PathLike | None = None,
            mmap: bool = False) -> CsDataset:
    """Read a ``.cs`` file as a :class:`CsDataset`; see :meth:`CsDataset.load`."""
    return CsDataset.load(path, passthrough=passthrough, mmap=mmap)


__all__: Sequence[str] = ["CsDataset", "find_passthrough", "load_cs"]
