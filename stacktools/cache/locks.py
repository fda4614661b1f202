"""Kernel-held locks (``flock``) for the cache.

``flock`` locks belong to an open file description and vanish when the process
dies, so a crashed holder never leaves a stale lock. Three kinds are used:

* the space lock (``root/space.lock``): exclusive while a process makes room and
  records its reservation, shared while a process registers a pin;
* entry locks: one byte each of one of ``root/locks/entries*.lock`` (file and
  offset given by the entry's key), held with open-file-description (OFD) record locks while one
  process copies or evicts the entry; others wait and go on when the copy lands.
  No file is made per entry, and taking or dropping one is one ``fcntl``. A process
  waiting for one holds no other (it copies what it holds first), which rules out
  deadlock between sets locked in different orders;
* pin files (``root/pins/*.pin``): each process holds an exclusive lock on its own
  pin file, which lists the entries it uses and the bytes it has reserved. A pin
  file that can be locked by someone else belongs to a dead process.

Lock order, which rules out deadlock: an entry lock may be held while waiting for
the space lock, never the reverse; whoever holds the space lock only ever tries
other locks without blocking.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

from stacktools.cache.safefs import open_own, same_file
from stacktools.errors import CacheForeignPathError

WaitCallback = Callable[[str], None]


@functools.lru_cache(maxsize=1)
def _hostname() -> str:
    """This node's name, for lock notes (asked once: one ``uname`` per lock added up)."""
    return socket.gethostname()


class FileLock:
    """An ``flock`` on ``path``, re-checked against the inode so lock files may be deleted.

    Parameters
    ----------
    path
        The lock file (created if missing).
    what
        What the lock protects, for waiting messages.
    """

    def __init__(self, path: str | os.PathLike, what: str = ""):
        self.path = Path(path)
        self.what = what or str(path)
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            fd = open_own(self.path, os.O_RDONLY)
        except (OSError, CacheForeignPathError):
            return ""
        try:
            text = os.read(fd, 200).decode(errors="replace").strip()
        except OSError:
            return ""
        finally:
            os.close(fd)
        return f" (held by {text})" if text else ""

    def acquire(self, shared: bool = False, blocking: bool = True,
                on_wait: WaitCallback | None = None, note: str | None = None) -> bool:
        """Take the lock; return ``False`` if ``blocking`` is false and it is busy.

        ``on_wait`` is called once with a message before blocking; ``note`` is
        written into the lock file while held exclusively, so that waiters can say
        what they wait on. A symlink or a non-regular file at ``path`` raises
        :class:`~stacktools.errors.CacheForeignPathError` and is left alone.
        """
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        told = False
        while True:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not blocking:
                        os.close(fd)
                        return False
                    if on_wait is not None and not told:
                        on_wait(f"waiting for {self.what}{self._holder()}")
                        told = True
                    fcntl.flock(fd, op)
                # The file may have been unlinked (by an evictor holding it) while we
                # waited: then our lock is on a dead inode, so take it again.
                same = same_file(self.path, fd)
                if not same:
                    os.close(fd)
                    continue
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            self.fd = fd
            if not shared:
                self._write_note(note or f"pid {os.getpid()} on {_hostname()}")
            return True

    def _write_note(self, text: str) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode(errors="replace"), 0)
        except OSError:
            pass

    def release(self, unlink: bool = False) -> None:
        """Release the lock; with ``unlink`` remove the lock file first (while still held)."""
        if self.fd is None:
            return
        try:
            if unlink:
                _unlink_if_same(self.path, self.fd)
            else:
                try:
                    os.ftruncate(self.fd, 0)
                except OSError:
                    pass
        finally:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


ENTRY_LOCKS = "entries.lock"
# Entry locks are spread over this many lock files (``entries.lock``, then
# ``entries-01.lock`` ... ``entries-3f.lock``): the kernel keeps a file's record
# locks in one list that every lock and unlock walks, so a sync holding 10,000
# entries in one file paid ~25 µs a call instead of ~3.
ENTRY_LOCK_FILES = 64
_FLOCK = struct.Struct("hhqqi4x")  # struct flock (Linux): type, whence, start, len, pid


def entry_lock_name(shard: int) -> str:
    """The name (in ``locks/``) of entry lock file number ``shard``."""
    return ENTRY_LOCKS if shard == 0 else f"entries-{shard:02x}.lock"


def is_entry_lock_name(name: str) -> bool:
    """Whether ``name`` is one of the entry lock files (kept: live record locks may be on it)."""
    return name == ENTRY_LOCKS or re.fullmatch(r"entries-[0-9a-f]{2}\.lock", name) is not None


