"""to-star on a large set: the chunked NumPy writer against starfile's writer.

Run: python -m benchmarks.bench_star [--rows 500000] [--rounds 3]

Rows are the real J24 refinement (tests/data) tiled to ``--rows``. Each round
times both writers back to back on the same rows (paired), and prints the
per-round ratio and peak memory (tracemalloc) of each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from stacktools.cs.relion import star_loops, to_star_blocks
from stacktools.formats.star import write_star

J24 = Path(__file__).resolve().parent.parent / "tests/data/cryosparc/cryosparc_P12_J24_001_particles.cs"


def _starfile_write(data: np.ndarray, out: Path) -> None:
    from starfile.writer import StarWriter
    blocks = to_star_blocks(data)
    with open(out, "w") as fh:
        for line in StarWriter(blocks, None).lines():
            fh.write(line + "\n")


def _ours(data: np.ndarray, out: Path) -> None:
    write_star(out, star_loops(data))


def _measure(fn, data, out) -> tuple[float, int]:
    tracemalloc.start()
    t = time.perf_counter()
    fn(data, out)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = np.load(J24)
    data = np.resize(base, args.rows)
    data["blob/idx"] = np.arange(args.rows) % 1000
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            a = Path(tmp) / "ours.star"
            b = Path(tmp) / "starfile.star"
            t1, m1 = _measure(_ours, data, a)
            t2, m2 = _measure(_starfile_write, data, b)
            print(f"round {r + 1}: stacktools {t1:.2f} s peak {m1 / 2**20:.0f} MiB | starfile writer "
                  f"{t2:.2f} s peak {m2 / 2**20:.0f} MiB | ratio {t2 / t1:.1f}x | "
                  f"file {a.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
