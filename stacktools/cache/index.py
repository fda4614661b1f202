"""The cache's record of its own entries, in SQLite on the SSD.

SQLite (the standard library's ``sqlite3``) gives concurrent readers and one writer
across processes with crash-safe transactions and no server or extra dependency; WAL
mode lets readers proceed while a writer commits. The index is a record, not the
truth: the filesystem is. If the database is missing or corrupt it is rebuilt from
the directory, and ownership is re-established from the append-only ledger
(``ledger.jsonl``). A file is the cache's own only if the ledger names its path with
the same inode and size.

Each copy writes two ledger lines, both before the file reaches its final name, so
that a kill at any instant leaves nothing the cache made without an owner:

* ``{"op": "tmp", "key", "tmp"}`` before the temporary file is created (with
  ``O_EXCL``): a temporary of that name is then provably the cache's;
* ``{"op": "copy", "key", "tmp", "ino", "size", "mtime_ns", "digest", ...}`` after the data
  is on disk and before the rename, so the renamed file is the cache's.

A full disk is not corruption: only a database that SQLite reports as corrupt (or
of another schema) is set aside and rebuilt; a full one raises
:class:`~stacktools.errors.DiskFullError`, and the maintenance commands then work
from the ledger and the filesystem (:meth:`Index.ledger_rows`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from stacktools.cache.safefs import is_disk_full, open_own
from stacktools.errors import CacheError, CacheForeignPathError, DiskFullError
from stacktools.formats.atomic import TMP_SUFFIX

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,      -- resolved absolute source path
    size INTEGER NOT NULL,     -- bytes (source's and copy's)
    mtime_ns INTEGER NOT NULL, -- source's mtime, also set on the copy
    ino INTEGER NOT NULL,      -- inode of the copy, to know it is still ours
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    owner TEXT NOT NULL,       -- host:pid that copied it
    project TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT ''  -- content digest of the copy (see digest.py)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
-- Access is recorded per set (one row per sync), and folded into entries.last_access
-- when space is planned: a warm check then costs one row, not one per stack.
CREATE TABLE IF NOT EXISTS sets (
    set_id TEXT PRIMARY KEY, last_access REAL NOT NULL, folded REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS set_members (
    set_id TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (set_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS set_members_key ON set_members (key);
"""

COLUMNS = ("key", "size", "mtime_ns", "ino", "created", "last_access", "owner", "project", "digest")


def _add_digest_column(con: sqlite3.Connection) -> None:
    """Give an index made before digests were recorded its (empty) digest column."""
    if "digest" not in {r[1] for r in con.execute("PRAGMA table_info(entries)")}:
        con.execute("ALTER TABLE entries ADD COLUMN digest TEXT NOT NULL DEFAULT ''")


class _Corrupt(Exception):
    """The database is damaged or of another schema: set it aside and rebuild."""


def _sqlite_failure(err: sqlite3.Error, db_path: Path) -> BaseException:
    """What an SQLite error means for the cache: corrupt, full, busy or something else.

    Returns a :class:`_Corrupt` (set aside and rebuild), a
    :class:`~stacktools.errors.DiskFullError`, the error itself (busy/locked: the
    caller's timeout already ran out), or a :class:`~stacktools.errors.CacheError`.
    """
    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(err)
    if code == sqlite3.SQLITE_FULL or "disk is full" in text or (
            code == sqlite3.SQLITE_IOERR and _device_full(db_path)):
        return DiskFullError(f"{db_path}: SSD full: cannot write the cache index ({text})")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text \
            or "not a database" in text:
        return _Corrupt(text)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return err
    return CacheError(f"{db_path}: cannot use the cache index: {text}")


def _device_full(path: Path) -> bool:
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


