"""The stacks a set needs, stat-ed once each: the one place sources are looked at.

A source is keyed by its resolved absolute path, the key of its cache entry. The
stat loop is the hot path of a warm check (one per stack), so it works relative to
open directory descriptors and allocates one tuple per stack.
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
from typing import Iterable

from stacktools.cache.plan import SourceFile
from stacktools.errors import CacheError, MissingStackError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", 0)


@contextlib.contextmanager
def no_gc():
    """Pause the cyclic GC during a tight loop that allocates one tuple per stack:
    otherwise its collections, which grow with the heap, cost more than the stats."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def stat_sources(paths: Iterable[str | os.PathLike]) -> list[SourceFile]:
    """Stat each source stack once and key it by its resolved path.

    Parameters
    ----------
    paths
        Stack paths as a set names them (relative paths are taken from the
        current directory).

    One ``lstat`` per stack, made relative to an open descriptor of its directory
    (so the kernel walks each directory path once, not once per file); directories
    are resolved once each, and only a source that is itself a symlink is resolved
    on its own. Raises :class:`~stacktools.errors.MissingStackError` for a missing
    stack. Needs no cache: use it to plan against another node's inventory.
    """
    with no_gc():
        return _stat_sources(paths)


def _stat_sources(paths: Iterable[str | os.PathLike]) -> list[SourceFile]:
    out = []
    append = out.append
    new = tuple.__new__  # SourceFile without the Python-level __new__: this loop is hot
    dirs: dict[str, tuple[str, int]] = {}
    stat_, S_ISLNK, S_ISREG = os.stat, stat.S_ISLNK, stat.S_ISREG
    try:
        for p in paths:
            raw = p if isinstance(p, str) else os.fspath(p)
            if raw[:1] != "/" or "/." in raw or "//" in raw:
                raw = named_path(raw)
            d, _, name = raw.rpartition("/")
            got = dirs.get(d)
            if got is None:
                got = dirs[d] = _open_src_dir(d, raw)
            try:
                st = stat_(name, dir_fd=got[1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                raise MissingStackError(f"{raw}: source stack not found") from None
            if S_ISLNK(st.st_mode):
                key = os.path.realpath(raw)
                try:
                    st = stat_(raw)
                except FileNotFoundError:
                    raise MissingStackError(f"{raw}: source stack is a broken symlink") from None
            else:
                key = got[0] + name
            if not S_ISREG(st.st_mode):
                raise CacheError(f"{raw}: source is not a regular file")
            append(new(SourceFile, (key, st.st_size, st.st_mtime_ns, raw)))
    finally:
        for _, fd in dirs.values():
            os.close(fd)
    return out


def _open_src_dir(d: str, raw: str) -> tuple[str, int]:
    try:
        fd = os.open(d or "/", DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingStackError(f"{raw}: source stack not found") from None
    return os.path.realpath(d or "/").rstrip("/") + "/", fd


def named_path(p: str | os.PathLike) -> str:
    """A source path as the set names it, made absolute: the key of ``SyncResult.paths``.

    ``.`` and doubled slashes are removed; ``..`` is left alone, because removing it
    by text would be wrong after a symlinked directory.
    """
    raw = os.fspath(p)
    if raw[:1] != "/":
        raw = os.path.join(os.getcwd(), raw)
    if "/.." in raw.replace("/...", ""):
        return raw
    return os.path.normpath(raw)

