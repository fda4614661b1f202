"""`cache sync` output a person can read: a summary, pairs on request, one line per wait."""

from __future__ import annotations

import json
import os
import time

import pytest

from cli.cache import shorten_middle
from stacktools.cache import Cache
from stacktools.cache.locks import EntryLocks, PinFile
from tests.helpers import start_cli


def _sync_args(demo, ssd, *extra):
    return ["cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
            "--reserve-mb", "0", "--create", *extra]


def test_default_output_is_a_summary_and_list_gives_every_pair(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    r = run_cli(*_sync_args(demo, ssd), env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    assert "→" not in r.stdout
    assert "copied" in r.stdout and "MB/s" in r.stdout or "/s copied" in r.stdout
    r = run_cli(*_sync_args(demo, ssd, "--list"), env={**os.environ, "COLUMNS": "100"})
    pairs = [line for line in r.stdout.splitlines() if "→" in line]
    assert len(pairs) == len(demo.stacks)
    assert all("…" in line for line in pairs)   # the demo's paths are longer than half of 100
    # The file names stay whole on both sides of each shortened pair.
    for p in demo.stacks:
        name = "/" + os.path.basename(p)
        assert sum(a.endswith(name) and b.endswith(name)
                   for a, b in (line.split(" → ") for line in pairs)) == 1
    d = json.loads(run_cli(*_sync_args(demo, ssd, "--json")).stdout)
    assert len(d["paths"]) == len(demo.stacks)


def test_quiet_prints_nothing(tmp_path, demo, run_cli):
    r = run_cli(*_sync_args(demo, tmp_path / "ssd", "--quiet"))
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_shorten_middle_keeps_the_file_name():
    long = "/data/" + "x" * 300 + "/J12/extract/000123_particles.mrc"
    short = shorten_middle(long, 60)
    assert len(short) == 60 and short.endswith("/000123_particles.mrc") and "…" in short
    assert shorten_middle("/d/" + "n" * 100 + ".mrc", 30) == "…/" + "n" * 100 + ".mrc"
    assert shorten_middle("/a/b.mrc", 60) == "/a/b.mrc"


def _blocked_bytes() -> set[tuple[int, int]]:
    """(inode, first byte) of each record lock some process is blocked waiting for
    (from /proc/locks)."""
    out = set()
    with open("/proc/locks") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 7 and parts[1] == "->":
                out.add((int(parts[6].rsplit(":", 1)[1]), int(parts[7])))
    return out


@pytest.mark.parametrize("quiet", [False, True])
def test_one_line_per_wait_naming_the_holder(tmp_path, demo, quiet):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    keys = [os.path.realpath(p) for p in demo.stacks]
    # The holder, as a copying process is: its entry locks, and a pin reserving them.
    locks = EntryLocks(cache.entry_locks_path)
    pin = PinFile(cache.pins_dir, keys)
    pin.reserved = {k: 1 for k in keys}
    pin.write()
    held = {}
    for k in keys:
        assert locks.try_lock(k)
        held[locks.where(k)] = k
    proc = start_cli(*_sync_args(demo, ssd, "--threads", "1", "--json",
                                 *(["--quiet"] if quiet else [])))
    try:
        released = 0
        # Release each entry lock only once the sync is blocked on it: every stack is a wait.
        while held:
            assert proc.poll() is None, proc.communicate()
            for at in _blocked_bytes() & set(held):
                locks.unlock(held.pop(at))
                released += 1
            time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
    finally:
        locks.close()
        pin.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["waited"] == released == len(keys)
    lines = err.splitlines()
    if quiet:
        assert lines == []
    else:
        assert len(lines) == 1, err
        assert "waiting for stacks being copied by another process" in lines[0]
        assert f"held by pid {os.getpid()} on " in lines[0]
