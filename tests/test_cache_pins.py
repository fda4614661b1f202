"""A job keeps its files while it runs, whatever happens to the `sync -- CMD` wrapper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from stacktools.cache import Cache
from tests.helpers import start_cli
from tests.independent import read_bytes

JOB = ("import os, sys, time\n"
       "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
       "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n")


def _wait_for(pred, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_pin_outlives_a_killed_wrapper_while_the_job_runs(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    ready, stop = tmp_path / "job.pid", tmp_path / "job.stop"
    wrapper = start_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir,
                        "--ssd-path", ssd, "--reserve-mb", "0", "--quiet", "--",
                        sys.executable, "-c", JOB, ready, stop, stdout=subprocess.DEVNULL)
    job = None
    try:
        _wait_for(lambda: ready.exists() or wrapper.poll() is not None, "the job to start")
        assert wrapper.poll() is None, wrapper.stderr.read()
        job = int(ready.read_text())
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait()
        assert wrapper.returncode == -signal.SIGKILL and _alive(job)   # the kill landed mid-job
        out = Cache(ssd, reserve_mb=0).clear()
        assert out["removed"] == 0 and out["skipped_in_use"] == len(demo.stacks)
        cache = Cache(ssd, reserve_mb=0)
        for p in demo.stacks:
            assert read_bytes(cache.cached_path(os.path.realpath(p))) == read_bytes(p)
        stop.touch()
        _wait_for(lambda: not _alive(job), "the job to end")
        job = None
        out = Cache(ssd, reserve_mb=0).clear()
        assert out["removed"] == len(demo.stacks) and out["skipped_in_use"] == 0
    finally:
        stop.touch()
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        if job is not None:
            _wait_for(lambda: not _alive(job), "the job to end")


def _rewrite(path: str, offset: int) -> bytes:
    """Re-extract a source in place: new content and a new mtime."""
    new = bytearray(read_bytes(path))
    new[offset] ^= 0xFF
    os.chmod(path, 0o644)
    with open(path, "wb") as fh:
        fh.write(new)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # mtime surely moves
    return bytes(new)


def test_changed_source_never_replaces_the_copy_a_job_reads(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    key = os.path.realpath(paths[0])
    with Cache(ssd, reserve_mb=0).ensure(paths, hold=True) as job:
        cached = job.paths[paths[0]]
        old_bytes, old_ino = read_bytes(cached), os.stat(cached).st_ino
        new = _rewrite(paths[0], 1500)
        r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                    "--reserve-mb", "0", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        beside = d["paths"][paths[0]]
        # The new version is copied beside the job's copy, which stays as it was.
        assert d["copied"] == 1 and d["copies"] == [key] and d["versions"] == {paths[0]: beside}
        assert d["plan"]["kept_for_running_jobs"] == [paths[0]] and d["from_source"] == []
        assert beside != cached and beside.startswith(str(ssd)) and os.path.basename(beside) == \
            os.path.basename(cached)
        assert os.stat(cached).st_ino == old_ino and read_bytes(cached) == old_bytes
        assert read_bytes(beside) == new
        # A second sync serves the same version without copying.
        r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                    "--reserve-mb", "0", "--json")
        d2 = json.loads(r.stdout)
        assert d2["copied"] == 0 and d2["paths"][paths[0]] == beside
        assert os.stat(cached).st_ino == old_ino and read_bytes(cached) == old_bytes
    # The job is done: the next sync serves the new version and retires the old copy.
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copied == 0 and res.retired == 1
    assert res.paths[paths[0]] == beside and read_bytes(beside) == new
    assert not os.path.lexists(cached)
    st = Cache(ssd, reserve_mb=0).status()
    assert st["entries"] == len(paths) and st["foreign_paths"] == []


def test_a_version_is_kept_for_its_own_job_and_the_next_change_goes_beside_it(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    with Cache(ssd, reserve_mb=0).ensure(paths, hold=True) as first:
        v0 = first.paths[paths[0]]
        b0 = read_bytes(v0)
        b1 = _rewrite(paths[0], 2000)
        with Cache(ssd, reserve_mb=0).ensure(paths, hold=True) as second:
            v1 = second.paths[paths[0]]
            assert v1 != v0 and read_bytes(v1) == b1
            b2 = _rewrite(paths[0], 2100)
            third = Cache(ssd, reserve_mb=0).ensure(paths)
            v2 = third.paths[paths[0]]
            assert len({v0, v1, v2}) == 3 and read_bytes(v2) == b2
            # Both jobs' copies survive eviction of everything evictable.
            Cache(ssd, reserve_mb=0).evict(nbytes=10**12)
            assert read_bytes(v0) == b0 and read_bytes(v1) == b1
            assert not os.path.lexists(v2)   # nobody pins the newest version
        # The second job ended: its version (v1) is stale and unpinned; it goes.
        assert Cache(ssd, reserve_mb=0).evict(paths=[paths[0]])["removed"] == 1
        assert not os.path.lexists(v1) and read_bytes(v0) == b0
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert read_bytes(res.paths[paths[0]]) == b2 and res.copied == 1
    assert Cache(ssd, reserve_mb=0).verify()["problems"] == []
