"""Entry locks spread over several lock files: each key has one place, any two owners
of a key exclude each other (also across processes), and `cache clear` keeps every
entry lock file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stacktools.cache import Cache
from stacktools.cache.locks import ENTRY_LOCK_FILES, EntryLocks, entry_lock_name, is_entry_lock_name
from stacktools.cache.maintenance import clear

KEYS = [f"/data/P1/J{i // 100}/extract/{i:06d}_particles.mrc" for i in range(2000)]


def test_keys_spread_over_every_lock_file_and_each_key_has_one_place(tmp_path: Path) -> None:
    locks = EntryLocks(tmp_path / "entries.lock")
    try:
        places = {k: locks.where(k) for k in KEYS}
        assert places == {k: locks.where(k) for k in KEYS}  # stable
        inodes = {ino for ino, _ in places.values()}
        assert len(inodes) == ENTRY_LOCK_FILES
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(entry_lock_name(i) for i in range(ENTRY_LOCK_FILES))
        assert all(is_entry_lock_name(n) for n in names)
        assert not is_entry_lock_name("entries-zz.lock") and not is_entry_lock_name("x.lock")
    finally:
        locks.close()


def test_two_owners_exclude_each_other_on_every_key(tmp_path: Path) -> None:
    a, b = EntryLocks(tmp_path / "entries.lock"), EntryLocks(tmp_path / "entries.lock")
    try:
        assert all(a.try_lock(k) for k in KEYS)
        assert not any(b.try_lock(k) for k in KEYS)
        for k in KEYS[::2]:
            a.unlock(k)
        got = [b.try_lock(k) for k in KEYS]
        assert got == [i % 2 == 0 for i in range(len(KEYS))]
        a.close()  # closing drops what is left
        assert all(b.try_lock(k) for k in KEYS[1::2])
    finally:
        a.close()
        b.close()


def test_another_process_is_excluded_until_the_holder_exits(tmp_path: Path) -> None:
    path = tmp_path / "entries.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\n"
         "from stacktools.cache.locks import EntryLocks\n"
         f"locks = EntryLocks({str(path)!r})\n"
         f"assert all(locks.try_lock(k) for k in {KEYS[:300]!r})\n"
         "print('held', flush=True)\nsys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        mine = EntryLocks(path)
        try:
            assert not any(mine.try_lock(k) for k in KEYS[:300])
            assert all(mine.try_lock(k) for k in KEYS[300:600])
            child.kill()  # a dead holder's locks vanish with it
            child.wait()
            assert all(mine.try_lock(k) for k in KEYS[:300])
        finally:
            mine.close()
    finally:
        child.kill()
        child.wait()


def test_clear_keeps_every_entry_lock_file(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "ssd", reserve_mb=0, create=True)
    locks = EntryLocks(cache.entry_locks_path)
    for k in KEYS:
        locks.where(k)  # makes every lock file
    locks.close()
    (cache.locks_dir / "old-entry.lock").write_text("")  # an older version's per-entry file
    before = {p.name: os.stat(p).st_ino for p in cache.locks_dir.glob("entries*.lock")}
    assert len(before) == ENTRY_LOCK_FILES
    clear(cache)
    after = {p.name: os.stat(p).st_ino for p in cache.locks_dir.glob("entries*.lock")}
    assert after == before
    assert not (cache.locks_dir / "old-entry.lock").exists()
