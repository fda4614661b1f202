"""Plans: what a sync would copy, expire and evict, computed without touching disk.

:func:`plan_stacks` is a pure function of a stack list and an :class:`Inventory`
snapshot. The live :meth:`stacktools.cache.Cache.plan` builds the snapshot from the
SSD and calls it; a snapshot exported on another node (``stacktools cache status
--json --inventory``, :meth:`Inventory.to_dict`) can be planned against the same way,
which is what multi-node placement needs::

    inv = Inventory.from_dict(json.load(open("node7.json")))
    stacks = stat_sources(pset.stack_paths)   # or [SourceFile.from_path(p) for p in ...]
    plan = plan_stacks(stacks, inv)
    plan.bytes_to_copy, plan.fits, [e.key for e in plan.evict]

(:func:`stacktools.cache.plan_for_inventory` does those three lines and can add the
consolidation figures.)

Space rules: the cache's own bytes plus the bytes other live processes have
reserved plus the bytes to copy must stay within the quota, and the device's free
space (``f_bavail``) minus reservations minus the bytes to copy must stay at or
above the reserve. To get there, entries past their lifetime are expired first,
then least-recently-used entries are evicted. Entries in use, entries not owned by
the cache and entries of the set itself are never chosen.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, NamedTuple, Sequence

from stacktools.cache.config import mb_text
from stacktools.errors import CacheFullError, Hint

# Versions of a stack made while a running job reads an older copy live under this
# top-level name in ``files/``, keeping the stack's own file name (RELION goes by
# the extension); no source is ever cached from under it.
VERSIONS = "/.stacktools-versions"


def version_key(key: str, size: int, mtime_ns: int) -> str:
    """The entry key of the copy of source ``key`` at this size and mtime, made beside
    the copy a running job reads (one key per version of the source)."""
    return f"{VERSIONS}/{mtime_ns}-{size}{key}"


def source_of(entry_key: str) -> str:
    """The source path an entry key copies (itself, unless it names a version)."""
    if entry_key.startswith(VERSIONS + "/"):
        return "/" + entry_key[len(VERSIONS) + 1:].partition("/")[2]
    return entry_key


class SourceFile(NamedTuple):
    """One stack a set needs: ``key`` is its resolved absolute path; ``path`` the path
    as the set names it; ``size`` and ``mtime_ns`` from ``stat``.

    A named tuple, because a warm check makes one per stack and must stay cheap.
    """

    key: str
    size: int
    mtime_ns: int
    path: str = ""

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> "SourceFile":
        """Stat ``path`` (following symlinks) and key it by its resolved path."""
        p = os.fspath(path)
        st = os.stat(p)
        return cls(os.path.realpath(p), st.st_size, st.st_mtime_ns, os.path.abspath(p))


@dataclass
class Entry:
    """One cache entry in an inventory.

    ``key`` is the resolved source path; ``size`` and ``mtime_ns`` the source's
    figures at copy time; ``last_access`` a Unix time; ``in_use`` whether a live
    process pins it; ``owned`` whether the cache created it (only owned entries are
    ever evicted); ``project`` the project that first cached it; ``job`` whether a
    running job reads it (it is then never replaced, even if its source changed).
    """

    key: str
    size: int
    mtime_ns: int
    last_access: float
    in_use: bool = False
    owned: bool = True
    project: str = ""
    job: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Inventory:
    """A serialisable snapshot of one node's cache.

    ``quota_bytes`` (``None``: no quota) and ``reserve_bytes`` are the node's
    settings; ``free_bytes`` is the device's ``f_bavail`` space; ``reserved`` maps
    keys that other live processes are copying right now to their bytes;
    ``lifetime_s`` is the entry lifetime; ``taken_at`` the snapshot's Unix time.
    """

    entries: list[Entry]
    quota_bytes: int | None
    reserve_bytes: int
    free_bytes: int
    lifetime_s: float
    taken_at: float = field(default_factory=time.time)
    reserved: dict[str, int] = field(default_factory=dict)
    node: str = ""
    root: str = ""
    total_bytes: int = 0

    @property
    def owned_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.owned)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["owned_bytes"] = self.owned_bytes
        d["format"] = "stacktools-cache-inventory/1"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Inventory":
        """Rebuild a snapshot from :meth:`to_dict` output (extra keys are ignored)."""
        return cls(entries=[Entry(**{k: e[k] for k in Entry.__dataclass_fields__ if k in e})
                            for e in d.get("entries", [])],
                   quota_bytes=d.get("quota_bytes"), reserve_bytes=int(d.get("reserve_bytes", 0)),
                   free_bytes=int(d["free_bytes"]), lifetime_s=float(d.get("lifetime_s", 30 * 86400)),
                   taken_at=float(d.get("taken_at", time.time())),
                   reserved={k: int(v) for k, v in d.get("reserved", {}).items()},
                   node=d.get("node", ""), root=d.get("root", ""),
                   total_bytes=int(d.get("total_bytes", 0)))


@dataclass
class CachePlan:
    """What a sync of a stack list will do.

    ``to_copy`` are the stacks this process will copy (set order); ``cached`` the
    stacks already cached and valid; ``waiting`` the stacks another live process is
    copying right now (this one waits for them); ``from_source`` the stacks left on
    the source (with ``partial``, those that do not fit); ``expire`` and ``evict``
    the entries removed first (expired, then LRU order); ``replace`` the stale
    copies of changed sources that the new copies replace; ``fits`` whether everything
    fits; ``shortfall_bytes`` how much more room the set would need;
    ``held_in_use_bytes`` and ``held_foreign_bytes`` what holds the space that could
    not be freed; ``reserved_bytes`` what other processes' copies in flight have
    reserved; ``limited_by`` is ``"quota"`` or ``"reserve"`` when it does not fit.
    ``consolidated_bytes`` (when known) is what the selected particles alone would
    take once consolidated. ``room_bytes`` is what could be written after expiring
    and evicting everything evictable (within the quota, and the free space less the
    reserve); ``choices`` (when known) are the ways to hold the set
    (:meth:`stacktools.size.SizeReport.choices`), each with whether it ``fits`` in
    :attr:`usable_bytes`.
    """

    to_copy: list[SourceFile]
    cached: list[SourceFile]
    waiting: list[SourceFile]
    from_source: list[SourceFile]
    expire: list[Entry]
    evict: list[Entry]
    fits: bool
    replace: list[Entry] = field(default_factory=list)
    quota_bytes: int | None = None
    reserve_bytes: int = 0
    free_bytes_before: int = 0
    used_bytes_before: int = 0
    shortfall_bytes: int = 0
    held_in_use_bytes: int = 0
    held_foreign_bytes: int = 0
    partial: bool = False
    reserved_bytes: int = 0
    limited_by: str = ""
    consolidated_bytes: int | None = None
    cache_bytes: int | None = None
    room_bytes: int = 0
    choices: list[dict] | None = None
    project: str = ""
    # Stacks whose source changed while a running job reads the old copy: that copy
    # stays, and the new version is copied (or found) beside it.
    kept_for_running_jobs: list[SourceFile] = field(default_factory=list)
    # Source key -> entry key for stacks served from (or copied to) a version
    # beside the primary copy; absent keys use the primary location.
    locations: dict[str, str] = field(default_factory=dict)
    # Owned, unused copies of the set's stacks superseded by a valid version:
    # removed by execute, since nothing will read them again.
    retire: list[Entry] = field(default_factory=list)
    # Whether copies were (and are to be) judged by content, not only size and mtime.
    check_content: bool = False
    # Every stack of the set in order (what execute re-plans with).
    stacks: list[SourceFile] = field(default_factory=list, repr=False, compare=False)
    # Set by Cache.plan when the plan was made while the set was pinned.
    _pin: object = field(default=None, repr=False, compare=False)

    @property
    def bytes_to_copy(self) -> int:
        return sum(s.size for s in self.to_copy)

    @property
    def files_to_copy(self) -> int:
        return len(self.to_copy)

    @property
    def bytes_cached(self) -> int:
        return sum(s.size for s in self.cached)

    @property
    def bytes_freed(self) -> int:
        return sum(e.size for e in self.expire + self.evict + self.replace + self.retire)

    @property
    def usable_bytes(self) -> int:
        """What the set may take on this cache: its copies already there or on their
        way, plus :attr:`room_bytes`."""
        return self.room_bytes + self.bytes_cached + sum(s.size for s in self.waiting)

    def rate_choices(self, choices: list[dict]) -> None:
        """Record ``choices`` (dicts with ``bytes``), each marked with whether it fits
        in :attr:`usable_bytes`."""
        usable = self.usable_bytes
        self.choices = [dict(c, fits=c["bytes"] <= usable) for c in choices]

    def entry_key(self, s: SourceFile) -> str:
        """The entry key where ``s`` is (or will be) cached."""
        return self.locations.get(s.key, s.key)

    @property
    def used_bytes_after(self) -> int:
        return self.used_bytes_before - self.bytes_freed + self.bytes_to_copy

    @property
    def free_bytes_after(self) -> int:
        return self.free_bytes_before + self.bytes_freed - self.bytes_to_copy

    def release(self) -> None:
        """Drop the pin of a plan made with ``pinned=True`` that will not be executed."""
        pin, self._pin = self._pin, None
        if pin is not None:
            pin.close()

    def decisions(self) -> tuple:
        """What the plan does, for comparing two plans of the same set."""
        return (tuple(s.key for s in self.to_copy), tuple(e.key for e in self.expire),
                tuple(e.key for e in self.evict), tuple(s.key for s in self.from_source), self.fits,
                tuple(sorted(self.locations.items())), tuple(e.key for e in self.retire))

    def to_dict(self, files: bool = True) -> dict:
        d = {
            "fits": self.fits, "partial": self.partial,
            "files_to_copy": self.files_to_copy, "bytes_to_copy": self.bytes_to_copy,
            "files_cached": len(self.cached), "bytes_cached": self.bytes_cached,
            "files_waiting": len(self.waiting),
            "files_from_source": len(self.from_source),
            "kept_for_running_jobs": [s.path or s.key for s in self.kept_for_running_jobs],
            "bytes_from_source": sum(s.size for s in self.from_source),
            "expire": [e.to_dict() for e in self.expire],
            "evict": [e.to_dict() for e in self.evict],
            "bytes_expired": sum(e.size for e in self.expire),
            "bytes_evicted": sum(e.size for e in self.evict),
            "replace": [e.key for e in self.replace],
            "retire": [e.key for e in self.retire],
            "versions": {s.path or s.key: self.locations[s.key]
                         for s in self.to_copy + self.cached + self.waiting if s.key in self.locations},
            "quota_bytes": self.quota_bytes, "reserve_bytes": self.reserve_bytes,
            # A plan that will not run has no "after".
            "free_bytes_before": self.free_bytes_before,
            "free_bytes_after": self.free_bytes_after if self.fits else None,
            "used_bytes_before": self.used_bytes_before,
            "used_bytes_after": self.used_bytes_after if self.fits else None,
            "shortfall_bytes": self.shortfall_bytes,
            "held_in_use_bytes": self.held_in_use_bytes,
            "held_foreign_bytes": self.held_foreign_bytes,
            "reserved_by_others_bytes": self.reserved_bytes,
            "limited_by": self.limited_by or None,
            "cache_bytes": self.cache_bytes, "consolidated_bytes": self.consolidated_bytes,
            "saved_by_consolidating_bytes": (None if self.consolidated_bytes is None
                                             or self.cache_bytes is None
                                             else self.cache_bytes - self.consolidated_bytes),
            "room_bytes": self.room_bytes, "usable_bytes": self.usable_bytes, "choices": self.choices,
        }
        if files:
            d["copy"] = [s.path or s.key for s in self.to_copy]
            d["cached"] = [s.path or s.key for s in self.cached]
            d["waiting"] = [s.path or s.key for s in self.waiting]
            d["from_source"] = [s.path or s.key for s in self.from_source]
        return d


def room_bytes(free: int, used: int, quota: int | None, reserve: int) -> int:
    """Bytes that may still be written: the one statement of the space rule.

    The device must keep ``reserve`` of its ``free`` bytes, and the cache's ``used``
    bytes (its entries and everything reserved) must stay within ``quota``.
    """
    r = free - reserve
    return r if quota is None else min(r, quota - used)


def _valid_map(stacks: Sequence[SourceFile], by_key: dict[str, Entry],
               valid: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Source key -> entry key of its valid copy (see ``plan_stacks``' ``valid``)."""
    if isinstance(valid, Mapping):
        return dict(valid)
    if valid is not None:
        return {k: k for k in valid}
    out = {}
    for s in stacks:
        for k in (s.key, version_key(s.key, s.size, s.mtime_ns)):
            e = by_key.get(k)
            if e is not None and e.size == s.size and e.mtime_ns == s.mtime_ns:
                out[s.key] = k
                break
    return out


