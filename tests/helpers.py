"""Shared test helpers: running the CLI, small cache projects, and slow worker processes.

Fixtures stay in conftest.py; byte checks use tests/independent.py, not stacktools.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stacktools.demo import make_demo_project
from stacktools.formats.cs import write_cs
from stacktools.particles import ParticleSet
from tests.independent import header, read_particle

PY = sys.executable


# --- the CLI: one command, run as a subprocess (or started in the background), or
# in this process through the same entry point -----------------------------------------

def stacktools_command() -> list[str]:
    """The installed ``stacktools`` script beside this interpreter, else ``python -m``."""
    exe = Path(PY).parent / "stacktools"
    return [str(exe)] if exe.exists() else [PY, "-m", "stacktools.cli.app"]


def run_cli(*args, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run ``stacktools ARGS`` in a subprocess; text output unless ``text=False``."""
    res = subprocess.run(stacktools_command() + [str(a) for a in args],
                         **{"capture_output": True, "text": True, **kw})
    if check and res.returncode != 0:
        raise AssertionError(f"stacktools {' '.join(map(str, args))} failed "
                             f"({res.returncode}):\n{res.stderr}")
    return res


def cli_json(*args) -> dict:
    """``stacktools ARGS --json``, which must succeed; its parsed output."""
    return json.loads(run_cli(*args, "--json", check=True).stdout)


def start_cli(*args, **kw) -> subprocess.Popen:
    """Start ``stacktools ARGS`` in the background; stdout and stderr piped, text."""
    return subprocess.Popen(stacktools_command() + [str(a) for a in args],
                            **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                               "text": True, **kw})


def invoke_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stacktools ARGS`` in this process through the real entry point (its error
    handling included), output captured by typer's CliRunner; same result as run_cli."""
    from stacktools.cli.app import main
    try:  # older Click mixes stderr into stdout unless told not to; newer has no such option
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    argv, code = sys.argv, 0
    with runner.isolation(env=env) as streams:
        out, err = streams[:2]
        sys.argv = ["stacktools", *map(str, args)]
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["stacktools", *map(str, args)], code, stdout, stderr)


def assert_one_line_error(res, *fragments: str) -> None:
    """A CLI failure: non-zero exit, one line on stderr naming what and where, no traceback."""
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@contextlib.contextmanager
def tmpfs(path: Path, size: str, inodes: int | None = None):
    """A tmpfs of ``size`` mounted at ``path`` (made here) for the block; the test skips
    where mounting is refused (it needs root)."""
    path.mkdir()
    opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- cache projects and what the cache left on the SSD ----------------------------------

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
    """Every lock and pin file can be taken right now (nobody holds one), and no byte
    of the entry lock file is record-locked."""
    root = ssd / "stacktools-cache"
    for entries in (root / "locks").glob("entries*.lock"):
        fd = os.open(entries, os.O_RDWR)
        try:
            flock = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len (0: to the end), pid
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, flock.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
            if flock.unpack(got)[0] != fcntl.F_UNLCK:
                return False
        finally:
            os.close(fd)
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
