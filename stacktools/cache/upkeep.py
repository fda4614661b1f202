"""The cache's hold on its own directory: what it may create, sweep and report.

The cache removes only what it can prove it made: copies the ledger names with their
inode, and temporaries the ledger named before they were created (see
:mod:`stacktools.cache.index`). Anything else under its root (a symlink at one of its
names, a file someone put there, a temporary-looking name it never made) is left
alone and listed by ``stacktools cache status``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from stacktools.cache.safefs import check_own_dir
from stacktools.formats.atomic import TMP_SUFFIX

if TYPE_CHECKING:  # pragma: no cover
    from stacktools.cache.store import Cache

OWN_DIRS = ("files", "locks", "pins")
OWN_FILES = ("index.db", "index.db-wal", "index.db-shm", "ledger.jsonl", "space.lock")
# Names older versions of the cache made and this one never creates, reads or
# follows: a real directory there is left alone quietly (a symlink is listed).
OLD_NAMES = ("manifests",)
# Kinds of file each of the cache's own directories holds (by name ending).
_DIR_HOLDS = {"locks": (".lock",), "pins": (".pin",)}
MAX_LISTED = 50


def make_root(root: Path, shared: bool) -> None:
    """Create the cache root if missing: private to its user unless ``shared``.

    A shared root is world-writable with the sticky bit (as ``/tmp``), so that users
    cannot remove each other's files. An existing root is left as it is; it must be
    a real directory.
    """
    if not os.path.lexists(root):
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700)
            if shared:
                os.chmod(root, 0o1777)
    check_own_dir(root)


def _has_temp(d: str) -> bool:
    try:
        return any(n.endswith(TMP_SUFFIX) for n in os.listdir(d))
    except OSError:
        return False


def sweep_temps(cache: "Cache", dirs: set[str] | None = None) -> int:
    """Remove crashed copies' temporaries in ``dirs`` (all if ``None``); return how many.

    A temporary goes only if the ledger named it before it was created, it is still
    the same regular file (inode, when the ledger has it), and its entry lock is free
    (its copier is gone). Foreign files with temporary-looking names stay.
    """
    if dirs is not None and not any(_has_temp(d) for d in dirs):
        return 0  # the usual case: nothing to sweep, no need to read the ledger
    n = 0
    for path, (key, ino) in cache.index.ledger.proven_temps(dirs).items():
        d = os.path.dirname(path)
        if os.path.realpath(d) != d:
            continue  # never follow a symlinked directory out of the cache
        lock = cache._lock(key)
        try:
            if not lock.acquire(blocking=False):
                continue
        except OSError:
            continue
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and (ino is None or st.st_ino == ino):
                os.unlink(path)
                n += 1
        except FileNotFoundError:
            pass
        finally:
            lock.release()
    return n


def scan_foreign(cache: "Cache", owned: set[str]) -> tuple[int, list[dict]]:
    """What under the cache root the cache did not make.

    Args:
        cache: The cache.
        owned: Paths of the copies the cache owns.

    Returns:
        ``(bytes of foreign files under files/, [{"path", "what"}])``: symlinks and
        other foreign things at the cache's own names, symlinked directories and
        temporary-looking names the cache never made (at most :data:`MAX_LISTED`).
    """
    items: list[dict] = []

    def note(path: str, what: str) -> None:
        if len(items) < MAX_LISTED:
            items.append({"path": path, "what": what})

    _scan_root(str(cache.root), note)
    return _scan_files(cache, owned, note), items


def _scan_root(root: str, note: Callable[[str, str], None]) -> None:
    """Note what at the cache root (and in its own directories) is not the cache's."""
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            note(p, "symlink (not followed, left alone)")
        elif name in OWN_DIRS:
            if not stat.S_ISDIR(st.st_mode):
                note(p, "not a directory")
            elif name in _DIR_HOLDS:
                _scan_own_dir(p, _DIR_HOLDS[name], note)
        elif name in OWN_FILES:
            if not stat.S_ISREG(st.st_mode):
                note(p, "not a regular file (left alone)")
        elif name in OLD_NAMES and stat.S_ISDIR(st.st_mode):
            continue  # an older version's, unused now
        elif not (name.startswith("index.db.corrupt-")
                  or (name.startswith(".ledger.jsonl.") and name.endswith(TMP_SUFFIX))):
            note(p, "foreign file (left alone)")


def _scan_own_dir(d: str, suffix: str, note: Callable[[str, str], None]) -> None:
    """Note what in ``locks/`` or ``pins/`` is not one of the cache's files."""
    for sub in sorted(os.listdir(d)):
        sp = os.path.join(d, sub)
        try:
            sst = os.lstat(sp)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(sst.st_mode):
            note(sp, "symlink (not followed, left alone)")
        elif not stat.S_ISREG(sst.st_mode) or not sub.endswith(suffix):
            note(sp, "foreign file (left alone)")


def _scan_files(cache: "Cache", owned: set[str], note: Callable[[str, str], None]) -> int:
    """Bytes under ``files/`` that are not the cache's copies; notes symlinked
    directories and temporary-looking names the cache did not make."""
    proven = cache.index.ledger.proven_temps()
    nbytes = 0
    for dp, dnames, names in os.walk(cache.files_dir):
        for dn in dnames:
            if os.path.islink(os.path.join(dp, dn)):
                note(os.path.join(dp, dn), "symlinked directory (not followed, left alone)")
        for name in names:
            p = os.path.join(dp, name)
            if p in owned:
                continue
            if name.endswith(TMP_SUFFIX):
                if p in proven:
                    continue  # a copy in progress, or a crashed one's that clean sweeps
                note(p, "temporary-looking file the cache did not make (left alone)")
            try:
                nbytes += os.lstat(p).st_size
            except OSError:
                pass
    return nbytes


def root_warnings(root: Path) -> list[str]:
    """Warnings about the cache root's permissions on a shared node."""
    st = os.lstat(root)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return [f"{root}: writable by other users without the sticky bit: anyone on this node "
                "can replace or delete the cache's files (chmod o-w or +t)"]
    return []
