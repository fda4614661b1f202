"""The ledger (``ledger.jsonl``): the cache's proof that a file is its own.

The index is a record, not the truth: a file under the cache is its own only if the
ledger names its path with the same inode and size. Each copy writes two lines, both
before the file reaches its final name, so that a kill at any instant leaves nothing
the cache made without an owner (a sync writes each kind for a whole batch of copies
in one append; see :mod:`stacktools.cache.batch`):

* ``{"op": "tmp", "key", "tmp"}`` before the temporary file is created (with
  ``O_EXCL``): a temporary of that name is then provably the cache's;
* ``{"op": "copy", "key", "tmp", "ino", "size", "mtime_ns", "digest", ...}`` after the
  data is written and before the batch's data is made durable (so the line is
  durable too) and renamed, so the renamed file is the cache's.

Lines are appended whole (one ``write`` under ``O_APPEND`` and a shared ``flock``);
a compaction rewrites the file under an exclusive ``flock`` and renames it into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from stacktools.cache.safefs import is_disk_full, open_own
from stacktools.formats.atomic import TMP_SUFFIX


def entry_row(rec: dict) -> dict:
    """The index row a ``copy`` record stands for."""
    t = rec.get("t", time.time())
    return {"key": rec["key"], "size": rec["size"], "mtime_ns": rec.get("mtime_ns", 0),
            "ino": rec["ino"], "created": t, "last_access": t, "owner": rec.get("owner", ""),
            "project": rec.get("project", ""), "digest": rec.get("digest", "")}


class Ledger:
    """``ROOT/ledger.jsonl``, for the cache whose copies live under ``files_dir``."""

    def __init__(self, root: Path, files_dir: Path):
        self.path = root / "ledger.jsonl"
        self.files_dir = files_dir
        self._mutex = threading.Lock()  # appends come from several copying threads
        self._keep = False
        self._fd: int | None = None
        self._id = (0, 0)

    def append(self, record: dict) -> None:
        """Append one record (see :meth:`append_many`)."""
        self.append_many([record])

    def append_many(self, records: list[dict]) -> None:
        """Append one line per record; a single ``write`` under ``O_APPEND`` keeps lines whole.

        The write holds a shared ``flock`` on the ledger, so that a compaction (which
        holds it exclusively while it rewrites the file) never loses a line. Inside
        :meth:`kept_open` the descriptor stays open between appends.

        Raises:
            CacheForeignPathError: ``ledger.jsonl`` is a symlink or not a file.
            OSError: The write failed (``ENOSPC`` on a full SSD).
        """
        if not records:
            return
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        line = "".join([dumps(r) + "\n" for r in records]).encode("utf-8", "surrogateescape")
        with self._mutex:
            try:
                while True:
                    if self._fd is None:
                        fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                        st = os.fstat(fd)
                        self._fd, self._id = fd, (st.st_ino, st.st_dev)
                    fd = self._fd
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    try:
                        try:
                            st = os.lstat(self.path)
                        except FileNotFoundError:
                            st = None
                        if st is not None and (st.st_ino, st.st_dev) == self._id:
                            if os.write(fd, line) != len(line):
                                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                            return
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self._close()  # a compaction replaced the file meanwhile: append to the new one
            finally:
                if not self._keep:
                    self._close()

    @contextlib.contextmanager
    def kept_open(self) -> Iterator[None]:
        """Keep the ledger's descriptor open for the appends made meanwhile (one sync's).

        Each append still checks, under its ``flock``, that the ledger's name is the
        file open (by inode), so a compaction's new file or a planted symlink is
        never written through the old descriptor.
        """
        with self._mutex:
            outer = self._keep
            self._keep = True
        try:
            yield
        finally:
            with self._mutex:
                self._keep = outer
                if not outer:
                    self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def read(self) -> Iterator[dict]:
        """The ledger's records, in order (a torn last line is skipped)."""
        for rec, _ in self.lines(0):
            yield rec

    def lines(self, offset: int) -> Iterator[tuple[dict, int]]:
        """``(record, offset of its line's end)`` from ``offset`` on."""
        try:
            fd = open_own(self.path, os.O_RDONLY)
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


    def rows(self) -> list[dict]:
        """Index rows for the files the ledger proves are the cache's, from the filesystem.

        Used to rebuild the index, and instead of it when it cannot be written.
        """
        rows: dict[str, dict] = {}
        for rec in self.read():
            if rec.get("op", "copy") == "copy" and self.claim_state(rec) == "final":
                rows[rec["key"]] = entry_row(rec)
        for r in rows.values():
            try:
                r["last_access"] = max(r["last_access"], os.lstat(str(self.files_dir) + r["key"]).st_atime)
            except OSError:
                pass
        return list(rows.values())

    def compact(self, indexed_rows: Callable[[], list[dict]], min_bytes: int = 4 << 20) -> int | None:
        """Rewrite the ledger with only the records still in force, once it has grown large.

        Kept: ``copy`` records whose file is in place (in the index or not yet) or
        still a temporary, and ``tmp`` records whose temporary still exists. The
        ledger is held exclusively meanwhile, so no append is lost. On a full SSD
        nothing is rewritten.

        Args:
            indexed_rows: Returns the index's rows (their records are written first).
            min_bytes: Compact only a ledger at least this large (0: always).

        Returns:
            How many bytes at the start of the new ledger the index already holds, or
            ``None`` if nothing was rewritten.
        """
        try:
            fd = open_own(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            rows = indexed_rows()
            if min_bytes and (size < min_bytes or size < 4 * 300 * max(1, len(rows))):
                return None  # min_bytes=0 compacts unconditionally
            fcntl.flock(fd, fcntl.LOCK_EX)
            indexed = {(r["key"], r["ino"]) for r in rows}
            live: dict[tuple, dict] = {}  # the last record in force per file, in order
            for rec in self.read():
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
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
            try:
                out = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None  # a foreign file (or a crashed compaction's) has the name: leave it
            try:
                try:
                    os.write(out, b"".join(lines))
                    os.fsync(out)
                finally:
                    os.close(out)
                os.replace(tmp, self.path)
            except OSError as err:
                os.unlink(tmp)
                if is_disk_full(err):
                    return None
                raise
            return absorbed
        finally:
            os.close(fd)

    @staticmethod
    def tmp_record(rec: dict, tmp: str) -> dict:
        """The ``tmp`` line for entry row ``rec``: written before temporary ``tmp`` exists."""
        return {"op": "tmp", "t": rec["created"], "key": rec["key"], "tmp": tmp}

    @staticmethod
    def copy_record(rec: dict, tmp: str) -> dict:
        """The ``copy`` line for entry row ``rec`` (with its inode and digest), written
        before temporary ``tmp`` is made durable and renamed into place."""
        return {"op": "copy", "t": rec["created"], "key": rec["key"], "tmp": tmp,
                "ino": rec["ino"], "size": rec["size"], "mtime_ns": rec["mtime_ns"],
                "owner": rec["owner"], "project": rec["project"], "digest": rec["digest"]}

    def proven_temps(self, dirs: set[str] | None = None) -> dict[str, tuple[str, int | None]]:
        """Temporaries the ledger says the cache made: path -> (entry key, inode or None)."""
        out: dict[str, tuple[str, int | None]] = {}
        for rec in self.read():
            if not isinstance(rec.get("tmp"), str):
                continue
            path = self.tmp_path(rec)
            if dirs is not None and os.path.dirname(path) not in dirs:
                continue
            ino = rec.get("ino")
            if ino is not None or path not in out:
                out[path] = (rec["key"], ino)
        return out
