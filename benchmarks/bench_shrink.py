"""Fourier crop 256 -> 128: stacktools consolidate against relion_image_handler and plain NumPy.

Particles per second and peak RSS (GNU time's %M) for each contender, paired per
round (the three run back to back in each round, the order rotating), at two set
sizes so that a memory that grows with the set shows. A set is stacks of
``--per-stack`` particles, as extraction writes them; RELION shrinks them one
``relion_image_handler`` per stack (``--relion-jobs`` at a time, one per core by
default), the NumPy script one stack after another in one process. Run:

    python -m benchmarks.bench_shrink [--particles 2000 20000] [--per-stack 1000] [--rounds 2]
        [--source-particles S] [--contenders stacktools numpy relion] [--tmp DIR]

With ``--source-particles S``, a set of more than S particles is S source particles
selected over and over, each time through hard links to their stacks (rows with
fresh uids; see :func:`tiled_set`), so that a set of 10^5 particles or more needs
only S particles' bytes of sources; every row is still read, shrunk and written,
and each copy is read in runs of adjacent particles as distinct particles would be.
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

from benchmarks.common import make_project, stacktools_command, warm_page_cache

NUMPY_SCRIPT = r"""
import sys, numpy as np, mrcfile
out_dir, n, stacks = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for k, src in enumerate(stacks):
    with mrcfile.mmap(src, permissive=True) as m:
        x = np.asarray(m.data, np.float32)
        box = x.shape[-1]
        f = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
        lo = box // 2 - n // 2
        y = np.real(np.fft.ifft2(np.fft.ifftshift(f[:, lo:lo + n, lo:lo + n], axes=(-2, -1)))) * (n / box) ** 2
    with mrcfile.new(f"{out_dir}/{k}.mrcs", overwrite=True) as o:
        o.set_data(y.astype(np.float32))
"""


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of ``cmd``."""
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {res.stderr.strip().splitlines()[-1:]}")
    return wall, int(res.stderr.strip().splitlines()[-1]) * 1024


def tiled_set(project: Path, src_cs: Path, rows: int, out: Path) -> Path:
    """A ``.cs`` of ``rows`` rows: ``src_cs``'s rows again and again, each time
    through hard links to its stacks (``J5/ext0001/...`` beside ``J5/extract/...``,
    names of the same length) and with fresh uids.

    Each copy of the set reads its own stack paths in runs of adjacent particles,
    as a set of that many distinct particles does, while the disk holds the
    sources once.
    """
    import numpy as np
    with open(src_cs, "rb") as fh:
        data = np.load(fh, allow_pickle=False)
    tiles = []
    for t in range(-(-rows // len(data))):
        tile = data.copy()
        if t:
            for stack in sorted({bytes(p) for p in data["blob/path"]}):
                rel = stack.decode().replace("/extract/", f"/ext{t:04d}/", 1)
                (project / rel).parent.mkdir(exist_ok=True)
                if not (project / rel).exists():
                    os.link(project / stack.decode(), project / rel)
            tile["blob/path"] = np.char.replace(data["blob/path"], b"/extract/", b"/ext%04d/" % t, count=1)
        tiles.append(tile)
    tiled = np.concatenate(tiles)[:rows]
    tiled["uid"] = np.arange(1, rows + 1, dtype=tiled["uid"].dtype)
    with open(out, "wb") as fh:
        np.save(fh, tiled)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--per-stack", type=int, default=1000)
    ap.add_argument("--relion-jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--new-box", type=int, default=128)
    ap.add_argument("--tmp", default=None, help="where to write the sets [default: the system temp dir]")
    ap.add_argument("--source-particles", type=int, default=None,
                    help="at most this many source particles; larger sets select them again")
    ap.add_argument("--contenders", nargs="+", default=["stacktools", "numpy", "relion"])
    args = ap.parse_args()
    relion = shutil.which("relion_image_handler")
    print(f"load before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'particles':>9} {'contender':>12} {'time':>8} {'p/s':>9} {'peak RSS':>10} {'their time / ours':>18}")
    for n in args.particles:
        with tempfile.TemporaryDirectory(prefix="bench-shrink-", dir=args.tmp) as tmp:
            n_src = min(n, args.source_particles or n)
            per = min(n_src, args.per_stack)
            proj = make_project(Path(tmp) / "P", stacks=-(-n_src // per), per_stack=per, box=args.box,
                                select_fraction=1.0)
            particles_cs = proj.extracted_cs
            if n_src < n:
                particles_cs = tiled_set(proj.project_dir, proj.extracted_cs, n, Path(tmp) / "tiled.cs")
            stacks = [str(s) for s in proj.stacks]
            warm_page_cache(stacks)
            psize = 1.07 * args.box / args.new_box
            out = Path(tmp) / "out"
            peers = Path(tmp) / "peers"
            peers.mkdir()
            relion_each = (f"{relion} --i \"$1\" --o {peers}/relion_$(basename \"$1\")s "
                           f"--rescale_angpix {psize:.6f} --new_box {args.new_box} >/dev/null")
            cmds = {
                "stacktools": stacktools_command() + ["consolidate", str(particles_cs), "--project-dir",
                                                      str(proj.project_dir), "--out", str(out), "--force",
                                                      "--quiet", "--fourier-crop", str(args.new_box),
                                                      "--dtype", "float32"],
                "numpy": [sys.executable, "-c", NUMPY_SCRIPT, str(peers), str(args.new_box), *stacks],
            }
            if relion and "relion" in args.contenders:
                cmds["relion"] = ["sh", "-c", f'printf "%s\\0" "$@" | xargs -0 -n1 -P{args.relion_jobs} '
                                  f"sh -c '{relion_each}' sh", "sh", *stacks]
            if "numpy" not in args.contenders or n_src < n:  # the peers would shrink only the sources
                del cmds["numpy"]
                cmds.pop("relion", None)
            walls: dict[str, list[float]] = {k: [] for k in cmds}
            rss: dict[str, int] = {k: 0 for k in cmds}
            names = list(cmds)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    if name == "stacktools" and out.exists():
                        shutil.rmtree(out)
                    w, m = timed(cmds[name])
                    walls[name].append(w)
                    rss[name] = max(rss[name], m)
            print(f"  {n} particles in {len(stacks) * -(-n // n_src)} stacks ({n_src} distinct particles in "
                  f"{len(stacks)} files); load after: {os.getloadavg()[0]:.1f}")
            for name in names:
                ratio = statistics.median(b / a for a, b in zip(walls["stacktools"], walls[name]))
                print(f"{n:>9} {name:>12} {statistics.median(walls[name]):>7.1f}s "
                      f"{n / statistics.median(walls[name]):>9.0f} "
                      f"{rss[name] / 2**20:>8.0f}Mi {ratio:>17.2f}x")


if __name__ == "__main__":
    main()
