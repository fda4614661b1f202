"""to-star on a large set: against pyem's ``csparc2star`` and starfile's writer.

Run::

    python -m benchmarks.bench_star [--rows 2000000 200000] [--rounds 3]
        [--pyem-python /path/to/venv/bin/python] [--starfile]

Data: the real J24 refinement (tests/data) tiled to each ``--rows``, with fresh
uids, and a passthrough ``.cs`` holding ``location/*`` for the same uids in
shuffled order (micrograph names and coordinates, as an extraction job's
passthrough has them). Both files go to both tools.

Each round runs, back to back on the same files, ``stacktools cs to-star MAIN
--passthrough PT`` and, with ``--pyem-python``, ``python -m pyem.cli.csparc2star
MAIN PT OUT`` from that interpreter (pyem installed there, not here). Each is a
fresh process: wall time and peak RSS (``/usr/bin/time``) are the whole command.
Ratios are per round (pyem / stacktools), then the median. ``--starfile`` adds the
in-process comparison with starfile's writer (slow: a minute per 200,000 rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks.bench_consolidate import run
from benchmarks.common import Results, stacktools_command

J24 = Path(__file__).resolve().parent.parent / "tests/data/cryosparc/cryosparc_P12_J24_001_particles.cs"
MICROGRAPHS = 4000
MIC_SHAPE = (3838, 3710)  # [ny, nx], as location/micrograph_shape holds it


def make_inputs(rows: int, where: Path) -> tuple[Path, Path]:
    """MAIN.cs (J24 tiled) and PT.cs (location/* for the same uids, shuffled)."""
    rng = np.random.default_rng(0)
    data = np.resize(np.load(J24), rows)
    data["uid"] = rng.permutation(np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    data["blob/idx"] = np.arange(rows) % 1000
    mic = np.arange(rows) % MICROGRAPHS
    pt = np.zeros(rows, dtype=[("uid", "<u8"), ("location/micrograph_uid", "<u8"),
                               ("location/exp_group_id", "<u4"), ("location/micrograph_path", "S72"),
                               ("location/micrograph_shape", "<u4", (2,)),
                               ("location/micrograph_psize_A", "<f4"),
                               ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4")])
    pt["uid"] = data["uid"]
    pt["location/micrograph_uid"] = mic + 1
    names = np.array([f"J3/motioncorrected/{k:06d}_FoilHole_Data_patch_aligned_doseweighted.mrc".encode()
                      for k in range(MICROGRAPHS)])
    pt["location/micrograph_path"] = names[mic]
    pt["location/micrograph_shape"] = MIC_SHAPE
    pt["location/micrograph_psize_A"] = 0.83
    pt["location/center_x_frac"] = rng.uniform(0.02, 0.98, rows)
    pt["location/center_y_frac"] = rng.uniform(0.02, 0.98, rows)
    pt = pt[rng.permutation(rows)]
    main, passthrough = where / f"main_{rows}.cs", where / f"pt_{rows}.cs"
    with open(main, "wb") as fh:
        np.save(fh, data)
    with open(passthrough, "wb") as fh:
        np.save(fh, pt)
    return main, passthrough


def _starfile_write(data: np.ndarray, out: Path) -> None:
    from starfile.writer import StarWriter

    from stacktools.cs.relion import to_star_blocks
    with open(out, "w") as fh:
        for line in StarWriter(to_star_blocks(data), None).lines():
            fh.write(line + "\n")


def _ours_in_process(data: np.ndarray, out: Path) -> None:
    from stacktools.cs.relion import star_loops
    from stacktools.formats.star import write_star
    write_star(out, star_loops(data))


def _traced(fn, data, out) -> tuple[float, int]:
    tracemalloc.start()
    t = time.perf_counter()
    fn(data, out)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt, peak


def bench_rows(rows: int, rounds: int, pyem_python: str | None, tmp: Path, results: Results) -> list[dict]:
    print(f"[{rows:,} rows] generating ...", file=sys.stderr, flush=True)
    main, pt = make_inputs(rows, tmp)
    cmds = {"stacktools cs to-star": [*stacktools_command(), "cs", "to-star", str(main), "--passthrough",
                                      str(pt), "-o", str(tmp / "st.star"), "--force", "--quiet"]}
    if pyem_python:
        cmds["pyem csparc2star"] = [pyem_python, "-m", "pyem.cli.csparc2star", str(main), str(pt),
                                    str(tmp / "pyem.star")]
    outs = {"stacktools cs to-star": tmp / "st.star", "pyem csparc2star": tmp / "pyem.star"}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, int] = {k: 0 for k in cmds}
    size: dict[str, int] = {}
    for r in range(rounds):
        for tool, cmd in cmds.items():
            outs[tool].unlink(missing_ok=True)
            os.sync()
            dt, peak = run(cmd, tmp)
            times[tool].append(dt)
            rss[tool] = max(rss[tool], peak)
            size[tool] = outs[tool].stat().st_size
            print(f"[{rows:,} rows] round {r + 1} {tool}: {dt:.2f} s, peak RSS {peak / 2**20:.0f} MiB, "
                  f"{size[tool]:,} bytes", file=sys.stderr, flush=True)
    base = "stacktools cs to-star"
    out = []
    for tool, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, times[base]))
        row = {"rows": rows, "tool": tool, "seconds": statistics.median(ts), "rounds": ts,
               "ratio": ratio, "rss": rss[tool], "bytes": size[tool]}
        out.append(row)
        results.add(tool, row["seconds"], base, ratio=ratio, params={"rows": rows},
                    rss=rss[tool], bytes=size[tool], rounds=ts)
    for f in (main, pt, *outs.values()):
        f.unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000],
                    help="Set sizes (rows) [default: 200000 2000000].")
    ap.add_argument("--rounds", type=int, default=3, help="Paired rounds per size [default: 3].")
    ap.add_argument("--pyem-python", default=None,
                    help="Python of a separate environment with pyem installed, to run its csparc2star "
                         "[default: stacktools alone].")
    ap.add_argument("--starfile", action="store_true",
                    help="Also time the writer against starfile's, in process [default: off].")
    ap.add_argument("--tmp", default=None, help="Scratch directory [default: the system's].")
    args = ap.parse_args()
    results = Results("bench_star", {"rounds": args.rounds})
    load = os.getloadavg()
    rows_out = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for rows in args.rows:
            rows_out += bench_rows(rows, args.rounds, args.pyem_python, Path(tmp), results)
            if args.starfile:
                data = np.resize(np.load(J24), rows)
                data["blob/idx"] = np.arange(rows) % 1000
                a, b = Path(tmp) / "ours.star", Path(tmp) / "starfile.star"
                t1, m1 = _traced(_ours_in_process, data, a)
                t2, m2 = _traced(_starfile_write, data, b)
                print(f"[{rows:,} rows] in process: stacktools {t1:.2f} s (traced peak {m1 / 2**20:.0f} MiB), "
                      f"starfile writer {t2:.2f} s ({m2 / 2**20:.0f} MiB), {t2 / t1:.1f}x", file=sys.stderr)
    print(f"\nload average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| rows | tool | median time | per round | ratio to stacktools¹ | peak RSS | output |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows_out:
        per = ", ".join(f"{t:.2f}" for t in r["rounds"])
        print(f"| {r['rows']:,} | {r['tool']} | {r['seconds']:.2f} s | {per} | {r['ratio']:.2f}× | "
              f"{r['rss'] / 2**20:.0f} MiB | {r['bytes']:,} B |")
    print("\n¹ median over rounds of (tool time / stacktools time in the same round)")
    results.report()


if __name__ == "__main__":
    main()
