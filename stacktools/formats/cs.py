"""Read and write CryoSPARC ``.cs`` files.

A ``.cs`` file is a NumPy ``.npy`` structured array saved under a ``.cs`` name.
Newer CryoSPARC versions may write the CSDAT stream format instead (magic
``\\x95CSDAT``); reading it uses the optional ``cryosparc-tools`` package
(``pip install 'stacktools[csdat]'``), the format's reference implementation.

Arrays keep their exact dtype: fixed-width byte strings, subarray fields and
field order. Nothing here unpickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stacktools.errors import CsFormatError, OutputError
from stacktools.formats.atomic import atomic_output

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
# Jobs with many classes write thousands of fields (alignments_class_N/*), far past
# np.load's 10,000-byte default. The limit bounds the header's literal_eval; pickles
# stay refused by allow_pickle=False.
MAX_HEADER_BYTES = 1 << 24


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"numpy"`` or ``"csdat"`` from the file's magic bytes.

    Raises :class:`CsFormatError` if the file is neither.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as err:
        raise CsFormatError(f"{path}: {err.strerror}") from err
    if magic == NUMPY_MAGIC:
        return "numpy"
    if magic == CSDAT_MAGIC:
        return "csdat"
    raise CsFormatError(f"{path}: not a .cs file (neither NumPy nor CSDAT format)")


def read_cs(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Load a ``.cs`` file as a NumPy structured array.

    Parameters
    ----------
    path
        The ``.cs`` file, in NumPy or CSDAT format.
    mmap
        Map a NumPy-format file read-only instead of reading it into memory.

    Returns
    -------
    numpy.ndarray
        One-dimensional structured array with the file's exact dtype.

    Raises
    ------
    CsFormatError
        The file is missing, neither format, truncated, holds objects (pickles are
        never loaded) or has a header over :data:`MAX_HEADER_BYTES`.
    """
    fmt = detect_format(path)
    if fmt == "csdat":
        return _read_csdat(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False,
                      max_header_size=MAX_HEADER_BYTES)
    except (ValueError, EOFError, OSError) as err:
        raise CsFormatError(f"{path}: corrupt or truncated .cs file ({err})") from err
    if arr.dtype.names is None or arr.ndim != 1:
        raise CsFormatError(f"{path}: not a .cs dataset (expected a 1-D structured array, "
                            f"got {arr.dtype} with shape {arr.shape})")
    return arr


def _read_csdat(path: str | os.PathLike) -> np.ndarray:
    try:
        from cryosparc.dataset import Dataset
    except ImportError as err:
        raise CsFormatError(f"{path}: CSDAT-format .cs needs cryosparc-tools: "
                            "pip install 'stacktools[csdat]'") from err
    try:
        dset = Dataset.load(str(path))
    except Exception as err:  # cryosparc-tools raises several types
        raise CsFormatError(f"{path}: corrupt CSDAT file ({err})") from err
    return dataset_to_array(dset)


def dataset_to_array(dset) -> np.ndarray:
    """Convert a cryosparc-tools ``Dataset`` into a structured array.

    Python-string columns become fixed-width byte strings, as in NumPy-format files.
    """
    columns, descr = [], []
    for field in dset.descr():
        name, dt = field[0], field[1]
        col = np.asarray(dset[name])
        if col.dtype.kind in "OU":
            col = np.char.encode(col.astype(str), "utf-8") if len(col) else np.zeros(0, "S1")
            width = max(1, col.dtype.itemsize)
            descr.append((name, f"S{width}"))
        else:
            descr.append(field if len(field) == 3 else (name, dt))
        columns.append(col)
    out = np.empty(len(dset), dtype=descr)
    for (name, *_), col in zip(descr, columns):
        out[name] = col
    return out


FORMATS = ("numpy", "csdat")
# Rows per chunk of a streamed read or write: a few megabytes for any .cs.
CHUNK_ROWS = 1 << 15


def numpy_layout(path: str | os.PathLike) -> tuple[np.dtype, int, int]:
    """The dtype, row count and data offset of a NumPy-format ``.cs``, from its header.

    Raises :class:`CsFormatError` as :func:`read_cs` does (also for a short file).
    """
    arr = read_cs(path, mmap=True)
    if not isinstance(arr, np.memmap):
        raise CsFormatError(f"{path}: not a NumPy-format .cs file")
    return arr.dtype, len(arr), int(arr.offset)


