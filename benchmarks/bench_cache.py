"""SSD cache: cold fills against `cp -r && sync`, and a warm check against a bare stat loop.

Run: python -m benchmarks.bench_cache [--cold SETS] [--repeat 5] [--stacks 100000]
     [--dir DIR] [--cold-only]

Cold: sets of stacks (``--cold 60x6.5M,10000x2K``, add ``100000x2K`` for a large
set) copied by `cp -r` followed by `sync` (the durability the cache gives: a copy
is named only once its data is on disk) and by `Cache.ensure` (what `stacktools
cache sync` runs once the set is read) into an empty cache, with the default
threads and with one, content digests recorded. Rounds alternate the contenders
and each ratio is the median of the rounds' own ratios; absolute times per stack
are printed too (the machine is shared). Page cache warm, `sync` before each run,
source and SSD on the same filesystem, up to 1,000 stacks per directory.

Warm: an already-cached set of N tiny stacks. `Cache.ensure(paths)` (pin, stat
each source, stat each copy, record the access as one row) against a bare
`os.stat` loop over the sources, and over sources and copies. The copies are
written directly, with the source's mtime and an index row, to keep setup short.
Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Results, best_of, print_table, warm_page_cache
from stacktools.cache import Cache
from stacktools.cache.config import DEFAULT_THREADS

_UNITS = {"K": 1000, "M": 1000**2, "G": 1000**3}


def parse_sets(text: str) -> list[tuple[int, int]]:
    """``"60x6.5M,10000x2K"`` -> [(60, 6500000), (10000, 2000)] (decimal units)."""
    out = []
    for part in text.split(","):
        n, _, size = part.strip().partition("x")
        unit = _UNITS.get(size[-1:].upper(), 1)
        out.append((int(n), int(float(size.rstrip("KMGkmg")) * unit)))
    return out


def make_stacks(root: Path, n: int, size: int, per_dir: int = 1000) -> list[str]:
    """``n`` files of ``size`` random bytes, ``per_dir`` to a directory (as extract jobs)."""
    paths = []
    block = os.urandom(min(size, 8 << 20))
    for i in range(n):
        d = root / f"J{i // per_dir}" / "extract"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        p = d / f"{i:06d}_particles.mrc"
        with open(p, "wb") as fh:
            left = size
            fh.write(i.to_bytes(8, "little"))  # no two stacks alike
            left -= 8
            while left > 0:
                fh.write(block[:left])
                left -= len(block[:left])
        paths.append(str(p))
    return paths


def cold(work: Path, n: int, size: int, repeat: int, results: Results) -> None:
    src = work / "src"
    paths = make_stacks(src, n, size)
    total = n * size
    warm_page_cache(paths)

    def fresh(name: str) -> Path:
        """An empty destination, with no writeback left over to slow the next run (untimed)."""
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        os.sync()
        return d

    def cp_sync(d: Path) -> None:
        subprocess.run(["cp", "-r", str(src), str(d / "src")], check=True)
        subprocess.run(["sync"], check=True)

    def ours(threads: int):
        def run(d: Path) -> None:
            res = Cache(d, reserve_mb=0, threads=threads).ensure(paths)
            assert res.copied == len(paths)
        return run

    names = {"cp -r && sync": cp_sync,
             f"stacktools cache sync ({DEFAULT_THREADS} threads, the default)": ours(DEFAULT_THREADS),
             "stacktools cache sync (1 thread)": ours(1)}
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(repeat):
        for name, fn in names.items():
            d = fresh("out")
            t = time.perf_counter()
            fn(d)
            times[name].append(time.perf_counter() - t)
    label = f"{n:,} × {size / 1e3:,.4g} kB ({total / 1e6:,.0f} MB)"
    base = times["cp -r && sync"]
    print(f"\nCold fill of {label}, {repeat} rounds; load before: {os.getloadavg()[0]:.2f}\n")
    print("| what | median time | per stack | paired median ratio to cp -r && sync | range |")
    print("| --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:,.0f} ms | {med / n * 1e6:,.0f} µs | "
              f"{statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× |")
        results.add(f"cold fill {label}: {name}", med, "cp -r && sync", ratio=statistics.median(ratios),
                    params={"stacks": n, "stack_bytes": size, "rounds": repeat,
                            "per_stack_s": med / n, "ratios": ratios})
    shutil.rmtree(work, ignore_errors=True)


def warm(work: Path, n: int, repeat: int, results: Results) -> None:
    src = work / "src"
    ssd = work / "ssd"
    ssd.mkdir(parents=True)
    cache = Cache(ssd, reserve_mb=0)
    per_dir = 1000
    paths = []
    rows_idx = []
    now = time.time()
    payload = b"\0" * 64
    for i in range(n):
        d = src / f"J{i // per_dir}" / "extract"
        if i % per_dir == 0:
            d.mkdir(parents=True)
            cd = Path(cache.cached_path(str(d.resolve())))
            cd.mkdir(parents=True)
        p = d / f"stack_{i:06d}_particles.mrc"
        p.write_bytes(payload)
        st = os.stat(p)
        c = Path(cache.cached_path(str(p.resolve())))
        c.write_bytes(payload)
        os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns))
        paths.append(str(p))
        rows_idx.append({"key": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                         "ino": os.stat(c).st_ino, "created": now, "last_access": now,
                         "owner": "bench", "project": str(src), "digest": ""})
    cache.index.record(rows_idx)
    cached = [cache.cached_path(r["key"]) for r in rows_idx]

    def stat_sources():
        for p in paths:
            os.stat(p)

    def stat_both():
        for p, c in zip(paths, cached):
            os.stat(p)
            os.stat(c)

    def ensure():
        res = Cache(ssd, reserve_mb=0).ensure(paths)
        assert res.copied == 0 and res.reused == n

    def check_only():
        c = Cache(ssd, reserve_mb=0)
        stacks = c.sources(paths)
        assert len(c.check(stacks)) == n

    ensure()  # first access after setup: records the set
    rows = [("os.stat loop over the sources", best_of(stat_sources, repeat)),
            ("os.stat loop over sources and copies", best_of(stat_both, repeat)),
            ("Cache.sources + Cache.check (validity only)", best_of(check_only, repeat)),
            ("Cache.ensure (pin, check, record access)", best_of(ensure, repeat))]
    print_table(f"Warm check of {n:,} cached stacks (best of {repeat})", rows,
                "os.stat loop over the sources", results)
    both = dict(rows)["os.stat loop over sources and copies"]
    ensure_s = dict(rows)["Cache.ensure (pin, check, record access)"]
    print(f"\nCache.ensure / stat of sources and copies: {ensure_s / both:.2f}×")
    counts = _count_stats(ssd, paths)
    if counts:
        print(f"system calls per stack in a warm Cache.check (strace): {counts}")


def _count_stats(ssd: Path, paths: list[str]) -> str:
    """stat-family system calls per stack for a warm check, if strace is available."""
    if shutil.which("strace") is None:
        return ""
    import json
    lst = ssd.parent / "paths.json"
    lst.write_text(json.dumps(paths))
    code = ("import json,sys; from stacktools.cache import Cache; c=Cache(sys.argv[1], reserve_mb=0); "
            "p=json.load(open(sys.argv[2])); s=c.sources(p); c.check(s)")
    r = subprocess.run(["strace", "-f", "-c", "-e", "trace=stat,lstat,newfstatat,statx",
                        sys.executable, "-c", code, str(ssd), str(lst)], capture_output=True, text=True)
    total = 0
    for line in r.stderr.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("stat", "lstat", "newfstatat", "statx"):
            total += int(parts[3])
    return f"{total / len(paths):.2f}" if total else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", default="60x6.5M,10000x2K",
                    help="cold sets, COUNTxSIZE separated by commas (add 100000x2K for a large one)")
    ap.add_argument("--stacks", type=int, default=100_000, help="stacks in the warm check")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--cold-only", action="store_true", help="skip the warm check")
    args = ap.parse_args()
    results = Results("bench_cache", {"cold": args.cold, "stacks": args.stacks, "repeat": args.repeat})
    work = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.dir))
    print(f"load: {os.getloadavg()}")
    try:
        for i, (n, size) in enumerate(parse_sets(args.cold)):
            cold(work / f"cold{i}", n, size, args.repeat, results)
        if not args.cold_only:
            warm(work / "warm", args.stacks, min(args.repeat, 3), results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {os.getloadavg()}")
    results.report()


if __name__ == "__main__":
    main()
