"""stacktools check against ``cat`` of the same stacks to /dev/null, paired per round.

    python -m benchmarks.bench_check [--stacks 8] [--per-stack 100] [--box 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import command, make_project, stacktools_command, warm_page_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=8)
    ap.add_argument("--per-stack", type=int, default=100)
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        proj = make_project(Path(tmp) / "P", stacks=args.stacks, per_stack=args.per_stack, box=args.box,
                            select_fraction=1.0)
        stacks = [str(s) for s in proj.stacks]
        warm_page_cache(stacks)
        check = command(stacktools_command() + ["check", str(proj.extracted_cs), "--project-dir",
                                                str(proj.project_dir), "--json"])
        cat = lambda: __import__("subprocess").run(  # noqa: E731
            f"cat {' '.join(stacks)} > /dev/null", shell=True, check=True)
        ratios, ours, theirs = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            check()
            a = time.perf_counter() - t
            t = time.perf_counter()
            cat()
            b = time.perf_counter() - t
            ours.append(a)
            theirs.append(b)
            ratios.append(a / b)
        nbytes = sum(Path(s).stat().st_size for s in stacks)
        print(f"{nbytes / 2**20:.0f} MiB in {len(stacks)} stacks: check {statistics.median(ours):.2f} s, "
              f"cat {statistics.median(theirs):.2f} s, check/cat {statistics.median(ratios):.2f}x (paired median)")


if __name__ == "__main__":
    main()
