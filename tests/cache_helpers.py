"""Helpers for the cache tests: small projects, subsets, and a slow worker process."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stacktools.demo import make_demo_project
from stacktools.formats.cs import write_cs
from stacktools.particles import ParticleSet

PY = sys.executable
STACKTOOLS = [PY, "-m", "stacktools.cli.app"]


def project(root: Path, micrographs: int = 24, per: tuple[int, int] = (8, 16), box: int = 32):
    """A small project; returns (DemoProject, ParticleSet of all particles)."""
    made = make_demo_project(root, micrographs=micrographs, particles_per_micrograph=per, box=box,
                             extended_header_stack=None)
    return made, ParticleSet.open(made.extracted_cs, made.project_dir)


def subset_cs(pset: ParticleSet, stacks: list[int], out: Path) -> Path:
    """Write a .cs with the rows of the given stack positions."""
    keep = np.isin(pset.stack_codes, stacks)
    write_cs(out, pset.data[keep])
    return out


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*STACKTOOLS, *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"stacktools {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
    return p


def cli_json(*args: str) -> dict:
    return json.loads(run_cli(*args, "--json").stdout)


def ledger_copies(ssd: Path) -> list[str]:
    """Keys of the ledger's ``copy`` lines (one per copy renamed into place)."""
    p = ssd / "stacktools-cache" / "ledger.jsonl"
    if not p.exists():
        return []
    recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return [r["key"] for r in recs if r.get("op", "copy") == "copy"]


def final_files(ssd: Path) -> list[Path]:
    """Files under their final names in the cache (temporaries excluded)."""
    base = ssd / "stacktools-cache" / "files"
    return [p for p in base.rglob("*") if (p.is_file() or p.is_symlink())
            and not p.name.endswith(".stacktools-tmp")]


def no_lock_held(ssd: Path) -> bool:
    """Every lock and pin file can be taken right now (nobody holds one)."""
    root = ssd / "stacktools-cache"
    for p in [root / "space.lock", *(root / "locks").glob("*"), *(root / "pins").glob("*")]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


def same_stack(src, dst) -> None:
    """Assert that ``dst`` holds ``src``'s bytes, read with the independent reader only."""
    from independent import header, read_particle
    assert os.path.getsize(dst) == os.path.getsize(src), f"{dst}: size differs from {src}"
    h = header(src)
    assert header(dst) == h, f"{dst}: MRC header differs from {src}"
    for i in range(h["nz"]):
        assert read_particle(dst, i).tobytes() == read_particle(src, i).tobytes(), \
            f"{dst}: particle {i} differs from {src}"


# A syncing process slowed down (small chunks, a sleep per chunk: argv[4] seconds,
# default 3 ms) so that a SIGKILL lands mid-copy. Prints one JSON line per finished sync.
SLOW_WORKER = r"""
import json, sys, time
import stacktools.cache.copy as cp
cp.CHUNK = 16 * 1024
from stacktools.cache import Cache
paths = json.loads(sys.argv[2])
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.003
cache = Cache(sys.argv[1], reserve_mb=0, threads=int(sys.argv[3]))
print("ready", flush=True)
res = cache.ensure(paths, progress=lambda n: time.sleep(delay))
print(json.dumps({"copied": res.copied, "copies": res.copies}), flush=True)
"""


def kill_slow_worker(ssd: Path, paths: list[str], threads: int, after_s: float) -> bytes:
    """Run SLOW_WORKER on ``paths``, SIGKILL it ``after_s`` seconds after it is ready.

    Returns what it printed (``b"copied"`` appears in it only if it finished first).
    """
    p = subprocess.Popen([PY, "-c", SLOW_WORKER, str(ssd), json.dumps(paths), str(threads)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(after_s)
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate()
    return out


# Syncs random sets under a tight quota, holding each while it reads every file back
# and compares it with its source; prints one JSON summary line.
EVICTING_WORKER = r"""
import filecmp, json, random, sys, time
from stacktools.cache import Cache
from stacktools.errors import CacheFullError
ssd, paths, quota_mb, seed = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
done = full = bad = evicted = 0
for _ in range(6):
    sub = rng.sample(paths, 4)
    try:
        with Cache(ssd, quota_mb=quota_mb, reserve_mb=0).ensure(sub, hold=True) as res:
            evicted += res.evicted
            time.sleep(0.05)
            for src, dst in res.paths.items():
                bad += not filecmp.cmp(src, dst, shallow=False)
        done += 1
    except CacheFullError:
        full += 1
print(json.dumps({"done": done, "full": full, "bad": bad, "evicted": evicted}), flush=True)
"""
