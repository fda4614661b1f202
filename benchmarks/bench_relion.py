"""Benchmark stacktools on RELION particle STAR files against RELION's own tools.

For each size it generates a RELION-shaped project (box 256 float32 stacks of 250
particles under ``Extract/job001/`` as ``.mrcs``, a random 25% subset in
``Select/job002/particles.star`` with CTF columns and optics) and measures, as
subprocesses, paired per round (every contender once per round, one uncounted
round first, outputs deleted and the selected particles read back into the page
cache before each run):

* consolidation: ``stacktools consolidate particles.star`` against
  ``relion_stack_create --i particles.star`` in its three modes (default bulk,
  ``--one_by_one``, ``--split_per_micrograph``): wall time and peak RSS, with each
  round's ratio to stacktools;
* the scratch copy: ``stacktools cache sync --write-star`` into an empty cache,
  of the subset and of its consolidation, against the copy that
  ``relion_refine --scratch_dir`` makes at its start (a 2D classification, stopped
  as soon as it reports the particles on the scratch disk): time and bytes written
  to the scratch directory.

And once: loading a generated particle STAR of ``--star-rows`` rows with
``starfile.read`` against ``stacktools.formats.star.read_star`` plus the
``rlnImageName`` split. Usage::

    python -m benchmarks.bench_relion [--sizes small,medium] [--repeats 3] [--star-rows 2000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_consolidate import run
from benchmarks.common import Results, make_project, stacktools_command

HERE = Path(__file__).resolve().parent
SIZES = {"small": 6, "medium": 30}  # stacks of 65.5 MB; a quarter of the particles selected


def make_star_project(root: Path, stacks: int):
    """A RELION-shaped project; returns (project dir, subset STAR)."""
    from stacktools.cs.relion import cs_to_star

    made = make_project(root, stacks=stacks, per_stack=250, box=256, select_fraction=0.25)
    links = root / "Extract" / "job001"
    links.mkdir(parents=True, exist_ok=True)
    for s in made.stacks:  # RELION reads stacks under .mrcs only
        (links / (s.stem + ".mrcs")).symlink_to(s)
    star = root / "Select" / "job002" / "particles.star"
    star.parent.mkdir(parents=True, exist_ok=True)
    cs_to_star(made.selected_cs, star, passthrough=made.passthrough_cs, mrcs=True)
    text = star.read_text().replace("@J5/extract/", "@Extract/job001/")
    star.write_text(text)
    return root, star


def warm(project: Path, star: Path) -> None:
    """Read the selected particles' stacks back into the page cache (untimed)."""
    from stacktools.particles import ParticleSet
    for p in ParticleSet.open(star, project).stack_paths:
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with_path = os.path.join(dirpath, f)
            if not os.path.islink(with_path):
                total += os.stat(with_path).st_blocks * 512
    return total


