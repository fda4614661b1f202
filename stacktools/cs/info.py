"""What a ``.cs`` file holds: rows, fields by group, stacks, box, pixel size and statistics.

Statistics are computed column by column with NumPy; distinct values of string
fields are counted on the runs of equal values (rows of one stack are adjacent
in CryoSPARC files), so a million-row file takes a fraction of a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stacktools.cs.rows import field_groups, field_matrix
from stacktools.formats import cs as csfile


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D array, cheaply when equal values come in runs."""
    if len(values) == 0:
        return values[:0]
    if len(values) > 1:
        heads = np.empty(len(values), dtype=bool)
        heads[0] = True
        np.not_equal(values[1:], values[:-1], out=heads[1:])
        values = values[heads]
    return np.unique(values)


def string_stats(col: np.ndarray) -> dict:
    """Distinct-value count and the first value (sorted) of a byte-string field."""
    d = distinct(col.reshape(-1))
    out = {"distinct": int(len(d))}
    if len(d):
        out["example"] = d[0].decode("utf-8", errors="replace")
    return out


def _numeric_runs(dtype: np.dtype) -> list[tuple[int, np.dtype, list[tuple[str, int]]]]:
    """Adjacent numeric fields of one type, merged: (offset, type, [(field, values)])."""
    items = []
    for name in dtype.names:
        t, off = dtype.fields[name][:2]
        if t.base.kind in "biuf":
            items.append((off, t.base, max(1, int(np.prod(t.shape))), name))
    items.sort(key=lambda x: x[0])
    runs: list[list] = []
    for off, base, count, name in items:
        last = runs[-1] if runs else None
        if last and last[1] == base and last[0] + last[2] * base.itemsize == off:
            last[2] += count
            last[3].append((name, count))
        else:
            runs.append([off, base, count, [(name, count)]])
    return [(off, base, fields) for off, base, _, fields in runs]


_PARALLEL_ROWS = 200_000


def _run_totals(data: np.ndarray, off: int, base: np.dtype, fields, chunk: int):
    """Per-column min, max and sum of one run of adjacent same-type fields."""
    n = len(data)
    k = sum(c for _, c in fields)
    block = np.ndarray((n, k), dtype=base, buffer=data, offset=off,
                       strides=(data.dtype.itemsize, base.itemsize))
    lo = hi = None
    total = np.zeros(k, np.float64)
    for start in range(0, n, chunk):
        # One copy makes each column contiguous; the reductions are then cheap.
        cols = np.ascontiguousarray(block[start:start + chunk]).T.copy()
        c_lo, c_hi = cols.min(axis=1), cols.max(axis=1)
        if lo is None:
            lo, hi = c_lo, c_hi
        else:
            np.minimum(lo, c_lo, out=lo)
            np.maximum(hi, c_hi, out=hi)
        total += cols.sum(axis=1, dtype=np.float64 if base.kind != "f" else None)
    return lo, hi, total


def numeric_stats(data: np.ndarray, chunk: int = 65536, pool=None) -> dict[str, dict]:
    """min, max and mean of every numeric field (over all elements of array fields).

    Adjacent fields of one type are read together as a block of columns, a chunk
    of rows at a time, so the whole file is read about once. Float fields that
    hold NaN also report how many (``nan``) and ignore them in the statistics.
    ``pool`` is an optional ``concurrent.futures`` executor to spread runs over
    (copies and reductions release the GIL).
    """
    n = len(data)
    out: dict[str, dict] = {}
    if n == 0:
        return {name: {} for _, _, fields in _numeric_runs(data.dtype) for name, _ in fields}
    data = np.ascontiguousarray(data)
    runs = _numeric_runs(data.dtype)
    if pool is not None:
        results = list(pool.map(lambda r: _run_totals(data, r[0], r[1], r[2], chunk), runs))
    else:
        results = [_run_totals(data, off, base, fields, chunk) for off, base, fields in runs]
    for (_off, base, fields), (lo, hi, total) in zip(runs, results):
        j = 0
        for name, count in fields:
            sl = slice(j, j + count)
            j += count
            if base.kind == "f" and np.isnan(total[sl]).any():
                flat = np.asarray(data[name], dtype=np.float64).reshape(-1)
                nan = int(np.count_nonzero(np.isnan(flat)))
                if nan == len(flat):
                    out[name] = {"min": None, "max": None, "mean": None, "nan": nan}
                else:
                    out[name] = {"min": float(np.nanmin(flat)), "max": float(np.nanmax(flat)),
                                 "mean": float(np.nanmean(flat)), "nan": nan}
                continue
            cast = float if base.kind == "f" else int
            out[name] = {"min": cast(lo[sl].min()), "max": cast(hi[sl].max()),
                         "mean": float(total[sl].sum() / (n * count))}
    return out


def summarize(data: np.ndarray, *, stats: bool = True) -> dict:
    """A JSON-ready description of a dataset.

    Parameters
    ----------
    data
        One-dimensional structured array.
    stats
        Also compute per-field statistics (one pass per field).

    Returns
    -------
    dict
        ``rows``, ``row_bytes``, ``fields`` (count), ``groups`` (prefix → list of
        ``{name, dtype, shape}``), ``stacks`` (distinct ``blob/path``, if present),
        ``box`` and ``psize_A`` (distinct values), and ``stats`` (field → summary).
    """
    names = data.dtype.names or ()
    groups = {}
    for prefix, fields in field_groups(data.dtype).items():
        groups[prefix or "(top level)"] = [
            {"name": f, "dtype": data.dtype.fields[f][0].base.str,
             "shape": list(data.dtype.fields[f][0].shape)} for f in fields]
    out: dict = {"rows": int(len(data)), "row_bytes": int(data.dtype.itemsize),
                 "fields": len(names), "groups": groups}
    wanted = [f for f in names if data.dtype.fields[f][0].base.kind == "S" and (stats or f == "blob/path")]
    pool = None
    if len(data) >= _PARALLEL_ROWS:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(2)  # both cores on big files: NumPy releases the GIL
    try:
        if pool is not None:
            futures = {f: pool.submit(string_stats, data[f]) for f in wanted}
            numeric = numeric_stats(data, pool=pool) if stats else {}
            strings = {f: fut.result() for f, fut in futures.items()}
        else:
            strings = {f: string_stats(data[f]) for f in wanted}
            numeric = numeric_stats(data) if stats else {}
    finally:
        if pool is not None:
            pool.shutdown()
    if "blob/path" in names:
        out["stacks"] = strings["blob/path"]["distinct"]
    if "blob/shape" in names:
        shape = field_matrix(data, "blob/shape")
        out["box"] = [int(v) for v in distinct(np.ascontiguousarray(shape[:, -1]))]
    if "blob/psize_A" in names:
        out["psize_A"] = [round(float(v), 6) for v in distinct(data["blob/psize_A"])]
    if stats:
        out["stats"] = {f: numeric.get(f) or strings.get(f) or {} for f in names}
    return out


def cs_info(path: str | os.PathLike, *, stats: bool = True) -> dict:
    """:func:`summarize` a ``.cs`` file, adding its path, size and format (numpy or csdat)."""
    fmt = csfile.detect_format(path)
    data = csfile.read_cs(path, mmap=fmt == "numpy")
    info = {"path": str(path), "format": fmt, "file_bytes": Path(path).stat().st_size}
    info.update(summarize(data, stats=stats))
    return info
