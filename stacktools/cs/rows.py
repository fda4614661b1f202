"""Row and field operations on ``.cs`` datasets (NumPy structured arrays).

Set operations are by ``uid``, as in CryoSPARC's Particle Sets Tool. All of them
work on whole columns (sorting and searching), never row by row in Python, and
return new arrays: their inputs are never modified. Outputs keep the first
dataset's fields, field order and row order.
"""

from __future__ import annotations

import os
import threading
from typing import Iterable, Sequence

import numpy as np

from stacktools.cs.arrays import KeyIndex
from stacktools.errors import FieldError


def require_fields(data: np.ndarray, fields, label: str = "dataset") -> None:
    """Raise :class:`FieldError` naming the first of ``fields`` that ``data`` lacks."""
    names = data.dtype.names or ()
    for f in fields:
        if f not in names:
            raise FieldError(f"{label}: missing field {f!r}")


def _as_void(data: np.ndarray) -> np.ndarray | None:
    """``data`` viewed as opaque fixed-size records, or None if it is not contiguous.

    NumPy copies structured rows field by field; copying the same bytes as
    opaque records is a plain memory copy, three to five times faster.
    """
    if data.ndim == 1 and data.flags.c_contiguous and not data.dtype.hasobject:
        return data.view(np.dtype((np.void, data.dtype.itemsize)))
    return None


