"""Upkeep of a cache: clean, clear, evict, verify and status, each with a typed result.

Every removal goes through :meth:`Cache._remove_entry` with the space lock held, so
nothing in use, nothing the cache did not make and nothing behind a symlink is ever
removed. On a full SSD the index cannot be written: these then work from the ledger
and the files themselves, and still free space.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from stacktools.cache import upkeep
from stacktools.cache.locks import FileLock, is_entry_lock_name
from stacktools.cache.plan import Entry, source_of
from stacktools.cache.sources import named_path
from stacktools.cache.validity import entry_problem
from stacktools.errors import CacheForeignPathError, DiskFullError

if TYPE_CHECKING:
    from stacktools.cache.store import Cache


class _Result:
    """A typed result that also reads as the dict ``--json`` prints (``r["removed"]``)."""

    def __getitem__(self, key: str):
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Removal(_Result):
    """What a clean, clear or evict removed, and what it left because a job uses it."""

    removed: int = 0
    bytes_removed: int = 0
    skipped_in_use: int = 0
    temps_swept: int = 0


@dataclass
class Verification(_Result):
    """``problems`` holds ``{"source", "cached", "problem", "removed"}`` per bad entry."""

    checked: int = 0
    ok: int = 0
    problems: list[dict] = field(default_factory=list)


@dataclass
class Status(_Result):
    """Usage against quota and reserve, entries, and what lies in the cache directory."""

    root: str
    ssd_path: str
    entries: int
    bytes: int
    in_use: int
    bytes_in_use: int
    quota_bytes: int | None
    reserve_bytes: int
    free_bytes: int
    device_bytes: int
    reserved_bytes: int
    foreign_bytes_in_cache_dir: int
    foreign_paths: list[str]
    warnings: list[str]
    lifetime_days: float
    threads: int
    expired: int
    oldest: dict | None
    newest: dict | None
    bytes_per_project: dict[str, int]
    config_sources: dict[str, str]


def remove_where(cache: Cache, pick: Callable[[Entry], bool]) -> Removal:
    """Remove the owned entries ``pick`` chooses, least recently used first.

    Args:
        cache: The cache.
        pick: Called once per entry, in LRU order; entries in use are counted as
            skipped, never removed.

    Returns:
        :class:`Removal`.
    """
    lock = cache.space_lock()
    lock.acquire()
    try:
        out = Removal(temps_swept=cache._sweep_temps())
        inv = cache._inventory_locked()
        gone: list[str] = []
        inodes = cache._inodes
        try:
            for e in sorted(inv.entries, key=lambda e: e.last_access):
                if not pick(e):
                    continue
                if e.in_use or not cache._remove_entry(e.key, inodes.get(e.key), gone):
                    out.skipped_in_use += 1
                    continue
                out.removed += 1
                out.bytes_removed += e.size
        finally:
            cache._forget(gone)
        cache.index.compact_ledger()
        return out
    finally:
        lock.release()


def clean(cache: Cache) -> Removal:
    """Expire entries past their lifetime (not in use) and sweep crashed copies' temps."""
    now = time.time()
    life = cache.config.lifetime_s
    return remove_where(cache, lambda e: now - e.last_access > life)


def clear(cache: Cache) -> Removal:
    """Remove every entry the cache owns that is not in use, and the free lock files
    older versions made per entry. Foreign files stay."""
    out = remove_where(cache, lambda e: True)
    for name in os.listdir(cache.locks_dir):
        if not name.endswith(".lock") or is_entry_lock_name(name):
            continue  # entry lock files stay: live record locks may be held on them
        lk = FileLock(cache.locks_dir / name)
        with contextlib.suppress(CacheForeignPathError, FileNotFoundError):
            if lk.acquire(blocking=False):
                lk.release(unlink=True)
    return out


