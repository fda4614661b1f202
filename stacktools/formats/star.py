"""RELION STAR text ⇄ tables (name → DataFrame), read and written with ``starfile``.

Only the text: what the columns mean for a ``.cs`` dataset is
:mod:`stacktools.cs.relion`'s job.

A particle STAR of a few million rows is common, and ``starfile`` walks it line by
line in Python (25 s for 2 million rows). So files made only of loops with no quoted
values, which is what RELION writes, are parsed here: the block headers are found
with one scan of the bytes and each loop's rows go to pandas' C reader at once
(the same reader, with the same options, that ``starfile`` hands its joined lines
to, so the tables are the same). Anything else (key-value blocks, quotes) is left
to ``starfile``. Writing takes the same fast path for loops whose strings need no
quoting.

Tables that stacktools makes itself (``cs to-star``) are written as
:class:`StarLoop` s instead: whole columns are rendered at once (digits by integer
arithmetic on arrays, strings as byte matrices) and a particle table is written in
chunks, so two million rows take seconds and memory stays at one chunk. The text is
the syntax RELION itself writes and reads: ``# version 30001``, ``data_NAME``,
``loop_``, ``_rlnLabel #N`` and one whitespace-separated row per line, numbers
right-aligned. Floats get at least six decimals (RELION's own ``%12.6f``) and up to
nine significant digits, so a float32 value reads back unchanged.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from stacktools.errors import StarFormatError
from stacktools.formats.atomic import atomic_output

# What a STAR file may start with before its first block: blank lines and comments.
_SNIFF_BYTES = 4096
_BLOCK = re.compile(rb"^data_(\S*)[ \t]*\r?$", re.M)
_NA_VALUES = ["nan", "NaN", "<NA>"]  # as starfile reads them

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


# The text of every 4-digit group, "0000" to "9999": one gather per group of digits
# instead of a division per digit. Built by arithmetic: a list of 10,000 strings took
# milliseconds of every command's start-up.
_GROUPS = (np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10 + ord("0")).astype(np.uint8)
_GROUPS32 = _GROUPS.view(np.uint32).ravel()
_POWERS = 10 ** np.arange(1, 19, dtype=np.int64)


def _positional(a: np.ndarray, neg: np.ndarray | None, min_digits: int, point: int,
                zero_pad: bool = False) -> np.ndarray:
    """Right-aligned ASCII of non-negative integers ``a`` as an ``(n, width)`` matrix.

    ``point`` digits go after a decimal point; ``neg`` rows get a minus sign.
    """
    n = len(a)
    top = int(a.max()) if n else 0
    width = max(min_digits, len(str(top)))
    signed = neg is not None and bool(neg.any())
    lead = 1 if signed else 0
    total = lead + width + (1 if point else 0)
    groups = -(-width // 4)
    # Each 4-digit group is gathered as one uint32 of its text: one divmod per group.
    packed = np.empty((n, groups), dtype=np.uint32)
    rest = a.astype(np.int64, copy=True)
    for g in range(groups - 1, -1, -1):
        rest, low = np.divmod(rest, 10_000)
        packed[:, g] = _GROUPS32[low]
    digits = packed.view(np.uint8)[:, 4 * groups - width:]
    out = np.empty((n, total), dtype=np.uint8)
    if point:
        out[:, lead:lead + width - point] = digits[:, :width - point]
        out[:, lead + width - point] = _POINT
        out[:, lead + width - point + 1:] = digits[:, width - point:]
    else:
        out[:, lead:] = digits
    if signed:
        out[:, 0] = _SPACE if zero_pad else _ZERO  # the sign column is blanked below
    if zero_pad:
        return out
    # Leading zeros become spaces, keeping min_digits (e.g. "0.500000"): every column
    # left of a row's first digit holds "0", and "0" - 16 is " ".
    count = np.maximum(np.searchsorted(_POWERS, a, side="right") + 1, min_digits)
    blank_to = lead + width - count  # columns before this one are blank
    blank = np.arange(total, dtype=np.uint8)[None, :] < blank_to.astype(np.uint8)[:, None]
    out -= blank.view(np.uint8) * np.uint8(_ZERO - _SPACE)
    if signed:
        rows = np.flatnonzero(neg)
        # The minus sits just left of the first digit.
        out[rows, blank_to[rows] - 1] = _MINUS
    return out


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


def _coded_text(name: str, codes: np.ndarray, values: list[bytes], tables: dict | None = None) -> np.ndarray:
    key = (name, id(values))
    table = tables.get(key) if tables is not None else None
    if table is None:
        _check_words(name, values)
        width = max((len(v) for v in values), default=1)
        table = np.full((max(1, len(values)), width), _SPACE, dtype=np.uint8)
        for i, v in enumerate(values):
            table[i, :len(v)] = np.frombuffer(v, dtype=np.uint8)
        if tables is not None:
            tables[key] = table
    return table[codes]


def _column_text(name: str, values, tables: dict | None = None) -> np.ndarray:
    if isinstance(values, IndexedNames):
        index = np.asarray(values.index, dtype=np.int64)
        names = _coded_text(name, values.codes, values.names, tables)
        digits = _positional(index, None, 6, 0, zero_pad=True)
        out = np.empty((len(index), digits.shape[1] + 1 + names.shape[1]), dtype=np.uint8)
        out[:, :digits.shape[1]] = digits
        out[:, digits.shape[1]] = _AT
        out[:, digits.shape[1] + 1:] = names
        return out
    if isinstance(values, Coded):
        return _coded_text(name, np.asarray(values.codes), values.values, tables)
    values = np.asarray(values)
    if values.dtype.kind in "SU":
        return _text_matrix(name, values)
    if values.dtype.kind == "O":
        return _text_matrix(name, values.astype(str))
    return _number_text(name, values)


def format_rows(columns: list[str], chunk: Mapping[str, object],
                tables: dict | None = None) -> tuple[bytes, int]:
    """The text of consecutive rows (one line each, columns separated by a space) and
    how many rows that is. ``tables`` keeps coded columns' text between chunks."""
    texts = [_column_text(name, chunk[name], tables) for name in columns]
    if not texts:
        return b"", 0
    n = len(texts[0])
    line = np.empty((n, sum(t.shape[1] + 1 for t in texts)), dtype=np.uint8)
    at = 0
    for t in texts:
        line[:, at:at + t.shape[1]] = t
        line[:, at + t.shape[1]] = _SPACE
        at += t.shape[1] + 1
    line[:, -1] = _NEWLINE
    return line.tobytes(), n


