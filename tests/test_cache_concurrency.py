"""The SSD cache under concurrency, crashes, hand deletions and a full disk.

Real processes, no mocks: copies are counted from each process's own report and
from the cache's ledger of copies, never inferred from timing.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from stacktools.cache import Cache
from stacktools.errors import CacheFullError
from tests.helpers import (
    EVICTING_WORKER,
    PY,
    SLOW_WORKER,
    final_files,
    kill_slow_worker,
    ledger_copies,
    no_lock_held,
    project,
    run_cli,
    same_stack,
    subset_cs,
    tmpfs,
)


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return project(tmp_path_factory.mktemp("cc") / "P1", micrographs=24, per=(40, 80), box=48)


def _check_cache_consistent(ssd: Path) -> int:
    """Every file under a final name equals its source (independent reader); returns how many."""
    base = ssd / "stacktools-cache" / "files"
    files = final_files(ssd)
    for f in files:
        same_stack("/" + str(f.relative_to(base)), f)
    return len(files)


# Syncs a set once every process of the test is ready (a "go" line on stdin), slowed
# per chunk, and reports when its sync started and ended: the test checks overlap.
OVERLAP_WORKER = r"""
import json, sys, time
import stacktools.cache.copy as cp
cp.CHUNK = 16 * 1024
from stacktools.cache import Cache
cache = Cache(sys.argv[1], reserve_mb=0, threads=2)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
res = cache.ensure(json.loads(sys.argv[2]), progress=lambda n: time.sleep(0.01))
t1 = time.time()
print(json.dumps({"start": t0, "end": t1, "copied": res.copied, "reused": res.reused,
                  "copies": res.copies, "paths": res.paths}), flush=True)
"""


def test_eight_processes_copy_each_stack_once(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    rng = random.Random(5)
    n = len(pset.stack_paths)
    sets = [sorted(rng.sample(range(n), 12)) for _ in range(8)]
    sets_paths = [[str(pset.stack_paths[i]) for i in s] for s in sets]
    procs = [subprocess.Popen([PY, "-c", OVERLAP_WORKER, str(ssd), json.dumps(sp)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for sp in sets_paths]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    # All eight were syncing at one same instant: the last to start began before the
    # first to finish ended.
    assert max(o["start"] for o in outs) < min(o["end"] for o in outs)
    union = {os.path.realpath(pset.stack_paths[i]) for s in sets for i in s}
    copies = [k for o in outs for k in o["copies"]]
    assert sorted(copies) == sorted(union)            # each stack copied exactly once
    assert sum(o["copied"] for o in outs) == len(union)
    assert sorted(ledger_copies(ssd)) == sorted(union)
    for o, s in zip(outs, sets):
        assert o["copied"] + o["reused"] == len(s)
        for src, dst in o["paths"].items():
            same_stack(src, dst)
    assert no_lock_held(ssd)


def test_sigkill_at_random_points(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths]
    rng = random.Random(11)
    mid_copy = 0
    for i in range(20):
        sub = rng.sample(paths, 10)
        threads = rng.choice([1, 2])
        kill_slow_worker(ssd, sub, threads, rng.uniform(0.0, 0.6))
        temps = list((ssd / "stacktools-cache" / "files").rglob("*.stacktools-tmp"))
        mid_copy += bool(temps) and any(t.stat().st_size > 0 for t in temps)
        # No partial file under a final name, no lock left held.
        _check_cache_consistent(ssd)
        assert no_lock_held(ssd)
        if i % 5 == 4:
            # Another process deletes cache files by hand between crashes.
            for f in final_files(ssd)[:2]:
                f.unlink()
        if i % 7 == 6:
            Cache(ssd, reserve_mb=0).clear()
    # Most kills landed mid-copy: a temporary with data in it was left behind.
    assert mid_copy >= 10, f"only {mid_copy} of 20 kills landed mid-copy"
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    for src, dst in res.paths.items():
        same_stack(src, dst)
    assert not [f for f in (ssd / "stacktools-cache" / "files").rglob("*.stacktools-tmp")
                if f.parent in {Path(d).parent for d in res.paths.values()}]
    st = Cache(ssd, reserve_mb=0).status()
    assert st["entries"] == len(paths)
    assert list((ssd / "stacktools-cache" / "pins").iterdir()) == []


def test_files_deleted_during_a_run(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths]
    p = subprocess.Popen([PY, "-c", SLOW_WORKER, str(ssd), json.dumps(paths), "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    files = ssd / "stacktools-cache" / "files"
    deleted = 0
    while p.poll() is None:
        for f in list(files.rglob("*.mrc"))[:1]:
            try:
                f.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    out, err = p.communicate()
    assert p.returncode == 0, err
    assert deleted > 0
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copied >= 1 and res.copied + res.reused == len(paths)
    for src, dst in res.paths.items():
        same_stack(src, dst)
    assert Cache(ssd, reserve_mb=0).status()["entries"] == len(paths)


@pytest.fixture
def small_fs(tmp_path):
    """Mounts a new tmpfs of the size asked for; all are unmounted after the test."""
    names = (tmp_path / f"fs{i}" for i in itertools.count())
    with contextlib.ExitStack() as mounts:
        def make(size: str, inodes: int | None = None) -> Path:
            return mounts.enter_context(tmpfs(next(names), size, inodes))
        yield make


def test_disk_full_set_too_big_copies_nothing(proj, small_fs):
    made, pset = proj
    ssd = small_fs("2m")
    p = run_cli("cache", "sync", made.extracted_cs, "--project-dir", made.project_dir,
                "--ssd-path", ssd, "--reserve-mb", "0", "--json")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "does not fit" in p.stderr
    assert final_files(ssd) == []


class _LyingCache(Cache):
    """Believes the device has room: a copy then meets the kernel's real ENOSPC."""

    def _statvfs(self):
        return 10**12, 10**12


