"""Copy one file into the cache: temporary name, size check, fsync, atomic rename.

Nothing partial ever appears under a final name: data goes to
``.<name>.<random>.stacktools-tmp`` in the destination directory, which a later
run sweeps if this one crashes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

from ..atomic import FILE_MODE, TMP_SUFFIX, tmp_name_for
from ..errors import CacheError, CacheFullError
from .digest import digest_fd

CHUNK = 8 << 20
READ_ONLY = FILE_MODE & 0o444


class SourceChanged(CacheError):
    """The source changed while it was being copied."""


class Copied(NamedTuple):
    """A copy just renamed into place: its inode and content digest."""

    ino: int
    digest: str


def copy_into(src: str, dest: Path, size: int, mtime_ns: int,
              progress: Callable[[int], None] | None = None) -> Copied:
    """Copy ``src`` to ``dest`` atomically; return the new file's inode and digest.

    Parameters
    ----------
    src
        Source file.
    dest
        Final path in the cache (its directory must exist).
    size, mtime_ns
        The source's figures from the plan; the copy must match them, and gets
        ``mtime_ns`` as its own mtime so that a later check is one ``stat``.
    progress
        Called with the number of bytes written after each chunk.

    The digest is taken by reading the temporary copy back (from the page cache,
    just written) before it is renamed: the kernel copies the data without it
    passing through user space, so there are no bytes to hash on the way.

    Raises :class:`CacheFullError` on ``ENOSPC``/``EDQUOT`` and :class:`SourceChanged`
    if the source's size or mtime differs from the plan's; the temporary file is
    removed on every failure.
    """
    try:
        fd_out, tmp = tempfile.mkstemp(prefix=tmp_name_for(dest), suffix=TMP_SUFFIX, dir=dest.parent)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFullError(f"SSD full: cannot create a file in {dest.parent}: "
                                 f"{os.strerror(err.errno)}") from err
        raise
    ok = False
    try:
        with open(src, "rb", buffering=0) as fin:
            st = os.fstat(fin.fileno())
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                raise SourceChanged(f"{src}: changed since it was planned")
            done = 0
            while done < size:
                try:
                    n = os.copy_file_range(fin.fileno(), fd_out, min(CHUNK, size - done))
                except OSError as err:
                    if err.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        n = os.sendfile(fd_out, fin.fileno(), done, min(CHUNK, size - done))
                    else:
                        raise
                if n == 0:
                    break
                done += n
                if progress is not None:
                    progress(n)
            st2 = os.fstat(fin.fileno())
        if st2.st_size != size or st2.st_mtime_ns != mtime_ns:
            raise SourceChanged(f"{src}: changed while it was being copied")
        if os.fstat(fd_out).st_size != size:
            raise CacheError(f"{dest}: copy has {os.fstat(fd_out).st_size} bytes, source {size}")
        digest = digest_fd(fd_out, size)
        os.fchmod(fd_out, READ_ONLY)
        os.utime(fd_out, ns=(st2.st_atime_ns, mtime_ns))
        os.fdatasync(fd_out)  # data and size; a lost mtime only makes the entry invalid
        ino = os.fstat(fd_out).st_ino
        os.close(fd_out)
        fd_out = -1
        os.replace(tmp, dest)
        ok = True
        return Copied(ino, digest)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFullError(f"SSD full while copying {src} to {dest.parent}: "
                                 f"{os.strerror(err.errno)}") from err
        raise
    finally:
        if fd_out >= 0:
            os.close(fd_out)
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
