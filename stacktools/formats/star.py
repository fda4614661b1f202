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
"""

from __future__ import annotations

import io
import mmap
import os
import re
from pathlib import Path

from stacktools.errors import StarFormatError
from stacktools.formats.atomic import atomic_output

# What a STAR file may start with before its first block: blank lines and comments.
_SNIFF_BYTES = 4096
_BLOCK = re.compile(rb"^data_(\S*)[ \t]*\r?$", re.M)
_NA_VALUES = ["nan", "NaN", "<NA>"]  # as starfile reads them


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
               float_format: str | None = "%.6f", fsync: bool = True) -> Path:
    """Write STAR ``blocks`` (name → DataFrame) atomically.

    Parameters
    ----------
    path
        Destination ``.star``.
    blocks
        Data blocks in order, e.g. ``{"optics": ..., "particles": ...}``.
    overwrite
        If false, refuse to replace an existing file.
    float_format
        ``printf`` format of floats; ``None`` writes the shortest text that reads
        back as the same value (for rewriting a file whose values must be kept).
        Only with ``None`` are plain loops written by pyarrow's CSV writer
        (2 million rows in 3 s, against 22 s for pandas and more for ``starfile``).
    fsync
        Flush to the device before the rename.
    """
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