def _classify(stacks: Sequence[SourceFile], by_key: dict[str, Entry], valid_map: dict[str, str],
              reserved: dict[str, int]) -> tuple[list, list, list, list, dict[str, str], list[Entry]]:
    """Sort a set's distinct stacks: to copy, cached, being copied by another process,
    held by a running job (copied beside it), and where versions live; with the
    superseded copies that no job reads any more."""
    seen: set[str] = set()
    to_copy, cached, waiting, held = [], [], [], []
    locations: dict[str, str] = {}
    retire: list[Entry] = []
    for s in stacks:
        if s.key in seen:
            continue
        seen.add(s.key)
        at = valid_map.get(s.key)
        if at is not None:
            cached.append(s)
            if at != s.key:
                locations[s.key] = at
                e = by_key.get(s.key)
                if e is not None and e.owned and not e.in_use:
                    retire.append(e)  # superseded, and no job reads it any more
            continue
        dest = s.key
        if (e := by_key.get(s.key)) is not None and e.owned and e.job:
            # Its source changed, but a running job reads the old copy: never
            # replace a file under it; the new version goes beside it.
            held.append(s)
            dest = locations[s.key] = version_key(s.key, s.size, s.mtime_ns)
        (waiting if dest in reserved else to_copy).append(s)
    return to_copy, cached, waiting, held, locations, retire


