"""What counts as a valid copy: the warm check, and the deeper checks of ``verify``.

A copy is valid while its size and ``mtime_ns`` are the source's (copies get the
source's mtime), looked at with one ``stat`` of each copy on every warm check, so a
copy edited in place is never served; its content digest, recorded when it was made,
is compared by ``cache verify`` and by ``--check-content``.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Sequence

from stacktools.cache.digest import digest_file
from stacktools.cache.plan import VERSIONS, Entry, SourceFile, source_of, version_key


def check_copies(files: str, stacks: Sequence[SourceFile],
                 open_dir: Callable[[str], int]) -> set[str]:
    """Keys of ``stacks`` whose copy under ``files`` has the source's size and mtime.

    Args:
        files: The cache's ``files`` directory (no trailing slash).
        stacks: Stat-ed sources (see :func:`stat_sources`).
        open_dir: Returns a descriptor of an entry directory, or -1 if it is missing.

    Returns:
        The valid keys. Reads only: nothing is created or written.
    """
    valid = set()
    add = valid.add
    dirs: dict[str, int] = {}
    stat_, S_ISREG, S_ISLNK = os.stat, stat.S_ISREG, stat.S_ISLNK
    try:
        for s in stacks:
            d, _, name = s.key.rpartition("/")
            fd = dirs.get(d)
            if fd is None:
                fd = dirs[d] = open_dir(files + d)
            if fd < 0:
                continue  # no such directory in the cache
            try:
                st = stat_(name, dir_fd=fd, follow_symlinks=False)
                if S_ISLNK(st.st_mode):
                    st = stat_(name, dir_fd=fd)  # pre-populated: judge the target
            except (FileNotFoundError, NotADirectoryError):
                continue
            if st.st_size == s.size and st.st_mtime_ns == s.mtime_ns and S_ISREG(st.st_mode):
                add(s.key)
    finally:
        for fd in dirs.values():
            if fd >= 0:
                os.close(fd)
    return valid


def locate_copies(files: str, stacks: Sequence[SourceFile],
                  open_dir: Callable[[str], int]) -> dict[str, str]:
    """Source key -> entry key of the valid copy of each of ``stacks`` that has one.

    The primary copy is looked at first; a version beside it (see
    :func:`~stacktools.cache.plan.version_key`) only where the primary is not
    valid. Arguments as :func:`check_copies`; reads only.
    """
    found = {k: k for k in check_copies(files, stacks, open_dir)}
    # Each version has a directory of its own: look only if any version exists.
    if len(found) < len(stacks) and os.path.lexists(files + VERSIONS):
        others = [s._replace(key=version_key(s.key, s.size, s.mtime_ns))
                  for s in stacks if s.key not in found]
        for k in check_copies(files, others, open_dir):
            found[source_of(k)] = k
    return found


def entry_problem(e: Entry, copy: str, digest: str, content: bool) -> str | None:
    """Why an owned entry is not a faithful copy of its source, or ``None``.

    The copy is read and compared with its recorded digest, so a copy damaged in
    place is found even if its size and mtime were restored; with ``content`` the
    source is read too. Raises ``FileNotFoundError`` if the copy is gone.
    """
    src = source_of(e.key)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return "source missing"
    if st.st_size != e.size or st.st_mtime_ns != e.mtime_ns:
        return "source changed"
    cst = os.stat(copy)
    if cst.st_size != e.size or cst.st_mtime_ns != e.mtime_ns:
        return "copy damaged (size or mtime)"
    if digest:
        if digest_file(copy) != digest:
            return "copy damaged (content differs from its digest)"
        if content and digest_file(src) != digest:
            return "source changed (content differs, same size and mtime)"
    elif content and digest_file(copy) != digest_file(src):
        return "copy differs from source"
    return None


def content_matches(key: str, copy: str, digest: str) -> bool:
    """Whether the source ``key`` has the content recorded for (or found in) its copy."""
    try:
        return digest_file(key) == (digest or digest_file(copy))
    except FileNotFoundError:
        return False

