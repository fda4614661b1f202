"""The SSD particle cache: :class:`Cache` and what it returns.

Layout under ``SSD_PATH/stacktools-cache/`` (the cache owns this directory)::

    files/<resolved source path>   the copies; a symlink placed here pre-populates
    locks/<sha1 of key>.lock       entry locks (flock)
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
import errno
import gc
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..atomic import TMP_SUFFIX, fsync_dir
from ..errors import (CacheConfigError, CacheError, CacheForeignPathError, CacheFullError, DiskFullError,
                      MissingStackError, PathEscapeError)
from .config import CacheConfig, resolve_config
from .copy import Pending, SourceChanged, finish_copy, start_copy
from .digest import digest_file
from .index import Index
from .locks import FileLock, PinFile, WaitCallback, key_hash, live_pins
from .plan import Entry, Inventory, Plan, SourceFile, plan_stacks
from .safefs import check_own_dir
from . import upkeep

CACHE_DIRNAME = "stacktools-cache"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", 0)
MB = 1_000_000
Progress = Callable[[int], None]


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic GC during a tight loop that allocates one tuple per stack:
    otherwise its collections, which grow with the heap, cost more than the stats."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB"


@dataclass
class SyncResult:
    """What :meth:`Cache.execute` / :meth:`Cache.ensure` did.

    ``paths`` maps each stack's absolute source path (as the set names it) to the
    path to read: the cached copy, or the source itself for stacks left on the
    source. ``copied``/``bytes_copied`` count only copies this process made;
    ``reused`` counts stacks found valid (including ones another process copied
    while this one waited). ``copies`` lists the keys this process copied.
    ``from_source`` includes stacks whose source changed while a running job
    reads the old copy: that copy is never replaced under the job.
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
    waited: int = 0
    replanned: bool = False
    use_cache: bool = True
    plan: Plan | None = None
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
            "copies", "paths")}
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
                 config: CacheConfig | None = None, create: bool = True):
        self.config = config or resolve_config(ssd_path, quota_mb=quota_mb, reserve_mb=reserve_mb,
                                               lifetime_days=lifetime_days, threads=threads,
                                               config_file=config_file)
        ssd = self.config.ssd_path
        if ssd.exists() and not ssd.is_dir():
            raise CacheConfigError(f"{ssd}: SSD path is not a directory")
        if not ssd.exists() and not (create or self.config.create_ssd_path):
            raise CacheConfigError(missing_ssd_message(ssd))
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
        self._files = str(self.files_dir)
        self.index = Index(self.root, self.files_dir)
        self._dest_dirs: set[str] = set()
        self._inodes: dict[str, int] = {}  # key -> recorded inode, from the last inventory

    # -- paths ----------------------------------------------------------------------
    def cached_path(self, key: str) -> str:
        """Where the entry for resolved source path ``key`` lives."""
        return self._files + key

    def _lock(self, key: str, what: str = "") -> FileLock:
        return FileLock(self.locks_dir / f"{key_hash(key)}.lock", what or f"{key} (being copied)")

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
        """Keys among ``stacks`` whose cached entry is present and valid.

        Args:
            stacks: Stat-ed sources (see :meth:`sources`).
            content: Also hash each source and compare it with the copy's recorded
                digest (or, for a copy without one, with the copy itself), for
                sources whose mtimes cannot be trusted.

        Returns:
            The valid keys. Without ``content``: one ``stat`` per copy (following a
            pre-populating symlink), relative to an open descriptor of the entry's
            directory, and no database access. Every copy is looked at, so one
            edited in place (size or mtime changed) is never served.
        """
        with _no_gc():
            valid = check_copies(self._files, stacks, self._open_dest_dir)
        if content and valid:
            rows = self.index.get_many(valid)
            valid = {k for k in valid if _content_matches(
                k, self.cached_path(k), rows[k]["digest"] if k in rows else "")}
        return valid

    def _open_dest_dir(self, d: str) -> int:
        """Descriptor of an entry directory, -1 if missing; refuses symlinked directories."""
        try:
            fd = os.open(d, _DIR_FLAGS)
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

    def _absorb_ledger(self) -> None:
        """Record copies whose process died between its rename and its index write.

        The offset kept in the index stops at the first copy still under its
        temporary name (in progress, or left by a kill until swept), so that its
        rename, if it comes, is absorbed by a later call.
        """
        row = self.index.run(lambda c: c.execute("SELECT v FROM meta WHERE k='ledger_offset'").fetchone())
        offset = int(row[0]) if row else 0
        try:
            if os.lstat(self.index.ledger_path).st_size <= offset:
                return
        except FileNotFoundError:
            return
        recs, stop, end = [], None, offset
        for rec, pos in self.index.ledger_lines(offset):
            if rec.get("op", "copy") == "copy":
                state = self.index.claim_state(rec)
                if state == "final":
                    recs.append(rec)
                elif state == "tmp" and stop is None:
                    stop = end
            end = pos
        have = self.index.get_many(r["key"] for r in recs)
        new = {}
        for r in recs:
            k = r["key"]
            if k not in have or have[k]["ino"] != r["ino"]:
                t = r.get("t", time.time())
                new[k] = {"key": k, "size": r["size"], "mtime_ns": r.get("mtime_ns", 0),
                          "ino": r["ino"], "created": t, "last_access": t,
                          "owner": r.get("owner", ""), "project": r.get("project", ""),
                          "digest": r.get("digest", "")}
        if new:
            self.index.record(list(new.values()))
        self.index.set_meta("ledger_offset", str(end if stop is None else stop))

    def _inventory_locked(self, own: PinFile | None = None) -> Inventory:
        """Snapshot with the space lock held exclusively; drops rows whose files are gone.

        Entries count as in use when another live process pins them (not ``own``).
        """
        jobs: set[str] = set()
        in_use, reserved = live_pins(self.pins_dir, own.path if own is not None else None, jobs)
        try:
            self._absorb_ledger()
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

    # -- plan -----------------------------------------------------------------------
    def plan(self, pset, *, partial: bool = False, consolidation: bool = False,
             pinned: bool = False, check_content: bool = False) -> Plan:
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
            valid = self.check(stacks, content=check_content)
            if len(valid) == len(stacks) or len(valid) == len({s.key for s in stacks}):
                # Warm: nothing to copy, so nothing to expire or evict either.
                free, total = self._statvfs()
                cached = stacks if len(valid) == len(stacks) else list({s.key: s for s in stacks}.values())
                plan = Plan(stacks=stacks, to_copy=[], cached=cached, waiting=[], from_source=[],
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
        except BaseException:
            if pin is not None:
                pin.close()
            raise
        plan._pin = pin
        plan.check_content = check_content
        return _describe_set(plan, pset, consolidation)

    # -- execute --------------------------------------------------------------------
    def execute(self, plan: Plan, *, hold: bool = False, progress: Progress | None = None,
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
            if fresh_pin or plan.to_copy or plan.waiting:
                lock = self.space_lock()
                lock.acquire(on_wait=on_wait)
                try:
                    if fresh_pin:
                        stacks = self.sources([s.path or s.key for s in stacks])
                        valid = self.check(stacks, content=plan.check_content)
                    else:
                        valid = {s.key for s in plan.cached}
                    if plan.to_copy or plan.waiting or fresh_pin:
                        inv = self._inventory_locked(pin)
                        new = plan_stacks(stacks, inv, valid=valid, partial=plan.partial)
                        if new.decisions() != plan.decisions():
                            new.stacks = stacks
                            new.cache_bytes, new.consolidated_bytes = plan.cache_bytes, plan.consolidated_bytes
                            new.project, new.check_content = plan.project, plan.check_content
                            plan, result.replanned, result.plan = new, True, new
                    if not plan.fits:
                        raise CacheFullError(full_message(plan))
                    self._sweep_temps({os.path.dirname(self.cached_path(s.key)) for s in plan.to_copy})
                    for e in plan.expire:
                        if self._remove_entry(e.key, self._inodes.get(e.key)):
                            result.expired += 1
                            result.bytes_expired += e.size
                    for e in plan.evict:
                        if self._remove_entry(e.key, self._inodes.get(e.key)):
                            result.evicted += 1
                            result.bytes_evicted += e.size
                    pin.reserved = {s.key: s.size for s in plan.to_copy}
                    pin.write()
                finally:
                    lock.release()
                todo = plan.to_copy + plan.waiting
            self._copy_all(todo, pin, result, progress, on_wait, project, threads, plan.check_content)
            files = self._files
            result.paths = {s.path: files + s.key for s in stacks}
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
                  threads: int | None, content: bool = False) -> None:
        if not todo:
            return
        mutex = threading.Lock()
        records: list[dict] = []
        dirs: set[str] = set()
        owner = f"{socket.gethostname()}:{os.getpid()}"

        n = max(1, threads or self.config.threads)
        # Each copy's fdatasync and rename run on a finishing thread, so that the next
        # copy's data moves while earlier ones reach the disk, and their journal commits
        # and device flushes are shared. At most `window` copies wait there, each holding
        # its entry lock until it is renamed into place.
        finishers = min(2 * n, 8)
        window = threading.BoundedSemaphore(2 * finishers)
        failed: list[BaseException] = []

        def done(s: SourceFile, lock: FileLock, waited: bool, rec: dict, dest: Path,
                 pending: Pending) -> None:
            try:
                try:
                    made = finish_copy(pending)
                except FileNotFoundError:
                    # Directory removed by hand under us: copy again, from the start.
                    self._dest_dirs.discard(str(dest.parent))
                    made = finish_copy(start(s, dest, rec))
                rec["ino"] = made.ino
                rec["digest"] = made.digest
                with mutex:
                    records.append(rec)
                    dirs.add(str(dest.parent))
                    result.copied += 1
                    result.bytes_copied += s.size
                    result.copies.append(s.key)
            except BaseException as err:
                with mutex:
                    failed.append(err)
                raise
            finally:
                with mutex:
                    result.waited += waited
                lock.release()
                window.release()

        def start(s: SourceFile, dest: Path, rec: dict) -> Pending:
            claim = upkeep.ledger_claim(self.index, rec)
            owned_ino = self.index.owner_ino(s.key) if os.path.lexists(dest) else None
            for attempt in range(3):
                try:
                    if str(dest.parent) not in self._dest_dirs:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        self._check_dest_dir(str(dest.parent))
                    return start_copy(s.key, dest, s.size, s.mtime_ns, progress,
                                      claim=claim, owned_ino=owned_ino)
                except FileNotFoundError:
                    # Directory removed by hand under us: make it again.
                    self._dest_dirs.discard(str(dest.parent))
                    if attempt == 2:
                        raise
                except SourceChanged as err:
                    raise CacheError(str(err)) from None
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise CacheFullError(f"SSD full while caching {s.path}: "
                                             f"{os.strerror(err.errno)}") from err
                    raise
            raise AssertionError("unreachable")

        def one(s: SourceFile, finisher: ThreadPoolExecutor, finishing: list) -> None:
            if failed:
                return  # a copy failed: start no more
            lock = self._lock(s.key, "stacks being copied by another process")
            waited = [False]

            def told(msg: str) -> None:
                waited[0] = True
                if on_wait is not None:
                    on_wait(msg)
            lock.acquire(on_wait=told)
            handed = False
            try:
                if self.check([s], content=content):
                    return  # another process copied it while we waited
                if s.key not in pin.reserved:
                    self._make_room_for(s, pin, on_wait)
                dest = Path(self.cached_path(s.key))
                now = time.time()
                rec = {"key": s.key, "size": s.size, "mtime_ns": s.mtime_ns, "ino": None,
                       "created": now, "last_access": now, "owner": owner, "project": project,
                       "digest": ""}
                pending = start(s, dest, rec)
                window.acquire()
                try:
                    fut = finisher.submit(done, s, lock, waited[0], rec, dest, pending)
                except BaseException:
                    window.release()
                    pending.discard()
                    raise
                handed = True
                with mutex:
                    finishing.append(fut)
            except BaseException as err:
                with mutex:
                    failed.append(err)
                raise
            finally:
                if not handed:
                    with mutex:
                        result.waited += waited[0]
                    lock.release()

        finishing: list = []
        try:
            with self.index.ledger_kept_open(), \
                    ThreadPoolExecutor(finishers, thread_name_prefix="cache-finish") as finisher:
                try:
                    if n == 1 or len(todo) == 1:
                        for s in todo:
                            one(s, finisher, finishing)
                    else:
                        with ThreadPoolExecutor(n) as pool:
                            for f in [pool.submit(one, s, finisher, finishing) for s in todo]:
                                f.result()
                finally:
                    for f in list(finishing):
                        f.exception()  # wait for every handed-over copy (its lock, its temporary)
            for f in finishing:
                f.result()
        finally:
            for d in dirs:
                fsync_dir(Path(d))
            if records:
                # On a full SSD the ledger already holds these: the next inventory absorbs them.
                with contextlib.suppress(DiskFullError):
                    self.index.record(records)

    def _make_room_for(self, s: SourceFile, pin: PinFile, on_wait: WaitCallback | None) -> None:
        """Reserve room for one stack that was not reserved up front."""
        lock = self.space_lock()
        lock.acquire(on_wait=on_wait)
        try:
            inv = self._inventory_locked(pin)
            p = plan_stacks([s], inv, valid=())
            if not p.fits:
                raise CacheFullError(full_message(p))
            for e in p.expire + p.evict:
                self._remove_entry(e.key)
            pin.reserved[s.key] = s.size
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

    def _remove_where(self, pick: Callable[[Entry], bool]) -> dict:
        lock = self.space_lock()
        lock.acquire()
        try:
            temps = self._sweep_temps()
            inv = self._inventory_locked()
            removed = skipped = nbytes = 0
            gone: list[str] = []
            inodes = self._inodes
            try:
                for e in sorted(inv.entries, key=lambda e: e.last_access):
                    if not pick(e):
                        continue
                    if e.in_use or not self._remove_entry(e.key, inodes.get(e.key), gone):
                        skipped += 1
                        continue
                    removed += 1
                    nbytes += e.size
            finally:
                self._forget(gone)
            self.index.compact_ledger()
            return {"removed": removed, "bytes_removed": nbytes, "skipped_in_use": skipped,
                    "temps_swept": temps}
        finally:
            lock.release()

    def _forget(self, keys: list[str]) -> None:
        """Drop index rows of removed entries; on a full SSD leave them (the next
        inventory drops rows whose files are gone)."""
        with contextlib.suppress(DiskFullError):
            self.index.remove(keys)

    def _compact_ledger(self, min_bytes: int = 4 << 20) -> None:
        """Rewrite the ledger once it has grown large (see :meth:`Index.compact_ledger`)."""
        self.index.compact_ledger(min_bytes)

    def clean(self) -> dict:
        """Expire entries past their lifetime (not in use) and sweep crashed copies' temps."""
        now = time.time()
        life = self.config.lifetime_s
        return self._remove_where(lambda e: now - e.last_access > life)

    def clear(self) -> dict:
        """Remove every entry the cache owns that is not in use. Foreign files stay."""
        out = self._remove_where(lambda e: True)
        for name in os.listdir(self.locks_dir):
            if not name.endswith(".lock"):
                continue
            lk = FileLock(self.locks_dir / name)
            with contextlib.suppress(CacheForeignPathError, FileNotFoundError):
                if lk.acquire(blocking=False):
                    lk.release(unlink=True)
        return out

    def evict(self, keys: Iterable[str] | None = None, nbytes: int | None = None,
              paths: Iterable[str | os.PathLike] | None = None) -> dict:
        """Evict entries not in use: by key, by source path, or at least ``nbytes`` by LRU.

        Parameters
        ----------
        keys
            Resolved source paths (entry keys).
        nbytes
            Free at least this many bytes, least recently used first.
        paths
            Source paths as a set names them; they need not exist any more.
        """
        if paths is not None:
            keys = [os.path.realpath(named_path(p)) for p in paths]
        if keys is not None:
            wanted = set(keys)
            return self._remove_where(lambda e: e.key in wanted)
        budget = [nbytes or 0]

        def pick(e: Entry) -> bool:
            if budget[0] <= 0:
                return False
            if not e.in_use:
                budget[0] -= e.size
            return True
        return self._remove_where(pick)

    def verify(self, fix: bool = False, content: bool = False) -> dict:
        """Re-check owned entries against their sources and their recorded digests.

        Args:
            fix: Remove entries whose source changed or vanished, or whose copy is damaged.
            content: Also read each source and compare it with the copy's recorded
                digest (without it only the copies are read).

        Returns:
            ``{"checked", "ok", "problems": [{"source", "cached", "problem", "removed"}]}``.
        """
        inv = self.inventory()
        try:
            rows = self.index.get_many(e.key for e in inv.entries)
        except DiskFullError:  # no index can be made on a full SSD: the ledger has the digests
            rows = {r["key"]: r for r in self.index.ledger_rows()}
        digests = {k: r["digest"] for k, r in rows.items()}
        problems = []
        for e in inv.entries:
            cp = self.cached_path(e.key)
            try:
                why = _entry_problem(e, cp, digests.get(e.key, ""), content)
            except FileNotFoundError:
                continue  # copy deleted meanwhile: nothing to check
            if why:
                removed = fix and not e.in_use and self._remove_entry(e.key)
                problems.append({"source": e.key, "cached": cp, "problem": why, "removed": bool(removed)})
        return {"checked": len(inv.entries), "ok": len(inv.entries) - len(problems),
                "problems": problems}

    def status(self) -> dict:
        """Usage against quota and reserve, entries, oldest/newest and bytes per project."""
        inv = self.inventory()
        per_project: dict[str, int] = {}
        for e in inv.entries:
            per_project[e.project or "(unknown)"] = per_project.get(e.project or "(unknown)", 0) + e.size
        by_access = sorted(inv.entries, key=lambda e: e.last_access)
        foreign, foreign_paths = upkeep.scan_foreign(
            self, {self.cached_path(e.key) for e in inv.entries})
        return {
            "root": str(self.root), "ssd_path": str(self.config.ssd_path),
            "entries": len(inv.entries), "bytes": inv.owned_bytes,
            "in_use": sum(e.in_use for e in inv.entries),
            "bytes_in_use": sum(e.size for e in inv.entries if e.in_use),
            "quota_bytes": inv.quota_bytes, "reserve_bytes": inv.reserve_bytes,
            "free_bytes": inv.free_bytes, "device_bytes": inv.total_bytes,
            "reserved_bytes": sum(inv.reserved.values()),
            "foreign_bytes_in_cache_dir": foreign,
            "foreign_paths": foreign_paths,
            "warnings": upkeep.root_warnings(self.root),
            "lifetime_days": self.config.lifetime_days, "threads": self.config.threads,
            "expired": sum(inv.taken_at - e.last_access > inv.lifetime_s for e in inv.entries),
            "oldest": _entry_brief(by_access[0]) if by_access else None,
            "newest": _entry_brief(by_access[-1]) if by_access else None,
            "bytes_per_project": per_project,
            "config_sources": dict(self.config.sources or {}),
        }


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


def _entry_problem(e: Entry, copy: str, digest: str, content: bool) -> str | None:
    """Why an owned entry is not a faithful copy of its source, or ``None``.

    The copy is read and compared with its recorded digest, so a copy damaged in
    place is found even if its size and mtime were restored; with ``content`` the
    source is read too. Raises ``FileNotFoundError`` if the copy is gone.
    """
    try:
        st = os.stat(e.key)
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
        if content and digest_file(e.key) != digest:
            return "source changed (content differs, same size and mtime)"
    elif content and digest_file(copy) != digest_file(e.key):
        return "copy differs from source"
    return None


def _content_matches(key: str, copy: str, digest: str) -> bool:
    """Whether the source ``key`` has the content recorded for (or found in) its copy."""
    try:
        return digest_file(key) == (digest or digest_file(copy))
    except FileNotFoundError:
        return False


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
    with _no_gc():
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
        fd = os.open(d or "/", _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingStackError(f"{raw}: source stack not found") from None
    return os.path.realpath(d or "/").rstrip("/") + "/", fd


def plan_for_inventory(pset, inventory: Inventory | dict, *, partial: bool = False,
                       consolidation: bool = False, now: float | None = None) -> Plan:
    """Plan caching a set on the node an inventory snapshot describes. Copies nothing.

    Parameters
    ----------
    pset
        A :class:`~stacktools.particles.ParticleSet` or a sequence of stack paths;
        its sources are stat-ed here (they must be visible from this machine).
    inventory
        An :class:`Inventory`, or the dict from ``Inventory.to_dict()`` /
        ``stacktools cache status --json --inventory`` (its ``inventory`` member).
    partial
        Plan what fits, in the set's order, when the whole set does not.
    consolidation
        Fill ``cache_bytes``/``consolidated_bytes`` from the stacks' headers.
    now
        Time for lifetime expiry (default: the snapshot's time).

    Entries count as cached and valid when the snapshot has the source's key, size
    and mtime; :meth:`Cache.plan` is the same planner with validity checked on disk.
    """
    inv = inventory if isinstance(inventory, Inventory) else Inventory.from_dict(inventory)
    paths = pset.stack_paths if hasattr(pset, "stack_paths") else list(pset)
    plan = plan_stacks(stat_sources(paths), inv, partial=partial, now=now)
    return _describe_set(plan, pset, consolidation)


def _describe_set(plan: Plan, pset, consolidation: bool) -> Plan:
    """Record the set's project on ``plan`` and, if asked, what consolidating would save."""
    project = getattr(pset, "project_dir", None)
    plan.project = os.path.realpath(project) if project else ""
    if consolidation and hasattr(pset, "stack_paths"):
        from ..size import size_particles
        rep = size_particles(pset, validate=False)
        plan.cache_bytes, plan.consolidated_bytes = rep.cache_bytes, rep.consolidated_bytes
    return plan


def _entry_brief(e: Entry) -> dict:
    return {"source": e.key, "bytes": e.size, "last_access": e.last_access,
            "last_access_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.last_access))}


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


def stacks_as_paths(stacks: Sequence[SourceFile]) -> list[str]:
    return [s.path or s.key for s in stacks]


def missing_ssd_message(ssd: Path) -> str:
    return (f"{ssd}: SSD path does not exist (a typo or an unmounted disk?); give --create "
            "or set create_ssd_path = true in the config to create it")


def full_message(plan: Plan) -> str:
    """One line: how much more room the set needs and what holds the space."""
    head = (f"set does not fit: needs {_mb(plan.bytes_to_copy)}, {_mb(plan.shortfall_bytes)} more "
            "than is left after evicting everything evictable")
    if plan.limited_by == "quota":
        where = (f"quota {_mb(plan.quota_bytes or 0)}: held by entries in use "
                 f"{_mb(plan.held_in_use_bytes)}, copies in progress {_mb(plan.reserved_bytes)}")
    else:
        where = (f"free {_mb(plan.free_bytes_before)}, reserve {_mb(plan.reserve_bytes)}: held by "
                 f"entries in use {_mb(plan.held_in_use_bytes)}, copies in progress "
                 f"{_mb(plan.reserved_bytes)}, files the cache does not own {_mb(plan.held_foreign_bytes)}")
    return f"{head} ({where}); nothing copied (--partial caches what fits)"


def write_cached_cs(pset, paths: dict[str, str], out: str | os.PathLike) -> Path:
    """Write a copy of ``pset``'s ``.cs`` whose ``blob/path`` points at the cached copies.

    Parameters
    ----------
    pset
        The particle set that was synced.
    paths
        ``SyncResult.paths``: source path → path to read (absolute).
    out
        The ``.cs`` to write (atomically); it must not be the set's own file.
    """
    import numpy as np

    from ..csfile import write_cs
    from ..errors import OutputError

    if pset.source and os.path.realpath(out) == os.path.realpath(pset.source):
        raise OutputError(f"{out}: would overwrite the source .cs")
    targets = [paths[named_path(p)] for p in pset.stack_paths]
    width = max([len(t.encode()) for t in targets] + [1])
    descr = [(n, f"S{width}") if n == "blob/path" else (n, pset.data.dtype.fields[n][0])
             for n in pset.data.dtype.names]
    data = np.empty(len(pset), dtype=descr)
    for n in pset.data.dtype.names:
        if n != "blob/path":
            data[n] = pset.data[n]
    data["blob/path"] = np.array([t.encode() for t in targets], dtype=f"S{width}")[pset.stack_codes] \
        if len(pset) else []
    return write_cs(out, data)