class Index:
    """Connection to ``root/index.db``; rebuilt from ``files_dir`` when missing or corrupt.

    Parameters
    ----------
    root
        The cache root (holds ``index.db`` and ``ledger.jsonl``).
    files_dir
        Directory whose tree mirrors source paths.
    """

    def __init__(self, root: Path, files_dir: Path):
        self.root = root
        self.files_dir = files_dir
        self.db_path = root / "index.db"
        self.ledger_path = root / "ledger.jsonl"
        self.rebuilt = False
        self._con: sqlite3.Connection | None = None
        self._ledger_mutex = threading.Lock()  # appends come from several copying threads
        self._ledger_keep = False
        self._ledger_fd: int | None = None
        self._ledger_id = (0, 0)

    # -- connection -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # SQLite follows symlinks: refuse a planted link at any of its three names.
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.db_path) + suffix)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise CacheForeignPathError(f"{p}: is a symlink or not a regular file; the cache "
                                            "does not follow it and leaves it alone")
        con = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None,
                              check_same_thread=False)
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @property
    def con(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = self._open()
        return self._con

    def _open(self) -> sqlite3.Connection:
        fresh = not os.path.lexists(self.db_path)
        try:
            con, fresh = self._attempt(lambda: self._init_schema(fresh))
        except _Corrupt:
            self._set_aside()
            con, fresh = self._attempt(lambda: self._init_schema(True))
        if fresh:
            try:
                self._attempt(lambda: self._rebuild(con))
            except BaseException:
                con.close()
                raise
        return con

    def _init_schema(self, fresh: bool) -> tuple[sqlite3.Connection, bool]:
        con = self._connect()
        try:
            con.executescript(_SCHEMA)
            _add_digest_column(con)
            row = con.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                fresh = True
            elif row[0] != str(SCHEMA_VERSION):
                raise _Corrupt("schema version mismatch")
        except BaseException:
            con.close()
            raise
        return con, fresh

    def _attempt(self, fn):
        """Run ``fn()``, turning an SQLite error into what it means (see :func:`_sqlite_failure`)."""
        try:
            return fn()
        except sqlite3.Error as err:
            why = _sqlite_failure(err, self.db_path)
            if why is err:
                raise
            raise why from err

    def _set_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.db_path) + suffix)
            if p.exists():
                os.replace(p, Path(f"{p}.corrupt-{stamp}-{os.getpid()}"))

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def run(self, fn):
        """Run ``fn(con)``; on a corrupt database, rebuild once and retry.

        Raises:
            DiskFullError: The SSD is full (the database is left as it is).
            CacheError: SQLite failed for another reason than corruption.
        """
        try:
            return self._attempt(lambda: fn(self.con))
        except _Corrupt:
            self._rollback()
            self.close()
            self._set_aside()
            self._con = self._open()
            return self._attempt(lambda: fn(self._con))
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._con is not None and self._con.in_transaction:
            try:
                self._con.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def set_meta(self, k: str, v: str) -> None:
        """Store one setting in the ``meta`` table."""
        self.run(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v)))

    # -- ledger ---------------------------------------------------------------------
    def append_ledger(self, record: dict) -> None:
        """Append one line; a single ``write`` under ``O_APPEND`` keeps lines whole.

        The write holds a shared ``flock`` on the ledger, so that a compaction (which
        holds it exclusively while it rewrites the file) never loses a line. Inside
        :meth:`ledger_kept_open` the descriptor stays open between appends.

        Raises:
            CacheForeignPathError: ``ledger.jsonl`` is a symlink or not a file.
            OSError: The write failed (``ENOSPC`` on a full SSD).
        """
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._ledger_mutex:
            try:
                while True:
                    if self._ledger_fd is None:
                        fd = open_own(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                        st = os.fstat(fd)
                        self._ledger_fd, self._ledger_id = fd, (st.st_ino, st.st_dev)
                    fd = self._ledger_fd
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    try:
                        try:
                            st = os.lstat(self.ledger_path)
                        except FileNotFoundError:
                            st = None
                        if st is not None and (st.st_ino, st.st_dev) == self._ledger_id:
                            if os.write(fd, line) != len(line):
                                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.ledger_path))
                            return
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self._close_ledger()  # a compaction replaced the file meanwhile: append to the new one
            finally:
                if not self._ledger_keep:
                    self._close_ledger()

    @contextlib.contextmanager
    def ledger_kept_open(self) -> Iterator[None]:
        """Keep the ledger's descriptor open for the appends made meanwhile (one sync's).

        Each append still checks, under its ``flock``, that the ledger's name is the
        file open (by inode), so a compaction's new file or a planted symlink is
        never written through the old descriptor.
        """
        with self._ledger_mutex:
            outer = self._ledger_keep
            self._ledger_keep = True
        try:
            yield
        finally:
            with self._ledger_mutex:
                self._ledger_keep = outer
                if not outer:
                    self._close_ledger()

    def _close_ledger(self) -> None:
        fd, self._ledger_fd = self._ledger_fd, None
        if fd is not None:
            os.close(fd)

    def read_ledger(self) -> Iterator[dict]:
        """The ledger's records, in order (a torn last line is skipped)."""
        for rec, _ in self.ledger_lines(0):
            yield rec

    def ledger_lines(self, offset: int) -> Iterator[tuple[dict, int]]:
        """``(record, offset of its line's end)`` from ``offset`` on."""
        try:
            fd = open_own(self.ledger_path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as fh:
            fh.seek(offset)
            pos = offset
            for line in fh:
                pos += len(line)
                if not line.endswith(b"\n"):
                    return  # a torn last line from a crash
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    yield rec, pos

    def tmp_path(self, rec: dict) -> str:
        """Where the temporary file a ledger record names lives."""
        return os.path.dirname(str(self.files_dir) + rec["key"]) + "/" + rec["tmp"]

    def claim_state(self, rec: dict) -> str:
        """What a ``copy`` record's file is now: ``"final"`` (renamed into place, ours),
        ``"tmp"`` (still under its temporary name) or ``"gone"``."""
        ino = rec.get("ino")
        for where, path in (("final", str(self.files_dir) + rec["key"]),
                            ("tmp", self.tmp_path(rec) if rec.get("tmp") else None)):
            if path is None:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_ino == ino and st.st_size == rec.get("size"):
                return where
        return "gone"

    def owner_ino(self, key: str) -> int | None:
        """Inode of the cache's own file at ``key``'s location (index, else ledger), if any."""
        row = self.get_many([key]).get(key)
        if row is not None:
            return row["ino"]
        for rec in self.read_ledger():
            if rec["key"] == key and rec.get("op", "copy") == "copy" and self.claim_state(rec) == "final":
                return rec["ino"]
        return None

    def ledger_rows(self) -> list[dict]:
        """Index rows for the files the ledger proves are the cache's, from the filesystem.

        Used to rebuild the index, and instead of it when it cannot be written.
        """
        rows: dict[str, dict] = {}
        now = time.time()
        for rec in self.read_ledger():
            if rec.get("op", "copy") != "copy" or self.claim_state(rec) != "final":
                continue
            t = rec.get("t", now)
            rows[rec["key"]] = {"key": rec["key"], "size": rec["size"],
                                "mtime_ns": rec.get("mtime_ns", 0), "ino": rec["ino"],
                                "created": t, "last_access": t, "owner": rec.get("owner", ""),
                                "project": rec.get("project", ""),
                                "digest": rec.get("digest", "")}
        for r in rows.values():
            try:
                r["last_access"] = max(r["last_access"], os.lstat(str(self.files_dir) + r["key"]).st_atime)
            except OSError:
                pass
        return list(rows.values())

    def compact_ledger(self, min_bytes: int = 4 << 20) -> None:
        """Rewrite the ledger with only the records still in force, once it has grown large.

        Kept: ``copy`` records whose file is in place (in the index or not yet) or
        still a temporary, and ``tmp`` records whose temporary still exists. The
        ledger is held exclusively meanwhile, so no append is lost. On a full SSD
        nothing is rewritten.
        """
        try:
            fd = open_own(self.ledger_path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            rows = self.all()
            if min_bytes and (size < min_bytes or size < 4 * 300 * max(1, len(rows))):
                return  # min_bytes=0 compacts unconditionally
            fcntl.flock(fd, fcntl.LOCK_EX)
            indexed = {(r["key"], r["ino"]) for r in rows}
            live: dict[tuple, dict] = {}  # the last record in force per file, in order
            for rec in self.read_ledger():
                if rec.get("op", "copy") == "copy":
                    state = self.claim_state(rec)
                    if state != "gone":
                        live.pop((state, rec["key"]), None)
                        live[(state, rec["key"])] = rec
                elif rec.get("op") == "tmp" and os.path.lexists(self.tmp_path(rec)):
                    live[("tmp", rec["key"], rec["tmp"])] = rec
            first = [r for r in live.values() if (r["key"], r.get("ino")) in indexed]
            rest = [r for r in live.values() if (r["key"], r.get("ino")) not in indexed]
            lines = [(json.dumps(r, separators=(",", ":")) + "\n").encode() for r in first + rest]
            absorbed = sum(len(x) for x in lines[:len(first)])
            tmp = self.ledger_path.with_name(f".{self.ledger_path.name}.{os.getpid()}{TMP_SUFFIX}")
            try:
                out = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return  # a foreign file (or a crashed compaction's) has the name: leave it
            try:
                try:
                    os.write(out, b"".join(lines))
                    os.fsync(out)
                finally:
                    os.close(out)
                os.replace(tmp, self.ledger_path)
            except OSError as err:
                os.unlink(tmp)
                if is_disk_full(err):
                    return
                raise
            try:
                self.set_meta("ledger_offset", str(absorbed))
            except DiskFullError:
                pass
        finally:
            os.close(fd)

    # -- rebuild --------------------------------------------------------------------
    def _rebuild(self, con: sqlite3.Connection) -> None:
        """Re-create rows from the files present whose inode and size the ledger records."""
        rows = [tuple(r[k] for k in COLUMNS) for r in self.ledger_rows()]
        now = time.time()
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM entries")
        con.executemany(f"INSERT OR REPLACE INTO entries VALUES ({','.join('?' * len(COLUMNS))})", rows)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('rebuilt', ?)", (str(now),))
        con.execute("COMMIT")
        self.rebuilt = True

    # -- queries --------------------------------------------------------------------
    def all(self) -> list[dict]:
        rows = self.run(lambda c: c.execute(f"SELECT {','.join(COLUMNS)} FROM entries").fetchall())
        return [dict(zip(COLUMNS, r)) for r in rows]

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(keys)
        out: dict[str, dict] = {}

        def q(c):
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                sql = f"SELECT {','.join(COLUMNS)} FROM entries WHERE key IN ({','.join('?' * len(chunk))})"
                for r in c.execute(sql, chunk):
                    out[r[0]] = dict(zip(COLUMNS, r))
        self.run(q)
        return out

    def record(self, entries: list[dict]) -> None:
        """Insert or replace rows (each a dict with :data:`COLUMNS`)."""
        def w(c):
            c.execute("BEGIN IMMEDIATE")
            c.executemany(f"INSERT OR REPLACE INTO entries VALUES ({','.join('?' * len(COLUMNS))})",
                          [tuple(e[k] for k in COLUMNS) for e in entries])
            c.execute("COMMIT")
        self.run(w)

    def remove(self, keys: Iterable[str]) -> None:
        keys = [(k,) for k in keys]
        if not keys:
            return

        def w(c):
            c.execute("BEGIN IMMEDIATE")
            c.executemany("DELETE FROM entries WHERE key=?", keys)
            c.execute("COMMIT")
        self.run(w)

    def touch(self, keys: list[str], when: float) -> None:
        """Set ``last_access`` of ``keys`` now, in one transaction."""
        if not keys:
            return

        def w(c):
            c.execute("BEGIN IMMEDIATE")
            c.executemany("UPDATE entries SET last_access=? WHERE key=? AND last_access < ?",
                          ((when, k, when) for k in keys))
            c.execute("COMMIT")
        self.run(w)

    def touch_set(self, set_id: str, keys: Iterable[str], when: float) -> None:
        """Record that the set ``set_id`` (made of ``keys``) was used at ``when``.

        A known set costs one row update; members are stored the first time only.
        :meth:`fold_access` later carries the time over to the entries.
        """
        def w(c):
            c.execute("BEGIN IMMEDIATE")
            cur = c.execute("UPDATE sets SET last_access=MAX(last_access, ?) WHERE set_id=?",
                            (when, set_id))
            if cur.rowcount == 0:
                c.execute("INSERT INTO sets (set_id, last_access) VALUES (?, ?)", (set_id, when))
                c.executemany("INSERT OR IGNORE INTO set_members VALUES (?, ?)",
                              ((set_id, k) for k in keys))
            c.execute("COMMIT")
        self.run(w)

    def fold_access(self, forget_before: float) -> None:
        """Carry set access times over to their entries; forget sets unused since ``forget_before``."""
        def w(c):
            c.execute("BEGIN IMMEDIATE")
            c.execute("""
                UPDATE entries SET last_access = MAX(last_access, (
                    SELECT MAX(s.last_access) FROM set_members m JOIN sets s ON s.set_id = m.set_id
                    WHERE m.key = entries.key))
                WHERE key IN (SELECT m.key FROM set_members m JOIN sets s ON s.set_id = m.set_id
                              WHERE s.last_access > s.folded)""")
            c.execute("UPDATE sets SET folded = last_access WHERE last_access > folded")
            old = c.execute("SELECT set_id FROM sets WHERE last_access < ?", (forget_before,)).fetchall()
            if old:
                c.executemany("DELETE FROM set_members WHERE set_id = ?", old)
                c.executemany("DELETE FROM sets WHERE set_id = ?", old)
            c.execute("COMMIT")
        self.run(w)
