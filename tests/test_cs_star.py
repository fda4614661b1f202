"""RELION STAR conversion: field mapping, poses, round trips and RELION itself reading it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cs.relion import (
    cs_to_star,
    from_star_blocks,
    star_to_cs,
    to_star_blocks,
)
from stacktools.cs.rotation import (
    euler_deg_to_rotvec,
    euler_to_matrix,
    matrix_to_euler,
    rotvec_to_euler_deg,
    rotvec_to_matrix,
)
from stacktools.errors import FieldError, StarFormatError
from stacktools.formats.cs import read_cs
from stacktools.formats.star import read_star

J24 = "cryosparc_P12_J24_001_particles.cs"
J2 = "cryosparc_J2_particles_exported.cs"


def pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem's per-row rotation-vector matrix, written out as a reference."""
    theta = np.linalg.norm(e)
    if theta < 1e-16:
        return np.eye(3)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def angles_matrix(angles_deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(np.asarray(angles_deg, np.float64).reshape(-1, 3))
    return euler_to_matrix(a[:, 0], a[:, 1], a[:, 2])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3))
def test_rotation_vector_to_euler_and_back(v) -> None:
    e = np.array([v], dtype=np.float64)
    r = rotvec_to_matrix(e)
    np.testing.assert_allclose(r[0], pyem_expmap(e[0]), atol=1e-12)
    angles = rotvec_to_euler_deg(e)
    assert 0 <= angles[0, 1] <= 180
    np.testing.assert_allclose(angles_matrix(angles), r, atol=1e-9)
    np.testing.assert_allclose(rotvec_to_matrix(euler_deg_to_rotvec(angles)), r, atol=1e-9)


def test_known_rotations() -> None:
    # A turn about z is all in-plane: RELION gives it to psi, with rot and tilt 0.
    np.testing.assert_allclose(rotvec_to_euler_deg(np.array([[0, 0, np.deg2rad(30)]])), [[0, 0, 30]], atol=1e-9)
    np.testing.assert_allclose(rotvec_to_euler_deg(np.zeros((1, 3))), [[0, 0, 0]], atol=1e-12)
    # Tilt of π (the other degenerate case) survives a round trip.
    r = euler_to_matrix(np.array([0.0]), np.array([np.pi]), np.array([0.3]))
    np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(r).T), r, atol=1e-12)


def test_relion31_star_round_trip(real_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "relion31.star"
    shutil.copy(real_data / "relion" / "relion31.star", src)
    ref = starfile.read(src, always_dict=True)
    data = star_to_cs(src, tmp_path / "p.cs", )
    assert read_cs(tmp_path / "p.cs").tobytes() == data.tobytes()
    assert data.dtype["uid"] == np.dtype("<u8") and len(np.unique(data["uid"])) == len(data)
    assert data["blob/path"].tolist() == [b"relion31.mrcs"] * 5
    assert data["blob/idx"].tolist() == [0, 1, 2, 3, 4]
    assert (data["blob/shape"] == 256).all()
    cs_to_star(tmp_path / "p.cs", tmp_path / "back.star")
    back = starfile.read(tmp_path / "back.star", always_dict=True)
    assert list(back) == ["optics", "particles"]
    p0, p1 = ref["particles"], back["particles"]
    assert p1["rlnImageName"].tolist() == p0["rlnImageName"].tolist()
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(p1[col], p0[col], rtol=1e-6, atol=1e-4, err_msg=col)
    np.testing.assert_array_equal(p1["rlnClassNumber"], p0["rlnClassNumber"])
    np.testing.assert_array_equal(p1["rlnOpticsGroup"], p0["rlnOpticsGroup"])
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    np.testing.assert_allclose(angles_matrix(p1[angles].to_numpy()), angles_matrix(p0[angles].to_numpy()),
                               atol=1e-6)
    np.testing.assert_allclose(p1[angles].to_numpy(), p0[angles].to_numpy(), atol=1e-4)
    o0, o1 = ref["optics"], back["optics"]
    for col in ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality"):
        assert o1[col].tolist() == o0[col].tolist()
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
        np.testing.assert_allclose(o1[col], o0[col], rtol=1e-6)


def test_cryosparc_to_star_mapping(real_data: Path, tmp_path: Path) -> None:
    shutil.copy(real_data / "cryosparc" / J24, tmp_path / J24)
    a = read_cs(tmp_path / J24)
    before = (tmp_path / J24).read_bytes()
    blocks = to_star_blocks(a, mrcs=True)
    p, o = blocks["particles"], blocks["optics"]
    assert p["rlnImageName"].iloc[0] == "000001@" + a["blob/path"][0].decode() + "s"
    assert p["rlnImageName"].iloc[5] == f"{a['blob/idx'][5] + 1:06d}@" + a["blob/path"][5].decode() + "s"
    np.testing.assert_allclose(p["rlnDefocusU"], a["ctf/df1_A"])
    np.testing.assert_allclose(p["rlnDefocusAngle"], np.rad2deg(a["ctf/df_angle_rad"].astype(np.float64)))
    np.testing.assert_allclose(p["rlnOriginXAngst"],
                               a["alignments3D/shift"][:, 0].astype(np.float64) * a["alignments3D/psize_A"])
    np.testing.assert_allclose(angles_matrix(p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()),
                               np.stack([pyem_expmap(e.astype(np.float64)) for e in a["alignments3D/pose"]]),
                               atol=1e-9)
    assert o["rlnImageSize"].tolist() == [180]
    assert o["rlnVoltage"].tolist() == [200.0] and o["rlnImagePixelSize"].tolist() == pytest.approx([2.95])
    assert (p["rlnOpticsGroup"] == 1).all()
    # Back to .cs: CTF, poses and blob fields survive.
    back = from_star_blocks(blocks)
    assert back["blob/path"][0] == a["blob/path"][0] + b"s"
    np.testing.assert_array_equal(back["blob/idx"], a["blob/idx"])
    for f in ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
              "ctf/amp_contrast", "alignments3D/shift"):
        np.testing.assert_allclose(back[f], a[f], rtol=1e-5, atol=1e-5, err_msg=f)
    np.testing.assert_allclose(rotvec_to_matrix(back["alignments3D/pose"]),
                               rotvec_to_matrix(a["alignments3D/pose"]), atol=1e-5)
    assert (tmp_path / J24).read_bytes() == before


