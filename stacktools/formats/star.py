"""RELION STAR text ⇄ tables: read with ``starfile``, written here with NumPy.

Only the text: what the columns mean for a ``.cs`` dataset is
:mod:`stacktools.cs.relion`'s job.

Writing renders whole columns at once (digits by integer arithmetic on arrays,
strings as byte matrices) and writes a particle table in chunks, so two million
rows take seconds and memory stays at one chunk, not the whole table. The text is
the syntax RELION itself writes and reads: ``# version 30001``, ``data_NAME``,
``loop_``, ``_rlnLabel #N`` and one whitespace-separated row per line, numbers
right-aligned. Floats get at least six decimals (RELION's own ``%12.6f``) and up to
nine significant digits, so a float32 value reads back unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from stacktools.errors import StarFormatError
from stacktools.formats.atomic import atomic_output

CHUNK_ROWS = 1 << 16
_SPACE, _NEWLINE, _MINUS, _POINT, _AT, _ZERO = 32, 10, 45, 46, 64, 48


@dataclass(frozen=True)
class Coded:
    """A string column as codes into a few distinct values (stack or micrograph names)."""

    codes: np.ndarray
    values: list[bytes]


@dataclass(frozen=True)
class IndexedNames:
    """``rlnImageName`` text, ``{index:06d}@{name}``: 1-based ``index``, ``name`` coded."""

    index: np.ndarray
    codes: np.ndarray
    names: list[bytes]


@dataclass(frozen=True)
class StarLoop:
    """A loop written chunk by chunk: ``columns`` in order, ``chunks`` yields
    ``{column: values}`` for consecutive rows, ``rows`` in all."""

    columns: list[str]
    chunks: Callable[[], Iterable[Mapping[str, object]]]
    rows: int


def _positional(a: np.ndarray, neg: np.ndarray | None, min_digits: int, point: int,
                zero_pad: bool = False) -> np.ndarray:
    """Right-aligned ASCII of non-negative integers ``a`` as an ``(n, width)`` matrix.

    ``point`` digits go after a decimal point; ``neg`` rows get a minus sign.
    """
    n = len(a)
    top = int(a.max()) if n else 0
    width = max(min_digits, len(str(top)))
    digits = np.empty((n, width), dtype=np.uint8)
    rest = a.copy()
    for k in range(width):  # digits from the right
        digits[:, width - 1 - k] = rest % 10
        rest //= 10
    digits += _ZERO
    if not zero_pad:
        # Leading zeros become spaces, keeping min_digits (e.g. "0.500000").
        count = np.full(n, min_digits, dtype=np.int64)
        for k in range(min_digits, width):
            count += a >= 10 ** k
        blank = np.arange(width)[None, :] < (width - count)[:, None]
        digits[blank] = _SPACE
    else:
        count = np.full(n, width, dtype=np.int64)
    if point:
        digits = np.concatenate([digits[:, :width - point], np.full((n, 1), _POINT, np.uint8),
                                 digits[:, width - point:]], axis=1)
    sign = np.full((n, 1), _SPACE, dtype=np.uint8)
    if neg is not None and neg.any():
        digits = np.concatenate([sign, digits], axis=1)
        # The minus sits just left of the first digit.
        at = digits.shape[1] - (count + (1 if point else 0)) - 1
        rows = np.flatnonzero(neg)
        digits[rows, at[rows]] = _MINUS
    return digits


def _float_decimals(v: np.ndarray) -> int:
    top = float(np.abs(v).max()) if len(v) else 0.0
    if top == 0.0:
        return 6
    return int(min(9, max(6, 8 - np.floor(np.log10(top)))))


def _number_text(name: str, v: np.ndarray) -> np.ndarray:
    if v.dtype.kind == "b":
        v = v.astype(np.int64)
    if v.dtype.kind in "iu":
        v = v.astype(np.int64)
        return _positional(np.abs(v), v < 0, 1, 0)
    v = v.astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise StarFormatError(f"column {name}: row {int(np.flatnonzero(bad)[0]) + 1} "
                              f"is {v[bad][0]}, which STAR cannot hold")
    d = _float_decimals(v)
    scaled = np.rint(v * 10.0 ** d)
    if len(v) and np.abs(scaled).max() >= 2.0 ** 62:
        return _text_matrix(name, np.char.mod("%.9g", v).astype("S"))
    scaled = scaled.astype(np.int64)
    return _positional(np.abs(scaled), scaled < 0, d + 1, d)


def _check_words(name: str, values: list[bytes]) -> None:
    for v in values:
        if not v or any(c in v for c in b" \t\n\r\"'"):
            raise StarFormatError(f"column {name}: value {v.decode(errors='replace')!r} "
                                  "is empty or holds whitespace or quotes, which RELION cannot read")


def _text_matrix(name: str, values: np.ndarray) -> np.ndarray:
    """Left-aligned bytes of a string column, padded with spaces."""
    if values.dtype.kind == "U":
        values = np.char.encode(values, "utf-8")
    uniq, codes = np.unique(values, return_inverse=True)
    return _coded_text(name, codes.ravel(), [bytes(u) for u in uniq.tolist()])


def _coded_text(name: str, codes: np.ndarray, values: list[bytes]) -> np.ndarray:
    _check_words(name, values)
    width = max((len(v) for v in values), default=1)
    table = np.full((max(1, len(values)), width), _SPACE, dtype=np.uint8)
    for i, v in enumerate(values):
        table[i, :len(v)] = np.frombuffer(v, dtype=np.uint8)
    return table[codes]


def _column_text(name: str, values) -> np.ndarray:
    if isinstance(values, IndexedNames):
        index = np.asarray(values.index, dtype=np.int64)
        digits = _positional(index, None, 6, 0, zero_pad=True)
        at = np.full((len(index), 1), _AT, dtype=np.uint8)
        return np.concatenate([digits, at, _coded_text(name, values.codes, values.names)], axis=1)
    if isinstance(values, Coded):
        return _coded_text(name, np.asarray(values.codes), values.values)
    values = np.asarray(values)
    if values.dtype.kind in "SU":
        return _text_matrix(name, values)
    if values.dtype.kind == "O":
        return _text_matrix(name, values.astype(str))
    return _number_text(name, values)


def format_rows(columns: list[str], chunk: Mapping[str, object]) -> bytes:
    """The text of consecutive rows: one line per row, columns separated by a space."""
    parts = []
    for name in columns:
        text = _column_text(name, chunk[name])
        parts += [text, np.full((len(text), 1), _SPACE, dtype=np.uint8)]
    if not parts:
        return b""
    parts[-1] = np.full((len(parts[0]), 1), _NEWLINE, dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate(parts, axis=1)).tobytes()


def _frame_loop(frame) -> StarLoop:
    cols = {str(c): frame[c].to_numpy() for c in frame.columns}
    return StarLoop(list(cols), lambda: [cols], len(frame))


def _header(name: str, columns: list[str]) -> bytes:
    labels = "".join(f"_{c} #{i} \n" for i, c in enumerate(columns, 1))
    return f"\n# version 30001\n\ndata_{name}\n\nloop_ \n{labels}".encode()


def write_star(path: str | os.PathLike, blocks: dict, *, overwrite: bool = True,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write STAR ``blocks`` atomically, one loop per block.

    Parameters
    ----------
    path
        Destination ``.star``.
    blocks
        Data blocks in order, name → a pandas DataFrame or a :class:`StarLoop`,
        e.g. ``{"optics": ..., "particles": ...}``.
    overwrite
        If false, refuse to replace an existing file.
    progress
        Called with the number of rows each time a chunk is written.

    Raises :class:`StarFormatError` for a value STAR cannot hold (a NaN, a name
    with whitespace); nothing is written then.
    """
    loops = {name: b if isinstance(b, StarLoop) else _frame_loop(b) for name, b in blocks.items()}
    with atomic_output(path, overwrite=overwrite) as fh:
        for name, loop in loops.items():
            fh.write(_header(name, loop.columns))
            for chunk in loop.chunks():
                text = format_rows(loop.columns, chunk)
                fh.write(text)
                if progress is not None:
                    progress(text.count(b"\n"))
            fh.write(b"\n")
    return Path(path)


def read_star(path: str | os.PathLike) -> dict:
    """Read every data block of a STAR file (name → DataFrame) with ``starfile``."""
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # starfile raises assorted types on bad input
        msg = " ".join(str(err).split()) or type(err).__name__
        raise StarFormatError(f"{path}: not a readable STAR file ({msg})") from err
    if not isinstance(blocks, dict) or not blocks:
        raise StarFormatError(f"{path}: no data blocks")
    return blocks
