"""Fast MRC stack headers and particle reads.

Headers are read with one ``pread`` of 1024 bytes and decoded with mrcfile's own
header dtype and mode table, so the layout is never declared twice. Particle *i*
is one ``pread`` at its offset: a stack is never read whole.
"""

from __future__ import annotations

import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import (
    dtype_from_mode,
    machine_stamp_from_byte_order,
    mode_from_dtype,
)

from stacktools.errors import (
    IndexOutOfRangeError,
    MissingStackError,
    MrcHeaderError,
    StackError,
    TruncatedStackError,
)

HEADER_BYTES = HEADER_DTYPE.itemsize  # 1024
_LITTLE_HEADER = HEADER_DTYPE.newbyteorder("<")
MRC_VERSION = 20140
SUPPORTED_MODES = (0, 1, 2, 6, 12)
_PROBE = 64  # headers read before deciding whether threads would help
_SLOW_READ_S = 50e-6


# MRC mode 12 (IEEE half floats); RELION reads it from 5.0 on only.
FLOAT16_MODE = 12
RELION_FLOAT16_WARNING = ("float16 (MRC mode 12) stacks kept as float16: RELION before 5.0 "
                          "cannot read them")


@functools.lru_cache(maxsize=None)  # a handful of modes; called once per stack on hot paths
def mode_dtype(mode: int, byte_order: str = "<") -> np.dtype:
    """The pixel dtype of an MRC mode, from mrcfile's mode table.

    Args:
        mode: MRC mode number (0, 1, 2, 6 or 12).
        byte_order: ``"<"``, ``">"`` or ``"="``; stacktools writes ``"<"``.

    Returns:
        The dtype, in ``byte_order``.

    Raises:
        ValueError: ``mode`` is not an MRC mode.
    """
    return dtype_from_mode(mode).newbyteorder(byte_order)


def mode_of_dtype(dtype: str | np.dtype) -> int:
    """The MRC mode that stores pixels of ``dtype`` (``"float32"`` is 2), from mrcfile's table.

    Raises:
        ValueError: no MRC mode stores that dtype.
    """
    return int(mode_from_dtype(np.dtype(dtype)))


@functools.lru_cache(maxsize=None)
def mode_name(mode: int) -> str:
    """A mode's pixel type as people name it.

    Args:
        mode: MRC mode number.

    Returns:
        The dtype's name (``"float16"`` for 12), or the number for a mode
        stacktools does not read.
    """
    return mode_dtype(mode).name if mode in SUPPORTED_MODES else str(mode)


@dataclass(slots=True)
class StackHeader:
    """What the header of an MRC stack says, plus the file's real size.

    ``nx`` and ``ny`` are the box, ``nz`` the number of particles. ``data_offset``
    is where particle 0 starts (1024 + ``nsymbt``).
    """

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    nsymbt: int
    voxel_size: float
    byte_order: str
    file_size: int
    mtime_ns: int

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype in the file's byte order."""
        return mode_dtype(self.mode, self.byte_order)

    @property
    def itemsize(self) -> int:
        return mode_dtype(self.mode).itemsize

    @property
    def particle_bytes(self) -> int:
        """Bytes of one particle image."""
        return self.nx * self.ny * self.itemsize

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES + self.nsymbt

    @property
    def expected_size(self) -> int:
        """Smallest file size that holds every section the header declares."""
        return self.data_offset + self.nz * self.particle_bytes

    def offset_of(self, index: int) -> int:
        """Byte offset of particle ``index`` (0-based)."""
        return self.data_offset + index * self.particle_bytes

    def check_complete(self) -> None:
        """Raise :class:`TruncatedStackError` if the file is shorter than declared."""
        if self.file_size < self.expected_size:
            raise TruncatedStackError(
                f"{self.path}: truncated stack: {self.file_size} bytes on disk, header "
                f"declares {self.nz} x {self.ny}x{self.nx} mode {self.mode} "
                f"= {self.expected_size} bytes")


# Bytes per pixel by mode, for vectorised lookups (index: the mode number).
_ITEMSIZE = np.zeros(max(SUPPORTED_MODES) + 1, np.int64)
for _m in SUPPORTED_MODES:
    _ITEMSIZE[_m] = np.dtype(dtype_from_mode(_m)).itemsize