def test_imported_marker_is_stripped_and_2d_pose_is_psi(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / J2)
    p = to_star_blocks(a)["particles"]
    assert a["blob/path"][0].startswith(b">")
    assert p["rlnImageName"].iloc[0] == "000001@" + a["blob/path"][0].decode()[1:]
    assert "rlnAngleRot" not in p
    np.testing.assert_allclose(p["rlnAnglePsi"], np.rad2deg(a["alignments2D/pose"].astype(np.float64)))
    np.testing.assert_array_equal(p["rlnClassNumber"], a["alignments2D/class"].astype(int) + 1)
    back = from_star_blocks(to_star_blocks(a))
    np.testing.assert_allclose(back["alignments2D/pose"], a["alignments2D/pose"], atol=1e-6)


def test_mixed_optics_in_one_group_is_refused(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / J2).copy()
    a["blob/psize_A"][3] = 2.0
    with pytest.raises(FieldError, match="optics group 1 mixes rlnImagePixelSize"):
        to_star_blocks(a, label="J2.cs")
    a["ctf/exp_group_id"][3] = 1
    assert to_star_blocks(a)["optics"]["rlnOpticsGroup"].tolist() == [1, 2]


def test_relion_reads_our_star(real_data: Path, tmp_path: Path) -> None:
    handler = shutil.which("relion_star_handler")
    if handler is None:
        pytest.skip("RELION not installed")
    cs_to_star(real_data / "cryosparc" / J24, tmp_path / "out.star", mrcs=True)
    run = subprocess.run([handler, "--i", str(tmp_path / "out.star"), "--o", str(tmp_path / "copy.star")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    copy = starfile.read(tmp_path / "copy.star", always_dict=True)
    assert len(copy["particles"]) == 2019 and len(copy["optics"]) == 1


def test_bad_star_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.star"
    bad.write_text("data_particles\n\nloop_\n_rlnDefocusU #1\n1.0\n2.0\n")
    with pytest.raises(StarFormatError, match="rlnImageName"):
        from_star_blocks(read_star(bad), label=str(bad))
    bad.write_text("data_particles\n\nloop_\n_rlnImageName #1\nno-at-sign.mrcs\n")
    with pytest.raises(StarFormatError, match="row 1: rlnImageName 'no-at-sign.mrcs' is not idx@path"):
        from_star_blocks(read_star(bad), label=str(bad))
    bad.write_text("")
    with pytest.raises(StarFormatError):
        read_star(bad)


def test_uids_from_a_column(real_data: Path) -> None:
    blocks = read_star(real_data / "relion" / "relion31.star")
    blocks["particles"]["rlnImageId"] = np.arange(5) + 10
    out = from_star_blocks(blocks, uid_column="rlnImageId")
    assert out["uid"].tolist() == [10, 11, 12, 13, 14]
    with pytest.raises(StarFormatError, match="repeats values"):
        from_star_blocks(blocks, uid_column="rlnClassNumber")