def evict(cache: Cache, keys: Iterable[str] | None = None, nbytes: int | None = None,
          paths: Iterable[str | os.PathLike] | None = None) -> Removal:
    """Evict entries not in use: by key, by source path, or at least ``nbytes`` by LRU.

    Args:
        cache: The cache.
        keys: Resolved source paths (entry keys); a source's versions go with it.
        nbytes: Free at least this many bytes, least recently used first.
        paths: Source paths as a set names them; they need not exist any more.

    Returns:
        :class:`Removal`.
    """
    if paths is not None:
        keys = [os.path.realpath(named_path(p)) for p in paths]
    if keys is not None:
        wanted = set(keys)
        return remove_where(cache, lambda e: e.key in wanted or source_of(e.key) in wanted)
    budget = [nbytes or 0]

    def pick(e: Entry) -> bool:
        if budget[0] <= 0:
            return False
        if not e.in_use:
            budget[0] -= e.size
        return True
    return remove_where(cache, pick)


def verify(cache: Cache, fix: bool = False, content: bool = False) -> Verification:
    """Re-check owned entries against their sources and their recorded digests.

    Args:
        cache: The cache.
        fix: Remove entries whose source changed or vanished, or whose copy is damaged.
        content: Also read each source and compare it with the copy's recorded digest
            (without it only the copies are read).

    Returns:
        :class:`Verification`.
    """
    inv = cache.inventory()
    try:
        rows = cache.index.get_many(e.key for e in inv.entries)
    except DiskFullError:  # no index can be made on a full SSD: the ledger has the digests
        rows = {r["key"]: r for r in cache.index.ledger_rows()}
    digests = {k: r["digest"] for k, r in rows.items()}
    out = Verification(checked=len(inv.entries))
    for e in inv.entries:
        cp = cache.cached_path(e.key)
        try:
            why = entry_problem(e, cp, digests.get(e.key, ""), content)
        except FileNotFoundError:
            continue  # copy deleted meanwhile: nothing to check
        if why:
            removed = fix and not e.in_use and cache._remove_entry(e.key)
            out.problems.append({"source": source_of(e.key), "cached": cp, "problem": why,
                                 "removed": bool(removed)})
    out.ok = out.checked - len(out.problems)
    return out


def status(cache: Cache) -> Status:
    """Usage against quota and reserve, entries, oldest/newest and bytes per project,
    and the foreign files and permission warnings of the cache directory."""
    inv = cache.inventory()
    per_project: dict[str, int] = {}
    for e in inv.entries:
        per_project[e.project or "(unknown)"] = per_project.get(e.project or "(unknown)", 0) + e.size
    by_access = sorted(inv.entries, key=lambda e: e.last_access)
    foreign, foreign_paths = upkeep.scan_foreign(cache, {cache.cached_path(e.key) for e in inv.entries})
    return Status(
        root=str(cache.root), ssd_path=str(cache.config.ssd_path),
        entries=len(inv.entries), bytes=inv.owned_bytes,
        in_use=sum(e.in_use for e in inv.entries),
        bytes_in_use=sum(e.size for e in inv.entries if e.in_use),
        quota_bytes=inv.quota_bytes, reserve_bytes=inv.reserve_bytes,
        free_bytes=inv.free_bytes, device_bytes=inv.total_bytes,
        reserved_bytes=sum(inv.reserved.values()),
        foreign_bytes_in_cache_dir=foreign, foreign_paths=foreign_paths,
        warnings=upkeep.root_warnings(cache.root),
        lifetime_days=cache.config.lifetime_days, threads=cache.config.threads,
        expired=sum(inv.taken_at - e.last_access > inv.lifetime_s for e in inv.entries),
        oldest=_entry_brief(by_access[0]) if by_access else None,
        newest=_entry_brief(by_access[-1]) if by_access else None,
        bytes_per_project=per_project,
        config_sources=dict(cache.config.sources or {}),
    )


def _entry_brief(e: Entry) -> dict:
    return {"source": source_of(e.key), "bytes": e.size, "last_access": e.last_access,
            "last_access_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.last_access))}
