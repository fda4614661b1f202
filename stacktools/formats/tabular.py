"""``.cs`` datasets as pandas DataFrames, CSV and Parquet.

Each scalar field becomes one column of the same name and dtype. An array field
such as ``blob/shape`` (two values per row) becomes one column per element,
``blob/shape[0]`` and ``blob/shape[1]``. Byte strings become Python ``str``.
:func:`from_pandas` reverses all of this, and given the original dtype restores
it exactly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from stacktools.errors import FieldError, OutputError
from stacktools.formats.atomic import atomic_output

_ELEMENT_RE = re.compile(r"^(.*)\[(\d+)\]$")


def _decode_column(col: np.ndarray) -> np.ndarray:
    # Decode each distinct value once: paths repeat across thousands of rows.
    uniq, codes = np.unique(col, return_inverse=True)
    text = np.array([u.decode("utf-8", errors="replace") for u in uniq.tolist()], dtype=object)
    return text[codes.ravel()] if len(col) else np.zeros(0, dtype=object)


def to_pandas(data: np.ndarray, decode: bool = True):
    """A :class:`pandas.DataFrame` with one column per field (per element of array fields).

    Parameters
    ----------
    data
        One-dimensional structured array.
    decode
        Turn byte-string fields into ``str`` (UTF-8); otherwise keep ``bytes``.
    """
    import pandas as pd

    cols: dict[str, np.ndarray] = {}
    for name in data.dtype.names:
        t = data.dtype.fields[name][0]
        col = data[name]
        if t.shape:
            flat = col.reshape(len(data), int(np.prod(t.shape)))
            for k in range(flat.shape[1]):
                sub = flat[:, k]
                cols[f"{name}[{k}]"] = _decode_column(sub) if decode and t.base.kind == "S" else sub
        elif t.kind == "S" and decode:
            cols[name] = _decode_column(col)
        else:
            cols[name] = col
    return pd.DataFrame(cols, copy=False)


def from_pandas(df, dtype: np.dtype | None = None) -> np.ndarray:
    """A structured array from a DataFrame made by :func:`to_pandas` (or shaped like one).

    Parameters
    ----------
    df
        The DataFrame. Columns ``name[0]``, ``name[1]``, … are gathered into one
        array field ``name``.
    dtype
        The dtype to produce, e.g. the original dataset's; its field order and
        types are kept exactly and every field must be present. Without it, types
        are inferred: integers stay integers (``uid`` becomes ``<u8``), floats keep
        their width, and text becomes fixed-width bytes as wide as the longest value.

    Returns
    -------
    numpy.ndarray
        One-dimensional structured array.

    Raises
    ------
    FieldError
        A field of ``dtype`` is missing, element columns are incomplete, or a text
        value is longer (in UTF-8 bytes) than its field in ``dtype``: an explicit
        dtype is never silently truncated. Pass a wider dtype, or none to infer one.
    """
    columns = [str(c) for c in df.columns]
    groups: dict[str, list[tuple[int, str]]] = {}
    order: list[str] = []
    for c in columns:
        m = _ELEMENT_RE.match(c)
        name, k = (m.group(1), int(m.group(2))) if m else (c, -1)
        if name not in groups:
            groups[name] = []
            order.append(name)
        groups[name].append((k, c))
    n = len(df)
    if dtype is not None:
        dtype = np.dtype(dtype)
        missing = [f for f in dtype.names if f not in groups]
        if missing:
            raise FieldError(f"DataFrame lacks field {missing[0]!r} of the requested dtype")
        out = np.empty(n, dtype=dtype)
        for name in dtype.names:
            out[name] = _column_values(df, groups[name], dtype.fields[name][0], name)
        return out
    descr, values = [], []
    for name in order:
        v = _column_values(df, groups[name], None, name)
        if v.dtype.kind in "OU":
            v = np.char.encode(v.astype(str), "utf-8") if n else np.zeros(0, "S1")
        if name == "uid" and v.dtype.kind == "i":
            v = v.astype(np.uint64)
        descr.append((name, v.dtype.str, v.shape[1:]) if v.ndim > 1 else (name, v.dtype.str))
        values.append(v)
    out = np.empty(n, dtype=descr)
    for (name, *_), v in zip(descr, values):
        out[name] = v
    return out


def _column_values(df, cols: list[tuple[int, str]], t: np.dtype | None, name: str) -> np.ndarray:
    cols = sorted(cols)
    if cols[0][0] == -1:
        if len(cols) > 1:
            raise FieldError(f"DataFrame has both {name!r} and element columns of it")
        v = df[cols[0][1]].to_numpy()
    else:
        if [k for k, _ in cols] != list(range(len(cols))):
            raise FieldError(f"DataFrame element columns of {name!r} are not [0]..[{len(cols) - 1}]")
        v = np.stack([df[c].to_numpy() for _, c in cols], axis=1)
    if t is not None:
        if t.base.kind == "S":
            v = _encode_text(v, t.base)
            _check_width(v, t.base.itemsize, name)
        if t.shape and v.shape[1:] != t.shape:
            raise FieldError(f"DataFrame field {name!r} has {v.shape[1:]} values per row, "
                             f"the dtype {t.shape}")
    elif v.dtype == object:
        kinds = {type(x) for x in v.ravel()[:1000]}
        if kinds <= {bytes}:
            v = v.astype(bytes)
    return v


def _encode_text(v: np.ndarray, t: np.dtype) -> np.ndarray:
    """Text or ``bytes`` values as a byte-string array (UTF-8), as wide as they need."""
    if not len(v) or v.dtype.kind == "S":
        return v if len(v) else v.astype(t)
    if v.dtype.kind == "O" and all(isinstance(x, bytes) for x in v.ravel()):
        return v.astype(bytes)
    return np.char.encode(v.astype(str), "utf-8")


def _check_width(v: np.ndarray, width: int, name: str) -> None:
    """Refuse values that a ``S{width}`` field would truncate (a broken ``blob/path``)."""
    if v.dtype.kind != "S" or v.dtype.itemsize <= width:
        return
    lengths = np.char.str_len(v).reshape(len(v), -1).max(axis=1)
    row = int(np.flatnonzero(lengths > width)[0])
    raise FieldError(f"DataFrame row {row}: field {name!r} is {int(lengths[row])} bytes long, "
                     f"the dtype's S{width} would truncate it; widen that field in the dtype "
                     "or omit dtype to size it from the data")


def write_csv(path: str | os.PathLike, data: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write ``data`` as CSV (see :func:`to_pandas` for the columns), atomically."""
    df = to_pandas(data)
    with atomic_output(path, overwrite=overwrite) as fh:
        df.to_csv(fh, index=False, float_format="%.9g")
    return Path(path)


def write_parquet(path: str | os.PathLike, data: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write ``data`` as Parquet with pyarrow, atomically.

    Raises :class:`OutputError` if pyarrow is not installed.
    """
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise OutputError(f"{path}: writing Parquet needs pyarrow: pip install pyarrow") from err
    df = to_pandas(data)
    with atomic_output(path, overwrite=overwrite) as fh:
        df.to_parquet(fh, index=False, engine="pyarrow")
    return Path(path)