def _frame_loop(frame) -> StarLoop:
    cols = {str(c): frame[c].to_numpy() for c in frame.columns}
    return StarLoop(list(cols), lambda: [cols], len(frame))


def _header(name: str, columns: list[str]) -> bytes:
    labels = "".join(f"_{c} #{i} \n" for i, c in enumerate(columns, 1))
    return f"\n# version 30001\n\ndata_{name}\n\nloop_ \n{labels}".encode()


def is_star(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a STAR file: by its extension, else by its first bytes.

    ``.star`` is STAR and ``.cs`` is not; any other name is STAR when its first
    line that is neither blank nor a ``#`` comment starts a ``data_`` block.
    """
    name = os.fspath(path)
    if name.endswith(".star"):
        return True
    if name.endswith(".cs"):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    for line in head.splitlines():
        text = line.strip()
        if text and not text.startswith(b"#"):
            return text.startswith(b"data_")
    return False


def _loop_blocks(buf) -> dict | None:
    """Every block of ``buf`` as a DataFrame, or ``None`` when a block is not a plain loop."""
    import pandas as pd

    starts = list(_BLOCK.finditer(buf))
    if not starts:
        return None
    blocks: dict = {}
    for k, m in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(buf)
        pos = m.end() + 1
        columns: list[str] = []
        seen_loop = False
        while pos < end:
            nl = buf.find(b"\n", pos, end)
            line_end = end if nl < 0 else nl
            line = buf[pos:line_end].strip()
            if not line or line.startswith(b"#"):
                pass
            elif not seen_loop:
                if line != b"loop_":
                    return None  # a key-value block
                seen_loop = True
            elif line.startswith(b"_"):
                columns.append(line.split()[0][1:].decode())
            else:
                break
            pos = line_end + 1
        if not seen_loop or not columns:
            return None
        start = min(pos, end)
        if buf.find(b"'", start, end) >= 0 or buf.find(b'"', start, end) >= 0:
            return None  # quoted values: starfile's rules
        body = buf[start:end]
        if not body.strip():
            df = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        else:
            df = pd.read_csv(io.BytesIO(body), sep=r"\s+", header=None, names=columns,
                             comment="#", keep_default_na=False, na_values=_NA_VALUES,
                             engine="c")
        blocks[m.group(1).decode()] = df
    return blocks


def read_star(path: str | os.PathLike) -> dict:
    """Read every data block of a STAR file (name → DataFrame).

    Loops are parsed with pandas' C reader; files with key-value blocks or quoted
    values are read by ``starfile``.

    Raises:
        StarFormatError: Not readable STAR, or no data blocks.
        FileNotFoundError: ``path`` does not exist.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    blocks = _loop_blocks(buf)
            else:
                blocks = None
    except FileNotFoundError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as err:
        msg = " ".join(str(err).split()) or type(err).__name__
        raise StarFormatError(f"{path}: not a readable STAR file ({msg})") from err
    except Exception as err:  # pandas' parser errors
        msg = " ".join(str(err).split()) or type(err).__name__
        raise StarFormatError(f"{path}: not a readable STAR file ({msg})") from err
    if blocks is None:
        blocks = _read_with_starfile(path)
    if not isinstance(blocks, dict) or not blocks:
        raise StarFormatError(f"{path}: no data blocks")
    return blocks


def _read_with_starfile(path: str | os.PathLike) -> dict:
    import starfile

    try:
        return starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # starfile raises assorted types on bad input
        msg = " ".join(str(err).split()) or type(err).__name__
        raise StarFormatError(f"{path}: not a readable STAR file ({msg})") from err


def _plain_table(df):
    """``df`` as an Arrow table when pyarrow can write it as STAR text unquoted, else ``None``.

    Unquoted means every string is non-empty and holds no blank or quote, and no
    value is missing.
    """
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    for col in table.columns:
        if col.null_count:
            return None
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            if pc.any(pc.match_substring_regex(col, r"""^$|[\s'"]""")).as_py():
                return None
        elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                  or pa.types.is_boolean(col.type)):
            return None
    return table


