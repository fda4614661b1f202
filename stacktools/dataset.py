"""Row and field operations on ``.cs`` datasets (NumPy structured arrays)."""

from __future__ import annotations

import numpy as np

from .errors import FieldError


def require_fields(data: np.ndarray, fields, where: str = "dataset") -> None:
    """Raise :class:`FieldError` naming the first of ``fields`` that ``data`` lacks."""
    names = data.dtype.names or ()
    for f in fields:
        if f not in names:
            raise FieldError(f"{where}: missing field {f!r}")


def join(main: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Inner join of two datasets on ``uid``.

    Keeps ``main``'s row order and fields; appends ``other``'s fields that ``main``
    lacks. Fields present in both are taken from ``main``. This is how a job's
    particles and its passthrough make the job's full particle view.
    """
    require_fields(main, ["uid"], "main dataset")
    require_fields(other, ["uid"], "passthrough dataset")
    order = np.argsort(other["uid"], kind="stable")
    sorted_uids = other["uid"][order]
    pos = np.searchsorted(sorted_uids, main["uid"])
    pos_c = np.minimum(pos, max(len(sorted_uids) - 1, 0))
    found = (pos < len(sorted_uids)) & (sorted_uids[pos_c] == main["uid"]) if len(sorted_uids) else np.zeros(len(main), bool)
    keep = np.flatnonzero(found)
    other_rows = order[pos_c[keep]]
    extra = [n for n in other.dtype.names if n not in main.dtype.names]
    descr = [(n, main.dtype.fields[n][0]) for n in main.dtype.names]
    descr += [(n, other.dtype.fields[n][0]) for n in extra]
    out = np.empty(len(keep), dtype=descr)
    for n in main.dtype.names:
        out[n] = main[n][keep]
    for n in extra:
        out[n] = other[n][other_rows]
    return out
