"""`stacktools check` against `cat` of the same stacks to /dev/null, warm and cold.

Run: python -m benchmarks.bench_check [--stacks 48] [--per-stack 250] [--box 256] [--repeat 5]
     [--threads N] [--no-cold] [--keep DIR]

A CryoSPARC-shaped project of float32 stacks in which every particle is selected, so
that `check` reads the same bytes `cat` does (headers aside). Each round times, one
after the other: `cat`, the whole `stacktools check` process and `check_particles`
in this process (no start-up) from a warm page cache, then `cat` and the whole
command again with the stacks cold: before each side the stacks' pages are dropped
from the page cache (`sync`, then `posix_fadvise(POSIX_FADV_DONTNEED)` on each
stack), so that both read the stacks from the disk while the programs themselves
stay cached, as they are on a node that has run them once. `--drop-all` instead
empties the whole page cache (`echo 3 > /proc/sys/vm/drop_caches`, root), which
also makes the interpreter and NumPy load from the disk.
Ratios are paired: tool / `cat` in the same round, and the median of those. Peak
RSS from /usr/bin/time; the load average (`/proc/loadavg`) is printed per round.
"""

from __future__ import annotations

import argparse
import os
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


def _drop_caches(stacks: list[str], everything: bool) -> None:
    subprocess.run(["sync"], check=True)
    if everything:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    for s in stacks:
        fd = os.open(s, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=48)
    ap.add_argument("--per-stack", type=int, default=250)
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="check's --threads [default: its own]")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache rounds")
    ap.add_argument("--drop-all", action="store_true",
                    help="cold rounds empty the whole page cache, programs included [default: the stacks only]")
    ap.add_argument("--keep", type=Path, default=None, help="make (or reuse) the project here and keep it")
    args = ap.parse_args()
    from stacktools.check import DEFAULT_THREADS, check_particles
    from stacktools.particles import ParticleSet

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        if (root / "P1").exists():
            from types import SimpleNamespace
            cs = root / "P1" / "J7" / "J7_particles_selected.cs"  # as make_project names it
            proj = SimpleNamespace(selected_cs=cs, stacks=sorted((root / "P1").glob("J5/extract/*.mrc*")))
        else:
            proj = make_project(root / "P1", stacks=args.stacks, per_stack=args.per_stack, box=args.box,
                                select_fraction=1.0)
        stacks = [str(s) for s in proj.stacks]
        nbytes = sum(Path(s).stat().st_size for s in stacks)
        threads = args.threads or DEFAULT_THREADS
        print(f"{len(stacks)} stacks, {nbytes:,} bytes ({nbytes / 1e9:.2f} GB); check on {threads} threads, "
              f"{os.cpu_count()} cores")
        cat = ["cat", *stacks]
        check = [*stacktools_command(), "check", str(proj.selected_cs), "--quiet", "--threads", str(threads)]
        pset = ParticleSet.open(proj.selected_cs)
        warm_page_cache(stacks)
        _timed(cat), _timed(check)  # one uncounted round
        rows = []
        rss = 0
        for r in range(args.repeat):
            load = _load()
            t_cat, _ = _timed(cat)
            t_chk, kb = _timed(check)
            rss = max(rss, kb)
            t0 = time.perf_counter()
            check_particles(pset, threads=threads)
            t_in = time.perf_counter() - t0
            row = {"load": load, "cat": t_cat, "check": t_chk, "in_process": t_in}
            if not args.no_cold:
                _drop_caches(stacks, args.drop_all)
                row["cold_cat"], _ = _timed(cat)
                _drop_caches(stacks, args.drop_all)
                row["cold_check"], _ = _timed(check)
                warm_page_cache(stacks)
            rows.append(row)
            cold = (f"  cold: cat {row['cold_cat']:.2f} s, check {row['cold_check']:.2f} s "
                    f"({row['cold_check'] / row['cold_cat']:.2f}x)") if not args.no_cold else ""
            print(f"round {r + 1} (load {load}): warm: cat {t_cat:.2f} s, check {t_chk:.2f} s "
                  f"({t_chk / t_cat:.2f}x), in process {t_in:.2f} s ({t_in / t_cat:.2f}x){cold}")

        def ratio(a: str, b: str) -> float:
            return statistics.median(x[a] / x[b] for x in rows)

        results = Results("bench_check", {**vars(args), "keep": str(args.keep), "threads": threads,
                                           "bytes": nbytes})
        print("\n| what | median time | median ratio to `cat` in its round | throughput |\n| --- | --- | --- | --- |")
        cases = [("warm: `cat stacks > /dev/null`", "cat", "cat"),
                 ("warm: `stacktools check --quiet`", "check", "cat"),
                 ("warm: `check_particles` in process", "in_process", "cat")]
        if not args.no_cold:
            cases += [("cold: `cat stacks > /dev/null`", "cold_cat", "cold_cat"),
                      ("cold: `stacktools check --quiet`", "cold_check", "cold_cat")]
        for name, key, base in cases:
            med = statistics.median(x[key] for x in rows)
            print(f"| {name} | {med:.2f} s | {ratio(key, base):.2f}× | {nbytes / med / 1e9:.2f} GB/s |")
            results.add(name, med, None, ratio=ratio(key, base))
        print(f"\npeak RSS of `stacktools check`: {rss // 1024} MiB; load {_load()} at the end")
        results.report()
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
