"""Copy a set's stacks into the cache in batches, paying for durability once per batch.

``cp -r && sync`` lets the filesystem commit thousands of files at once; a sync that
fdatasyncs each copy waits for a journal commit per file. So a batch of copies goes:

1. lock the entries (one byte each of one lock file) and re-check that each still
   needs copying;
2. one ledger append naming every temporary, then each temporary is created with
   ``O_EXCL``, written, checked against the plan and hashed;
3. one ledger append recording every copy (inode, digest);
4. one ``syncfs`` of the SSD: the copies' data, their directories and the ledger
   lines reach the disk together (without ``syncfs``, an ``fdatasync`` per copy);
5. the renames, then one ``fsync`` per directory, then one index transaction.

No final name ever points at data a power cut could lose: a rename happens only
after step 4. Whatever instant a kill lands, every file made is named in the ledger
before it exists (see :mod:`stacktools.cache.ledger`). A batch closes after
:data:`BATCH_SECONDS` or :data:`BATCH_BYTES`, so that copies land (and other
processes waiting for them go on) while a large set is still copying.

Per set, not per stack: the host name, the ledger's descriptor, the lock file,
each destination directory (made and checked once).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable

from stacktools.cache.copy import (
    Progress,
    SourceChanged,
    libc,
    remove_temp,
    rename_into_place,
    write_temp,
)
from stacktools.cache.locks import EntryLocks, PinFile, WaitCallback, _hostname, copying_holders
from stacktools.cache.plan import VERSIONS, SourceFile
from stacktools.cache.safefs import is_disk_full
from stacktools.errors import CacheError, CacheForeignPathError, CacheFullError, DiskFullError
from stacktools.formats.atomic import fsync_dir, tmp_name

if TYPE_CHECKING:  # pragma: no cover
    from stacktools.cache.store import Cache, SyncResult

BATCH_SECONDS = 1.0  # a batch closes after this long...
BATCH_BYTES = 2 << 30  # ...or this many bytes
LOT_FILES, LOT_BYTES = 256, 64 << 20  # entries locked (and re-checked) at a time
THREADED_BYTES = 1 << 20  # copies this large on average are written by several threads
RETRIES = 3  # a stack whose directory is removed by hand mid-copy is tried again


def make_durable(dir_fd: int, temps: Iterable[str]) -> None:
    """Make the data of ``temps`` (and everything else written on the SSD) durable.

    One ``syncfs`` of the filesystem ``dir_fd`` is on, which reports write-back
    errors since ``dir_fd`` was opened; an ``fdatasync`` of each temporary where
    ``syncfs`` is missing.
    """
    fn = getattr(libc(), "syncfs", None)
    if fn is not None:
        if fn(ctypes.c_int(dir_fd)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return
    for t in temps:
        fd = os.open(t, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


class _Copy:
    """One stack in a batch: its source, the entry it becomes, its temporary."""

    __slots__ = ("src", "key", "dest", "tmp", "row", "tries")

    def __init__(self, src: SourceFile, key: str, dest: str, tries: int):
        self.src, self.key, self.dest, self.tries = src, key, dest, tries
        self.tmp = ""
        self.row: dict = {}


class SetCopier:
    """Copies one sync's stacks (see the module docstring); counts into ``result``."""

    def __init__(self, cache: "Cache", pin: PinFile, result: "SyncResult", *,
                 progress: Progress | None, on_wait: WaitCallback | None, project: str,
                 threads: int, content: bool, locations: dict[str, str]):
        self.cache, self.pin, self.result = cache, pin, result
        self.progress, self.on_wait, self.project = progress, on_wait, project
        self.threads, self.content, self.locations = max(1, threads), content, locations
        self.owner = f"{_hostname()}:{os.getpid()}"
        self.ledger = cache.index.ledger
        self.waited: set[str] = set()
        self.locks: EntryLocks | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.files_fd = -1

    def run(self, todo: list[SourceFile]) -> None:
        """Copy every stack of ``todo`` that is still missing when its lock is taken."""
        for s in todo:
            if s.key.startswith(VERSIONS + "/"):
                raise CacheError(f"{s.key}: sources under {VERSIONS} cannot be cached "
                                 "(the cache keeps versions of stacks under that name)")
        queue = collections.deque(
            {self.locations.get(s.key, s.key): (s, 0) for s in todo}.values())
        big = sum(s.size for s in todo) >= THREADED_BYTES * len(todo)
        self.files_fd = os.open(self.cache._files, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with self.ledger.kept_open(), \
                    EntryLocks(self.cache.entry_locks_path, self.cache.config.shared) as self.locks:
                if big and self.threads > 1 and len(todo) > 1:
                    with ThreadPoolExecutor(self.threads, thread_name_prefix="cache-copy") as self.pool:
                        while queue:
                            queue = self._batch(queue)
                else:
                    while queue:
                        queue = self._batch(queue)
        finally:
            os.close(self.files_fd)
            self.result.waited += len(self.waited)

    # -- one batch --------------------------------------------------------------------
    def _batch(self, queue: collections.deque) -> collections.deque:
        """Copy, make durable and rename one batch from ``queue``; return what is left
        (stacks whose lock was busy come first)."""
        start = time.monotonic()
        held: list[_Copy] = []
        written: list[_Copy] = []
        deferred: collections.deque = collections.deque()
        nbytes = 0
        error: BaseException | None = None
        retry: list[_Copy] = []
        try:
            try:
                while queue and nbytes < BATCH_BYTES and time.monotonic() - start < BATCH_SECONDS:
                    lot = self._lock_lot(queue, deferred, holding=bool(held))
                    held += lot
                    lot = self._still_missing(lot)
                    nbytes += sum(c.src.size for c in lot)
                    unwritten = self._write(lot, written, start + BATCH_SECONDS)
                    queue.extendleft(reversed([(c.src, c.tries) for c in unwritten]))
            except BaseException as err:
                error = err  # what was written before it still lands
            try:
                retry = self._commit(written)
            except BaseException as err:
                error = error or err
                for c in written:
                    remove_temp(c.tmp, c.row["ino"])  # those renamed are gone from there
        finally:
            for c in held:
                self.locks.unlock(c.key)
        if error is not None:
            raise error
        deferred.extend(queue)
        deferred.extend((c.src, c.tries + 1) for c in retry)
        return deferred

    def _lock_lot(self, queue: collections.deque, deferred: collections.deque,
                  holding: bool) -> list[_Copy]:
        """Lock up to a lot of entries from ``queue``; busy ones go to ``deferred``,
        except that with no lock held this process waits for the first busy one."""
        lot: list[_Copy] = []
        nbytes = 0
        files = self.cache._files
        while queue and len(lot) < LOT_FILES and nbytes < LOT_BYTES:
            s, tries = queue.popleft()
            key = self.locations.get(s.key, s.key)
            if not self.locks.try_lock(key):
                self.waited.add(key)
                if holding or lot:
                    deferred.append((s, tries))  # never wait while holding: copy those first
                    continue
                if self.on_wait is not None:
                    who = copying_holders(self.cache.pins_dir, key, self.pin.path)
                    self.on_wait("waiting for stacks being copied by another process"
                                 + (f" (held by {' or '.join(who)})" if who else ""))
                self.locks.lock(key)
            lot.append(_Copy(s, key, files + key, tries))
            nbytes += s.size
        return lot

    def _still_missing(self, lot: list[_Copy]) -> list[_Copy]:
        """The stacks of ``lot`` that still need copying now that they are locked
        (another process may have copied some meanwhile); reserves room for any the
        plan did not."""
        found = self.cache.locate([c.src for c in lot], content=self.content)
        out = [c for c in lot if found.get(c.src.key) != c.key]
        for c in out:
            if c.key not in self.pin.reserved:
                self.cache._make_room_for(c.src, self.pin, self.on_wait, c.key)
        return out

    def _write(self, lot: list[_Copy], written: list[_Copy], deadline: float) -> list[_Copy]:
        """Claim and write the temporaries of ``lot``; each one written goes to
        ``written`` (also when a later one fails). Those not started by ``deadline``
        are returned, for the next batch."""
        if not lot:
            return []
        late: list[_Copy] = []
        now = time.time()
        for c in lot:
            d, _, name = c.dest.rpartition("/")
            self._dest_dir(d)
            c.tmp = d + "/" + tmp_name(name)
            c.row = {"key": c.key, "size": c.src.size, "mtime_ns": c.src.mtime_ns, "ino": None,
                     "created": now, "last_access": now, "owner": self.owner,
                     "project": self.project, "digest": ""}
        self._ledger([self.ledger.tmp_record(c.row, os.path.basename(c.tmp)) for c in lot], lot[0])
        failed: list[BaseException] = []

        def one(c: _Copy) -> None:
            if failed:
                return  # a copy failed: start no more
            if written and time.monotonic() > deadline:  # each batch lands one at least
                late.append(c)
                return
            try:
                self._write_one(c)
            except BaseException as err:
                failed.append(err)
                return
            written.append(c)
        if self.pool is None:
            for c in lot:
                one(c)
        else:
            list(self.pool.map(one, lot))
        if failed:
            raise failed[0]
        return late

    def _write_one(self, c: _Copy) -> None:
        for _ in range(8):
            try:
                made = write_temp(c.src.key, c.tmp, c.src.size, c.src.mtime_ns, self.progress)
                break
            except FileExistsError:
                # Someone else's file has this name: never touch it, claim another.
                c.tmp = os.path.dirname(c.dest) + "/" + tmp_name(os.path.basename(c.dest))
                self._ledger([self.ledger.tmp_record(c.row, os.path.basename(c.tmp))], c)
            except FileNotFoundError:
                # The directory was removed by hand under us: make it again (the
                # temporary's name is claimed already).
                d = os.path.dirname(c.dest)
                self.cache._dest_dirs.discard(d)
                self._dest_dir(d)
            except SourceChanged as err:
                raise CacheError(str(err)) from None
            except OSError as err:
                if is_disk_full(err):
                    raise self._full(c, err) from err
                raise
        else:
            raise CacheError(f"{os.path.dirname(c.dest)}: cannot create a temporary file (names taken)")
        c.row["ino"], c.row["digest"] = made

    def _commit(self, written: list[_Copy]) -> list[_Copy]:
        """Record, make durable and rename ``written``; return those to copy again."""
        if not written:
            return []
        self._ledger([self.ledger.copy_record(c.row, os.path.basename(c.tmp)) for c in written],
                     written[0])
        try:
            make_durable(self.files_fd, [c.tmp for c in written])
        except OSError as err:
            if is_disk_full(err):
                raise self._full(written[0], err) from err
            raise
        landed: list[_Copy] = []
        retry: list[_Copy] = []
        foreign: CacheForeignPathError | None = None
        index = self.cache.index
        try:
            for c in written:
                try:
                    rename_into_place(c.tmp, c.dest, lambda k=c.key: index.owner_ino(k))
                except FileNotFoundError:
                    if c.tries + 1 >= RETRIES:
                        raise
                    retry.append(c)  # temporary or directory removed by hand: copy again
                    continue
                except CacheForeignPathError as err:
                    remove_temp(c.tmp, c.row["ino"])
                    foreign = foreign or err
                    continue
                landed.append(c)
        finally:
            for d in {os.path.dirname(c.dest) for c in landed}:
                fsync_dir(d)
            self._landed(landed)
        if foreign is not None:
            raise foreign
        return retry

    def _landed(self, landed: list[_Copy]) -> None:
        """Count the copies renamed into place and record them in the index."""
        res = self.result
        for c in landed:
            res.copied += 1
            res.bytes_copied += c.src.size
            res.copies.append(c.src.key)
        if landed:
            # On a full SSD the ledger already holds these: the next inventory absorbs them.
            try:
                self.cache.index.record([c.row for c in landed])
            except DiskFullError:
                pass

    # -- helpers ----------------------------------------------------------------------
    def _dest_dir(self, d: str) -> None:
        """Make entry directory ``d`` once per sync; refuse one reached through a symlink."""
        if d not in self.cache._dest_dirs:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as err:
                if is_disk_full(err):
                    raise CacheFullError(f"SSD full while making {d}: {os.strerror(err.errno)}") from err
                raise
            self.cache._check_dest_dir(d)

    def _ledger(self, records: list[dict], c: _Copy) -> None:
        try:
            self.ledger.append_many(records)
        except OSError as err:
            if is_disk_full(err):
                raise self._full(c, err) from err
            raise

    @staticmethod
    def _full(c: _Copy, err: OSError) -> CacheFullError:
        return CacheFullError(f"SSD full while copying {c.src.key} to {os.path.dirname(c.dest)}: "
                              f"{os.strerror(err.errno or errno.ENOSPC)}")
