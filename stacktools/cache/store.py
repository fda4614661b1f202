"""The SSD particle cache: :class:`Cache`, the one class callers meet, and what a sync returns.

It plans and carries out syncs (pins, space, copies). The rest lives beside it:
:mod:`.sources` (stat-ing sources), :mod:`.validity` (what counts as a valid copy),
:mod:`.plan` (the pure planner), :mod:`.batch` and :mod:`.copy` (copies, durable
once per batch), :mod:`.index` and
:mod:`.upkeep` (the record and the ledger), :mod:`.maintenance` (clean, clear,
evict, verify, status) and :mod:`.cached_set` (a ``.cs`` that points at the copies).

Layout under ``SSD_PATH/stacktools-cache/`` (the cache owns this directory)::

    files/<resolved source path>   the copies; a symlink placed here pre-populates
    locks/entries.lock             entry locks (a byte per entry, OFD record locks)
    pins/<host>-<pid>-<rand>.pin   live processes' pins and reservations (flock)
    space.lock                     serialises making room and reserving space
    index.db                       SQLite record of owned entries (WAL)
    ledger.jsonl                   two lines per copy, both before its rename:
                                   ownership that survives a kill and the loss
                                   of the index, a log of copies and their digests

An entry is keyed by the resolved absolute source path and is valid when the
file at its location (followed if a symlink) has the source's size and
``mtime_ns``; copies get the source's mtime, so a warm check is one ``stat`` of
the source and one of the copy, with no database access per file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from stacktools.cache import maintenance, upkeep
from stacktools.cache.batch import SetCopier
from stacktools.cache.config import CACHE_DIRNAME, CacheConfig, missing_ssd_error, resolve_config
from stacktools.cache.index import Index
from stacktools.cache.locks import ENTRY_LOCKS, EntryLock, FileLock, PinFile, WaitCallback, live_pins
from stacktools.cache.peek import describe_set
from stacktools.cache.plan import (
    CachePlan,
    Entry,
    Inventory,
    SourceFile,
    full_error,
    plan_stacks,
)
from stacktools.cache.safefs import check_own_dir
from stacktools.cache.sources import DIR_FLAGS, no_gc, stat_sources
from stacktools.cache.validity import content_matches, locate_copies
from stacktools.errors import (
    CacheConfigError,
    CacheForeignPathError,
    DiskFullError,
    PathEscapeError,
)
from stacktools.formats.mrc import FLOAT16_MODE, RELION_FLOAT16_WARNING

Progress = Callable[[int], None]


@dataclass
class SyncResult:
    """What :meth:`Cache.execute` / :meth:`Cache.ensure` did.

    ``paths`` maps each stack's absolute source path (as the set names it) to the
    path to read: the cached copy, or the source itself for stacks left on the
    source. ``copied``/``bytes_copied`` count only copies this process made;
    ``reused`` counts stacks found valid (including ones another process copied
    while this one waited). ``copies`` lists the keys this process copied.
    A copy that a running job reads is never replaced under it: if its source has
    changed, the new version is copied beside it, and ``versions`` lists the
    stacks served from such versions; ``retired`` counts old copies removed once
    no job read them. ``from_source`` lists the stacks left on the source.
    When made with ``hold=True`` the entries stay pinned (never evicted) until
    :meth:`release` or the end of a ``with`` block.
    """

    paths: dict[str, str]
    copied: int = 0
    reused: int = 0
    bytes_copied: int = 0
    bytes_reused: int = 0
    evicted: int = 0
    bytes_evicted: int = 0
    expired: int = 0
    bytes_expired: int = 0
    from_source: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    retired: int = 0
    waited: int = 0
    warnings: list[str] = field(default_factory=list)
    replanned: bool = False
    use_cache: bool = True
    plan: CachePlan | None = None
    _pin: PinFile | None = field(default=None, repr=False)

    @property
    def pin_fd(self) -> int | None:
        """The locked descriptor of the pin (``hold=True``), else ``None``.

        The pin lasts while any process holds this descriptor open: pass it to the
        job's process (``subprocess.run(..., pass_fds=[res.pin_fd])``) so that the
        entries stay pinned for as long as the job runs, even if this process dies.
        """
        return None if self._pin is None else self._pin.fd

    def release(self) -> None:
        """Unpin the entries (they become evictable again)."""
        if self._pin is not None:
            self._pin.close()
            self._pin = None

    def __enter__(self) -> "SyncResult":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "copied", "reused", "bytes_copied", "bytes_reused", "evicted", "bytes_evicted",
            "expired", "bytes_expired", "waited", "replanned", "use_cache", "from_source",
            "copies", "versions", "retired", "paths", "warnings")}
        if self.plan is not None:
            d["plan"] = self.plan.to_dict(files=False)
        return d


class Cache:
    """A node-local SSD cache of particle stacks.

    Parameters
    ----------
    ssd_path
        SSD directory (see ``create``); the cache lives in
        ``ssd_path/stacktools-cache``. When
        ``None``, taken from the config file or ``$STACKTOOLS_SSD_PATH``
        (``$CRYOSPARC_SSD_PATH`` as a fallback).
    quota_mb, reserve_mb, lifetime_days, threads
        Override the config file and environment (see :mod:`stacktools.cache.config`).
    config_file
        TOML config file to read instead of the default.
    config
        A ready :class:`CacheConfig` (the other settings are then ignored).
    create
        Create a missing SSD path. With ``False`` a missing path is a
        :class:`~stacktools.errors.CacheConfigError` unless the config sets
        ``create_ssd_path`` (the command line passes ``False`` unless ``--create``).
    """

    def __init__(self, ssd_path: str | os.PathLike | None = None, *, quota_mb: float | None = None,
                 reserve_mb: float | None = None, lifetime_days: float | None = None,
                 threads: int | None = None, config_file: str | os.PathLike | None = None,
                 config: CacheConfig | None = None, create: bool = False):
        self.config = config or resolve_config(ssd_path, quota_mb=quota_mb, reserve_mb=reserve_mb,
                                               lifetime_days=lifetime_days, threads=threads,
                                               config_file=config_file)
        ssd = self.config.ssd_path
        if ssd.exists() and not ssd.is_dir():
            raise CacheConfigError(f"{ssd}: SSD path is not a directory")
        if not ssd.exists() and not (create or self.config.create_ssd_path):
            raise missing_ssd_error(ssd)
        root = ssd / CACHE_DIRNAME
        try:
            # A per-job SSD path ($SLURM_TMPDIR/..., /scratch/$USER/$JOB) may not exist yet.
            ssd.mkdir(parents=True, exist_ok=True)
            upkeep.make_root(root, shared=self.config.shared)
            for sub in upkeep.OWN_DIRS:
                p = root / sub
                if not os.path.lexists(p):
                    with contextlib.suppress(FileExistsError):
                        p.mkdir()
                check_own_dir(p)
        except OSError as err:
            raise CacheConfigError(f"{ssd}: cannot create the cache there: {err.strerror}") from err
        self.root = Path(os.path.realpath(root))
        self.files_dir = self.root / "files"
        self.locks_dir = self.root / "locks"
        self.pins_dir = self.root / "pins"
        self.entry_locks_path = self.locks_dir / ENTRY_LOCKS
        self._files = str(self.files_dir)
        self.index = Index(self.root, self.files_dir)
        self._dest_dirs: set[str] = set()
        self._inodes: dict[str, int] = {}  # key -> recorded inode, from the last inventory

    # -- paths ----------------------------------------------------------------------
    def cached_path(self, key: str) -> str:
        """Where the entry for resolved source path ``key`` lives."""
        return self._files + key

    def _lock(self, key: str) -> EntryLock:
        """The lock of one entry (held while it is copied, evicted or swept)."""
        return EntryLock(self.entry_locks_path, key, self.config.shared)

    def space_lock(self) -> FileLock:
        """The lock that serialises making room; hold it exclusively to plan + reserve."""
        return FileLock(self.root / "space.lock", "the cache's space lock")

    def _check_dest_dir(self, d: str) -> None:
        """Refuse a cache directory reached through a symlink (it could lead outside)."""
        if d in self._dest_dirs:
            return
        real = os.path.realpath(d)
        if real != d:
            raise PathEscapeError(f"{d}: cache directory resolves to {real} through a symlink; "
                                  "only files may be symlinked into the cache")
        self._dest_dirs.add(d)

    def sources(self, paths: Iterable[str | os.PathLike]) -> list[SourceFile]:
        """Stat each source once and key it by its resolved path (see :func:`stat_sources`)."""
        return stat_sources(paths)

    def check(self, stacks: Sequence[SourceFile], content: bool = False) -> set[str]:
        """Keys among ``stacks`` whose cached copy is present and valid (see :meth:`locate`)."""
        return set(self.locate(stacks, content))

    def locate(self, stacks: Sequence[SourceFile], content: bool = False) -> dict[str, str]:
        """Where each of ``stacks`` has a present and valid copy: source key -> entry key.

        Args:
            stacks: Stat-ed sources (see :meth:`sources`).
            content: Also hash each source and compare it with the copy's recorded
                digest (or, for a copy without one, with the copy itself), for
                sources whose mtimes cannot be trusted.

        Returns:
            The valid keys, each mapped to the entry that holds its copy: the key
            itself, or a version made beside a copy that a running job read (see
            :func:`~stacktools.cache.plan.version_key`). Without ``content``: one
            ``stat`` per copy (following a pre-populating symlink), relative to an
            open descriptor of the entry's directory, and no database access; a
            version is looked for only where the primary copy is not valid. Every
            copy is looked at, so one edited in place (size or mtime changed) is
            never served.
        """
        with no_gc():
            found = locate_copies(self._files, stacks, self._open_dest_dir)
        if content and found:
            rows = self.index.get_many(found.values())
            found = {k: at for k, at in found.items() if content_matches(
                k, self.cached_path(at), rows[at]["digest"] if at in rows else "")}
        return found

    def _open_dest_dir(self, d: str) -> int:
        """Descriptor of an entry directory, -1 if missing; refuses symlinked directories."""
        try:
            fd = os.open(d, DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return -1
        try:
            self._check_dest_dir(d)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- inventory --------------------------------------------------------------------
    def _statvfs(self) -> tuple[int, int]:
        v = os.statvfs(self.root)
        return v.f_bavail * v.f_frsize, v.f_blocks * v.f_frsize

    def _inventory_locked(self, own: PinFile | None = None) -> Inventory:
        """Snapshot with the space lock held exclusively; drops rows whose files are gone.

        Entries count as in use when another live process pins them (not ``own``).
        """
        jobs: set[str] = set()
        in_use, reserved = live_pins(self.pins_dir, own.path if own is not None else None, jobs)
        try:
            self.index.absorb_ledger()
            self.index.fold_access(time.time() - 2 * self.config.lifetime_s - 86400)
            rows = self.index.all()
        except DiskFullError:
            rows = self.index.ledger_rows()  # the index cannot be written: the ledger tells
        gone = []
        entries = []
        inodes = self._inodes = {}
        for r in rows:
            try:
                st = os.lstat(self.cached_path(r["key"]))
            except OSError:
                gone.append(r["key"])
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_ino != r["ino"]:
                gone.append(r["key"])  # replaced by hand: no longer ours
                continue
            entries.append(Entry(r["key"], r["size"], r["mtime_ns"], r["last_access"],
                                 in_use=r["key"] in in_use, owned=True, project=r["project"],
                                 job=r["key"] in jobs))
            inodes[r["key"]] = r["ino"]
        self._forget(gone)
        have = {e.key for e in entries}
        free, total = self._statvfs()
        return Inventory(entries=entries, quota_bytes=self.config.quota_bytes,
                         reserve_bytes=self.config.reserve_bytes, free_bytes=free,
                         lifetime_s=self.config.lifetime_s, taken_at=time.time(),
                         reserved={k: v for k, v in reserved.items() if k not in have},
                         node=socket.gethostname(), root=str(self.root), total_bytes=total)

    def inventory(self) -> Inventory:
        """A serialisable snapshot of this cache (see :class:`Inventory`).

        Entries carry source path, size, ``mtime_ns``, last access and whether a
        live process uses them; the snapshot also has quota, reserve and free bytes.
        ``Inventory.to_dict()`` is what ``stacktools cache status --json --inventory``
        prints, and :func:`stacktools.cache.plan_stacks` plans against it.
        """
        lock = self.space_lock()
        lock.acquire()
        try:
            return self._inventory_locked()
        finally:
            lock.release()

    # -- pins -----------------------------------------------------------------------
    def pin(self, keys: Iterable[str]) -> PinFile:
        """Pin entries so that no evictor removes them until ``PinFile.close()``."""
        lock = self.space_lock()
        lock.acquire(shared=True)
        try:
            return PinFile(self.pins_dir, keys)
        finally:
            lock.release()

    def _pin_more(self, pin: PinFile, keys: Iterable[str]) -> None:
        """Add entry keys (versions the set is served from) to a live pin."""
        lock = self.space_lock()
        lock.acquire(shared=True)
        try:
            pin.add(keys)
            pin.write()
        finally:
            lock.release()

    # -- plan -----------------------------------------------------------------------
    def plan(self, pset, *, partial: bool = False, consolidation: bool = False,
             pinned: bool = False, check_content: bool = False) -> CachePlan:
        """Plan caching a particle set (or a list of stack paths); copy nothing.

        Parameters
        ----------
        pset
            A :class:`~stacktools.particles.ParticleSet` or a sequence of stack paths.
        partial
            Plan what fits, in the set's order, when the whole set does not.
        consolidation
            Also fill ``cache_bytes``/``consolidated_bytes`` from the stacks' headers
            (what consolidating first would save).
        pinned
            Pin the set before checking it, so that :meth:`execute` can trust the
            check without stat-ing again; the pin is released by ``execute`` (or by
            ``plan.release()`` if the plan is dropped).
        check_content
            Hash the sources and count a copy valid only if its content matches
            (see :meth:`check`); :meth:`execute` then checks the same way.
        """
        paths = pset.stack_paths if hasattr(pset, "stack_paths") else list(pset)
        stacks = self.sources(paths)
        pin = self.pin([s.key for s in stacks]) if pinned else None
        try:
            valid = self.locate(stacks, content=check_content)
            at_home = all(k == at for k, at in valid.items())
            if at_home and (len(valid) == len(stacks) or len(valid) == len({s.key for s in stacks})):
                # Warm: nothing to copy, so nothing to expire or evict either.
                free, total = self._statvfs()
                cached = stacks if len(valid) == len(stacks) else list({s.key: s for s in stacks}.values())
                plan = CachePlan(stacks=stacks, to_copy=[], cached=cached, waiting=[], from_source=[],
                            expire=[], evict=[], fits=True, quota_bytes=self.config.quota_bytes,
                            reserve_bytes=self.config.reserve_bytes, free_bytes_before=free,
                            used_bytes_before=self.index.run(lambda c: c.execute(
                                "SELECT COALESCE(SUM(size),0) FROM entries").fetchone()[0]),
                            partial=partial)
            else:
                lock = self.space_lock()
                lock.acquire()
                try:
                    inv = self._inventory_locked(pin)
                finally:
                    lock.release()
                plan = plan_stacks(stacks, inv, valid=valid, partial=partial)
                if pin is not None and plan.locations:
                    self._pin_more(pin, plan.locations.values())
        except BaseException:
            if pin is not None:
                pin.close()
            raise
        plan._pin = pin
        plan.check_content = check_content
        return describe_set(plan, pset, consolidation)

    # -- execute --------------------------------------------------------------------
    def execute(self, plan: CachePlan, *, hold: bool = False, progress: Progress | None = None,
                on_wait: WaitCallback | None = None, project: str | os.PathLike | None = None,
                threads: int | None = None) -> SyncResult:
        """Carry out ``plan``: expire, evict, copy; return the source → cached mapping.

        The plan is re-checked against the cache under the space lock; if the cache
        changed since it was made (another process copied or evicted), the fresh
        plan for the same stacks is executed instead and ``replanned`` is set.

        Parameters
        ----------
        plan
            From :meth:`plan`.
        hold
            Keep the set pinned after returning (release with ``result.release()``
            or a ``with`` block), so that nothing evicts it while a job reads it.
        progress
            Called with byte counts as copies advance (from several threads).
        on_wait
            Called with a one-line message when this process waits on a lock.
        project
            Project directory recorded with new entries (default: the plan's).
        threads
            Copy threads (default: the configured number).
        """
        stacks: list[SourceFile] = getattr(plan, "stacks", None) or (
            plan.cached + plan.to_copy + plan.waiting + plan.from_source)
        pin, plan._pin = plan._pin, None
        fresh_pin = pin is None
        if fresh_pin:
            pin = self.pin([s.key for s in stacks])
        project = os.path.realpath(project) if project else plan.project
        result = SyncResult(paths={}, plan=plan)
        try:
            todo: list[SourceFile] = []
            if fresh_pin or plan.to_copy or plan.waiting or plan.retire:
                lock = self.space_lock()
                lock.acquire(on_wait=on_wait)
                try:
                    if fresh_pin:
                        stacks = self.sources([s.path or s.key for s in stacks])
                    plan = self._replan_locked(plan, stacks, pin, fresh_pin, result)
                    self._make_room_locked(plan, pin, result)
                finally:
                    lock.release()
                todo = plan.to_copy + plan.waiting
            self._copy_all(todo, pin, result, progress, on_wait, project, threads, plan.check_content,
                           plan.locations)
            files, at = self._files, plan.locations
            result.paths = {s.path: files + at.get(s.key, s.key) for s in stacks}
            result.versions = {s.path: files + at[s.key] for s in stacks if s.key in at}
            for s in plan.from_source:
                result.paths[s.path] = s.path
                result.from_source.append(s.path)
            result.reused = len(plan.cached) + (len(todo) - result.copied)
            copied_keys = set(result.copies)
            result.bytes_reused = sum(s.size for s in plan.cached) + sum(
                s.size for s in todo if s.key not in copied_keys)
            import hashlib
            self.index.touch_set(hashlib.sha1(pin.blob).hexdigest(), pin.keys, time.time())
            if pin.reserved or hold:
                lock = self.space_lock()
                lock.acquire(shared=True)
                try:
                    pin.reserved, pin.job = {}, hold
                    pin.write()
                finally:
                    lock.release()
        except BaseException:
            pin.close()
            raise
        if hold:
            result._pin = pin
        else:
            pin.close()
        return result

    def _replan_locked(self, plan: CachePlan, stacks: list[SourceFile], pin: PinFile,
                       fresh_pin: bool, result: SyncResult) -> CachePlan:
        """The plan to carry out, checked against the cache as it is now (space lock
        held): ``plan`` itself, or a fresh one for the same stacks if the cache changed."""
        if fresh_pin:
            valid = self.locate(stacks, content=plan.check_content)
        else:
            valid = {s.key: plan.entry_key(s) for s in plan.cached}
        inv = self._inventory_locked(pin)
        new = plan_stacks(stacks, inv, valid=valid, partial=plan.partial)
        if new.decisions() != plan.decisions():
            new.stacks = stacks
            new.cache_bytes, new.consolidated_bytes = plan.cache_bytes, plan.consolidated_bytes
            new.project, new.check_content = plan.project, plan.check_content
            plan, result.replanned, result.plan = new, True, new
        if not plan.fits:
            raise full_error(plan)
        return plan

    def _make_room_locked(self, plan: CachePlan, pin: PinFile, result: SyncResult) -> None:
        """Sweep crashed copies' temporaries, expire, evict and retire as planned, and
        reserve the bytes to copy in the pin (space lock held)."""
        self._sweep_temps({os.path.dirname(self.cached_path(s.key)) for s in plan.to_copy})
        for e in plan.expire:
            if self._remove_entry(e.key, self._inodes.get(e.key)):
                result.expired += 1
                result.bytes_expired += e.size
        for e in plan.evict:
            if self._remove_entry(e.key, self._inodes.get(e.key)):
                result.evicted += 1
                result.bytes_evicted += e.size
        for e in plan.retire:
            if self._remove_entry(e.key, self._inodes.get(e.key)):
                result.retired += 1
        pin.add(plan.locations.values())
        pin.reserved = {plan.entry_key(s): s.size for s in plan.to_copy}
        pin.write()

    def ensure(self, pset, *, partial: bool = False, hold: bool = False,
               progress: Progress | None = None, on_wait: WaitCallback | None = None,
               threads: int | None = None, check_content: bool = False) -> SyncResult:
        """Make every stack of ``pset`` present and valid in the cache: plan, then execute.

        Parameters
        ----------
        pset
            A :class:`~stacktools.particles.ParticleSet` or a sequence of stack paths.
        partial
            When the set does not fit, cache what fits and leave the rest on the source.
        hold
            Keep the entries pinned after returning; use the result as a context manager.
        progress, on_wait, threads
            See :meth:`execute`.
        check_content
            Hash the sources before serving copies (see :meth:`check`).

        Raises :class:`~stacktools.errors.CacheFullError` (copying nothing) when the set
        cannot fit even after evicting everything evictable.
        """
        plan = self.plan(pset, partial=partial, pinned=True, check_content=check_content)
        return self.execute(plan, hold=hold, progress=progress, on_wait=on_wait, threads=threads)

    def _copy_all(self, todo: list[SourceFile], pin: PinFile, result: SyncResult,
                  progress: Progress | None, on_wait: WaitCallback | None, project: str,
                  threads: int | None, content: bool = False,
                  locations: dict[str, str] | None = None) -> None:
        """Copy ``todo`` in batches, durable once per batch (see :mod:`.batch`)."""
        if todo:
            SetCopier(self, pin, result, progress=progress, on_wait=on_wait, project=project,
                      threads=threads or self.config.threads, content=content,
                      locations=locations or {}).run(todo)

    def _make_room_for(self, s: SourceFile, pin: PinFile, on_wait: WaitCallback | None,
                       entry_key: str) -> None:
        """Reserve room for one stack that was not reserved up front."""
        lock = self.space_lock()
        lock.acquire(on_wait=on_wait)
        try:
            inv = self._inventory_locked(pin)
            p = plan_stacks([s], inv, valid=())
            if not p.fits:
                raise full_error(p)
            for e in p.expire + p.evict:
                self._remove_entry(e.key)
            pin.reserved[entry_key] = s.size
            pin.write()
        finally:
            lock.release()

    # -- removal --------------------------------------------------------------------
    def _remove_entry(self, key: str, ino: int | None = None,
                      gone: list[str] | None = None) -> bool:
        """Unlink one owned entry if no one holds its lock; never follows a symlink.

        ``ino`` is the recorded inode (looked up if not given); with ``gone`` the
        index row is left for the caller to remove in one batch. Returns whether the
        entry is gone.
        """
        lock = self._lock(key)
        try:
            if not lock.acquire(blocking=False):
                return False
        except CacheForeignPathError:
            return False  # a symlink planted at its lock file: leave the entry alone
        try:
            if ino is None:
                row = self.index.get_many([key]).get(key)
                if row is None:
                    return True
                ino = row["ino"]
            p = self.cached_path(key)
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            # A directory on the way swapped for a symlink could lead outside the
            # cache: then the file is not ours to touch, only the row goes.
            if st is not None and os.path.realpath(os.path.dirname(p)) != os.path.dirname(p):
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_ino == ino:
                os.unlink(p)
                self._prune_dirs(os.path.dirname(p))
            if gone is None:
                self._forget([key])
            else:
                gone.append(key)
            return True
        finally:
            lock.release(unlink=True)

    def _prune_dirs(self, d: str) -> None:
        while d.startswith(self._files + "/"):
            try:
                os.rmdir(d)
            except OSError:
                return
            self._dest_dirs.discard(d)
            d = os.path.dirname(d)

    def _sweep_temps(self, dirs: Iterable[str] | None = None) -> int:
        """Remove temporary files of crashed copies: only those the ledger proves are
        the cache's, and whose entry lock is free (see :func:`upkeep.sweep_temps`)."""
        return upkeep.sweep_temps(self, None if dirs is None else set(dirs))

    def _forget(self, keys: list[str]) -> None:
        """Drop index rows of removed entries; on a full SSD leave them (the next
        inventory drops rows whose files are gone)."""
        with contextlib.suppress(DiskFullError):
            self.index.remove(keys)

    # -- upkeep: see stacktools.cache.maintenance -------------------------------------
    def clean(self) -> maintenance.Removal:
        """Expire entries past their lifetime (not in use) and sweep crashed copies' temps."""
        return maintenance.clean(self)

    def clear(self) -> maintenance.Removal:
        """Remove every entry the cache owns that is not in use. Foreign files stay."""
        return maintenance.clear(self)

    def evict(self, keys: Iterable[str] | None = None, nbytes: int | None = None,
              paths: Iterable[str | os.PathLike] | None = None) -> maintenance.Removal:
        """Evict entries not in use: by key, by source path, or at least ``nbytes`` by LRU
        (see :func:`stacktools.cache.maintenance.evict`)."""
        return maintenance.evict(self, keys=keys, nbytes=nbytes, paths=paths)

    def verify(self, fix: bool = False, content: bool = False) -> maintenance.Verification:
        """Re-check owned entries against their sources and recorded digests
        (see :func:`stacktools.cache.maintenance.verify`)."""
        return maintenance.verify(self, fix=fix, content=content)

    def status(self) -> maintenance.Status:
        """Usage against quota and reserve, entries, oldest/newest and bytes per project."""
        return maintenance.status(self)




def sync_particles(pset, open_cache: Callable[[], Cache], *, use_cache: bool | None = None,
                   partial: bool = False, hold: bool = False, check_content: bool = False,
                   progress_for: Callable[[int], Progress | None] | None = None,
                   on_wait: WaitCallback | None = None,
                   write_cs: str | os.PathLike | None = None,
                   write_star: str | os.PathLike | None = None) -> SyncResult:
    """Sync a particle set as ``stacktools cache sync`` does, the project's default included.

    Args:
        pset: A :class:`~stacktools.particles.ParticleSet`.
        open_cache: Opens the cache; not called when the project does not use it.
        use_cache: Override the project's default (``stacktools cache default``);
            ``None`` follows it. A set that does not use the cache reads its sources.
        partial: Cache what fits, in the set's order; read the rest from the source.
        hold: Keep the set pinned after returning (pass ``result.pin_fd`` to the job).
        check_content: Hash the sources before serving copies.
        progress_for: Called with the bytes to copy once they are known; returns the
            progress callback for the copies (a progress bar's ``advance``).
        on_wait: Called with one line when this process waits on a lock.
        write_cs: Also write a ``.cs`` whose ``blob/path`` points at what to read.
        write_star: For a set read from a STAR: also write that STAR with every
            ``rlnImageName`` pointing at what to read (absolute paths; see
            :func:`~stacktools.cache.cached_set.write_cached_star`).

    Returns:
        :class:`SyncResult`.

    Raises:
        CacheFullError: The set does not fit even after evicting everything evictable
            (nothing is copied); the errors of :class:`Cache` and of the set's stacks.
    """
    from stacktools.cache.cached_set import write_cached_cs, write_cached_star
    from stacktools.cache.config import use_cache_for
    from stacktools.cache.sources import named_path

    if not use_cache_for(pset.project_dir, use_cache):
        paths = {named_path(p): named_path(p) for p in pset.stack_paths}
        result = SyncResult(paths=paths, use_cache=False, from_source=sorted(paths))
    else:
        cache = open_cache()
        plan = cache.plan(pset, partial=partial, pinned=True, check_content=check_content)
        if not plan.fits:
            plan.release()
            raise full_error(plan)
        progress = progress_for(plan.bytes_to_copy) if progress_for is not None else None
        result = cache.execute(plan, hold=hold, progress=progress, on_wait=on_wait)
    try:
        if write_cs is not None:
            write_cached_cs(pset, result.paths, write_cs)
        if write_star is not None:
            write_cached_star(pset, result.paths, write_star)
            if any(h.mode == FLOAT16_MODE for h in pset.stack_headers()):
                result.warnings.append(RELION_FLOAT16_WARNING)
    except BaseException:
        result.release()
        raise
    return result
