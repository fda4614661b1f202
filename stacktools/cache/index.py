"""The cache's record of its own entries, in SQLite on the SSD.

SQLite (the standard library's ``sqlite3``) gives concurrent readers and one writer
across processes with crash-safe transactions and no server or extra dependency; WAL
mode lets readers proceed while a writer commits. The index is a record, not the
truth: the filesystem is. If the database is missing or corrupt it is rebuilt from
the directory, and ownership is re-established from the append-only ledger
(``ledger.jsonl``). A file is the cache's own only if the ledger names its path with
the same inode and size.

How each copy is claimed in the ledger, so that a kill at any instant leaves
nothing the cache made without an owner, is :mod:`stacktools.cache.ledger`'s job.

A full disk is not corruption: only a database that SQLite reports as corrupt (or
of another schema) is set aside and rebuilt; a full one raises
:class:`~stacktools.errors.DiskFullError`, and the maintenance commands then work
from the ledger and the filesystem (:meth:`Index.ledger_rows`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Iterable

from stacktools.cache.ledger import Ledger, entry_row
from stacktools.errors import CacheError, CacheForeignPathError, DiskFullError

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
        self.ledger = Ledger(root, files_dir)
        self._con: sqlite3.Connection | None = None

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

    def owner_ino(self, key: str) -> int | None:
        """Inode of the cache's own file at ``key``'s location (index, else ledger), if any."""
        row = self.get_many([key]).get(key)
        if row is not None:
            return row["ino"]
        for rec in self.ledger.read():
            if rec["key"] == key and rec.get("op", "copy") == "copy" and self.ledger.claim_state(rec) == "final":
                return rec["ino"]
        return None

    def ledger_rows(self) -> list[dict]:
        """Index rows for the files the ledger proves are the cache's (see :meth:`Ledger.rows`)."""
        return self.ledger.rows()

    def compact_ledger(self, min_bytes: int = 4 << 20) -> None:
        """Rewrite the ledger once it has grown large (see :meth:`Ledger.compact`), and
        remember how much of it the index has absorbed."""
        absorbed = self.ledger.compact(self.all, min_bytes)
        if absorbed is not None:
            with contextlib.suppress(DiskFullError):
                self.set_meta("ledger_offset", str(absorbed))

    def absorb_ledger(self) -> None:
        """Record copies whose process died between its rename and its index write.

        The offset kept in the index stops at the first copy still under its
        temporary name (in progress, or left by a kill until swept), so that its
        rename, if it comes, is absorbed by a later call.
        """
        row = self.run(lambda c: c.execute("SELECT v FROM meta WHERE k='ledger_offset'").fetchone())
        offset = int(row[0]) if row else 0
        try:
            if os.lstat(self.ledger.path).st_size <= offset:
                return
        except FileNotFoundError:
            return
        recs, stop, end = [], None, offset
        for rec, pos in self.ledger.lines(offset):
            if rec.get("op", "copy") == "copy":
                state = self.ledger.claim_state(rec)
                if state == "final":
                    recs.append(rec)
                elif state == "tmp" and stop is None:
                    stop = end
            end = pos
        have = self.get_many(r["key"] for r in recs)
        new = {}
        for r in recs:
            k = r["key"]
            if k not in have or have[k]["ino"] != r["ino"]:
                new[k] = entry_row(r)
        if new:
            self.record(list(new.values()))
        self.set_meta("ledger_offset", str(end if stop is None else stop))

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
