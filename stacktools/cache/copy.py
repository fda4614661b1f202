"""Write one stack's copy under a temporary name, and later rename it into place.

Nothing partial ever appears under a final name: data goes to
``.<name>.<random>.stacktools-tmp`` in the destination directory (the name cut to
fit NAME_MAX), created with ``O_EXCL`` so that it is never a file someone else put
there, and checked against the source's planned size and mtime. The caller claims
the temporary in the ledger before it is created, makes its data durable, records
it and only then calls :func:`rename_into_place` (see :mod:`stacktools.cache.batch`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import Callable, NamedTuple

from stacktools.cache.digest import hash_mapped, hexdigest, new_hasher
from stacktools.cache.safefs import open_own
from stacktools.errors import CacheError, CacheForeignPathError

CHUNK = 2 << 20  # a copied chunk is hashed while it is still in the CPU's cache
# Up to this size a copy is read into memory, hashed and written in one go: fewer
# system calls than copy_file_range and a mapped read-back.
SMALL = 256 << 10

# From this size a copy's write-back is started as soon as it is written, so that
# the disk works while the next copies are made and the batch's sync waits less.
EARLY_WRITEBACK = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2

Progress = Callable[[int], None]


@functools.lru_cache(maxsize=1)
def libc() -> "ctypes.CDLL | None":
    """The C library, for the system calls ``os`` lacks (``syncfs``, ``sync_file_range``)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def start_writeback(fd: int) -> None:
    """Start writing ``fd``'s dirty pages to the disk without waiting (a hint: errors
    are left for the batch's sync to report)."""
    fn = getattr(libc(), "sync_file_range", None)
    if fn is not None:
        fn(ctypes.c_int(fd), ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


class SourceChanged(CacheError):
    """The source changed while it was being copied."""


class Written(NamedTuple):
    """A temporary copy with all its data written (not yet durable): inode and digest."""

    ino: int
    digest: str


def copy_mode(src_st: os.stat_result, fd_out: int, out_gid: int | None = None) -> int:
    """Permission bits for a copy: the source's, minus write (and minus set-id bits).

    The group bits are kept only if the copy could be given the source's group, so
    that no one reads the copy who could not read the source. ``out_gid`` is the
    copy's group if already known (else it is looked up).
    """
    mode = stat.S_IMODE(src_st.st_mode) & 0o555
    if out_gid is None:
        out_gid = os.fstat(fd_out).st_gid
    if out_gid != src_st.st_gid:
        try:
            os.fchown(fd_out, -1, src_st.st_gid)
        except OSError:
            mode &= ~0o050
    return mode


def copy_bytes(fd_in: int, fd_out: int, size: int, progress: Progress | None,
               hasher=None) -> int:
    """Copy ``size`` bytes from ``fd_in`` to ``fd_out``: the one place a copy's bytes move.

    With ``hasher``, each chunk is hashed from ``fd_out``'s page cache right after it
    is written, while it is still in the CPU's cache (see
    :func:`~stacktools.cache.digest.hash_mapped`): the digest is of the copy's bytes.
    A copy of at most :data:`SMALL` bytes is read whole, hashed and written.

    Returns the number of bytes copied (less than ``size`` if the source was short).
    """
    if size <= SMALL:
        buf = os.read(fd_in, size)
        if hasher is not None:
            hasher.update(buf)
        done = os.write(fd_out, buf) if buf else 0
        if done != len(buf):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if progress is not None and done:
            progress(done)
        return done
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(fd_in, fd_out, min(CHUNK, size - done))
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                n = os.sendfile(fd_out, fd_in, done, min(CHUNK, size - done))
            else:
                raise
        if n == 0:
            break
        if hasher is not None:
            hash_mapped(hasher, fd_out, done, done + n)
        done += n
        if progress is not None:
            progress(n)
    return done


def write_temp(src: str, tmp: str, size: int, mtime_ns: int,
               progress: Progress | None = None) -> Written:
    """Copy ``src`` to the new temporary ``tmp`` (already claimed in the ledger).

    Args:
        src: Source file.
        tmp: Temporary path beside the final name; created here with ``O_EXCL``.
        size: The source's size from the plan; the copy must match it.
        mtime_ns: The source's mtime from the plan; the copy gets it as its own, so
            that a later check is one ``stat``.
        progress: Called with the number of bytes written after each chunk.

    Returns:
        :class:`Written`: the temporary's inode and the digest of its bytes (hashed
        as each chunk landed). Its data is not yet durable.

    Raises:
        FileExistsError: Something already has the name ``tmp`` (it is left alone).
        FileNotFoundError: The destination directory is gone.
        SourceChanged: The source's size or mtime differs from the plan's.
        OSError: ``ENOSPC`` and the like; the temporary is then removed.
    """
    fd_out = open_own(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    ino = None
    try:
        out = os.fstat(fd_out)
        ino = out.st_ino
        fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd_in)
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                raise SourceChanged(f"{src}: changed since it was planned")
            h = new_hasher()
            n = copy_bytes(fd_in, fd_out, size, progress, h)
            st2 = os.fstat(fd_in)
        finally:
            os.close(fd_in)
        if st2.st_size != size or st2.st_mtime_ns != mtime_ns:
            raise SourceChanged(f"{src}: changed while it was being copied")
        if n != size:
            raise CacheError(f"{tmp}: copy has {n} bytes, source {size}")
        os.fchmod(fd_out, copy_mode(st2, fd_out, out.st_gid))
        os.utime(fd_out, ns=(st2.st_atime_ns, mtime_ns))
        if size >= EARLY_WRITEBACK:
            start_writeback(fd_out)
    except BaseException:
        os.close(fd_out)
        remove_temp(tmp, ino)
        raise
    os.close(fd_out)
    return Written(ino, hexdigest(h))


def rename_into_place(tmp: str, dest: str, owned_ino: Callable[[], int | None]) -> None:
    """Rename a durable, recorded temporary to ``dest``.

    Only the cache's own file may be replaced: if something is at ``dest``, its
    inode must be ``owned_ino()`` (asked only then).

    Raises:
        CacheForeignPathError: ``dest`` holds a file the cache did not make (left alone).
        FileNotFoundError: The temporary (or its directory) was removed by hand.
    """
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISREG(st.st_mode) and st.st_ino == owned_ino()):
        raise CacheForeignPathError(f"{dest}: holds a file the cache did not make; "
                                    "left alone (remove it to let the cache copy there)")
    os.replace(tmp, dest)


def remove_temp(tmp: str, ino: int | None) -> None:
    """Remove a temporary this made, only while it is still the same file."""
    if ino is None:
        return
    try:
        if os.lstat(tmp).st_ino == ino:
            os.unlink(tmp)
    except FileNotFoundError:
        pass
