"""Size 1,000,000 particles in 10,000 stacks: stacktools against header-reading loops.

Run: python -m benchmarks.bench_size [--stacks 10000] [--per-stack 100]

The stacks are sparse files (headers real, pixels holes), so the data set costs little
disk. Baselines over the same files, warm page cache:
  - a bare loop of os.open + os.fstat + os.pread(fd, 1024, 0) + os.close (the physical
    floor: stacktools needs each file's size and mtime as well as its header; the ratios
    are to this loop);
  - the same without the fstat;
  - a naive loop of mrcfile.open(header_only=True).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from benchmarks.common import Results, best_of, command, make_project, print_table, stacktools_command
from stacktools.particles import ParticleSet
from stacktools.size import size_particles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=10_000)
    ap.add_argument("--per-stack", type=int, default=100)
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
            q.stack_headers()

        rows = [
            ("bare os.open + os.fstat + os.pread(1024) loop", best_of(bare_fstat)),
            ("bare os.open + os.pread(1024) loop", best_of(bare)),
            ("naive mrcfile.open(header_only=True) loop", best_of(naive)),
            (f"stacktools: read the {len(paths):,} headers", best_of(ours_header_phase)),
            ("stacktools: size an already-loaded set (group + headers + checks)", best_of(ours_validate)),
            ("np.load of the .cs", best_of(np_load)),
            ("stacktools: size_particles(ParticleSet.open(cs)) end to end", best_of(ours_full)),
        ]
        print_table(f"Sizing {n:,} particles in {len(paths):,} stacks (best of 3)", rows,
                    "bare os.open + os.fstat + os.pread(1024) loop", results)
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
