"""Benchmark consolidation on a Dask cluster against the in-process path, same plan, same machine.

The data is ``bench_consolidate``'s (box 256 float32 stacks of 250 particles, a
random 25% subset; ``large``: 160 stacks, 10.5 GB of sources, 2.6 GB written).
One ``LocalCluster`` of two single-threaded worker processes is started before the
rounds (its start-up is timed once, apart). Each round, in random order, times:

* ``in-process``: :func:`stacktools.consolidate.consolidate` (its thread pool);
* ``dask``: the same call through :func:`stacktools.api.consolidate_particles`
  with ``client=`` (plan on the client, one task per stack on the workers);
* ``cp`` of one file of the consolidated byte count (the floor).

Before every run, untimed: the output is deleted, the selected particles are read
back into the page cache and ``sync`` runs. The ratio is the median over rounds of
(dask / in-process in the same round). Usage::

    python -m benchmarks.bench_cluster [--size large] [--repeats 5] [--workers 2] [--threads-per-worker 1]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_consolidate import SIZES, reuse_data, warm_selected
from benchmarks.common import make_project

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--data", type=Path, default=HERE / "data" / "consolidate")
    ap.add_argument("--keep-data", action="store_true", help="Keep the generated project for a later run.")
    args = ap.parse_args()

    import distributed

    from stacktools import api
    from stacktools.consolidate import consolidate

    root = args.data / args.size
    if (root / "P1" / "done").exists():
        made = reuse_data(root / "P1")
    else:
        shutil.rmtree(root, ignore_errors=True)
        print(f"[{args.size}] generating {SIZES[args.size]} stacks ...", file=sys.stderr, flush=True)
        made = make_project(root / "P1", stacks=SIZES[args.size], per_stack=250, box=256, select_fraction=0.25)
        (root / "P1" / "done").touch()
    out = made.project_dir / "out"
    cp_src, cp_dst = root / "cp-src.bin", root / "cp-dst.bin"

    t = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                                       processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    startup = time.perf_counter() - t
    try:
        res = consolidate(made.selected_cs, out)
        nbytes = res.bytes_written
        with open(cp_src, "wb") as fh:
            block = b"\1" * (1 << 20)
            for _ in range(nbytes >> 20):
                fh.write(block)

        def run_local():
            consolidate(made.selected_cs, out)

        def run_dask():
            api.consolidate_particles(made.selected_cs, out, client=client)

        def run_cp():
            subprocess.run(["cp", str(cp_src), str(cp_dst)], check=True)

        tools = {"in-process": run_local, "dask": run_dask, "cp": run_cp}
        times: dict[str, list[float]] = {k: [] for k in tools}
        for rnd in range(args.repeats + 1):
            order = list(tools)
            random.shuffle(order)
            for name in order:
                shutil.rmtree(out, ignore_errors=True)
                cp_dst.unlink(missing_ok=True)
                warm_selected(made)
                with open(cp_src, "rb") as fh:
                    while fh.read(64 << 20):
                        pass
                subprocess.run(["sync"], check=True)
                t = time.perf_counter()
                tools[name]()
                dt = time.perf_counter() - t
                if rnd:  # the first round warms up
                    times[name].append(dt)
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(out, ignore_errors=True)
        cp_src.unlink(missing_ok=True)
        cp_dst.unlink(missing_ok=True)
        if not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)

    ratio = statistics.median(d / i for d, i in zip(times["dask"], times["in-process"]))
    print(f"{args.size}: {SIZES[args.size]} stacks, {nbytes / 1e9:.2f} GB written; "
          f"LocalCluster({args.workers} workers x {args.threads_per_worker} threads) "
          f"start-up {startup:.2f} s (not in the times)")
    print("| path | median | best | ratio to in-process (median of per-round ratios) |")
    print("| --- | --- | --- | --- |")
    for name in tools:
        r = statistics.median(a / b for a, b in zip(times[name], times["in-process"]))
        print(f"| {name} | {statistics.median(times[name]):.2f} s | {min(times[name]):.2f} s | {r:.2f}× |")
    print(f"dask / in-process: {ratio:.2f}×")


if __name__ == "__main__":
    main()
