"""Particle coordinates in to-star: which way Y runs, and what --invert-y does.

No real pair of the same particles picked in both CryoSPARC and RELION is in
tests/data, so the convention is checked against the two definitions instead:
CryoSPARC's ``location/center_{x,y}_frac`` are fractions of
``location/micrograph_shape`` ``[ny, nx]``, i.e. of the micrograph array's row and
column as its MRC file stores them (cryosparc-tools' own examples plot
``center_y_frac * ny`` over the array drawn with ``origin="lower"``, row 0 first);
and RELION's extraction, run here on a micrograph with one bright square, must then
find the square at the centre of the box cut at our ``rlnCoordinateX/Y``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stacktools.cs.relion import to_star_blocks
from tests.helpers import run_cli
from tests.independent import read_particle

NY, NX = 300, 400
ROW, COL = 62, 252  # the square's centre: array row and column
BOX = 32


def _particles(tmp: Path, real_data: Path, rows: list[tuple[int, int]]) -> Path:
    """A .cs of J24's first rows placed at (row, col) on Micrographs/mic001.mrc."""
    base = np.load(real_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")[:len(rows)]
    descr = base.dtype.descr + [("location/micrograph_path", "S22"), ("location/micrograph_shape", "<u4", (2,)),
                                ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4")]
    out = np.zeros(len(rows), descr)
    for name in base.dtype.names:
        out[name] = base[name]
    out["blob/psize_A"] = out["alignments3D/psize_A"] = 1.0
    out["location/micrograph_path"] = b"Micrographs/mic001.mrc"
    out["location/micrograph_shape"] = [NY, NX]
    out["location/center_y_frac"] = [(r + 0.5) / NY for r, _ in rows]
    out["location/center_x_frac"] = [(c + 0.5) / NX for _, c in rows]
    path = tmp / "particles.cs"
    with open(path, "wb") as fh:
        np.save(fh, out)
    return path


def test_y_counts_rows_from_the_first_row_stored(real_data: Path, tmp_path: Path) -> None:
    data = np.load(_particles(tmp_path, real_data, [(ROW, COL), (10, 20)]))
    cols = to_star_blocks(data)["particles"]
    assert cols["rlnCoordinateY"].tolist() == pytest.approx([ROW + 0.5, 10.5], abs=1e-3)
    assert cols["rlnCoordinateX"].tolist() == pytest.approx([COL + 0.5, 20.5], abs=1e-3)
    flipped = to_star_blocks(data, invert_y=True)["particles"]
    # --invert-y: height - y, as its help says (and pyem's csparc2star by default)
    assert flipped["rlnCoordinateY"].tolist() == pytest.approx([NY - ROW - 0.5, NY - 10.5], abs=1e-3)
    assert flipped["rlnCoordinateX"].tolist() == cols["rlnCoordinateX"].tolist()


def test_invert_y_on_the_command_line(real_data: Path, tmp_path: Path) -> None:
    import starfile

    cs = _particles(tmp_path, real_data, [(ROW, COL)])
    run_cli("cs", "to-star", cs, "-o", tmp_path / "plain.star", "--quiet", check=True)
    run_cli("cs", "to-star", cs, "-o", tmp_path / "inv.star", "--invert-y", "--quiet", check=True)
    plain = starfile.read(tmp_path / "plain.star")["particles"]
    inv = starfile.read(tmp_path / "inv.star")["particles"]
    assert plain["rlnCoordinateY"].iloc[0] == pytest.approx(ROW + 0.5, abs=1e-3)
    assert inv["rlnCoordinateY"].iloc[0] == pytest.approx(NY - ROW - 0.5, abs=1e-3)
    assert "height - y" in run_cli("cs", "to-star", "--help").stdout


MICROGRAPHS_STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
opticsGroup1 1 1.0 300 2.7 0.1

# version 30001

data_micrographs

loop_
_rlnMicrographName #1
_rlnOpticsGroup #2
Micrographs/mic001.mrc 1
"""


def _relion_extract(tmp: Path, star: Path) -> np.ndarray:
    proc = subprocess.run(["relion_preprocess", "--i", "mics.star", "--reextract_data_star", star.name,
                           "--part_dir", "Extract/", "--part_star", "out.star", "--extract",
                           "--extract_size", str(BOX)], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return read_particle(tmp / "Extract" / "Micrographs" / "mic001.mrcs", 0)


@pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="RELION not installed")
def test_relion_extracts_the_particle_at_our_coordinates(real_data: Path, tmp_path: Path) -> None:
    import mrcfile

    (tmp_path / "Micrographs").mkdir()
    mic = np.zeros((NY, NX), np.float32)
    mic[ROW - 2:ROW + 3, COL - 2:COL + 3] = 100.0  # a 5x5 square around (ROW, COL), far from its mirror
    with mrcfile.new(tmp_path / "Micrographs" / "mic001.mrc") as f:
        f.set_data(mic)
        f.voxel_size = 1.0
    (tmp_path / "mics.star").write_text(MICROGRAPHS_STAR)
    cs = _particles(tmp_path, real_data, [(ROW, COL)])
    run_cli("cs", "to-star", cs, "-o", tmp_path / "p.star", "--quiet", check=True)
    box = _relion_extract(tmp_path, tmp_path / "p.star").reshape(BOX, BOX)
    # The whole square, within a pixel of the box centre (RELION rounds the coordinate).
    assert box.sum() == pytest.approx(25 * 100.0)
    r, c = np.argwhere(box == box.max()).mean(axis=0)
    assert abs(r - BOX // 2) <= 1 and abs(c - BOX // 2) <= 1
    # With --invert-y RELION cuts the mirrored place, where this micrograph is empty.
    shutil.rmtree(tmp_path / "Extract")
    run_cli("cs", "to-star", cs, "-o", tmp_path / "inv.star", "--invert-y", "--quiet", check=True)
    assert _relion_extract(tmp_path, tmp_path / "inv.star").max() == 0.0
