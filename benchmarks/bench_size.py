"""Size 1,000,000 particles in 10,000 stacks: stacktools against header-reading loops.

Run: python -m benchmarks.bench_size [--stacks 10000] [--per-stack 100] [--rounds 9]

The stacks are sparse files (headers real, pixels holes), so the data set costs little
disk. Baselines over the same files, warm page cache:
  - a bare loop of os.open + os.fstat + os.pread(fd, 1024, 0) + os.close (the physical
    floor: stacktools needs each file's size and mtime as well as its header; the ratios
    are to this loop);
  - the same without the fstat;
  - a naive loop of mrcfile.open(header_only=True).

Paired rounds: each round runs the bare loop and then every contender once, and a
contender's ratio is the median over rounds of its time / the bare loop's time in
that round, so that load from other work on the machine moves both sides together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from benchmarks.common import Results, best_of, command, make_project, stacktools_command
from stacktools.particles import ParticleSet
from stacktools.size import size_particles


def _paired_rounds(contenders, base: str, rounds: int, results: Results) -> None:
    """Run every contender once per round; print and record each one's median ratio to
    ``base`` over the rounds."""
    times: dict[str, list[float]] = {k: [] for k, _ in contenders}
    for _ in range(rounds):
        for k, fn in contenders:
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    print("| what | median time | ratio to the bare loop¹ | range of the ratio |")
    print("| --- | --- | --- | --- |")
    for k, _ in contenders:
        ratios = [t / b for t, b in zip(times[k], times[base])]
        med = statistics.median(times[k])
        ratio = statistics.median(ratios)
        print(f"| {k} | {med * 1000:.1f} ms | {ratio:.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× |")
        results.add(k, med, base, ratio=ratio, ratio_min=min(ratios), ratio_max=max(ratios))
    print("\n¹ median over rounds of (time / the bare loop's time in the same round).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=10_000)
    ap.add_argument("--per-stack", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args()
    results = Results("bench_size", {"stacks": args.stacks, "per_stack": args.per_stack, "box": 256})
    root = Path(tempfile.mkdtemp(prefix="bench-size-"))
    try:
        proj = make_project(root / "P1", stacks=args.stacks, per_stack=args.per_stack, box=256,
                            sparse=True, select_fraction=0.25, extended_header_stack=1)
        cs = proj.extracted_cs
        paths = [str(p) for p in ParticleSet.open(cs, proj.project_dir).stack_paths]
        n = proj.particles
        print(f"{n:,} particles in {len(paths):,} stacks; .cs {cs.stat().st_size:,} bytes")

        def bare():
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                os.pread(fd, 1024, 0)
                os.close(fd)

        def bare_fstat():
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                os.fstat(fd)
                os.pread(fd, 1024, 0)
                os.close(fd)

        def naive():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for p in paths:
                    with mrcfile.open(p, header_only=True, permissive=True) as m:
                        int(m.header.nz)

        data = np.load(cs)

        def ours_validate():
            ps = ParticleSet(data, proj.project_dir, cs)
            size_particles(ps)

        def ours_full():
            size_particles(ParticleSet.open(cs, proj.project_dir))

        def np_load():
            np.load(cs)

        # Warm the page cache and the dentry cache.
        bare()
        ours_full()
        grouped = ParticleSet(data, proj.project_dir, cs)
        _ = grouped.stack_paths  # group rows by stack once; the header phase starts from here

        def ours_header_phase():
            q = ParticleSet(data, proj.project_dir, cs)
            q._codes, q._blob_paths = grouped._codes, grouped._blob_paths
            q.header_table()

        def ours_header_objects():
            q = ParticleSet(data, proj.project_dir, cs)
            q._codes, q._blob_paths = grouped._codes, grouped._blob_paths
            q.stack_headers()

        def ours_sum():
            size_particles(sized, validate=False)

        sized = ParticleSet(data, proj.project_dir, cs)
        sized._codes, sized._blob_paths = grouped._codes, grouped._blob_paths
        sized.header_table()
        base = "bare os.open + os.fstat + os.pread(1024) loop"
        contenders = [
            (base, bare_fstat),
            ("bare os.open + os.pread(1024) loop", bare),
            ("naive mrcfile.open(header_only=True) loop", naive),
            (f"stacktools: read the {len(paths):,} headers (ParticleSet.header_table, what size uses)",
             ours_header_phase),
            (f"stacktools: the same as {len(paths):,} StackHeader objects (ParticleSet.stack_headers)",
             ours_header_objects),
            ("stacktools: size_particles' sums once the headers are read", ours_sum),
            ("stacktools: size an already-loaded set (group + headers + checks)", ours_validate),
            ("np.load of the .cs", np_load),
            ("stacktools: size_particles(ParticleSet.open(cs)) end to end", ours_full),
        ]
        print(f"\nSizing {n:,} particles in {len(paths):,} stacks ({args.rounds} paired rounds)\n")
        _paired_rounds(contenders, base, args.rounds, results)
        t = best_of(command([*stacktools_command(), "size", str(cs), "--project-dir",
                             str(proj.project_dir), "--json"]))
        print(f"\n`stacktools size ... --json` as a command, start-up included: {t:.2f} s")
        results.add("stacktools size --json, as a command", t)
        results.report()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"data kept in {root}")


if __name__ == "__main__":
    main()