def test_disk_full_during_copy_leaves_no_corrupt_entry(proj, small_fs):
    made, pset = proj
    ssd = small_fs("1m")
    paths = [str(p) for p in pset.stack_paths]
    cache = _LyingCache(ssd, reserve_mb=0, threads=2)
    with pytest.raises(CacheFullError, match="SSD full"):
        cache.ensure(paths)
    landed = _check_cache_consistent(ssd)
    assert not list((ssd / "stacktools-cache" / "files").rglob("*.stacktools-tmp"))
    st = Cache(ssd, reserve_mb=0).status()
    # Every copy that reached its final name is a recorded, correct entry.
    assert st["entries"] == landed
    assert landed < len(paths)  # the disk really did run out
    for key in [r["key"] for r in Cache(ssd, reserve_mb=0).index.all()]:
        same_stack(key, Cache(ssd, reserve_mb=0).cached_path(key))
    assert no_lock_held(ssd)
    # With the truth about free space, a sync that fits works.
    Cache(ssd, reserve_mb=0).clear()
    res = Cache(ssd, reserve_mb=0).ensure(paths[:1])
    same_stack(paths[0], res.paths[paths[0]])


def test_out_of_inodes_is_a_clean_error(proj, small_fs):
    made, pset = proj
    ssd = small_fs("64m", inodes=40)
    p = run_cli("cache", "sync", made.extracted_cs, "--project-dir", made.project_dir,
                "--ssd-path", ssd, "--reserve-mb", "0", "--quiet", "--json")
    if p.returncode == 0:
        pytest.skip("tmpfs inode limit not enforced here")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    _check_cache_consistent(ssd)


def test_injected_enospc(proj, tmp_path, monkeypatch):
    """Where no small filesystem can be made: ENOSPC injected into the copy."""
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths]
    real = os.copy_file_range
    calls = [0]

    def flaky(*a, **kw):
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **kw)
    monkeypatch.setattr(os, "copy_file_range", flaky)
    with pytest.raises(CacheFullError):
        Cache(ssd, reserve_mb=0, threads=1).ensure(paths)
    monkeypatch.setattr(os, "copy_file_range", real)
    _check_cache_consistent(ssd)
    assert not list((ssd / "stacktools-cache" / "files").rglob("*.stacktools-tmp"))
    assert Cache(ssd, reserve_mb=0).status()["entries"] == 3  # the three that landed
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copied == len(paths) - 3 and res.reused == 3
    for src, dst in res.paths.items():
        same_stack(src, dst)


def test_waiter_says_what_it_waits_on(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths[:6]]
    # Slow enough (50 ms per 16 KB) that the second sync starts while the first copies.
    slow = subprocess.Popen([PY, "-c", SLOW_WORKER, str(ssd), json.dumps(paths), "1", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert slow.stdout.readline().strip() == "ready"
    cs = subset_cs(pset, list(range(6)), tmp_path / "six.cs")
    fast = run_cli("cache", "sync", cs, "--project-dir", made.project_dir,
                   "--ssd-path", ssd, "--reserve-mb", "0", "--json", timeout=120)
    out, err = slow.communicate(timeout=120)
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr + err
    a, b = json.loads(out.splitlines()[-1]), json.loads(fast.stdout)
    assert a["copied"] + b["copied"] == 6
    assert a["copied"] >= 1 and b["waited"] >= 1
    assert "waiting for" in fast.stderr and f"held by pid {slow.pid}" in fast.stderr


def test_racing_evictors_never_remove_what_is_in_use(proj, tmp_path):
    """Processes evict each other's entries under a tight quota while each reads its own."""
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths]
    biggest4 = sum(sorted(os.path.getsize(p) for p in paths)[-4:])
    quota = 2 * biggest4  # room for two held sets at once, not four
    procs = [subprocess.Popen([PY, "-c", EVICTING_WORKER, str(ssd), json.dumps(paths),
                               str(quota / 1e6), str(k)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert sum(o["bad"] for o in outs) == 0          # nothing vanished or changed while held
    assert sum(o["done"] for o in outs) > 0
    assert sum(o["evicted"] for o in outs) > 0        # they did evict each other
    st = Cache(ssd, reserve_mb=0).status()
    assert st["bytes"] <= quota
    assert no_lock_held(ssd)
    _check_cache_consistent(ssd)


def test_opposite_orders_do_not_deadlock(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths[:12]]
    orders = [paths, paths[::-1], paths[::2] + paths[1::2], paths[::-1]]
    procs = [subprocess.Popen([PY, "-c", SLOW_WORKER, str(ssd), json.dumps(o), "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for o in orders]
    copies = []
    for p in procs:
        out, err = p.communicate(timeout=120)   # a deadlock would hang here
        assert p.returncode == 0, err
        copies += json.loads(out.splitlines()[-1])["copies"]
    assert sorted(copies) == sorted(os.path.realpath(p) for p in paths)
    assert no_lock_held(ssd)
