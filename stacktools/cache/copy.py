"""Copy one file into the cache: temporary name, size check, fsync, atomic rename.

Nothing partial ever appears under a final name: data goes to
``.<name>.<random>.stacktools-tmp`` in the destination directory (the name cut to
fit NAME_MAX), created with ``O_EXCL`` so that it is never a file someone else put
there. ``claim`` records the temporary in the ledger before it is created and the
finished copy (inode and content digest) before it is renamed, so that whatever
instant a kill lands, every file this made is provably the cache's (see
:mod:`stacktools.cache.index`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable, NamedTuple

from stacktools.cache.digest import hash_mapped, hexdigest, new_hasher
from stacktools.cache.safefs import is_disk_full, open_own
from stacktools.errors import CacheError, CacheForeignPathError, CacheFullError
from stacktools.formats.atomic import tmp_name

CHUNK = 2 << 20  # a copied chunk is hashed while it is still in the CPU's cache

Claim = Callable[[str, "int | None", "str | None"], None]


class SourceChanged(CacheError):
    """The source changed while it was being copied."""


class Copied(NamedTuple):
    """A copy just renamed into place: its inode and content digest."""

    ino: int
    digest: str


def copy_mode(src_st: os.stat_result, fd_out: int) -> int:
    """Permission bits for a copy: the source's, minus write (and minus set-id bits).

    The group bits are kept only if the copy could be given the source's group, so
    that no one reads the copy who could not read the source.
    """
    mode = stat.S_IMODE(src_st.st_mode) & 0o555
    if os.fstat(fd_out).st_gid != src_st.st_gid:
        try:
            os.fchown(fd_out, -1, src_st.st_gid)
        except OSError:
            mode &= ~0o050
    return mode


def copy_bytes(fd_in: int, fd_out: int, size: int, progress: Callable[[int], None] | None,
               hasher=None) -> int:
    """Copy ``size`` bytes from ``fd_in`` to ``fd_out``: the one place a copy's bytes move.

    With ``hasher``, each chunk is hashed from ``fd_out``'s page cache right after it
    is written, while it is still in the CPU's cache (see
    :func:`~stacktools.cache.digest.hash_mapped`): the digest is of the copy's bytes.

    Returns the number of bytes copied (less than ``size`` if the source was short).
    """
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


def _create_tmp(dest: Path, claim: Claim | None) -> tuple[str, int]:
    """Claim and create a fresh temporary beside ``dest``; returns (name, descriptor)."""
    for _ in range(8):
        name = tmp_name(dest.name)
        if claim is not None:
            claim(name, None, None)
        try:
            # read-write: the digest is taken by reading the copy back
            return name, open_own(dest.parent / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # someone else's file has this name: never touch it, pick another
    raise CacheError(f"{dest.parent}: cannot create a temporary file (names taken)")


class Pending:
    """A copy whose data is written and hashed under its temporary name, not yet synced
    or renamed (see :func:`start_copy` and :func:`finish_copy`)."""

    __slots__ = ("src", "dest", "name", "fd", "ino", "digest", "claim", "owned_ino")

    def __init__(self, src: str, dest: Path, name: str, fd: int, ino: int, digest: str,
                 claim: Claim | None, owned_ino: int | None):
        self.src, self.dest, self.name, self.fd, self.ino = src, dest, name, fd, ino
        self.digest, self.claim, self.owned_ino = digest, claim, owned_ino

    def discard(self) -> None:
        """Close and remove the temporary (if it is still the one this made)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _remove_tmp(self.dest.parent / self.name, self.ino)