def relion_scratch_copy(project: Path, star: Path, scratch: Path, out: Path) -> float:
    """Seconds until relion_refine reports its particles on the scratch disk."""
    cmd = ["relion_refine", "--i", str(star), "--o", str(out / "run"), "--ctf", "--K", "2",
           "--iter", "1", "--tau2_fudge", "2", "--particle_diameter", "200",
           "--scratch_dir", str(scratch), "--keep_scratch", "--pool", "30", "--j", "1",
           "--dont_check_norm"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "particles on the scratch disk" in line:
                return time.perf_counter() - t
        raise RuntimeError("relion_refine ended before copying: " + "".join(seen)[-500:])
    finally:
        proc.kill()
        proc.wait()


def bench_size(name: str, stacks: int, base: Path, repeats: int) -> list[dict]:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    print(f"[{name}] generating {stacks} stacks ...", file=sys.stderr, flush=True)
    project, star = make_star_project(root / "proj", stacks)
    st = stacktools_command()
    out = root / "out"
    cons = {
        "stacktools consolidate": [*st, "consolidate", str(star), "--out", str(out / "st"), "--quiet", "--json"],
        "relion_stack_create (bulk)": ["relion_stack_create", "--i", str(star), "--o", str(out / "r")],
        "relion_stack_create --one_by_one": ["relion_stack_create", "--i", str(star), "--o", str(out / "r"),
                                             "--one_by_one"],
        "relion_stack_create --split_per_micrograph": ["relion_stack_create", "--i", str(star), "--o",
                                                       str(out / "r"), "--split_per_micrograph"],
    }
    # The consolidated set, for the cache rows (made once, outside the project's out/).
    consolidated = root / "proj" / "Cons" / "job003"
    subprocess.run([*st, "consolidate", str(star), "--out", str(consolidated), "--quiet"], check=True,
                   capture_output=True)
    cons_star = consolidated / "particles_consolidated.star"
    times: dict[str, list[float]] = {k: [] for k in cons}
    rss: dict[str, int] = {k: 0 for k in cons}
    cache_rows = ("stacktools cache sync (subset)", "stacktools cache sync (consolidated)",
                  "relion_refine --scratch_dir copy")
    for k in cache_rows:
        times[k], rss[k] = [], 0
    written: dict[str, int] = {}
    for rep in range(-1, repeats):
        for tool, cmd in cons.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            warm(project, star)
            os.sync()
            dt, peak = run(cmd, project)
            if rep >= 0:
                times[tool].append(dt)
                rss[tool] = max(rss[tool], peak)
                print(f"[{name}] {tool}: {dt:.2f} s", file=sys.stderr, flush=True)
        for tool in cache_rows:
            shutil.rmtree(out, ignore_errors=True)
            scratch = out / "ssd"
            scratch.mkdir(parents=True)
            warm(project, star)
            os.sync()
            if tool.startswith("relion"):
                dt = relion_scratch_copy(project, star, scratch, out)
            else:
                src = star if "subset" in tool else cons_star
                dt, peak = run([*st, "cache", "sync", str(src), "--ssd-path", str(scratch), "--reserve-mb", "0",
                                "--write-star", str(out / "cached.star"), "--quiet"], project)
                rss[tool] = max(rss[tool], peak)
            written[tool] = du(scratch)
            if rep >= 0:
                times[tool].append(dt)
                print(f"[{name}] {tool}: {dt:.2f} s, {written[tool]:,} bytes", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for tool, ts in times.items():
        peer = "stacktools consolidate" if tool in cons else "relion_refine --scratch_dir copy"
        ratio = statistics.median(t / p for t, p in zip(ts, times[peer]))
        rows.append({"size": name, "tool": tool, "seconds": statistics.median(ts), "ratio": ratio, "peer": peer,
                     "rss": rss[tool], "written": written.get(tool)})
    return rows


def bench_star_load(rows: int, base: Path) -> list[tuple[str, float]]:
    import starfile

    from stacktools.cs.relion import split_image_names
    from stacktools.formats.star import read_star

    path = base / "load.star"
    base.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
                 "1 1.07 256\n\n\ndata_particles\n\nloop_\n")
        cols = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup", "rlnClassNumber"]
        fh.write("".join(f"_{c} #{i}\n" for i, c in enumerate(cols, 1)))
        chunk = []
        for i in range(rows):
            m = i // 400
            chunk.append(f"{i % 400 + 1:06d}@Extract/job012/Movies/FH_{m:08d}.mrcs MotionCorr/job002/FH_{m:08d}.mrc "
                         f"1234.0 2345.0 15000.1 14800.2 45.3 12.5 88.1 -33.2 1.5 -2.5 1 {i % 50 + 1}\n")
            if len(chunk) == 100_000:
                fh.writelines(chunk)
                chunk = []
        fh.writelines(chunk)
    t = time.perf_counter()
    starfile.read(path, always_dict=True)
    t_starfile = time.perf_counter() - t
    t = time.perf_counter()
    blocks = read_star(path)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    split_image_names(blocks["particles"]["rlnImageName"])
    t_split = time.perf_counter() - t
    path.unlink()
    return [("starfile.read", t_starfile), ("stacktools read_star", t_read),
            ("stacktools split_image_names", t_split)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small", help="Comma list of: small (0.1 GB), medium (0.5 GB) consolidated.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--star-rows", type=int, default=2_000_000, help="Rows of the STAR load test (0: skip).")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "relion", help="Where to generate data (deleted).")
    args = ap.parse_args()
    if not shutil.which("relion_stack_create"):
        sys.exit("relion_stack_create not found: this benchmark compares with RELION")
    results = Results("bench_relion", {"repeats": args.repeats})
    if args.star_rows:
        load = bench_star_load(args.star_rows, args.data)
        base = dict(load)["starfile.read"]
        print(f"\nloading a particle STAR of {args.star_rows:,} rows (one run each)\n")
        print("| what | time | ratio to starfile.read |\n| --- | --- | --- |")
        for what, t in load:
            print(f"| {what} | {t:.2f} s | {t / base:.2f}× |")
            results.add(what, t, "starfile.read", base, params={"rows": args.star_rows})
    for name in args.sizes.split(","):
        rows = bench_size(name, SIZES[name], args.data, args.repeats)
        print(f"\n{name}: median of {args.repeats} rounds\n")
        print("| tool | median time | ratio to peer¹ | peak RSS | bytes on scratch |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            w = f"{r['written']:,}" if r["written"] is not None else "-"
            rs = f"{r['rss'] / 2**20:.0f} MiB" if r["rss"] else "-"
            print(f"| `{r['tool']}` | {r['seconds']:.2f} s | {r['ratio']:.2f}× `{r['peer']}` | {rs} | {w} |")
            results.add(r["tool"], r["seconds"], r["peer"], ratio=r["ratio"], params={"size": name},
                        peak_rss_bytes=r["rss"], scratch_bytes=r["written"])
        print("\n¹ median over rounds of (tool time / peer time in the same round).")
    shutil.rmtree(args.data, ignore_errors=True)
    results.report()


if __name__ == "__main__":
    main()
