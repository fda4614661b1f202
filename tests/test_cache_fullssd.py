"""Upkeep on a 100% full SSD: a real small tmpfs, filled until the kernel says ENOSPC.

``status``, ``clear``, ``evict``, ``clean`` and ``verify`` must answer (exit 0, or exit 2
with one line), the commands that free space must free it, and a full disk must never
be taken for corruption (no ``index.db.corrupt-*``).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from stacktools.cache import Cache
from stacktools.cache.index import Index
from stacktools.errors import CacheError, DiskFullError
from tests import helpers
from tests.helpers import final_files, project, run_cli


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return project(tmp_path_factory.mktemp("fs") / "P1", micrographs=8, per=(8, 16), box=32)


@pytest.fixture
def tmpfs(tmp_path):
    with helpers.tmpfs(tmp_path / "ssd", "1m") as d:
        yield d


def _fill(d: Path) -> None:
    """Write a filler file until the device refuses a single byte more."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(d).f_bavail == 0


def _free(d: Path) -> int:
    v = os.statvfs(d)
    return v.f_bavail * v.f_frsize


def _corrupt_marks(ssd: Path) -> list:
    return list((ssd / "stacktools-cache").glob("index.db.corrupt-*"))


@pytest.mark.parametrize("cmd", [["status"], ["status", "--json"], ["verify"], ["clear", "--yes"],
                                 ["evict", "--mb", "1"], ["clean", "--lifetime-days", "0"]])
def test_upkeep_on_a_full_ssd(proj, tmpfs, cmd):
    made, pset = proj
    res = Cache(tmpfs, reserve_mb=0).ensure(pset)
    assert res.copied == len(pset.stack_paths)
    _fill(tmpfs)
    p = run_cli("cache", *cmd, "--ssd-path", tmpfs)
    assert "Traceback" not in p.stderr
    assert p.returncode == 0 or (p.returncode == 2 and p.stderr.count("\n") == 1), p.stderr
    assert _corrupt_marks(tmpfs) == []
    frees = cmd[0] in ("clear", "evict", "clean")
    if frees:
        assert p.returncode == 0, p.stderr
        assert final_files(tmpfs) == []
        assert _free(tmpfs) >= res.bytes_copied
    else:
        assert len(final_files(tmpfs)) == len(pset.stack_paths)
    # Once there is room again, the index is the healthy one, and it agrees with the disk.
    (tmpfs / "filler").unlink()
    st = Cache(tmpfs, reserve_mb=0).status()
    assert st["entries"] == (0 if frees else len(pset.stack_paths))
    assert _corrupt_marks(tmpfs) == []


def test_a_full_disk_is_not_corruption_but_garbage_is(tmp_path, monkeypatch):
    root = tmp_path / "c"
    (root / "files").mkdir(parents=True)
    idx = Index(root, root / "files")
    idx.all()
    idx.close()
    real_execute, real_connect = sqlite3.Connection.execute, sqlite3.connect

    class Full(sqlite3.Connection):
        """SQLite on a full device: every write fails with SQLITE_FULL's message."""

        def execute(self, sql, *a):
            if sql.lstrip().upper().startswith(("INSERT", "BEGIN")):
                raise sqlite3.OperationalError("database or disk is full")
            return real_execute(self, sql, *a)
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real_connect(*a, factory=Full, **kw))
    with pytest.raises(DiskFullError):
        Index(root, root / "files").record([{"key": "/a", "size": 1, "mtime_ns": 1, "ino": 1,
                                              "created": 0, "last_access": 0, "owner": "",
                                              "project": ""}])
    assert list(root.glob("index.db.corrupt-*")) == []
    monkeypatch.undo()
    (root / "index.db").write_bytes(b"this is not a database" * 100)
    for s in ("-wal", "-shm"):
        Path(str(root / "index.db") + s).unlink(missing_ok=True)
    assert Index(root, root / "files").all() == []
    assert len(list(root.glob("index.db.corrupt-*"))) == 1


def test_other_sqlite_failures_are_one_line_errors(tmp_path):
    root = tmp_path / "c"
    (root / "files").mkdir(parents=True)
    (root / "index.db").mkdir()  # cannot be opened as a database at all
    with pytest.raises(CacheError):
        Index(root, root / "files").all()
    assert list(root.glob("index.db.corrupt-*")) == []
