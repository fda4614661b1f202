"""Content digests of cached copies.

Size and mtime are not enough: ``cp -p``, ``rsync -t`` and ``touch -d`` make a
changed file with the old size and mtime. Each copy's digest is recorded when it is
made, so ``cache verify`` finds a copy damaged in place without reading the
sources, and ``sync --check-content`` can compare a source against the copy.

xxHash's XXH3-128 hashes at memory speed (several GB/s per core), which keeps the
cost of recording a digest small against the copy itself; it is not meant to
resist a forger, only to catch accidents.
"""

from __future__ import annotations

import mmap
import os

import xxhash

ALGO = "xxh3_128"
CHUNK = 8 << 20


def digest_fd(fd: int, size: int | None = None) -> str:
    """Digest of the file open on ``fd``, read with ``pread`` (the offset is untouched).

    Args:
        fd: A readable descriptor.
        size: Bytes to hash (default: to the end of the file).

    Returns:
        ``"xxh3_128:<hex>"``.
    """
    h = xxhash.xxh3_128()
    off = 0
    while size is None or off < size:
        n = CHUNK if size is None else min(CHUNK, size - off)
        buf = os.pread(fd, n, off)
        if not buf:
            break
        h.update(buf)
        off += len(buf)
    return f"{ALGO}:{h.hexdigest()}"


def new_hasher() -> "xxhash.xxh3_128 | None":
    """A running digest for :func:`hash_mapped` and :func:`hexdigest`."""
    return xxhash.xxh3_128()


def hash_mapped(h: "xxhash.xxh3_128", fd: int, start: int, end: int) -> None:
    """Add bytes ``[start, end)`` of the file open on ``fd`` to ``h``, hashed in place.

    The page cache is mapped rather than copied out (less memory traffic, and the
    pages just written are still in the CPU's cache). Only for a file no one else
    can truncate meanwhile (a cache temporary, mode 0600): a mapping past a shrunk
    end raises SIGBUS.
    """
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, end - base, prot=mmap.PROT_READ,
                   flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), offset=base) as m:
        with memoryview(m) as mv:
            h.update(mv[start - base:])


def hexdigest(h: "xxhash.xxh3_128 | None") -> str:
    """``"xxh3_128:<hex>"`` of a running digest (``""`` for none)."""
    return f"{ALGO}:{h.hexdigest()}" if h is not None else ""


def digest_file(path: str | os.PathLike) -> str:
    """Digest of the file at ``path`` (see :func:`digest_fd`).

    Raises:
        OSError: The file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd)
    finally:
        os.close(fd)
