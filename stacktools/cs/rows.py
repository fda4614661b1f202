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


_PARALLEL_ROWS = 200_000


def _in_parallel(first, first_arg, second, second_arg):
    """``(first(first_arg), second(second_arg))``, the first in a second thread if large.

    NumPy sorts release the GIL, so two sorts of a million uids take the time of one.
    """
    if len(first_arg) + len(second_arg) < _PARALLEL_ROWS:
        return first(first_arg), second(second_arg)
    box: list = []
    worker = threading.Thread(target=lambda: box.append(first(first_arg)), daemon=True)
    worker.start()
    try:
        res2 = second(second_arg)
    finally:
        worker.join()
    if not box:
        return first(first_arg), res2  # the thread failed: redo here to raise its error
    return box[0], res2


def uid_membership(uids: np.ndarray, other_uids: np.ndarray) -> np.ndarray:
    """For each of ``uids``, whether it occurs in ``other_uids`` (a boolean mask).

    Both sides are sorted once (in parallel) and matched with a single ordered
    search, which is several times faster than :func:`numpy.isin` on 64-bit uids.
    """
    return _membership(uids, other_uids)[0]


def _membership(uids: np.ndarray, other_uids: np.ndarray) -> tuple[np.ndarray, bool]:
    """:func:`uid_membership`, and whether ``uids`` repeats a value (seen for free)."""
    uids = np.asarray(uids)
    found = np.zeros(len(uids), dtype=bool)
    if len(uids) == 0 or len(other_uids) == 0:
        return found, len(uids) > 1 and len(np.unique(uids)) < len(uids)
    # Order among equal uids does not matter here, so the faster unstable sorts do.
    sorted_other, order = _in_parallel(np.sort, np.asarray(other_uids, dtype=uids.dtype),
                                       np.argsort, uids)
    sorted_uids = uids[order]
    pos = np.searchsorted(sorted_other, sorted_uids)
    pos[pos == len(sorted_other)] = 0
    found[order] = sorted_other[pos] == sorted_uids
    repeats = bool(len(sorted_uids) > 1 and (sorted_uids[1:] == sorted_uids[:-1]).any())
    return found, repeats


def uid_lookup(uids: np.ndarray, other_uids: np.ndarray) -> np.ndarray:
    """For each of ``uids``, the row of ``other_uids`` holding it, or -1.

    If ``other_uids`` repeats a uid, its first row is given.
    """
    uids = np.asarray(uids)
    out = np.full(len(uids), -1, dtype=np.int64)
    if len(uids) == 0 or len(other_uids) == 0:
        return out
    other_uids = np.asarray(other_uids)
    order_other, order = _in_parallel(np.argsort, other_uids, np.argsort, uids)
    sorted_other = other_uids[order_other]
    if len(sorted_other) > 1 and (sorted_other[1:] == sorted_other[:-1]).any():
        # Repeated uids: a stable sort makes the leftmost match the first row.
        order_other = np.argsort(other_uids, kind="stable")
        sorted_other = other_uids[order_other]
    sorted_uids = uids[order]
    pos = np.searchsorted(sorted_other, sorted_uids)  # leftmost: the first duplicate
    pos_c = np.minimum(pos, len(sorted_other) - 1)
    hit = sorted_other[pos_c] == sorted_uids
    out[order[hit]] = order_other[pos_c[hit]]
    return out


def first_occurrences(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows holding the first occurrence of each value."""
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
    b_uid = b["uid"]
    found, repeats = _membership(b_uid, a["uid"])
    new = ~found
    if repeats:
        new &= first_occurrences(b_uid)
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
    rows = uid_lookup(main["uid"], other["uid"])
    keep = np.flatnonzero(rows >= 0)
    other_rows = rows[keep]
    extra = [n for n in other.dtype.names if n not in main.dtype.names]
    descr = [(n, main.dtype.fields[n][0]) for n in main.dtype.names]
    descr += [(n, other.dtype.fields[n][0]) for n in extra]
    out = np.empty(len(keep), dtype=descr)
    main_rows = main if len(keep) == len(main) else take(main, keep)
    other_sel = take(other, other_rows)
    if _packed(main.dtype) and _as_void(main_rows) is not None and _as_void(other_sel) is not None:
        # Copy bytes, not fields: main's records whole, the extra fields in runs.
        out_b = out.view(np.uint8).reshape(len(out), out.dtype.itemsize)
        out_b[:, :main.dtype.itemsize] = main_rows.view(np.uint8).reshape(len(out), main.dtype.itemsize)
        src_b = other_sel.view(np.uint8).reshape(len(out), other.dtype.itemsize)
        for dst, src, size in _byte_runs(out.dtype, other.dtype, extra):
            out_b[:, dst:dst + size] = src_b[:, src:src + size]
        return out
    for n in main.dtype.names:
        out[n] = main_rows[n]
    for n in extra:
        out[n] = other_sel[n]
    return out


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


def with_blob_paths(data: np.ndarray, paths: Sequence[str], stack_of_row: np.ndarray,
                    idx_of_row: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``data`` whose rows point at other stacks: the one place ``blob/path``
    (and ``blob/idx``) are rewritten.

    Args:
        data: Rows with ``blob/path``.
        paths: The new stack paths (text; encoded as the OS encodes file names).
        stack_of_row: Each row's index into ``paths``.
        idx_of_row: Each row's new ``blob/idx``; ``None`` keeps the old one.

    Returns:
        Same fields in the same order; ``blob/path`` is widened to fit the longest
        new path (never truncated) and keeps its kind (bytes or text).
    """
    old = data.dtype.fields["blob/path"][0]
    kind = "U" if old.kind == "U" else "S"
    values = list(paths) if kind == "U" else [os.fsencode(p) for p in paths]
    width = max([old.itemsize // (4 if kind == "U" else 1)] + [len(v) for v in values])
    new = np.dtype(f"{kind}{width}")
    out = np.empty(len(data), dtype=[(n, new if n == "blob/path" else data.dtype.fields[n][0])
                                     for n in data.dtype.names])
    for n in data.dtype.names:
        if n != "blob/path" and not (n == "blob/idx" and idx_of_row is not None):
            out[n] = data[n]
    column = np.array(values, dtype=new)
    out["blob/path"] = column[stack_of_row] if len(data) else column[:0]
    if idx_of_row is not None:
        out["blob/idx"] = idx_of_row
    return out
