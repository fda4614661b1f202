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
MAP_CHUNK = 64 << 20


def digest_fd(fd: int, size: int | None = None, *, mapped: bool = False) -> str:
    """Digest of the file open on ``fd``, read with ``pread`` or mapped (the offset is untouched).

    Args:
        fd: A readable descriptor.
        size: Bytes to hash (default: to the end of the file).
        mapped: Hash the page cache in place through ``mmap`` instead of copying it
            out (less memory traffic). Only for a file no one else can truncate
            meanwhile (a cache temporary, mode 0600): a mapping past a shrunk end
            raises SIGBUS. Needs ``size``.

    Returns:
        ``"xxh3_128:<hex>"``.
    """
    h = xxhash.xxh3_128()
    if mapped and size is not None:
        for off in range(0, size, MAP_CHUNK):
            with mmap.mmap(fd, min(MAP_CHUNK, size - off), prot=mmap.PROT_READ,
                           flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           offset=off) as m:
                h.update(m)
        return f"{ALGO}:{h.hexdigest()}"
    off = 0
    while size is None or off < size:
        n = CHUNK if size is None else min(CHUNK, size - off)
        buf = os.pread(fd, n, off)
        if not buf:
            break
        h.update(buf)
        off += len(buf)
    return f"{ALGO}:{h.hexdigest()}"


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
