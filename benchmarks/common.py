"""Shared by the benchmarks: timing, generated projects, the command, tables and results."""

from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def _times(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    return min(_times(fn, repeat))


def median_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    return statistics.median(_times(fn, repeat))


def command(cmd: list[str]) -> Callable[[], object]:
    """A call that runs ``cmd`` to completion, output discarded, failing loudly."""
    return lambda: subprocess.run(cmd, check=True, capture_output=True)


def stacktools_command() -> list[str]:
    """The installed ``stacktools`` script beside this interpreter, else ``python -m``."""
    exe = Path(sys.executable).parent / "stacktools"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "stacktools.cli.app"]


def make_project(root: Path, *, stacks: int, per_stack: int, box: int, **kw):
    """A CryoSPARC-shaped project (stacktools.demo) of ``stacks`` float32 stacks of
    ``per_stack`` particles each (``float16_every=1``: float16 stacks); ``kw`` goes to
    make_demo_project."""
    from stacktools.demo import make_demo_project
    kw.setdefault("extended_header_stack", None)
    kw.setdefault("float16_every", 0)
    return make_demo_project(root, micrographs=stacks, particles_per_micrograph=(per_stack, per_stack),
                             box=box, **kw)


def warm_page_cache(paths) -> None:
    """Read every file once, so that each contender starts from the same page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass


def _commit() -> dict:
    """The git commit of the stacktools being measured, and whether its tree is edited."""
    import stacktools
    where = Path(stacktools.__file__).resolve().parent
    git = ["git", "-C", str(where)]
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if sha.returncode != 0:  # an installed copy, not a checkout
        return {"commit": None, "dirty": None}
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty)}


class Results:
    """One JSON line per result, appended to ``benchmarks/results/<bench>.jsonl``."""

    def __init__(self, bench: str, params: dict):
        self.bench, self.params = bench, dict(params)
        self.path = RESULTS / f"{bench}.jsonl"
        self._commit = _commit()
        self.count = 0

    def add(self, name: str, seconds: float, baseline: str | None = None,
            baseline_seconds: float | None = None, ratio: float | None = None,
            params: dict | None = None, **extra) -> None:
        """Record ``name``; ``ratio`` defaults to seconds / baseline_seconds."""
        if ratio is None and baseline_seconds:
            ratio = seconds / baseline_seconds
        row = {"bench": self.bench, "name": name, "seconds": seconds, "baseline": baseline,
               "ratio": ratio, "params": {**self.params, **(params or {})}, **extra,
               **self._commit,
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        RESULTS.mkdir(exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.count += 1

    def report(self) -> None:
        print(f"\n{self.count} results appended to {self.path}")


def print_table(title: str, rows: list[tuple[str, float]], baseline: str,
                results: Results) -> None:
    """Print ``rows`` of (name, seconds) as a Markdown table with ratios to ``baseline``,
    and record each row."""
    base = dict(rows)[baseline]
    print(f"\n{title}\n")
    print("| what | time | ratio to " + baseline + " |")
    print("| --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t * 1000:.1f} ms | {t / base:.2f}× |")
        results.add(name, t, baseline, base, params={"table": title})
