"""stacktools' Fourier crop against ``cryodrgn downsample`` on the RELION stack in tests/data.

cryoDRGN lives in its own environment (it pins torch); pass its ``cryodrgn``:

    python -m benchmarks.compare_cryodrgn /path/to/cryodrgn-venv/bin/cryodrgn [--box 128]

Prints, per particle, max |diff| / std and rms diff / std of cryoDRGN's image divided
by (box/N)^2 against stacktools', on the whole image and with both images' Nyquist
row and column removed.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import stacktools_command
from tests.independent import header, read_particle

STACK = Path(__file__).parent.parent / "tests" / "data" / "relion"


def _without_nyquist(x: np.ndarray) -> np.ndarray:
    f = np.fft.fft2(x)
    h = x.shape[-1] // 2
    f[:, h, :] = 0
    f[:, :, h] = 0
    return np.real(np.fft.ifft2(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cryodrgn")
    ap.add_argument("--box", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name in ("relion31.star", "relion31.mrcs"):
            (t / name).write_bytes((STACK / name).read_bytes())
        subprocess.run([args.cryodrgn, "downsample", str(t / "relion31.mrcs"), "-D", str(args.box),
                        "-o", str(t / "drgn.mrcs")], check=True, capture_output=True)
        subprocess.run(stacktools_command() + ["consolidate", str(t / "relion31.star"), "--project-dir", tmp,
                                               "--out", str(t / "st"), "--quiet", "--dtype", "float32",
                                               "--fourier-crop", str(args.box)], check=True, capture_output=True)
        box = header(t / "relion31.mrcs")["nx"]
        count = header(t / "drgn.mrcs")["nz"]
        ours = np.stack([read_particle(t / "st" / "stacks" / "relion31.mrcs", k) for k in range(count)])
        theirs = np.stack([read_particle(t / "drgn.mrcs", k) for k in range(count)])
    ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
    scale = (box / args.box) ** 2
    print(f"mean ratio cryoDRGN / stacktools: {np.median(theirs.mean(axis=(1, 2)) / ours.mean(axis=(1, 2))):.4f}"
          f" ((box/N)^2 = {scale:g})")
    theirs /= scale
    std = ours.std(axis=(1, 2))
    d = theirs - ours
    off = _without_nyquist(theirs) - _without_nyquist(ours)
    print("particle  max|diff|/std  rms/std  off-Nyquist max|diff|/std")
    for k in range(count):
        print(f"{k:>8} {np.abs(d[k]).max() / std[k]:>14.4f} {d[k].std() / std[k]:>8.4f} "
              f"{np.abs(off[k]).max() / std[k]:>26.2e}")


if __name__ == "__main__":
    main()