def write_star(path: str | os.PathLike, blocks: dict, *, overwrite: bool = True,
               float_format: str | None = "%.6f", fsync: bool = True,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write STAR ``blocks`` atomically.

    Parameters
    ----------
    path
        Destination ``.star``.
    blocks
        Data blocks in order, name → a pandas DataFrame or a :class:`StarLoop`, e.g.
        ``{"optics": ..., "particles": ...}``. With any :class:`StarLoop`, every block
        is streamed (see the module docstring; ``float_format`` does not apply).
    overwrite
        If false, refuse to replace an existing file.
    float_format
        ``printf`` format of floats; ``None`` writes the shortest text that reads
        back as the same value (for rewriting a file whose values must be kept).
        Only with ``None`` are plain loops written by pyarrow's CSV writer
        (2 million rows in 3 s, against 22 s for pandas and more for ``starfile``).
    fsync
        Flush to the device before the rename.
    progress
        With streamed blocks: called with the number of rows each written chunk holds.

    Raises :class:`StarFormatError` for a value a streamed block cannot hold (a NaN,
    a name with whitespace); nothing is written then.
    """
    if any(isinstance(b, StarLoop) for b in blocks.values()):
        return _write_loops(path, blocks, overwrite=overwrite, fsync=fsync, progress=progress)
    import pandas as pd
    from starfile.writer import StarWriter, package_info

    tables = None
    if float_format is None and all(isinstance(b, pd.DataFrame) for b in blocks.values()):
        tables = [_plain_table(b) for b in blocks.values()]
        if any(t is None for t in tables):
            tables = None
    with atomic_output(path, overwrite=overwrite, fsync=fsync) as fh:
        if tables is None:
            writer = StarWriter(blocks, None, float_format=float_format)
            for line in writer.lines():
                fh.write(line.encode())
                fh.write(b"\n")
            return Path(path)
        import pyarrow.csv as pcsv

        options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        fh.write(f"{package_info()}\n\n\n".encode())
        for (name, df), table in zip(blocks.items(), tables):
            fh.write(f"data_{name}\n\nloop_\n".encode())
            fh.write("".join(f"_{c} #{i}\n" for i, c in enumerate(df.columns, 1)).encode())
            fh.flush()
            pcsv.write_csv(table, fh, options)
            fh.write(b"\n\n")
    return Path(path)


def _write_loops(path: str | os.PathLike, blocks: dict, *, overwrite: bool, fsync: bool,
                 progress: Callable[[int], None] | None) -> Path:
    loops = {name: b if isinstance(b, StarLoop) else _frame_loop(b) for name, b in blocks.items()}
    tables: dict = {}  # each coded column's text table, made once for all its chunks
    with atomic_output(path, overwrite=overwrite, fsync=fsync) as fh, \
            ThreadPoolExecutor(1, thread_name_prefix="star-write") as writer:
        # The next chunk is formatted while the last one is written (both release the GIL).
        pending = None
        for name, loop in loops.items():
            fh.write(_header(name, loop.columns))
            for chunk in loop.chunks():
                text, rows = format_rows(loop.columns, chunk, tables)
                if pending is not None:
                    pending.result()
                pending = writer.submit(fh.write, text)
                if progress is not None:
                    progress(rows)
            if pending is not None:
                pending.result()
                pending = None
            fh.write(b"\n")
    return Path(path)
