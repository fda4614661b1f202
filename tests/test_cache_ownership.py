"""Every file the cache made stays its own, whatever instant a kill -9 lands.

After each kill, ``clear`` must leave none of the cache's files (copies or
temporaries), and a foreign file put at an entry's location beforehand survives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from stacktools.cache import Cache
from tests.helpers import PY, final_files, kill_slow_worker, project, run_cli, same_stack

# Kills itself with SIGKILL at one exact point of the first copy.
POINT_WORKER = r"""
import json, os, signal, sys
import stacktools.cache.copy as cp
from stacktools.cache import Cache
where = sys.argv[3]
real_open, real_replace = getattr(cp, "open_own", None), os.replace
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def open_own(path, *a, **kw):
    fd = real_open(path, *a, **kw)
    if where == "after_create" and str(path).endswith(".stacktools-tmp"):
        die()
    return fd
def replace(a, b):
    if where == "before_rename" and str(a).endswith(".stacktools-tmp"):
        die()
    real_replace(a, b)
    if where == "after_rename" and str(a).endswith(".stacktools-tmp"):
        die()
cp.open_own, os.replace = open_own, replace
Cache(sys.argv[1], reserve_mb=0, threads=1).ensure(json.loads(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return project(tmp_path_factory.mktemp("own") / "P1", micrographs=12, per=(40, 80), box=48)


def _plant_foreign(ssd: Path, key: str) -> Path:
    """A file of someone else's at an entry's location, before the cache copies there."""
    dest = Path(str(ssd / "stacktools-cache" / "files") + key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"a user's own file, not a copy")
    return dest


def _cache_files(ssd: Path) -> list[Path]:
    base = ssd / "stacktools-cache" / "files"
    return sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink())


def _clear_and_check(ssd: Path, foreign: Path) -> None:
    run_cli("cache", "clear", "--yes", "--ssd-path", ssd, check=True)
    assert _cache_files(ssd) == [foreign], "clear left a file the cache made"
    assert foreign.read_bytes() == b"a user's own file, not a copy"


@pytest.mark.parametrize("where", ["after_create", "before_rename", "after_rename"])
def test_kill_at_each_point_of_a_copy_leaves_nothing_unowned(proj, tmp_path, where):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths[:3]]
    foreign = _plant_foreign(ssd, os.path.realpath(pset.stack_paths[5]))
    p = subprocess.run([PY, "-c", POINT_WORKER, str(ssd), json.dumps(paths), where],
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr  # the kill landed where it was meant to
    left = [f for f in _cache_files(ssd) if f != foreign]
    # Later copies may start while earlier ones are synced and renamed: their
    # temporaries may be left too, each named in the ledger before it was created.
    finals = [f for f in left if not f.name.endswith(".stacktools-tmp")]
    temps = [f for f in left if f.name.endswith(".stacktools-tmp")]
    ledger = _ledger(ssd)
    claimed = {r["tmp"] for r in ledger if r.get("op") == "tmp"}
    recorded = {r["ino"] for r in ledger if r.get("op") == "copy"}
    assert all(f.name in claimed for f in temps)
    if where == "after_create":
        assert len(left) == 1 and temps == left
    elif where == "before_rename":
        assert finals == [] and any(f.stat().st_ino in recorded for f in temps)
    else:
        # renamed, never recorded in the index: the set's, each inode in the ledger (a
        # second finishing thread may rename one more before the kill lands)
        assert 1 <= len(finals) <= 2
        assert all(f.name in {Path(p).name for p in paths} for f in finals)
        assert all(f.stat().st_ino in recorded for f in finals)
    _clear_and_check(ssd, foreign)


def _ledger(ssd: Path) -> list[dict]:
    text = (ssd / "stacktools-cache" / "ledger.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_sigkill_at_random_points_then_clear_leaves_nothing(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths]
    rng = random.Random(3)
    foreign = _plant_foreign(ssd, os.path.realpath(paths[-1]))
    mid_work = 0
    for _ in range(8):
        sub = rng.sample(paths[:-1], 10)
        threads = rng.choice([1, 2])
        out = kill_slow_worker(ssd, sub, threads, rng.uniform(0.05, 0.7))
        finished = b"copied" in out
        made_files = [f for f in _cache_files(ssd) if f != foreign]
        # Mid-work: killed before it finished, with some of its files on the SSD.
        mid_work += (not finished) and bool(made_files)
        _clear_and_check(ssd, foreign)
    assert mid_work >= 4, f"only {mid_work} of 8 kills landed mid-work"
    assert final_files(ssd) == [foreign]


# Copies a set, and once the batch's data is durable (before any rename) says so
# and waits to be killed.
DURABLE_WORKER = r"""
import json, sys, time
import stacktools.cache.batch as batch
from stacktools.cache import Cache
real = batch.make_durable
def make_durable(fd, temps):
    real(fd, temps)
    print(json.dumps(sorted(temps)), flush=True)
    time.sleep(600)
batch.make_durable = make_durable
Cache(sys.argv[1], reserve_mb=0, threads=int(sys.argv[3])).ensure(json.loads(sys.argv[2]))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_kill_between_the_batch_sync_and_its_renames(proj, tmp_path, threads):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in pset.stack_paths[:8]]
    foreign = _plant_foreign(ssd, os.path.realpath(pset.stack_paths[9]))
    p = subprocess.Popen([PY, "-c", DURABLE_WORKER, str(ssd), json.dumps(paths), str(threads)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line, p.communicate()[1]
    synced = json.loads(line)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    # The kill landed after the sync, before any rename: every copy of the set is a
    # complete temporary, recorded in the ledger; no final name was made.
    left = [f for f in _cache_files(ssd) if f != foreign]
    assert sorted(map(str, left)) == synced and len(synced) == len(paths)
    assert final_files(ssd) == [foreign]
    recorded = {r["tmp"]: r for r in _ledger(ssd) if r.get("op") == "copy"}
    assert {recorded[t.name]["key"] for t in left} == {os.path.realpath(x) for x in paths}
    for t in left:
        assert recorded[t.name]["ino"] == t.stat().st_ino
        assert t.read_bytes() == Path(recorded[t.name]["key"]).read_bytes()
    # A rerun copies the set (sweeping the crashed temporaries) and serves only
    # faithful copies; clear then removes what the cache made, and only that.
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copied == len(paths)
    for src, dst in res.paths.items():
        same_stack(src, dst)
    assert [f for f in _cache_files(ssd) if f.name.endswith(".stacktools-tmp")] == []
    _clear_and_check(ssd, foreign)
