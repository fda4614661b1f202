"""The cache's record of its own entries, in SQLite on the SSD.

SQLite (the standard library's ``sqlite3``) gives concurrent readers and one writer
across processes with crash-safe transactions and no server or extra dependency; WAL
mode lets readers proceed while a writer commits. The index is a record, not the
truth: the filesystem is. If the database is missing or corrupt it is rebuilt from
the directory, and ownership is re-established from the append-only ledger
(``ledger.jsonl``), which gets one line for every file the cache copies. A file is
the cache's own only if the ledger names its path with the same inode and size.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

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

    # -- connection -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
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
        fresh = not self.db_path.exists()
        try:
            con = self._connect()
            con.executescript(_SCHEMA)
            _add_digest_column(con)
            row = con.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                fresh = True
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError("schema version mismatch")
        except sqlite3.DatabaseError:
            self._set_aside()
            con = self._connect()
            con.executescript(_SCHEMA)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            fresh = True
        if fresh:
            self._rebuild(con)
        return con

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
        """Run ``fn(con)``; on a corrupt database, rebuild once and retry."""
        try:
            return fn(self.con)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise
            self.close()
            self._set_aside()
            self._con = self._open()
            return fn(self._con)

    # -- ledger ---------------------------------------------------------------------
    def append_ledger(self, record: dict) -> None:
        """Append one line; a single ``write`` under ``O_APPEND`` keeps lines whole."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_ledger(self) -> Iterator[dict]:
        try:
            fh = open(self.ledger_path, "rb")
        except FileNotFoundError:
            return
        with fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash
                if isinstance(rec, dict) and "key" in rec:
                    yield rec

    # -- rebuild --------------------------------------------------------------------
    def _rebuild(self, con: sqlite3.Connection) -> None:
        """Re-create rows from the files present whose inode and size the ledger records."""
        claims: dict[str, dict] = {}
        for rec in self.read_ledger():
            if rec.get("op", "copy") == "copy":
                claims[rec["key"]] = rec
        rows = []
        now = time.time()
        base = str(self.files_dir)
        for key, rec in claims.items():
            path = base + key
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if (stat.S_ISREG(st.st_mode) and st.st_ino == rec.get("ino")
                    and st.st_size == rec.get("size")):
                rows.append((key, st.st_size, rec.get("mtime_ns", st.st_mtime_ns), st.st_ino,
                             rec.get("t", now), max(st.st_atime, rec.get("t", now)),
                             rec.get("owner", ""), rec.get("project", ""), rec.get("digest", "")))
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