@dataclass(frozen=True)
class HeaderTable:
    """Many stacks' headers as columns, one NumPy array per field, in ``paths``
    order: what code over thousands of stacks uses instead of one
    :class:`StackHeader` each (whose properties cost a Python call per stack)."""

    paths: list[str]
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    mode: np.ndarray
    nsymbt: np.ndarray
    voxel_size: np.ndarray
    big_endian: np.ndarray
    file_size: np.ndarray
    mtime_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def itemsize(self) -> np.ndarray:
        """Bytes per pixel of each stack."""
        return _ITEMSIZE[self.mode]

    @property
    def particle_bytes(self) -> np.ndarray:
        return self.nx * self.ny * self.itemsize

    @property
    def data_offset(self) -> np.ndarray:
        return HEADER_BYTES + self.nsymbt

    @property
    def expected_size(self) -> np.ndarray:
        """Smallest file size that holds every section each header declares."""
        return self.data_offset + self.nz * self.particle_bytes

    def header(self, k: int) -> StackHeader:
        """Stack ``k`` as a :class:`StackHeader`."""
        return StackHeader(self.paths[k], int(self.nx[k]), int(self.ny[k]), int(self.nz[k]),
                           int(self.mode[k]), int(self.nsymbt[k]), float(self.voxel_size[k]),
                           ">" if self.big_endian[k] else "<", int(self.file_size[k]), int(self.mtime_ns[k]))

    def headers(self) -> list[StackHeader]:
        """Every stack as a :class:`StackHeader`."""
        order = np.where(self.big_endian, ">", "<")
        return [StackHeader(*row) for row in zip(
            self.paths, self.nx.tolist(), self.ny.tolist(), self.nz.tolist(), self.mode.tolist(),
            self.nsymbt.tolist(), self.voxel_size.tolist(), order.tolist(), self.file_size.tolist(),
            self.mtime_ns.tolist())]


def read_header(path: str | os.PathLike) -> StackHeader:
    """Read an MRC stack's header with a single 1024-byte ``pread``.

    Raises :class:`MissingStackError` if the file does not exist, and
    :class:`MrcHeaderError` or :class:`TruncatedStackError` if it is not a usable
    stack. Pixel data is never read.
    """
    return read_headers([path], threads=1)[0]


def read_headers(paths: Sequence[str | os.PathLike], threads: int = 4) -> list[StackHeader]:
    """Read many stacks' headers: one ``pread`` each, decoded together.

    Parameters
    ----------
    paths
        Stack files.
    threads
        Threads issuing the reads when the first few reads show slow (network or
        cold) storage; they overlap its latency.

    Returns the headers in the order of ``paths``. Errors are those of
    :func:`read_header`, for the first bad file.
    """
    return read_header_table(paths, threads).headers()


