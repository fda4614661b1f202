"""Reach the cache's own paths without following symlinks.

Everything the cache creates, writes, truncates, renames or deletes lives under its
root, but anyone who can write there can plant a symlink at one of its names. So
files are opened with ``O_NOFOLLOW`` and checked to be regular files, directories
are checked with ``lstat``, and a symlink or a file of another kind at one of the
cache's names raises :class:`~stacktools.errors.CacheForeignPathError` and is left
alone.
"""

from __future__ import annotations

import errno
import os
import stat

from stacktools.errors import CacheForeignPathError

NAME_MAX = 255


def open_own(path: str | os.PathLike, flags: int, mode: int = 0o644, *, dir_fd: int | None = None) -> int:
    """``os.open`` that never follows a symlink and only opens regular files.

    Args:
        path: The file (relative to ``dir_fd`` if given).
        flags: ``os.O_*`` flags; ``O_NOFOLLOW`` and ``O_CLOEXEC`` are added.
        mode: Permission bits for a file created here.
        dir_fd: Directory descriptor that ``path`` is relative to.

    Returns:
        The open descriptor.

    Raises:
        CacheForeignPathError: ``path`` is a symlink or not a regular file.
        OSError: Any other failure (``ENOENT``, ``ENOSPC``, ...).
    """
    if flags & os.O_CREAT and flags & os.O_EXCL:
        # A name created here is a new regular file: nothing to check (a symlink or
        # anything else already at the name fails with FileExistsError).
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CacheForeignPathError(f"{path}: is a symlink; the cache does not follow it "
                                        "and leaves it alone") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CacheForeignPathError(f"{path}: is not a regular file; the cache leaves it alone")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(path: str | os.PathLike, fd: int) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


def check_own_dir(path: str | os.PathLike) -> None:
    """Raise :class:`CacheForeignPathError` unless ``path`` is a real directory (not a symlink)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise CacheForeignPathError(f"{path}: is {kind}; the cache needs a real directory there "
                                    "and leaves this alone")


def is_disk_full(err: BaseException) -> bool:
    """Whether an ``OSError`` says the device (or quota) is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def fit_name(prefix: str, suffix: str) -> str:
    """``prefix + suffix`` with ``prefix`` cut so that the name fits in NAME_MAX bytes.

    Names are bytes on Linux: the cut is made on the encoded name, so it may split a
    character; surrogate escapes keep the bytes exact.
    """
    raw = prefix.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len(suffix.encode("utf-8", "surrogateescape"))
    return raw[:room].decode("utf-8", "surrogateescape") + suffix