def iter_rows(path: str | os.PathLike, chunk_rows: int | None = None):
    """The rows of a NumPy-format ``.cs``, read a chunk at a time.

    Memory stays one chunk, however large the file: each chunk is a fresh array
    read with plain reads (no mapping, whose touched pages would stay resident).
    """
    dtype, n, offset = numpy_layout(path)
    chunk_rows = chunk_rows or CHUNK_ROWS
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        for start in range(0, n, chunk_rows):
            chunk = np.empty(min(chunk_rows, n - start), dtype)
            view = memoryview(chunk).cast("B")
            got = 0
            while got < len(view):
                k = fh.readinto(view[got:])
                if not k:
                    raise CsFormatError(f"{path}: corrupt or truncated .cs file (ends inside row {start})")
                got += k
            yield chunk


def write_cs_chunks(path: str | os.PathLike, dtype: np.dtype, count: int, chunks, *,
                    overwrite: bool = True, fsync: bool = True) -> Path:
    """Write a NumPy-format ``.cs`` of ``count`` rows from an iterable of row chunks,
    atomically: the bytes :func:`write_cs` writes for the whole array, without ever
    holding it.

    Raises:
        OutputError: The chunks do not add up to ``count`` rows of ``dtype`` (nothing
            is then left under ``path``), or the file cannot be written.
    """
    dtype = np.dtype(dtype)
    if dtype.names is None or dtype.hasobject:
        raise CsFormatError(f"{path}: can only write plain structured rows")
    fmt = np.lib.format
    header = {"descr": fmt.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
    with atomic_output(path, overwrite=overwrite, fsync=fsync) as fh:
        try:  # the version np.save picks: 1.0 unless the header is too long for it
            fmt.write_array_header_1_0(fh, header)
        except ValueError:
            fmt.write_array_header_2_0(fh, header)
        except UnicodeEncodeError:  # field names only version 3.0 holds: np.save's own choice
            rows = list(chunks)
            np.save(fh, np.concatenate(rows) if rows else np.empty(0, dtype), allow_pickle=False)
            return Path(path)
        written = 0
        for chunk in chunks:
            if chunk.dtype != dtype or chunk.ndim != 1:
                raise OutputError(f"{path}: a chunk of {chunk.dtype} rows, not {dtype}")
            fh.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            written += len(chunk)
        if written != count:
            raise OutputError(f"{path}: {written} rows written, {count} expected")
    return Path(path)


def write_cs(path: str | os.PathLike, data: np.ndarray, *, overwrite: bool = True,
             fsync: bool = True, format: str = "numpy") -> Path:
    """Write ``data`` as a ``.cs`` file, atomically.

    NumPy format is written with :func:`numpy.save` into an open handle, so no
    ``.npy`` suffix is added and both ``np.load`` and cryosparc-tools read it back
    with the exact dtype. CSDAT is written by cryosparc-tools (its reference
    implementation); strings there have no fixed width, and read back as wide as
    the longest value, as any CSDAT file does.

    Parameters
    ----------
    path
        Destination. Its parent directory must exist.
    data
        One-dimensional structured array.
    overwrite
        If false, refuse to replace an existing file.
    fsync
        Flush the file to the device before renaming it into place.
    format
        ``"numpy"`` or ``"csdat"``; :func:`detect_format` of an input gives the
        value that keeps its format.
    """
    if format not in FORMATS:
        raise OutputError(f"{path}: unknown .cs format {format!r} (choose numpy or csdat)")
    if data.dtype.names is None or data.ndim != 1:
        raise CsFormatError(f"{path}: can only write a 1-D structured array")
    if data.dtype.hasobject:
        raise OutputError(f"{path}: object fields cannot be written to a .cs file")
    if format == "csdat":
        dset = _csdat_dataset(path, data)
    with atomic_output(path, overwrite=overwrite, fsync=fsync) as fh:
        if format == "csdat":
            from cryosparc.dataset import CSDAT_FORMAT
            dset.save(fh, format=CSDAT_FORMAT)
        else:
            np.save(fh, np.ascontiguousarray(data), allow_pickle=False)
    return Path(path)


def _csdat_dataset(path: str | os.PathLike, data: np.ndarray):
    try:
        from cryosparc.dataset import Dataset
    except ImportError as err:
        raise OutputError(f"{path}: writing CSDAT needs cryosparc-tools: "
                          "pip install 'stacktools[csdat]'") from err
    return Dataset(np.ascontiguousarray(data))


def strip_import_marker(path: bytes | str) -> str:
    """Return a ``blob/path`` value as text, without CryoSPARC's leading ``>``.

    Bytes are decoded as the OS decodes file names (:func:`os.fsdecode`): bytes that
    are not UTF-8 become surrogate escapes, so the text still names the same file.
    """
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text[1:] if text.startswith(">") else text