def read_header_table(paths: Sequence[str | os.PathLike], threads: int = 4) -> HeaderTable:
    """:func:`read_headers` as a :class:`HeaderTable` (no per-stack objects)."""
    names = [os.fspath(p) for p in paths]
    probe = names[:_PROBE]
    t0 = time.perf_counter()
    raws = _read_raw_headers(probe)
    rest = names[_PROBE:]
    per_file = (time.perf_counter() - t0) / max(len(probe), 1)
    # From the page cache a read takes microseconds and threads only add overhead;
    # on network storage they overlap the round trips.
    if threads > 1 and len(rest) >= 256 and per_file > _SLOW_READ_S:
        step = -(-len(rest) // (threads * 4))
        chunks = [rest[i:i + step] for i in range(0, len(rest), step)]
        with ThreadPoolExecutor(threads) as pool:
            for part in pool.map(_read_raw_headers, chunks):
                raws.extend(part)
    else:
        raws.extend(_read_raw_headers(rest))
    return _decode_headers(names, raws)


def open_stack(path: str) -> int:
    """Open a stack read-only; a missing or unreadable file is a :class:`StackError`."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError as err:
        raise MissingStackError(f"{path}: stack not found") from err
    except OSError as err:
        raise StackError(f"{path}: {err.strerror}") from err


class _RawHeaders:
    """Header bytes, sizes and mtimes of many files, kept in plain lists so that the
    read loop does no more per file than the system calls need."""

    __slots__ = ("heads", "sizes", "mtimes")

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []

    def extend(self, other: "_RawHeaders") -> None:
        self.heads += other.heads
        self.sizes += other.sizes
        self.mtimes += other.mtimes


def _read_raw_headers(names: list[str]) -> _RawHeaders:
    out = _RawHeaders()
    heads, sizes, mtimes = out.heads.append, out.sizes.append, out.mtimes.append
    os_open, fstat, pread, close, rdonly = os.open, os.fstat, os.pread, os.close, os.O_RDONLY
    for p in names:
        try:
            fd = os_open(p, rdonly)
        except OSError:
            fd = open_stack(p)  # raises the specific error
        try:
            st = fstat(fd)
            heads(pread(fd, HEADER_BYTES, 0))
            sizes(st.st_size)
            mtimes(st.st_mtime_ns)
        finally:
            close(fd)
    return out


def _decode_headers(names: list[str], raws: _RawHeaders) -> HeaderTable:
    if not names:
        empty = np.zeros(0, np.int64)
        return HeaderTable([], empty, empty, empty, empty, empty, np.zeros(0), np.zeros(0, bool), empty, empty)
    joined = b"".join(raws.heads)
    if len(joined) < len(names) * HEADER_BYTES:
        i = next(i for i, h in enumerate(raws.heads) if len(h) < HEADER_BYTES)
        raise TruncatedStackError(f"{names[i]}: truncated stack: only {len(raws.heads[i])} bytes, "
                                  f"an MRC header needs {HEADER_BYTES}")
    little = np.frombuffer(joined, dtype=_LITTLE_HEADER)
    stamp = little["machst"][:, 0]
    big = (stamp == 0x11) | ((stamp != 0x44) & ~np.isin(little["mode"], SUPPORTED_MODES + (3, 4)))
    cols = {}
    for key in ("nx", "ny", "nz", "mode", "nsymbt", "mx"):
        col = little[key].astype(np.int64)
        if big.any():
            col[big] = little[key][big].byteswap().astype(np.int64)
        cols[key] = col
    cella = little["cella"]["x"].astype(np.float64)
    if big.any():
        cella[big] = little["cella"]["x"][big].byteswap().astype(np.float64)
    nx, ny, nz, mode, nsymbt, mx = (cols[k] for k in ("nx", "ny", "nz", "mode", "nsymbt", "mx"))
    bad_mode = np.flatnonzero(~np.isin(mode, SUPPORTED_MODES))
    if len(bad_mode):
        i = int(bad_mode[0])
        raise MrcHeaderError(f"{names[i]}: unsupported MRC mode {mode[i]} "
                             f"(supported: {', '.join(map(str, SUPPORTED_MODES))})")
    bad_dims = np.flatnonzero((nx <= 0) | (ny <= 0) | (nz < 0) | (nsymbt < 0))
    if len(bad_dims):
        i = int(bad_dims[0])
        raise MrcHeaderError(f"{names[i]}: invalid MRC dimensions nx={nx[i]} ny={ny[i]} "
                             f"nz={nz[i]} nsymbt={nsymbt[i]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        voxel = np.where(mx > 0, np.round(cella / np.maximum(mx, 1), 6), 0.0)
    return HeaderTable(names, nx, ny, nz, mode, nsymbt, voxel, big, np.array(raws.sizes, np.int64),
                       np.array(raws.mtimes, np.int64))


def read_particle(path: str | os.PathLike, index: int,
                  header: StackHeader | None = None) -> np.ndarray:
    """Read particle ``index`` (0-based) of a stack as a ``(ny, nx)`` array.

    Only that particle's bytes are read. Values keep the file's pixel mode.
    """
    return read_particles(path, index, 1, header)[0]


def read_particles(path: str | os.PathLike, start: int, count: int,
                   header: StackHeader | None = None) -> np.ndarray:
    """Read ``count`` consecutive particles starting at ``start`` with one ``pread``."""
    h = header or read_header(path)
    if start < 0 or start + count > h.nz:
        raise IndexOutOfRangeError(f"{h.path}: particles {start}..{start + count - 1} "
                                   f"out of range, stack holds {h.nz}")
    nbytes = count * h.particle_bytes
    with open(path, "rb", buffering=0) as fh:
        raw = os.pread(fh.fileno(), nbytes, h.offset_of(start))
    if len(raw) != nbytes:
        raise TruncatedStackError(f"{h.path}: truncated stack: particle {start + len(raw) // h.particle_bytes} "
                                  "lies past the end of the file")
    arr = np.frombuffer(raw, dtype=h.dtype).reshape(count, h.ny, h.nx)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def make_header(nx: int, ny: int, nz: int, mode: int, voxel_size: float = 1.0, *,
                nsymbt: int = 0, exttyp: bytes = b"",
                label: str = "stacktools") -> bytes:
    """Return the 1024 bytes of a little-endian MRC2014 image-stack header.

    Statistics are marked undetermined (``dmax < dmin``, ``rms < 0``) as the
    MRC2014 standard allows, so a stack can be written as a stream.
    """
    dtype_from_mode(mode)  # raises on an unknown mode
    h = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<"))
    h["nx"], h["ny"], h["nz"] = nx, ny, nz
    h["mode"] = mode
    h["mx"], h["my"], h["mz"] = nx, ny, 1 if nz else 0
    h["cella"] = (nx * voxel_size, ny * voxel_size, voxel_size if nz else 0.0)
    h["cellb"] = (90.0, 90.0, 90.0)
    h["mapc"], h["mapr"], h["maps"] = 1, 2, 3
    h["dmin"], h["dmax"], h["dmean"], h["rms"] = 0.0, -1.0, -2.0, -1.0
    h["ispg"] = 0  # image stack
    h["nsymbt"] = nsymbt
    h["exttyp"] = exttyp
    h["nversion"] = MRC_VERSION
    h["map"] = b"MAP "
    h["machst"] = np.frombuffer(bytes(machine_stamp_from_byte_order("<")), np.uint8)
    h["nlabl"] = 1
    h["label"][0] = label.encode()[:80]
    return h.tobytes()