def plan_stacks(stacks: Sequence[SourceFile], inventory: Inventory, *,
                valid: Iterable[str] | Mapping[str, str] | None = None, partial: bool = False,
                now: float | None = None) -> CachePlan:
    """Plan caching ``stacks`` on the node that ``inventory`` describes. Pure.

    Parameters
    ----------
    stacks
        The set's distinct stacks, in the set's order.
    inventory
        The node's snapshot (see :meth:`stacktools.cache.Cache.inventory`).
    valid
        Keys known to be cached and valid (the live cache checks the files), or a
        mapping of such keys to the entry key that holds the valid copy (a version
        beside the primary one, see :func:`version_key`). When ``None``, a stack is
        valid if the inventory has an entry with its key (or its version's key),
        size and ``mtime_ns``.
    partial
        If the whole set cannot fit, plan the stacks that fit, in the set's order,
        and leave the rest on the source, instead of reporting ``fits=False``.
    now
        Unix time for lifetime expiry (default: the snapshot's ``taken_at``).

    A stale copy that a running job reads is never replaced: the new version of
    its stack is copied beside it (``CachePlan.locations``), and once no job reads the
    old copy a later plan retires it (``CachePlan.retire``).
    """
    now = inventory.taken_at if now is None else now
    by_key = {e.key: e for e in inventory.entries}
    to_copy, cached, waiting, held, locations, retire = _classify(
        stacks, by_key, _valid_map(stacks, by_key, valid), inventory.reserved)
    seen = {s.key for s in stacks} | set(locations.values())

    reserved_total = sum(inventory.reserved.values())
    used = inventory.owned_bytes + reserved_total
    free = inventory.free_bytes - reserved_total
    quota = inventory.quota_bytes
    reserve = inventory.reserve_bytes

    def stale_of(files: list[SourceFile]) -> list[Entry]:
        """Owned, unused entries at these stacks' locations that the new copies replace."""
        out = []
        for s in files:
            e = by_key.get(locations.get(s.key, s.key))
            if e is not None and e.owned and not e.in_use:
                out.append(e)
        return out

    def room(freed: int) -> int:
        """Bytes that could still be written after freeing ``freed``."""
        return room_bytes(free + freed, used - freed, quota, reserve)

    retired = {e.key for e in retire}
    evictable = [e for e in inventory.entries
                 if e.owned and not e.in_use and e.key not in seen and e.key not in retired]
    expire = [e for e in evictable if now - e.last_access > inventory.lifetime_s]
    expire.sort(key=lambda e: (e.last_access, e.key))
    expired_keys = {e.key for e in expire}
    lru = sorted((e for e in evictable if e.key not in expired_keys),
                 key=lambda e: (e.last_access, e.key))

    def choose(need: int, base: int) -> list[Entry]:
        freed = base
        out: list[Entry] = []
        for e in lru:
            if room(freed) >= need:
                break
            out.append(e)
            freed += e.size
        return out

    need = sum(s.size for s in to_copy)
    from_source: list[SourceFile] = []
    all_freeable = sum(e.size for e in expire) + sum(e.size for e in lru)
    replace = stale_of(to_copy)
    freed_first = sum(e.size for e in retire)
    all_freeable += freed_first
    max_room = room(all_freeable + sum(e.size for e in replace))
    if not to_copy:
        # Nothing to write: nothing to expire or evict either.
        expire, evict_list, replace, fits = [], [], [], True
    elif need <= max_room:
        evict_list = choose(need, sum(e.size for e in expire + replace) + freed_first)
        fits = True
    elif partial:
        # Stale copies only come back if their stack is kept: count none of them.
        cap = room(all_freeable)
        kept, total = [], 0
        for s in to_copy:
            if total + s.size <= cap:
                kept.append(s)
                total += s.size
            else:
                from_source.append(s)
                locations.pop(s.key, None)
        to_copy = kept
        replace = stale_of(kept)
        if kept:
            evict_list = choose(total, sum(e.size for e in expire + replace) + freed_first)
        else:
            expire, evict_list = [], []
        fits = True
    else:
        evict_list, fits = [], False

    shortfall = 0 if fits else need - max_room
    limited_by = ""
    if not fits:
        freeable = all_freeable + sum(e.size for e in replace)
        free_room = free + freeable - reserve
        limited_by = ("quota" if quota is not None and quota - (used - freeable) <= free_room
                      else "reserve")
    in_use_bytes = sum(e.size for e in inventory.entries if e.owned and e.in_use and e.key not in seen)
    foreign = max(0, inventory.total_bytes - inventory.free_bytes - inventory.owned_bytes) \
        if inventory.total_bytes else sum(e.size for e in inventory.entries if not e.owned)
    return CachePlan(stacks=list(stacks), to_copy=to_copy, cached=cached, waiting=waiting, from_source=from_source,
                expire=expire, evict=evict_list, replace=replace, fits=fits,
                quota_bytes=quota, reserve_bytes=reserve, free_bytes_before=inventory.free_bytes,
                used_bytes_before=inventory.owned_bytes, shortfall_bytes=max(0, shortfall),
                held_in_use_bytes=in_use_bytes, held_foreign_bytes=foreign, partial=partial,
                kept_for_running_jobs=held, locations=locations, retire=retire,
                reserved_bytes=reserved_total, limited_by=limited_by, room_bytes=max(0, max_room))


def full_error(plan: CachePlan) -> CacheFullError:
    """The error for a plan that does not fit: one line saying how much more room the
    set needs and what holds the space."""
    head = (f"set does not fit: needs {mb_text(plan.bytes_to_copy)}, {mb_text(plan.shortfall_bytes)} more "
            "than is left after evicting everything evictable")
    if plan.limited_by == "quota":
        where = (f"quota {mb_text(plan.quota_bytes or 0)}: held by entries in use "
                 f"{mb_text(plan.held_in_use_bytes)}, copies in progress {mb_text(plan.reserved_bytes)}")
    else:
        where = (f"free {mb_text(plan.free_bytes_before)}, reserve {mb_text(plan.reserve_bytes)}: held by "
                 f"entries in use {mb_text(plan.held_in_use_bytes)}, copies in progress "
                 f"{mb_text(plan.reserved_bytes)}, files the cache does not own {mb_text(plan.held_foreign_bytes)}")
    return CacheFullError(f"{head} ({where}); nothing copied",
                          hints=[Hint("partial", " ({} caches what fits)")])