def _entry_place(key: str) -> tuple[int, int]:
    """The lock file (its number) and byte that stand for entry ``key``, from its hash."""
    h = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return h[8] % ENTRY_LOCK_FILES, int.from_bytes(h[:8], "big") >> 2


class EntryLocks:
    """Entry locks held through one open description of each entry lock file.

    Locks taken through one ``EntryLocks`` are one owner's (one sync's, shared by
    its threads); each ``EntryLocks`` conflicts with every other, in this process
    or another. They vanish when the descriptors close, or with the process.

    Parameters
    ----------
    path
        The first lock file, ``locks/entries.lock``; the others are beside it. Each
        is created when first needed (world-writable if ``shared``).
    shared
        The cache is shared by several users on this node.
    """

    def __init__(self, path: str | os.PathLike, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fds: dict[int, int] = {}
        self._fd(0)  # fails here, not mid-sync, if the lock directory is unusable

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = open_own(self.path.with_name(entry_lock_name(shard)), os.O_RDWR | os.O_CREAT, 0o666)
            if self.shared:
                try:
                    os.fchmod(fd, 0o666)
                except OSError:
                    pass  # someone else's: they made it so
            got = self._fds.setdefault(shard, fd)  # two threads may open it at once
            if got != fd:
                os.close(fd)
            fd = got
        return fd

    def where(self, key: str) -> tuple[int, int]:
        """(inode of the lock file, byte) of ``key``'s lock, as ``/proc/locks`` shows it."""
        shard, offset = _entry_place(key)
        return os.fstat(self._fd(shard)).st_ino, offset

    def _set(self, cmd: int, typ: int, key: str) -> None:
        shard, offset = _entry_place(key)
        fcntl.fcntl(self._fd(shard), cmd, _FLOCK.pack(typ, os.SEEK_SET, offset, 1, 0))

    def try_lock(self, key: str) -> bool:
        """Lock ``key`` without waiting; ``False`` if another owner holds it."""
        try:
            self._set(fcntl.F_OFD_SETLK, fcntl.F_WRLCK, key)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def lock(self, key: str) -> None:
        """Lock ``key``, waiting for its holder (hold no other entry lock meanwhile)."""
        self._set(fcntl.F_OFD_SETLKW, fcntl.F_WRLCK, key)

    def unlock(self, key: str) -> None:
        self._set(fcntl.F_OFD_SETLK, fcntl.F_UNLCK, key)

    def close(self) -> None:
        """Drop every lock held through these descriptions."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> "EntryLocks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EntryLock:
    """One entry's lock with :class:`FileLock`'s calls, for evicting and sweeping."""

    def __init__(self, path: str | os.PathLike, key: str, shared: bool = False):
        self.path, self.key, self.shared = path, key, shared
        self._locks: EntryLocks | None = None

    def acquire(self, blocking: bool = True) -> bool:
        locks = EntryLocks(self.path, self.shared)
        try:
            if blocking:
                locks.lock(self.key)
            elif not locks.try_lock(self.key):
                locks.close()
                return False
        except BaseException:
            locks.close()
            raise
        self._locks = locks
        return True

    def release(self, unlink: bool = False) -> None:
        """Drop the lock (``unlink`` is accepted for :class:`FileLock`'s callers: the
        lock file is shared by every entry and stays)."""
        locks, self._locks = self._locks, None
        if locks is not None:
            locks.close()


def copying_holders(pins_dir: Path, key: str, skip: Path | None = None) -> list[str]:
    """Who has reserved ``key`` to copy it: ``"pid N on HOST"`` of each live pin but ``skip``.

    For waiting messages only (read without the space lock: a pin being rewritten
    is passed over).
    """
    out = []
    try:
        names = sorted(os.listdir(pins_dir))
    except FileNotFoundError:
        return out
    for name in names:
        p = pins_dir / name
        if not name.endswith(".pin") or p == skip:
            continue
        try:
            fd = open_own(p, os.O_RDONLY)
        except (OSError, CacheForeignPathError):
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # lockable: its process is gone
            except BlockingIOError:
                pass
            data = json.loads(os.pread(fd, 1 << 26, 0).partition(b"\n")[0] or b"{}")
            if key in data.get("reserved", {}):
                out.append(f"pid {data.get('pid')} on {data.get('host')}")
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return out


class PinFile:
    """This process's record of the entries it uses and the bytes it has reserved.

    The file is locked exclusively for the life of the pin. Its content is one JSON
    line ``{"pid", "host", "t", "reserved": {key: bytes}, "job": bool}`` followed by the pinned
    keys, one per line. It is rewritten only while the writer holds the space lock
    (shared or exclusive), so readers that hold the space lock exclusively always
    see whole contents. ``blob`` is the encoded key list (also used to name the set).
    """

    def __init__(self, pins_dir: Path, keys: Iterable[str]):
        self.keys: list[str] = list(keys)
        self.blob = "\n".join(self.keys).encode("utf-8", "surrogateescape")
        self.reserved: dict[str, int] = {}
        self.job = False  # set once the entries are served to a running job
        name = f"{_hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pin"
        self.path = pins_dir / name
        self.fd = open_own(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.write()

    def add(self, keys: Iterable[str]) -> None:
        """Pin more entries (call with the space lock held, then :meth:`write`)."""
        have = set(self.keys)
        more = [k for k in dict.fromkeys(keys) if k not in have]
        if more:
            self.keys += more
            self.blob = "\n".join(self.keys).encode("utf-8", "surrogateescape")

    def write(self) -> None:
        """Rewrite the content (call with the space lock held)."""
        head = json.dumps({"pid": os.getpid(), "host": _hostname(), "t": time.time(),
                           "reserved": self.reserved, "job": self.job}).encode() + b"\n"
        data = head + self.blob
        os.pwrite(self.fd, data, 0)  # then cut: the file is never empty once written
        os.ftruncate(self.fd, len(data))

    def close(self) -> None:
        """Drop the pin: unlink the file, then release its lock."""
        if self.fd is None:
            return
        _unlink_if_same(self.path, self.fd)
        os.close(self.fd)
        self.fd = None

    def __del__(self):  # pragma: no cover - best effort for forgotten handles
        try:
            self.close()
        except Exception:
            pass


def live_pins(pins_dir: Path, skip: Path | None = None, jobs: set[str] | None = None,
              sweep: bool = True) -> tuple[set[str], dict[str, int]]:
    """Keys in use and bytes reserved by live processes; sweeps dead processes' pin files.

    Call with the space lock held exclusively (or with ``sweep=False``, which only
    reads). The keys of pin file ``skip`` (the caller's own) do not count as in
    use; its reservations do. ``jobs``, if given, receives the keys of pins held
    for running jobs (``PinFile.job``).
    """
    in_use: set[str] = set()
    reserved: dict[str, int] = {}
    try:
        names = os.listdir(pins_dir)
    except FileNotFoundError:
        return in_use, reserved
    for name in names:
        if not name.endswith(".pin"):
            continue
        p = pins_dir / name
        try:
            fd = open_own(p, os.O_RDONLY)
        except (FileNotFoundError, CacheForeignPathError):
            continue  # gone, or a symlink / non-file someone put here: left alone
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = b""
                while chunk := os.read(fd, 1 << 20):
                    raw += chunk
                head, _, body = raw.partition(b"\n")
                try:
                    data = json.loads(head or b"{}")
                except ValueError:
                    continue
                if body and p != skip:
                    keys = body.decode("utf-8", "surrogateescape").split("\n")
                    in_use.update(keys)
                    if jobs is not None and data.get("job"):
                        jobs.update(keys)
                for k, v in data.get("reserved", {}).items():
                    reserved[k] = max(reserved.get(k, 0), int(v))
                continue
            # Lockable: its owner is gone (the kernel dropped the lock). Not a stale
            # lock, just a leftover record: remove it if it is one of ours.
            if sweep and _is_pin_record(name, fd):
                _unlink_if_same(p, fd)
        except OSError as err:
            if err.errno not in (errno.ENOENT,):
                raise
        finally:
            os.close(fd)
    return in_use, reserved


def _unlink_if_same(path: str | os.PathLike, fd: int) -> None:
    """Unlink ``path`` only while it is the file open as ``fd`` (never a swapped-in link)."""
    if same_file(path, fd):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


_PIN_NAME = re.compile(r"^.+-[0-9]+-[0-9a-f]{8}\.pin$")


def _is_pin_record(name: str, fd: int) -> bool:
    """Whether a pin file is one the cache wrote: its name, and a pin's JSON head (or
    nothing yet, if its process died between creating and writing it)."""
    if not _PIN_NAME.match(name):
        return False
    head = os.pread(fd, 4096, 0).partition(b"\n")[0]
    if not head:
        return True
    try:
        data = json.loads(head)
    except ValueError:
        return False
    return isinstance(data, dict) and {"pid", "host", "reserved"} <= set(data)
