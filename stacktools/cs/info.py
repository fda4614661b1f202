"""What a ``.cs`` file holds: rows, fields by group, stacks, box, pixel size and statistics.

Statistics are computed a cache-sized chunk of rows at a time, each numeric column
copied out contiguous before NumPy reduces it; distinct values of string
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
# Rows are taken about this many bytes at a time, so a chunk's copy stays in cache.
_CHUNK_BYTES = 2 << 20


def _by_type(dtype: np.dtype) -> list[tuple[np.dtype, list[tuple[int, int]], list[tuple[str, int]]]]:
    """Numeric fields grouped by type: (type, [(offset, values)] runs, [(field, values)])."""
    groups: dict[np.dtype, tuple[list, list]] = {}
    for off, base, fields in _numeric_runs(dtype):
        runs, names = groups.setdefault(base, ([], []))
        runs.append((off, sum(c for _, c in fields)))
        names.extend(fields)
    return [(base, runs, names) for base, (runs, names) in groups.items()]


def _sum_type(base: np.dtype):
    """The accumulator of a sum: exact for integers up to 32 bits, float64 for wider ones."""
    if base.kind == "f":
        return None
    if base.itemsize <= 4:
        return np.int64 if base.kind == "i" else np.uint64
    return np.float64


def _rows_totals(data: np.ndarray, start: int, stop: int, groups, chunk: int):
    """Per-column min, max and sum of every type group over rows ``start:stop``.

    Each chunk of rows is copied once into one contiguous, aligned column per value
    (a strided read of rows that are in cache), where NumPy's vectorised reductions
    run at memory speed: fields of 314-byte rows are neither contiguous nor aligned.
    """
    item = data.dtype.itemsize
    acc = [None] * len(groups)
    scratch = [np.empty((sum(k for _, k in runs), chunk), base) for base, runs, _ in groups]
    for a in range(start, stop, chunk):
        m = min(stop, a + chunk) - a
        for g, (base, runs, _names) in enumerate(groups):
            cols = scratch[g][:, :m]
            j = 0
            for off, k in runs:
                src = np.ndarray((m, k), dtype=base, buffer=data, offset=off + a * item,
                                 strides=(item, base.itemsize))
                np.copyto(cols[j:j + k].T, src)
                j += k
            lo, hi = cols.min(axis=1), cols.max(axis=1)
            total = cols.sum(axis=1, dtype=_sum_type(base)).astype(np.float64)
            if acc[g] is None:
                acc[g] = [lo, hi, total]
            else:
                np.minimum(acc[g][0], lo, out=acc[g][0])
                np.maximum(acc[g][1], hi, out=acc[g][1])
                acc[g][2] += total
    return acc


def numeric_stats(data: np.ndarray, chunk: int | None = None, pool=None) -> dict[str, dict]:
    """min, max and mean of every numeric field (over all elements of array fields).

    The rows are read once, a chunk at a time (``chunk`` rows; default about 2 MiB
    of them); see :func:`_rows_totals`. Float fields that hold NaN also report how
    many (``nan``) and ignore them in the statistics. ``pool`` is an optional
    ``concurrent.futures`` executor: each of its two workers takes half the rows
    (copies and reductions release the GIL).
    """
    n = len(data)
    out: dict[str, dict] = {}
    groups = _by_type(data.dtype)
    if n == 0:
        return {name: {} for _, _, names in groups for name, _ in names}
    data = np.ascontiguousarray(data)
    chunk = chunk or max(1, _CHUNK_BYTES // data.dtype.itemsize)
    if pool is not None and n > chunk:
        half = (n // 2 + chunk - 1) // chunk * chunk
        parts = list(pool.map(lambda r: _rows_totals(data, r[0], r[1], groups, chunk),
                              [(0, half), (half, n)]))
        totals = parts[0]
        for g, (lo, hi, total) in enumerate(parts[1]):
            np.minimum(totals[g][0], lo, out=totals[g][0])
            np.maximum(totals[g][1], hi, out=totals[g][1])
            totals[g][2] += total
    else:
        totals = _rows_totals(data, 0, n, groups, chunk)
    for (base, _runs, names), (lo, hi, total) in zip(groups, totals):
        j = 0
        for name, count in names:
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
    # In file order, as before.
    order = [f for f in data.dtype.names if f in out]
    return {f: out[f] for f in order}


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
