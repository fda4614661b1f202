"""A job keeps its files while it runs, whatever happens to the `sync -- CMD` wrapper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.independent import read_bytes
from stacktools.cache import Cache
from tests.helpers import start_cli

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


def test_changed_source_never_replaces_the_copy_a_job_reads(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    paths = [str(p) for p in demo.stacks]
    key = os.path.realpath(paths[0])
    with Cache(ssd, reserve_mb=0).ensure(paths, hold=True) as job:
        cached = job.paths[paths[0]]
        old_bytes, old_ino = read_bytes(cached), os.stat(cached).st_ino
        new = bytearray(read_bytes(paths[0]))
        new[1500] ^= 0xFF
        os.chmod(paths[0], 0o644)
        with open(paths[0], "wb") as fh:   # the source is re-extracted: new content and mtime
            fh.write(new)
        r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                    "--reserve-mb", "0", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["paths"][paths[0]] == paths[0] and d["copied"] == 0
        assert d["plan"]["kept_for_running_jobs"] == [paths[0]]
        assert os.stat(cached).st_ino == old_ino and read_bytes(cached) == old_bytes
        assert read_bytes(d["paths"][paths[0]]) == bytes(new)
    # The job is done: the next sync copies the new version.
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copies == [key]
    assert read_bytes(res.paths[paths[0]]) == bytes(new) and os.stat(res.paths[paths[0]]).st_ino != old_ino
