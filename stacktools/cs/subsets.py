"""Split a dataset by a field's value or at random, and draw random samples.

Random choices use :func:`numpy.random.default_rng` with the given seed, so the
same seed gives the same subsets. Every subset keeps the input's row order.
"""

from __future__ import annotations

import re

import numpy as np

from stacktools.cs.rows import require_fields, take
from stacktools.errors import FieldError, Hint, OutputError


def split_by_field(data: np.ndarray, field: str, label: str = "dataset") -> dict:
    """One subset per distinct value of ``field``, keyed by that value (sorted).

    Parameters
    ----------
    data
        The dataset.
    field
        A field with one value per row, e.g. ``alignments2D/class`` or
        ``ctf/exp_group_id``. Byte-string values are keyed as ``str``.
    label
        Name of the dataset, for error messages.
    """
    require_fields(data, [field], label)
    if data.dtype.fields[field][0].shape:
        raise FieldError(f"{label}: field {field!r} holds several values per row; cannot split by it")
    values, codes = np.unique(data[field], return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(values) + 1))
    out = {}
    for k, v in enumerate(values.tolist()):
        key = v.decode(errors="replace") if isinstance(v, bytes) else v
        out[key] = take(data, np.sort(order[bounds[k]:bounds[k + 1]]))
    return out


def random_assignment(n: int, parts: int, seed: int | None = 0) -> np.ndarray:
    """For each of ``n`` rows, a random part number in ``range(parts)``.

    Part sizes differ by at most one.
    """
    if parts < 1:
        raise ValueError(f"number of subsets must be at least 1, got {parts}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % parts
    rng.shuffle(labels)
    return labels


def split_random(data: np.ndarray, parts: int, seed: int | None = 0) -> list[np.ndarray]:
    """``data`` split into ``parts`` random subsets of near-equal size.

    Every row is in exactly one subset; each subset keeps the input's row order.
    """
    labels = random_assignment(len(data), parts, seed)
    return [take(data, labels == k) for k in range(parts)]


def sample_rows(n: int, count: int | None = None, fraction: float | None = None,
                seed: int | None = 0) -> np.ndarray:
    """Sorted positions of a random sample of ``count`` rows, or of ``fraction`` of ``n``."""
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count and fraction")
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        count = int(round(n * fraction))
    if count < 0:
        raise ValueError(f"sample size must not be negative, got {count}")
    count = min(count, n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=count, replace=False))


def sample(data: np.ndarray, count: int | None = None, fraction: float | None = None,
           seed: int | None = 0) -> np.ndarray:
    """A random subset of ``count`` rows (or ``fraction`` of them), in input order.

    Parameters
    ----------
    data
        The dataset.
    count
        Number of rows to draw (all of them if larger than the dataset).
    fraction
        Share of rows to draw, 0 to 1; give this or ``count``.
    seed
        Random seed; the same seed gives the same sample.
    """
    return take(data, sample_rows(len(data), count, fraction, seed))


def _name_part(value) -> str:
    """A value as a file-name part: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "empty"


def split_files(data: np.ndarray, stem: str, *, by: str | None = None, into: int | None = None,
                seed: int | None = 0, max_files: int = 1000,
                label: str = "dataset") -> list[tuple[str, object, np.ndarray]]:
    """Subsets of ``data`` with their file names (see :meth:`CsDataset.split_files`)."""
    if (by is None) == (into is None):
        raise ValueError("give exactly one of by (a field) and into (a number of subsets)")
    if into is not None:
        if into > max_files:
            raise OutputError(f"{label}: ", hints=[Hint("into", "{}", into),
                                                   Hint("max_files", " is more than {}", max_files)])
        return [(f"{stem}_subset{k + 1}.cs", k + 1, part)
                for k, part in enumerate(split_random(data, into, seed))]
    parts = split_by_field(data, by, label)
    if len(parts) > max_files:
        raise OutputError(f"{label}: {by} has {len(parts):,} distinct values",
                          hints=[Hint("max_files", ", more files than {}", max_files)])
    tail = by.rsplit("/", 1)[-1]
    named = [(f"{stem}_{_name_part(tail)}_{_name_part(k)}.cs", k, v) for k, v in parts.items()]
    if len({n for n, _, _ in named}) != len(named):
        raise OutputError(f"{label}: values of {by} give clashing file names")
    return named