def copy_into(src: str, dest: Path, size: int, mtime_ns: int,
              progress: Callable[[int], None] | None = None, *,
              claim: Claim | None = None, owned_ino: int | None = None) -> Copied:
    """Copy ``src`` to ``dest`` atomically; return the new file's inode and digest.

    Args:
        src: Source file.
        dest: Final path in the cache (its directory must exist).
        size: The source's size from the plan; the copy must match it.
        mtime_ns: The source's mtime from the plan; the copy gets it as its own, so
            that a later check is one ``stat``.
        progress: Called with the number of bytes written after each chunk.
        claim: Called as ``claim(tmp_name, None, None)`` before the temporary is
            created and ``claim(tmp_name, inode, digest)`` before it is renamed to
            ``dest`` (the ledger lines that keep the copy the cache's and record
            its digest).
        owned_ino: Inode of the cache's own file now at ``dest``, if any: only that
            file may be replaced.

    Returns:
        :class:`Copied`: the copy's inode and its content digest. The digest is
        of the temporary copy's own bytes: the kernel copies the data without it
        passing through user space, so each chunk is hashed from the copy's page
        cache (mapped, not read out) right after it is written, before the copy
        is synced and renamed.

    Raises:
        CacheFullError: ``ENOSPC``/``EDQUOT``.
        SourceChanged: The source's size or mtime differs from the plan's.
        CacheForeignPathError: ``dest`` holds a file the cache does not own (it is
            left alone).

    The temporary file is removed on every failure. :func:`start_copy` and
    :func:`finish_copy` are its two halves, for a caller that syncs one copy
    while the next one's data moves.
    """
    return finish_copy(start_copy(src, dest, size, mtime_ns, progress,
                                  claim=claim, owned_ino=owned_ino))


def start_copy(src: str, dest: Path, size: int, mtime_ns: int,
               progress: Callable[[int], None] | None = None, *,
               claim: Claim | None = None, owned_ino: int | None = None) -> Pending:
    """First half of :func:`copy_into`: claim, create, copy, check and hash the temporary.

    Returns the :class:`Pending` copy, still open; pass it to :func:`finish_copy`
    (or call its ``discard``). On failure the temporary is removed.
    """
    tmp = None
    tmp_ino = None
    fd_out = -1
    try:
        name, fd_out = _create_tmp(dest, claim)
        tmp = dest.parent / name
        tmp_ino = os.fstat(fd_out).st_ino
        with open(src, "rb", buffering=0) as fin:
            st = os.fstat(fin.fileno())
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                raise SourceChanged(f"{src}: changed since it was planned")
            h = new_hasher()
            copy_bytes(fin.fileno(), fd_out, size, progress, h)
            st2 = os.fstat(fin.fileno())
        if st2.st_size != size or st2.st_mtime_ns != mtime_ns:
            raise SourceChanged(f"{src}: changed while it was being copied")
        if os.fstat(fd_out).st_size != size:
            raise CacheError(f"{dest}: copy has {os.fstat(fd_out).st_size} bytes, source {size}")
        digest = hexdigest(h)  # of the copy's bytes, hashed as each chunk landed
        os.fchmod(fd_out, copy_mode(st2, fd_out))
        os.utime(fd_out, ns=(st2.st_atime_ns, mtime_ns))
        pending = Pending(src, dest, name, fd_out, tmp_ino, digest, claim, owned_ino)
        fd_out = -1
        return pending
    except OSError as err:
        if is_disk_full(err):
            raise _full(src, dest, err) from err
        raise
    finally:
        if fd_out >= 0:
            os.close(fd_out)
            _remove_tmp(tmp, tmp_ino)


def finish_copy(p: Pending) -> Copied:
    """Second half of :func:`copy_into`: sync the data, record the copy, rename it into place.

    The temporary is removed on failure.
    """
    ok = False
    try:
        os.fdatasync(p.fd)  # data and size; a lost mtime only makes the entry invalid
        os.close(p.fd)
        p.fd = -1
        _check_replaceable(p.dest, p.owned_ino)
        if p.claim is not None:
            p.claim(p.name, p.ino, p.digest)
        os.replace(p.dest.parent / p.name, p.dest)
        ok = True
        return Copied(p.ino, p.digest)
    except OSError as err:
        if is_disk_full(err):
            raise _full(p.src, p.dest, err) from err
        raise
    finally:
        if not ok:
            p.discard()


def _full(src: str, dest: Path, err: OSError) -> CacheFullError:
    return CacheFullError(f"SSD full while copying {src} to {dest.parent}: {os.strerror(err.errno)}")


def _remove_tmp(tmp: Path | None, tmp_ino: int | None) -> None:
    """Remove a temporary this made, only while it is still the same file."""
    if tmp is None or tmp_ino is None:
        return
    try:
        if os.lstat(tmp).st_ino == tmp_ino:
            os.unlink(tmp)
    except FileNotFoundError:
        pass


def _check_replaceable(dest: Path, owned_ino: int | None) -> None:
    """Refuse to rename over anything at ``dest`` but the cache's own file."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) and st.st_ino == owned_ino):
        raise CacheForeignPathError(f"{dest}: holds a file the cache did not make; "
                                    "left alone (remove it to let the cache copy there)")
