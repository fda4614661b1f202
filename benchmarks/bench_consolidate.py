"""Benchmark ``stacktools consolidate`` against ``cp``, RELION and a naive script.

For each data size it generates a CryoSPARC-shaped project (box 256 float32 stacks
of 250 particles, a random 25% subset) and times, in the same run and as
subprocesses:

* ``cp`` of one file of the same byte count as the consolidated output (the floor);
* ``stacktools consolidate`` (default per-stack layout, ``--dtype keep``), its
  ``--dry-run`` (start-up and planning only) and the same call through the Python
  API timed inside the process (no interpreter start-up or imports);
* ``relion_stack_create --one_by_one`` and ``--split_per_micrograph`` fed the
  equivalent STAR file (``.mrcs`` symlinks to the ``.mrc`` stacks), and its default
  bulk mode at the small size only (it holds the whole output in memory);
* a naive script: ``np.load`` + ``mrcfile.mmap`` + fancy index + ``mrcfile.new``;
* ``stacktools consolidate`` and the API call again on a float16 twin of the project
  (as many stacks, twice the particles per stack, so the same bytes selected), unless
  ``--no-float16``.

Each tool runs ``--repeats`` times, round robin, after one uncounted round. Before
every run, untimed: outputs are deleted, the selected particles (and the ``cp``
source) are read back into the page cache, and ``sync`` is run. The table gives the
median and the best time with their ratios to ``cp``, and the peak RSS
(``/usr/bin/time``); a second table pairs the rounds: the command against RELION's
one-by-one mode and against ``cp`` + ``python -c 'import numpy'``, and float16
sources against float32 of the same bytes. Usage::

    python -m benchmarks.bench_consolidate [--sizes small,large] [--repeats 5]
    python -m benchmarks.bench_consolidate --scale stacks=1000,100000 --scale rows=100000,10000000
    python -m benchmarks.bench_consolidate --small-boxes --repeats 5

``--scale`` instead times one whole-process run per point with its peak RSS, on
sparse source stacks of tiny boxes (so the output, not the sources, takes disk):
``stacks=N`` is N stacks of 8 particles of box 16 with a 25% subset (one output
stack per source), ``rows=N`` is N/1000 stacks of 1000 particles of box 8, all
selected. Check ``df -h`` first: ``rows=10000000`` writes about 7 GB.
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

import numpy as np

from benchmarks.common import Results, make_project, stacktools_command, warm_page_cache

HERE = Path(__file__).resolve().parent
# Stacks of 250 particles, 25% selected: 0.1/0.25/0.5 GB selected, then 0.66 and 2.6 GB.
SIZES = {"0.1GB": 7, "0.25GB": 16, "0.5GB": 32, "small": 40, "large": 160}

NAIVE = r'''
import sys, numpy as np, mrcfile
from pathlib import Path
cs, proj, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
data = np.load(cs)
out.mkdir(parents=True, exist_ok=True)
for path in np.unique(data["blob/path"]):
    idx = np.sort(data["blob/idx"][data["blob/path"] == path].astype(np.int64))
    with mrcfile.mmap(proj / path.decode(), mode="r") as src:
        sub = src.data[idx]
        vs = src.voxel_size
    with mrcfile.new(out / Path(path.decode()).name, overwrite=True) as dst:
        dst.set_data(sub)
        dst.set_image_stack()
        dst.voxel_size = vs
'''


def reuse_data(proj: Path):
    """The project a ``--keep-data`` run left behind (generation is deterministic)."""
    from stacktools.demo import DemoProject
    sel = proj / "J7" / "J7_particles_selected.cs"
    return DemoProject(proj, proj / "J5" / "extracted_particles.cs", sel,
                       proj / "J7" / "J7_passthrough_particles_selected.cs",
                       sorted((proj / "J5" / "extract").glob("*.mrc")))


def write_star(made, links: Path, star: Path) -> None:
    """The RELION equivalent of the subset: same particles, same order, .mrcs names."""
    from stacktools.formats.cs import read_cs
    links.mkdir(parents=True, exist_ok=True)
    for s in made.stacks:
        link = links / (s.stem + ".mrcs")
        if not link.exists():
            link.symlink_to(s)
    data = read_cs(made.selected_cs)
    lines = ["", "data_optics", "", "loop_", "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2",
             "_rlnAmplitudeContrast #3", "_rlnSphericalAberration #4", "_rlnVoltage #5",
             "_rlnImagePixelSize #6", "_rlnImageSize #7", "_rlnImageDimensionality #8",
             "1 opticsGroup1 0.1 2.7 300.0 1.07 256 2", "", "", "data_particles", "", "loop_",
             "_rlnImageName #1", "_rlnMicrographName #2", "_rlnOpticsGroup #3"]
    for p, i in zip(data["blob/path"], data["blob/idx"]):
        stem = Path(p.decode()).stem
        lines.append(f"{int(i) + 1:06d}@{links / (stem + '.mrcs')} {stem}.mrc 1")
    star.write_text("\n".join(lines) + "\n")


def warm_selected(made) -> None:
    """Bring the selected particles and every header back into the page cache.

    The machine reclaims cold page-cache pages in the background, so this runs
    (untimed) before every timed run.
    """
    from stacktools.formats.cs import read_cs
    from stacktools.formats.mrc import read_header
    data = read_cs(made.selected_cs)
    for path in np.unique(data["blob/path"]):
        full = made.project_dir / path.decode()
        h = read_header(full)
        fd = os.open(full, os.O_RDONLY)
        try:
            for i in np.sort(data["blob/idx"][data["blob/path"] == path]):
                os.pread(fd, h.particle_bytes, h.offset_of(int(i)))
        finally:
            os.close(fd)


API_RUN = r"""
import sys, time
from stacktools.consolidate import consolidate
t = time.perf_counter()
consolidate(sys.argv[1], sys.argv[3], project_dir=sys.argv[2])
print(f"SECONDS {time.perf_counter() - t}")
"""


# Python tools run as installed ones do, with their bytecode cached.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one subprocess.

    A process that prints ``SECONDS x`` reports its own time (the API row, which
    leaves out interpreter start-up and imports).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        dt = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode()[-500:]}")
        rss = int(tf.read().strip().splitlines()[-1]) * 1024
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("SECONDS "):
            dt = float(line.split()[1])
    return dt, rss


def _project(proj: Path, micrographs: int, *, float16: bool):
    """The benchmark's project, or (``float16``) its float16 twin: as many stacks, twice
    the particles, so that the 25% subset selects the same bytes."""
    if (proj / "done").exists():  # kept from an earlier --keep-data run
        return reuse_data(proj)
    shutil.rmtree(proj, ignore_errors=True)
    print(f"[{proj}] generating {micrographs} {'float16' if float16 else 'float32'} stacks ...",
          file=sys.stderr, flush=True)
    made = make_project(proj, stacks=micrographs, per_stack=500 if float16 else 250, box=256,
                        select_fraction=0.25, float16_every=1 if float16 else 0)
    (proj / "done").touch()
    return made


def bench_size(name: str, micrographs: int, base: Path, repeats: int, relion_bulk: bool,
               only: list[str] | None = None, keep: bool = False,
               float16: bool = True) -> tuple[list[dict], dict[str, list[float]]]:
    from stacktools.particles import ParticleSet
    from stacktools.size import size_particles

    root = base / name
    made = _project(root / "P1", micrographs, float16=False)
    twin = _project(root / "F16", micrographs, float16=True) if float16 else None
    report = size_particles(ParticleSet.open(made.selected_cs, made.project_dir))
    out_bytes = report.consolidated_bytes
    star = root / "selected.star"
    write_star(made, root / "links", star)
    floor_src = root / "floor_src.bin"
    with open(floor_src, "wb") as fh:  # same byte count as the output, from real pixels
        left = out_bytes
        for s in made.stacks:
            with open(s, "rb") as src:
                chunk = src.read(min(left, s.stat().st_size))
            fh.write(chunk)
            left -= len(chunk)
            if not left:
                break
    naive = root / "naive.py"
    naive.write_text(NAIVE)
    out = root / "out"
    py = sys.executable
    st = stacktools_command()
    tools = {
        "cp": ["cp", str(floor_src), str(out / "floor.bin")],
        # The floor of any Python tool: the copy plus the interpreter and NumPy.
        "cp + python -c 'import numpy'": ["sh", "-c", f"cp {floor_src} {out / 'floor2.bin'} && "
                                          f"{py} -c 'import numpy'"],
        "stacktools consolidate": [*st, "consolidate", str(made.selected_cs), "--project-dir",
                                   str(made.project_dir), "--out", str(out / "st"), "--quiet", "--json"],
        "stacktools consolidate --dry-run": [*st, "consolidate", str(made.selected_cs),
                                             "--project-dir", str(made.project_dir), "--out",
                                             str(out / "dry"), "--quiet", "--json", "--dry-run"],
        "stacktools, Python API (no start-up)": [py, "-c", API_RUN, str(made.selected_cs),
                                                 str(made.project_dir), str(out / "api")],
        "relion_stack_create --one_by_one": ["relion_stack_create", "--i", str(star), "--o",
                                             str(out / "relion"), "--one_by_one"],
        "relion_stack_create --split_per_micrograph": ["relion_stack_create", "--i", str(star),
                                                       "--o", str(out / "relion"),
                                                       "--split_per_micrograph"],
        "naive mmap script": [py, str(naive), str(made.selected_cs), str(made.project_dir),
                              str(out / "naive")],
    }
    if twin is not None:
        tools[F16_CLI] = [*st, "consolidate", str(twin.selected_cs), "--project-dir",
                          str(twin.project_dir), "--out", str(out / "st16"), "--quiet", "--json"]
        tools[F16_API] = [py, "-c", API_RUN, str(twin.selected_cs), str(twin.project_dir),
                          str(out / "api16")]
    if relion_bulk:
        tools["relion_stack_create (bulk)"] = ["relion_stack_create", "--i", str(star), "--o",
                                               str(out / "relion")]
    if only:
        tools = {k: v for k, v in tools.items() if any(k.startswith(o) for o in only) or k == "cp"}
    if not shutil.which("relion_stack_create"):
        print(f"[{name}] relion_stack_create not found: RELION rows skipped", file=sys.stderr)
        tools = {k: v for k, v in tools.items() if not k.startswith("relion")}
    print(f"[{name}] warming the page cache ...", file=sys.stderr, flush=True)
    warm_page_cache([floor_src])
    times: dict[str, list[float]] = {k: [] for k in tools}
    rss: dict[str, int] = {k: 0 for k in tools}
    for rep in range(-1, repeats):  # round -1 warms up and is not counted
        for tool, cmd in tools.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            warm_selected(made)
            if twin is not None:
                warm_selected(twin)
            warm_page_cache([floor_src])
            os.sync()
            dt, peak = run(cmd, root)
            if rep < 0:
                continue
            times[tool].append(dt)
            rss[tool] = max(rss[tool], peak)
            print(f"[{name}] {tool}: {dt:.2f} s", file=sys.stderr, flush=True)
    # One extra run with --verify, and the standalone check, for information.
    if "stacktools consolidate" not in tools:
        return _rows(name, times, rss, report), times
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    warm_selected(made)
    os.sync()
    dt, peak = run(tools["stacktools consolidate"] + ["--verify"], root)
    times["stacktools consolidate --verify"] = [dt]
    rss["stacktools consolidate --verify"] = peak
    new_cs = out / "st" / f"{made.selected_cs.stem}_consolidated.cs"
    warm_selected(made)
    dt, peak = run([*st, "verify", str(new_cs), "--against", str(made.selected_cs),
                    "--project-dir", str(made.project_dir), "--quiet", "--json"], root)
    times["stacktools verify"] = [dt]
    rss["stacktools verify"] = peak
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return _rows(name, times, rss, report), times


CLI = "stacktools consolidate"
API = "stacktools, Python API (no start-up)"
F16_CLI = "stacktools consolidate, float16 sources (same bytes)"
F16_API = "stacktools, Python API, float16 sources (same bytes)"
CP_PY = "cp + python -c 'import numpy'"
ONE_BY_ONE = "relion_stack_create --one_by_one"
# The paired table: (what, numerator, denominator).
PAIRS = [(f"`{CLI}` ÷ `{ONE_BY_ONE}`", CLI, ONE_BY_ONE),
         (f"`{CLI}` ÷ `{CP_PY}`", CLI, CP_PY),
         ("float16 ÷ float32, whole process", F16_CLI, CLI),
         ("float16 ÷ float32, Python API (copy only)", F16_API, API)]


def paired(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float] | None:
    """Median, least and greatest over rounds of num's time / den's time in that round."""
    a, b = times.get(num), times.get(den)
    if not a or not b or len(a) != len(b):
        return None
    r = [x / y for x, y in zip(a, b)]
    return statistics.median(r), min(r), max(r)


def _rows(name, times, rss, report) -> list[dict]:
    floor = statistics.median(times["cp"])
    best_floor = min(times["cp"])
    rows = []
    for tool, ts in times.items():
        med = statistics.median(ts)
        # Paired with the cp run of the same round: drift of the shared machine cancels.
        ratio = (statistics.median(t / c for t, c in zip(ts, times["cp"]))
                 if len(ts) == len(times["cp"]) else med / floor)
        rows.append({"size": name, "tool": tool, "seconds": med, "ratio": ratio,
                     "best": min(ts), "best_ratio": min(ts) / best_floor,
                     "rss": rss[tool], "source_bytes": report.cache_bytes,
                     "output_bytes": report.consolidated_bytes})
    return rows


def make_scale_project(root: Path, stacks: int, per_stack: int, box: int, select: float) -> Path:
    """A project of sparse float32 stacks and a selection ``.cs`` in a shuffled order."""
    from stacktools.demo import ALIGN2D_DTYPE, BLOB_DTYPE, _fmt
    from stacktools.formats.cs import write_cs
    from stacktools.formats.mrc import make_header
    rng = np.random.default_rng(0)
    (root / "J5" / "extract").mkdir(parents=True, exist_ok=True)
    (root / "J7").mkdir(exist_ok=True)
    names = [f"J5/extract/{k:021d}_FoilHole_{k}_Data_{k}_fractions_patch_aligned_doseweighted_particles.mrc"
             for k in range(stacks)]
    hdr = make_header(box, box, per_stack, 2, 1.07, label="stacktools scale benchmark")
    for name in names:
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, hdr)
        os.ftruncate(fd, len(hdr) + per_stack * box * box * 4)
        os.close(fd)
    total = stacks * per_stack
    pick = np.sort(rng.permutation(total)[:int(round(total * select))])
    rng.shuffle(pick)  # a selection's order is not stack order
    w = max(len(n) for n in names)
    a = np.zeros(len(pick), dtype=[("uid", "<u8")] + _fmt(BLOB_DTYPE, w=w) + ALIGN2D_DTYPE)
    a["uid"] = rng.integers(1, 2**63, size=len(pick), dtype=np.uint64)
    a["blob/path"] = np.array(names, dtype=f"S{w}")[pick // per_stack]
    a["blob/idx"] = pick % per_stack
    a["blob/shape"] = box
    a["blob/psize_A"] = 1.07
    cs = root / "J7" / "J7_particles_selected.cs"
    write_cs(cs, a, fsync=False)
    return cs


def bench_scale(points: list[str], base: Path) -> None:
    """One whole-process run per point: time and peak RSS (machine load beside it)."""
    print("| point | output stacks | rows | input .cs | time | peak RSS | load |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for point in points:
        kind, n = point.split("=")
        n = int(n)
        root = base / f"scale_{kind}_{n}"
        shutil.rmtree(root, ignore_errors=True)
        if kind == "stacks":
            cs = make_scale_project(root / "P1", n, 8, 16, 0.25)
        else:
            cs = make_scale_project(root / "P1", max(1, n // 1000), 1000, 8, 1.0)
        os.sync()
        load = os.getloadavg()[0]
        dt, peak = run([*stacktools_command(), "consolidate", str(cs), "--out", str(root / "out"),
                        "--quiet", "--json"], root)
        made = len(os.listdir(root / "out" / "stacks"))
        print(f"| {point} | {made:,} | {len(np.load(cs, mmap_mode='r')):,} | "
              f"{cs.stat().st_size / 2**20:,.0f} MiB | {dt:.1f} s | {peak / 2**20:,.0f} MiB | {load:.1f} |",
              flush=True)
        shutil.rmtree(root, ignore_errors=True)


GAP_RUN = r"""
import sys, time
import stacktools.stacks
stacktools.stacks.GATHER_GAP_BYTES = int(sys.argv[4])
from stacktools.consolidate import consolidate
t = time.perf_counter()
consolidate(sys.argv[1], sys.argv[3], project_dir=sys.argv[2])
print(f"SECONDS {time.perf_counter() - t}")
"""
GAPS = (-1, 16 << 10, 96 << 10, 512 << 10)


def bench_small_boxes(base: Path, repeats: int, boxes=(32, 64), fractions=(0.25, 0.5)) -> None:
    """Small boxes against ``cp`` of the same bytes, for each covering-read gap.

    Per case: 100 float32 stacks of 800 MiB of particles in all, a random subset;
    the Python API run (no start-up) with ``GATHER_GAP_BYTES`` set to each of
    :data:`GAPS` (-1: never gather), and the CLI at the default, all paired with
    ``cp`` of one file of the output's size in the same round (page cache warm).
    """
    from stacktools.particles import ParticleSet
    from stacktools.size import size_particles
    print("| box | subset | output | `cp` | " + " | ".join(
        f"gap {'off' if g < 0 else f'{g >> 10} KiB'}" for g in GAPS) + " | CLI (default) | load |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in GAPS) + " | --- | --- |")
    for box in boxes:
        for frac in fractions:
            root = base / f"small_{box}_{frac}"
            shutil.rmtree(root, ignore_errors=True)
            per = (800 << 20) // (box * box * 4) // 100
            made = make_project(root / "P1", stacks=100, per_stack=per, box=box, select_fraction=frac)
            out_bytes = size_particles(ParticleSet.open(made.selected_cs, made.project_dir)).consolidated_bytes
            floor_src = root / "floor_src.bin"
            with open(floor_src, "wb") as fh, open(made.stacks[0], "rb") as one:
                block = one.read(1 << 20)
                left = out_bytes
                while left:
                    fh.write(block[:left])
                    left -= min(left, len(block))
            out = root / "out"
            tools = {"cp": ["cp", str(floor_src), str(out / "floor.bin")]}
            for g in GAPS:
                tools[g] = [sys.executable, "-c", GAP_RUN, str(made.selected_cs), str(made.project_dir),
                            str(out / "api"), str(g)]
            tools["cli"] = [*stacktools_command(), "consolidate", str(made.selected_cs), "--project-dir",
                            str(made.project_dir), "--out", str(out / "st"), "--quiet", "--json"]
            times: dict = {k: [] for k in tools}
            load = os.getloadavg()[0]
            for rep in range(-1, repeats):
                for tool, cmd in tools.items():
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    warm_selected(made)
                    warm_page_cache([floor_src])
                    os.sync()
                    dt, _ = run(cmd, root)
                    if rep >= 0:
                        times[tool].append(dt)
            cp_t = times["cp"]
            cells = []
            for k in [*GAPS, "cli"]:
                ratio = statistics.median(t / c for t, c in zip(times[k], cp_t))  # paired per round
                cells.append(f"{statistics.median(times[k]):.2f} s ({ratio:.2f}×)")
            print(f"| {box} | {frac:.0%} | {out_bytes / 2**20:.0f} MiB | {statistics.median(cp_t):.3f} s | "
                  + " | ".join(cells) + f" | {load:.1f} |", flush=True)
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,large", help=f"Comma list of: {', '.join(SIZES)}.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=HERE / "data" / "consolidate",
                    help="Where to generate data (deleted afterwards).")
    ap.add_argument("--tools", default=None,
                    help="Comma list of tool names to run (cp always runs).")
    ap.add_argument("--keep-data", action="store_true",
                    help="Keep the generated data for another run.")
    ap.add_argument("--no-float16", action="store_true",
                    help="Skip the float16 twin of each project.")
    ap.add_argument("--no-relion-bulk", action="store_true",
                    help="Skip relion_stack_create's default bulk mode at the small size.")
    ap.add_argument("--scale", action="append", default=[],
                    help="stacks=N[,N..] or rows=N[,N..]: the scaling table instead.")
    ap.add_argument("--small-boxes", action="store_true",
                    help="Boxes 32 and 64, 25%% and 50%% subsets, against cp, per gather gap.")
    args = ap.parse_args()
    if args.small_boxes:
        bench_small_boxes(args.data, args.repeats)
        return
    if args.scale:
        points = [f"{k}={v}" for spec in args.scale for k, vs in [spec.split("=")] for v in vs.split(",")]
        bench_scale(points, args.data)
        return
    rows = []
    rounds: dict[str, dict[str, list[float]]] = {}
    load = [os.getloadavg()[0]]
    for name in args.sizes.split(","):
        got, rounds[name] = bench_size(name, SIZES[name], args.data, args.repeats,
                                       relion_bulk=name == "small" and not args.no_relion_bulk,
                                       only=args.tools.split(",") if args.tools else None,
                                       keep=args.keep_data, float16=not args.no_float16)
        rows += got
    load.append(os.getloadavg()[0])
    if not args.keep_data:
        shutil.rmtree(args.data, ignore_errors=True)
    results = Results("bench_consolidate", {"repeats": args.repeats})
    for r in rows:
        results.add(r["tool"], r["seconds"], "cp", ratio=r["ratio"],
                    params={"size": r["size"], "source_bytes": r["source_bytes"],
                            "output_bytes": r["output_bytes"]},
                    best_seconds=r["best"], best_ratio=r["best_ratio"], peak_rss_bytes=r["rss"])
    for name in dict.fromkeys(r["size"] for r in rows):
        sub = [r for r in rows if r["size"] == name]
        print(f"\n{name}: {sub[0]['source_bytes'] / 1e9:.2f} GB of source stacks, "
              f"{sub[0]['output_bytes'] / 1e9:.2f} GB consolidated, median of "
              f"{args.repeats} runs (verify rows: 1 run)\n")
        print("| tool | median time | ratio to `cp`¹ | best time | best ratio² | peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in sub:
            print(f"| `{r['tool']}` | {r['seconds']:.2f} s | {r['ratio']:.2f}× | "
                  f"{r['best']:.2f} s | {r['best_ratio']:.2f}× | {r['rss'] / 2**20:.0f} MiB |")
        print("\n¹ median over rounds of (tool time / cp time in the same round); rows run "
              "once: median time / median cp time. ² best time / best cp time.")
    print(f"\nPaired per round (median, range over {args.repeats} rounds; 1-minute load "
          f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end)\n")
    print("| selected | " + " | ".join(p[0] for p in PAIRS) + " |")
    print("| --- |" + " --- |" * len(PAIRS))
    for name, times in rounds.items():
        sub = [r for r in rows if r["size"] == name]
        cells = []
        for what, num, den in PAIRS:
            got = paired(times, num, den)
            cells.append("-" if got is None else f"{got[0]:.2f}× ({got[1]:.2f}–{got[2]:.2f})")
            if got is not None:
                results.add(f"paired: {what}", statistics.median(times[num]), den, ratio=got[0],
                            params={"size": name, "output_bytes": sub[0]["output_bytes"]},
                            ratio_min=got[1], ratio_max=got[2])
        print(f"| {sub[0]['output_bytes'] / 1e9:.2f} GB | " + " | ".join(cells) + " |")
    results.report()


if __name__ == "__main__":
    main()
