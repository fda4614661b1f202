"""Directory manifests: what a warm check last saw in one cache directory.

A directory's mtime and ctime change whenever a name in it is created, removed or
renamed: every copy (a rename), every eviction (an unlink) and every hand deletion.
So while a cache directory still has the inode, mtime and ctime recorded with a
manifest, the names listed in the manifest still exist with the recorded size and
mtime, and a warm check need not ``stat`` them: one ``fstat`` of the directory
stands for all of them. Anything else (a changed stamp, a name not listed, a
symlink) is ``stat``-ed as usual.

Timestamps are coarse (a few ms on most kernels), so a manifest is written only
when the directory did not change while it was being checked and its mtime is
more than :data:`SETTLE_NS` old: a change in the same clock tick as the check
cannot then go unnoticed. A copy modified in place (not replaced) is not seen by
the warm check; ``stacktools cache verify`` finds it.

Manifests live in ``root/manifests/`` (writing into the directory itself would
change its mtime), are written atomically and are only ever a cache: deleting them
costs one ``stat`` per file on the next check.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from ..errors import CacheForeignPathError
from .safefs import check_own_dir, open_own

SETTLE_NS = 2_000_000_000
FORMAT = 1


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


class Manifests:
    """The manifests of one cache; ``root`` is the cache root."""

    def __init__(self, root: Path):
        self.dir = root / "manifests"

    def _path(self, cache_dir: str) -> Path:
        return self.dir / (hashlib.sha1(cache_dir.encode("utf-8", "surrogateescape")).hexdigest() + ".json")

    def load(self, cache_dir: str, dir_stat: os.stat_result) -> dict[str, list[int]] | None:
        """Entries ``name -> [size, mtime_ns]`` if the manifest matches the directory now."""
        try:
            with open(self._path(cache_dir), "rb") as fh:
                data = json.loads(fh.read())
        except (FileNotFoundError, ValueError, OSError):
            return None
        if (not isinstance(data, dict) or data.get("format") != FORMAT
                or data.get("dir") != cache_dir or data.get("stamp") != _stamp(dir_stat)):
            return None
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else None

    def save(self, cache_dir: str, dir_fd: int, before: os.stat_result, before_ns: int,
             entries: dict[str, list[int]]) -> bool:
        """Record ``entries`` if the directory is unchanged since ``before``.

        ``before`` is the directory's ``fstat`` taken at wall-clock time ``before_ns``,
        before any entry was stat-ed; the directory must then have been settled
        (unchanged for :data:`SETTLE_NS`), so that a change in the same clock tick
        as that first ``fstat`` cannot hide behind an equal timestamp.
        """
        now = os.fstat(dir_fd)
        if (_stamp(now) != _stamp(before) or before_ns - before.st_mtime_ns < SETTLE_NS
                or before_ns - before.st_ctime_ns < SETTLE_NS):
            return False
        data = json.dumps({"format": FORMAT, "dir": cache_dir, "stamp": _stamp(now),
                           "entries": entries}, separators=(",", ":")).encode()
        final = self._path(cache_dir)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            check_own_dir(self.dir)  # never write through a symlinked manifests/
            fd = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except (OSError, CacheForeignPathError):
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        return True

    def clear(self) -> None:
        """Drop every manifest (they are only a cache of stats)."""
        try:
            check_own_dir(self.dir)  # a symlinked manifests/ is left alone
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, CacheForeignPathError):
            return
        try:
            for name in os.listdir(fd):
                try:
                    if name.endswith((".json", ".tmp")) and stat.S_ISREG(
                            os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
        finally:
            os.close(fd)
