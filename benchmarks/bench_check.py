"""`stacktools check` against `cat` of the same stacks to /dev/null.

Run: python -m benchmarks.bench_check [--stacks 40] [--per-stack 250] [--box 256] [--repeat 5]

A CryoSPARC-shaped project of float32 stacks in which every particle is selected, so
that `check` reads the same bytes `cat` does (headers aside). Warm page cache: both
read from memory, so this measures the cost of the checks, not the disk. Each round
runs both once; the ratio is the median over rounds of check / cat in that round.
Peak RSS from /usr/bin/time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import Results, make_project, stacktools_command, warm_page_cache


def _timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed: {res.stderr}")
    return dt, int(res.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=40)
    ap.add_argument("--per-stack", type=int, default=250)
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        proj = make_project(root / "P1", stacks=args.stacks, per_stack=args.per_stack, box=args.box,
                            select_fraction=1.0)
        stacks = [str(s) for s in proj.stacks]
        nbytes = sum(Path(s).stat().st_size for s in stacks)
        print(f"{proj.selected:,} particles in {len(stacks)} stacks, {nbytes / 1e9:.2f} GB")
        cases = {
            "cat stacks > /dev/null": ["cat", *stacks],
            "stacktools check --quiet": [*stacktools_command(), "check", str(proj.selected_cs), "--quiet"],
            "stacktools check --outliers 6 --quiet": [*stacktools_command(), "check", str(proj.selected_cs),
                                                      "--outliers", "6", "--quiet"],
        }
        warm_page_cache(stacks)
        for cmd in cases.values():  # one uncounted round
            _timed(cmd)
        times = {k: [] for k in cases}
        rss = {k: 0 for k in cases}
        for _ in range(args.repeat):
            for k, cmd in cases.items():
                dt, kb = _timed(cmd)
                times[k].append(dt)
                rss[k] = max(rss[k], kb)
        base = "cat stacks > /dev/null"
        results = Results("bench_check", vars(args))
        print("\n| what | median time | ratio to `cat`¹ | throughput | peak RSS |\n| --- | --- | --- | --- | --- |")
        for k in cases:
            ratio = statistics.median(t / b for t, b in zip(times[k], times[base]))
            med = statistics.median(times[k])
            print(f"| `{k}` | {med:.2f} s | {ratio:.2f}× | {nbytes / med / 1e9:.2f} GB/s | {rss[k] // 1024} MiB |")
            results.add(k, med, base, ratio=ratio, peak_rss_kib=rss[k])
        print("\n¹ median over rounds of (time / cat's time in the same round).")
        results.report()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