def take(data: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of ``data`` picked by a boolean mask or by positions, as a new array."""
    void = _as_void(data)
    if void is None:
        return data[index]
    return np.asarray(void[index]).view(data.dtype)


def field_matrix(data: np.ndarray, name: str, dtype=None) -> np.ndarray:
    """A field as a 2-D array ``(rows, values per row)``; scalar fields give one column."""
    t = data.dtype.fields[name][0]
    k = int(np.prod(t.shape)) if t.shape else 1
    return np.asarray(data[name], dtype=dtype).reshape(len(data), k)


def _keys(uids: np.ndarray, label: str = "uid") -> np.ndarray:
    """uids as uint64 for :class:`KeyIndex` (other integer types keep their bits' order)."""
    uids = np.asarray(uids)
    if uids.dtype.kind not in "iu":
        raise FieldError(f"{label}: uids must be integers, not {uids.dtype}")
    return uids.astype(np.uint64, copy=False)


def uid_membership(uids: np.ndarray, other_uids: np.ndarray) -> np.ndarray:
    """For each of ``uids``, whether it occurs in ``other_uids`` (a boolean mask).

    ``other_uids`` goes into a hash index (:class:`KeyIndex`) that ``uids`` are
    looked up in: two random passes over a table, about three times faster than
    sorting both sides (and several times faster than :func:`numpy.isin`).
    """
    return uid_lookup(uids, other_uids) >= 0


def uid_lookup(uids: np.ndarray, other_uids: np.ndarray) -> np.ndarray:
    """For each of ``uids``, the row of ``other_uids`` holding it, or -1.

    If ``other_uids`` repeats a uid, its first row is given.
    """
    return KeyIndex(_keys(other_uids)).find(_keys(uids))


def first_occurrences(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows holding the first occurrence of each value."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return KeyIndex(_keys(values)).first_occurrences()
    keep = np.zeros(len(values), dtype=bool)
    if len(values):
        _, first = np.unique(values, return_index=True)
        keep[first] = True
    return keep


def matching_dtype(a: np.ndarray, b: np.ndarray, label: Sequence[str] = ("A", "B")) -> np.dtype:
    """The dtype that holds rows of both ``a`` and ``b``, in ``a``'s field order.

    Both must have the same field names with the same types and shapes. Byte-string
    fields may differ in width: the wider one is used, so no value is truncated.
    Anything else raises :class:`FieldError` naming the first difference.
    """
    wa, wb = label
    na, nb = a.dtype.names or (), b.dtype.names or ()
    missing = [n for n in na if n not in nb]
    extra = [n for n in nb if n not in na]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {_names(missing)}")
        if extra:
            parts.append(f"has extra {_names(extra)}")
        raise FieldError(f"{wb}: fields do not match {wa}: {wb} {' and '.join(parts)}")
    descr = []
    for n in na:
        ta, tb = a.dtype.fields[n][0], b.dtype.fields[n][0]
        if ta == tb:
            descr.append((n, ta))
            continue
        ba, bb = ta.base, tb.base
        if ba.kind == bb.kind == "S" and ta.shape == tb.shape:
            wide = np.dtype((f"S{max(ba.itemsize, bb.itemsize)}", ta.shape)) if ta.shape \
                else np.dtype(f"S{max(ba.itemsize, bb.itemsize)}")
            descr.append((n, wide))
            continue
        raise FieldError(f"{wb}: field {n!r} is {_dt(tb)} but {_dt(ta)} in {wa}")
    return np.dtype(descr)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _dt(t: np.dtype) -> str:
    return f"{t.base.str}{t.shape}" if t.shape else t.str


def cast_rows(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``data`` converted field by field to ``dtype`` (same names; strings may widen)."""
    if data.dtype == dtype:
        return data
    out = np.empty(len(data), dtype=dtype)
    for n in dtype.names:
        out[n] = data[n]
    return out


def concatenate(parts: Sequence[np.ndarray], label: Sequence[str] | None = None) -> np.ndarray:
    """Stack datasets with matching fields (see :func:`matching_dtype`) row-wise."""
    if not parts:
        raise ValueError("nothing to concatenate")
    names = list(label) if label is not None else [f"dataset {i + 1}" for i in range(len(parts))]
    dtype = parts[0].dtype
    for p, w in zip(parts[1:], names[1:]):
        dtype = matching_dtype(np.empty(0, dtype), p, (names[0], w))
    return np.concatenate([cast_rows(p, dtype) for p in parts])


def union(a: np.ndarray, b: np.ndarray, label: Sequence[str] = ("A", "B")) -> np.ndarray:
    """``a``'s rows, then ``b``'s rows whose ``uid`` is not in ``a`` (A ∪ B).

    Parameters
    ----------
    a, b
        Datasets with the same fields (names, types and shapes). Byte-string fields
        may differ in width; the output uses the wider width, so nothing is
        truncated. Otherwise :class:`FieldError` is raised.
    label
        Names of ``a`` and ``b`` for error messages.

    The output keeps ``a``'s field order and rows, in order, followed by the new
    rows of ``b`` in ``b``'s order; a uid repeated within ``b`` is added once.
    """
    require_fields(a, ["uid"], label[0])
    require_fields(b, ["uid"], label[1])
    dtype = matching_dtype(a, b, label)
    # Index B (which also finds B's repeated uids) and look A's uids up in it.
    index = KeyIndex(_keys(b["uid"], label[1]))
    in_a = index.find(_keys(a["uid"], label[0]))
    new = index.first_occurrences()
    new[in_a[in_a >= 0]] = False
    a_cast, b_cast = cast_rows(a, dtype), cast_rows(b, dtype)
    rows = np.flatnonzero(new)
    a_void, b_void = _as_void(a_cast), _as_void(b_cast)
    if a_void is None or b_void is None:
        return np.concatenate([a_cast, b_cast[rows]])
    # Fill one output directly: no intermediate copy of B's new rows.
    out = np.empty(len(a) + len(rows), dtype=a_void.dtype)
    out[:len(a)] = a_void
    np.take(b_void, rows, out=out[len(a):])
    return out.view(dtype)


def intersect(a: np.ndarray, b: np.ndarray, label: Sequence[str] = ("A", "B")) -> np.ndarray:
    """The rows of ``a`` whose ``uid`` is also in ``b`` (A ∩ B), in ``a``'s order.

    Only ``b``'s ``uid`` field is used, so ``b`` may be just an array of uids.
    """
    return take(a, uid_membership(_uids(a, label[0]), _uids(b, label[1])))


def subtract(a: np.ndarray, b: np.ndarray, label: Sequence[str] = ("A", "B")) -> np.ndarray:
    """The rows of ``a`` whose ``uid`` is not in ``b`` (A − B), in ``a``'s order.

    Only ``b``'s ``uid`` field is used, so ``b`` may be just an array of uids.
    """
    return take(a, ~uid_membership(_uids(a, label[0]), _uids(b, label[1])))


def _uids(data: np.ndarray, label: str) -> np.ndarray:
    if data.dtype.names is None:
        return data
    require_fields(data, ["uid"], label)
    return data["uid"]


def dedupe_uid(data: np.ndarray, label: str = "dataset") -> np.ndarray:
    """``data`` without repeated uids: the first row of each uid is kept, in order."""
    require_fields(data, ["uid"], label)
    keep = first_occurrences(data["uid"])
    return data if keep.all() else take(data, keep)


def join(main: np.ndarray, other: np.ndarray,
         label: Sequence[str] = ("main dataset", "passthrough dataset")) -> np.ndarray:
    """Inner join of two datasets on ``uid``.

    Keeps ``main``'s row order and fields; appends ``other``'s fields that ``main``
    lacks. Fields present in both are taken from ``main``. This is how a job's
    particles and its passthrough make the job's full particle view.

    Parameters
    ----------
    main, other
        Datasets with a ``uid`` field. Rows of ``main`` whose uid ``other`` lacks
        are dropped; if ``other`` repeats a uid, its first row is used.
    label
        Names of the two datasets, for error messages.
    """
    require_fields(main, ["uid"], label[0])
    require_fields(other, ["uid"], label[1])
    extra = [n for n in other.dtype.names if n not in main.dtype.names]
    descr = [(n, main.dtype.fields[n][0]) for n in main.dtype.names]
    descr += [(n, other.dtype.fields[n][0]) for n in extra]
    dtype = np.dtype(descr)
    main_void, other_void = _as_void(main), _as_void(other)
    if not (_packed(main.dtype) and main_void is not None and other_void is not None):
        return _join_fields(main, other, uid_lookup(main["uid"], other["uid"]), dtype, extra)
    runs = _byte_runs(dtype, other.dtype, extra)
    if len(main) >= _PARALLEL_ROWS:
        # Usually every row is kept, so the output can be made before the match.
        out = np.empty(len(main), dtype)
        rows = _lookup_beside(main["uid"], other["uid"], out)
        if (rows >= 0).all():
            half = len(out) // 2
            _beside(lambda: _gather_joined(out[half:], main_void[half:], None, other_void, rows[half:], runs),
                    lambda: _gather_joined(out[:half], main_void[:half], None, other_void, rows[:half], runs))
            return out
        del out
    else:
        rows = uid_lookup(main["uid"], other["uid"])
    keep = np.flatnonzero(rows >= 0)
    out = np.empty(len(keep), dtype)
    _gather_joined(out, main_void, None if len(keep) == len(main) else keep, other_void, rows[keep], runs)
    return out


def _join_fields(main: np.ndarray, other: np.ndarray, rows: np.ndarray, dtype: np.dtype,
                 extra: list[str]) -> np.ndarray:
    """:func:`join` field by field, for inputs whose records are not plain bytes."""
    keep = np.flatnonzero(rows >= 0)
    out = np.empty(len(keep), dtype)
    main_rows = main if len(keep) == len(main) else take(main, keep)
    other_sel = take(other, rows[keep])
    for n in main.dtype.names:
        out[n] = main_rows[n]
    for n in extra:
        out[n] = other_sel[n]
    return out


_PARALLEL_ROWS = 200_000
_JOIN_CHUNK_BYTES = 1 << 20
_PAGE = 4096


def _lookup_beside(uids: np.ndarray, other_uids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`uid_lookup` on two threads, faulting in the fresh ``out`` meanwhile.

    While one thread builds the index of ``other_uids``, the other touches a byte of
    each page of ``out`` (the kernel zeroes a fresh page on its first write, as much
    work as the index); then each thread looks up half of ``uids``. The gather that
    follows writes into memory that is already there.
    """
    raw = np.ndarray(out.nbytes, np.uint8, buffer=out)
    index = _beside(lambda: KeyIndex(_keys(other_uids)), lambda: raw[::_PAGE].fill(0))
    keys = _keys(uids)
    half = len(keys) // 2
    rows = np.empty(len(keys), np.int64)

    def find(sl: slice) -> None:
        rows[sl] = index.find(keys[sl])
    _beside(lambda: find(slice(half, None)), lambda: find(slice(0, half)))
    return rows


def _beside(background, foreground):
    """``background()``'s result, computed in a second thread while ``foreground()`` runs.

    NumPy's copies, sorts and gathers release the GIL, so the two share both cores.
    """
    box: list = []
    worker = threading.Thread(target=lambda: box.append(background()), daemon=True)
    worker.start()
    try:
        foreground()
    finally:
        worker.join()
    return box[0] if box else background()  # the thread failed: redo here to raise its error


def _gather_joined(out: np.ndarray, main: np.ndarray | None, main_rows: np.ndarray | None,
                   other: np.ndarray | None, other_rows: np.ndarray | None, runs) -> None:
    """Fill ``out`` with ``main``'s records (all, or ``main_rows``) followed by the
    byte ``runs`` of ``other``'s records ``other_rows``; both are opaque-record views,
    and either may be None to fill only the other part.

    Rows are copied straight into ``out``, a chunk of about a megabyte at a time: the
    chunk's output lines are still in cache when the second part of each row lands,
    and no whole-size temporary is made.
    """
    n, pitch = len(out), out.dtype.itemsize
    if n == 0:
        return

    def column(base: np.ndarray, offset: int, size: int, count: int, stride: int) -> np.ndarray:
        return np.ndarray(count, dtype=f"V{size}", buffer=base, offset=offset, strides=(stride,))

    step = max(1, _JOIN_CHUNK_BYTES // pitch)
    if main is not None:
        dst_main = column(out, 0, main.dtype.itemsize, n, pitch)
        buf_m = np.empty(min(step, n) if main_rows is not None else 0, main.dtype)
    if other is not None:
        dst_runs = [(column(out, d, size, n, pitch), s, size) for d, s, size in runs]
        buf_o = np.empty(min(step, n), other.dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if main is not None and main_rows is None:
            dst_main[start:stop] = main[start:stop]
        elif main is not None:
            dst_main[start:stop] = np.take(main, main_rows[start:stop], out=buf_m[:stop - start])
        if other is not None:
            got = np.take(other, other_rows[start:stop], out=buf_o[:stop - start])
            for dst, s, size in dst_runs:
                dst[start:stop] = column(got, s, size, stop - start, other.dtype.itemsize)


def _packed(dtype: np.dtype) -> bool:
    """Whether fields lie back to back in order, as in a dtype built from a plain list."""
    return dtype == np.dtype([(n, dtype.fields[n][0]) for n in dtype.names])


def _byte_runs(dst: np.dtype, src: np.dtype, names: list[str]) -> list[tuple[int, int, int]]:
    """(dst offset, src offset, size) of ``names``, adjacent ones merged."""
    runs: list[list[int]] = []
    for n in names:
        d, s, size = dst.fields[n][1], src.fields[n][1], dst.fields[n][0].itemsize
        if runs and runs[-1][0] + runs[-1][2] == d and runs[-1][1] + runs[-1][2] == s:
            runs[-1][2] += size
        else:
            runs.append([d, s, size])
    return [tuple(r) for r in runs]


def select_fields(data: np.ndarray, fields: Iterable[str], label: str = "dataset") -> np.ndarray:
    """A copy of ``data`` with only ``fields`` (in the order given).

    A name ending in ``/`` selects every field under that prefix, e.g. ``ctf/``.
    """
    names = data.dtype.names or ()
    chosen: list[str] = []
    for f in fields:
        if f.endswith("/"):
            group = [n for n in names if n.startswith(f)]
            if not group:
                raise FieldError(f"{label}: no fields under {f!r}")
            chosen += [n for n in group if n not in chosen]
        else:
            require_fields(data, [f], label)
            if f not in chosen:
                chosen.append(f)
    out = np.empty(len(data), dtype=[(n, data.dtype.fields[n][0]) for n in chosen])
    for n in chosen:
        out[n] = data[n]
    return out


def field_groups(dtype: np.dtype) -> dict[str, list[str]]:
    """Field names grouped by prefix (the part before the first ``/``), in file order."""
    groups: dict[str, list[str]] = {}
    for n in dtype.names or ():
        prefix = n.split("/", 1)[0] if "/" in n else ""
        groups.setdefault(prefix, []).append(n)
    return groups


def blob_path_column(dtype: np.dtype, paths: Sequence[str]) -> np.ndarray:
    """New stack paths as a ``blob/path`` column for rows of ``dtype``: widened to fit
    the longest (never truncated), of the old column's kind (bytes or text)."""
    old = dtype.fields["blob/path"][0]
    kind = "U" if old.kind == "U" else "S"
    values = list(paths) if kind == "U" else [os.fsencode(p) for p in paths]
    width = max([old.itemsize // (4 if kind == "U" else 1)] + [len(v) for v in values])
    return np.array(values, dtype=f"{kind}{width}")


def with_blob_paths(data: np.ndarray, paths: Sequence[str] | np.ndarray, stack_of_row: np.ndarray,
                    idx_of_row: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``data`` whose rows point at other stacks: the one place ``blob/path``
    (and ``blob/idx``) are rewritten.

    Args:
        data: Rows with ``blob/path``.
        paths: The new stack paths (text; encoded as the OS encodes file names), or
            :func:`blob_path_column` of them (made once for many chunks of rows).
        stack_of_row: Each row's index into ``paths``.
        idx_of_row: Each row's new ``blob/idx``; ``None`` keeps the old one.

    Returns:
        Same fields in the same order; ``blob/path`` is widened to fit the longest
        new path (never truncated) and keeps its kind (bytes or text).
    """
    column = paths if isinstance(paths, np.ndarray) else blob_path_column(data.dtype, paths)
    new = column.dtype
    out = np.empty(len(data), dtype=[(n, new if n == "blob/path" else data.dtype.fields[n][0])
                                     for n in data.dtype.names])
    for n in data.dtype.names:
        if n != "blob/path" and not (n == "blob/idx" and idx_of_row is not None):
            out[n] = data[n]
    out["blob/path"] = column[stack_of_row] if len(data) else column[:0]
    if idx_of_row is not None:
        out["blob/idx"] = idx_of_row
    return out
