"""STAR → .cs keeps what it reads: RELION 3.0 origins, boxes from stack headers,
deterministic uids, dropped columns named, bad input refused; .mrcs links; CSDAT out."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import starfile
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.api import cs_to_star, star_to_cs
from stacktools.cs.rows import intersect
from stacktools.errors import DroppedColumnsWarning, MissingStackError, OutputExistsError, StarFormatError
from stacktools.formats.cs import detect_format, read_cs, write_cs
from tests.helpers import run_cli

PFCRT = "relion30_pfcrt.star"


def _pfcrt(real_data: Path, tmp_path: Path) -> Path:
    src = tmp_path / PFCRT
    shutil.copy(real_data / "relion" / PFCRT, src)
    return src


def test_relion30_origins_pixel_size_and_box(real_data: Path, tmp_path: Path) -> None:
    src = _pfcrt(real_data, tmp_path)
    ref = starfile.read(src)
    with pytest.warns(DroppedColumnsWarning, match="rlnImageOriginalName"):
        data = star_to_cs(src, tmp_path / "p.cs", box=128, project_dir=tmp_path)
    np.testing.assert_allclose(data["alignments3D/shift"][:, 0], ref["rlnOriginX"], atol=1e-6)
    np.testing.assert_allclose(data["alignments3D/shift"][:, 1], ref["rlnOriginY"], atol=1e-6)
    np.testing.assert_allclose(data["blob/psize_A"], 1.035e4 / 1e4, rtol=1e-6)
    assert (data["blob/shape"] == 128).all()
    np.testing.assert_allclose(data["ctf/cross_corr_ctffind4"], ref["rlnCtfFigureOfMerit"])
    assert data["location/micrograph_path"][0].decode() == ref["rlnMicrographName"][0]
    np.testing.assert_array_equal(data["alignments3D/split"], ref["rlnRandomSubset"] - 1)


def test_box_from_stack_header_else_clear_error(real_data: Path, tmp_path: Path) -> None:
    src = _pfcrt(real_data, tmp_path)
    with pytest.raises(MissingStackError, match="no rlnImageSize.*box"):
        star_to_cs(src, tmp_path / "p.cs", project_dir=tmp_path)
    assert not (tmp_path / "p.cs").exists()
    stack = tmp_path / "Extract" / "job012" / "FinalRefinement-OriginalParticles-PfCRT.mrcs"
    stack.parent.mkdir(parents=True)
    shutil.copy(real_data / "relion" / "relion31.mrcs", stack)  # 256 px, 5 images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedColumnsWarning)
        data = star_to_cs(src, tmp_path / "p.cs", project_dir=tmp_path)
    assert data["blob/shape"].tolist() == [[256, 256]] * 5


def test_uids_are_the_same_on_every_import(real_data: Path, tmp_path: Path) -> None:
    src = _pfcrt(real_data, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedColumnsWarning)
        a = star_to_cs(src, tmp_path / "a.cs", box=128)
        b = star_to_cs(src, tmp_path / "b.cs", box=128)
    assert a["uid"].tolist() == b["uid"].tolist() and len(np.unique(a["uid"])) == 5
    assert len(intersect(read_cs(tmp_path / "a.cs"), read_cs(tmp_path / "b.cs")[:3])) == 3


def test_repeated_image_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.star"
    bad.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
                   "1@a.mrcs 1.0 64\n000001@./a.mrcs 1.0 64\n")
    res = run_cli("cs", "from-star", bad, "-o", tmp_path / "out.cs")
    assert res.returncode == 2 and "appears more than once" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.cs").exists()


def test_missing_pixel_size_needs_psize(tmp_path: Path) -> None:
    star = tmp_path / "p.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnImageSize #2\n1@a.mrcs 64\n")
    res = run_cli("cs", "from-star", star, "-o", tmp_path / "out.cs")
    assert res.returncode == 2 and "--psize" in res.stderr and not (tmp_path / "out.cs").exists()
    res = run_cli("cs", "from-star", star, "-o", tmp_path / "out.cs", "--psize", "1.5", check=True)
    assert read_cs(tmp_path / "out.cs")["blob/psize_A"].tolist() == [1.5]


def test_premultiplied_is_refused(real_data: Path, tmp_path: Path) -> None:
    text = (real_data / "relion" / "relion31.star").read_text()
    text = text.replace("_rlnImageDimensionality #9 ", "_rlnImageDimensionality #9 \n"
                        "_rlnCtfDataAreCtfPremultiplied #10 ", 1)
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.strip().startswith("1 opticsGroup1"))
    lines[i] += " 1"
    star = tmp_path / "pre.star"
    star.write_text("\n".join(lines) + "\n")
    with pytest.raises(StarFormatError, match="premultiplied"):
        star_to_cs(star, tmp_path / "o.cs")
    assert not (tmp_path / "o.cs").exists()


def test_star_round_trip_keeps_values(real_data: Path, tmp_path: Path) -> None:
    src = _pfcrt(real_data, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedColumnsWarning)
        star_to_cs(src, tmp_path / "p.cs", box=128, micrograph_shape=(4096, 4096))
    cs_to_star(tmp_path / "p.cs", tmp_path / "back.star")
    ref, back = starfile.read(src), starfile.read(tmp_path / "back.star", always_dict=True)["particles"]
    assert back["rlnImageName"].tolist() == ref["rlnImageName"].tolist()
    for col in ("rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"):
        np.testing.assert_allclose(back[col], ref[col], rtol=1e-6, atol=1e-3, err_msg=col)
    np.testing.assert_allclose(back["rlnOriginXAngst"], ref["rlnOriginX"] * 1.035, rtol=1e-5, atol=1e-6)


def test_link_mrcs_is_idempotent_and_never_replaces(tmp_path: Path) -> None:
    job = tmp_path / "P1" / "J1"
    job.mkdir(parents=True)
    (job / "s.mrc").write_bytes(b"x")
    a = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "S8"), ("blob/idx", "<u4")])
    a["uid"], a["blob/path"], a["blob/idx"] = [1, 2], b"J1/s.mrc", [0, 1]
    write_cs(job / "p.cs", a)
    res = cs_to_star(job / "p.cs", tmp_path / "o.star", link_mrcs=True)
    assert res["links"] == {"made": 1, "existing": 0}
    assert (job / "s.mrcs").is_symlink() and (job / "s.mrcs").resolve() == (job / "s.mrc").resolve()
    assert starfile.read(tmp_path / "o.star", always_dict=True)["particles"]["rlnImageName"][0] == "000001@J1/s.mrcs"
    res = cs_to_star(job / "p.cs", tmp_path / "o.star", link_mrcs=True, overwrite=True)
    assert res["links"] == {"made": 0, "existing": 1}
    (job / "s.mrcs").unlink()
    (job / "s.mrcs").write_bytes(b"foreign")
    with pytest.raises(OutputExistsError):
        cs_to_star(job / "p.cs", tmp_path / "o2.star", link_mrcs=True)
    assert (job / "s.mrcs").read_bytes() == b"foreign" and not (tmp_path / "o2.star").exists()


def test_csdat_output_read_by_cryosparc_tools(real_data: Path, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset
    a = read_cs(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    write_cs(tmp_path / "o.cs", a, format="csdat")
    assert detect_format(tmp_path / "o.cs") == "csdat"
    ref, out = Dataset(a), Dataset.load(str(tmp_path / "o.cs"))
    assert out.descr() == ref.descr() and len(out) == len(a)
    for f in a.dtype.names:
        assert np.asarray(out[f]).tolist() == np.asarray(ref[f]).tolist(), f
    back = read_cs(tmp_path / "o.cs")
    assert back["blob/path"].tolist() == a["blob/path"].tolist()


def test_csdat_input_stays_csdat(real_data: Path, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset

    from stacktools.cs.dataset import CsDataset
    a = read_cs(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    write_cs(tmp_path / "in.cs", a, format="csdat")
    res = run_cli("cs", "filter", tmp_path / "in.cs", "--where", "blob/idx < 10", "-o", tmp_path / "out.cs")
    assert res.returncode == 0, res.stderr
    assert detect_format(tmp_path / "out.cs") == "csdat"
    out, ref = Dataset.load(str(tmp_path / "out.cs")), Dataset.load(str(tmp_path / "in.cs"))
    assert out.descr() == ref.descr() and len(out) == 10
    assert np.asarray(out["blob/path"]).tolist() == np.asarray(ref["blob/path"])[:10].tolist()
    CsDataset.load(tmp_path / "in.cs").save(tmp_path / "np.cs", format="numpy")
    assert detect_format(tmp_path / "np.cs") == "numpy"


def _euler_matrices(df) -> np.ndarray:
    """RELION's ZYZ rotation matrices, written out independently of stacktools."""
    a, b, g = (np.deg2rad(df[c].to_numpy(np.float64)) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    m = np.empty((len(a), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = sb * ca, sb * sa, cb
    return m


@st.composite
def _relion31_blocks(draw):
    import pandas as pd

    n = draw(st.integers(2, 40))  # both half-sets present (one alone is not written, as pyem does)
    groups = draw(st.integers(1, 2))
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, groups + 1),
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, groups + 1)],
        "rlnImagePixelSize": [draw(st.sampled_from([0.83, 1.07, 1.35])) for _ in range(groups)],
        "rlnImageSize": [draw(st.sampled_from([64, 128, 256]))] * groups,
        "rlnVoltage": [300.0] * groups, "rlnSphericalAberration": [2.7] * groups,
        "rlnAmplitudeContrast": [0.1] * groups, "rlnImageDimensionality": [2] * groups})
    stacks = draw(st.integers(1, 4))
    idx = draw(st.lists(st.integers(1, 500), min_size=n, max_size=n, unique=True))
    col = lambda lo, hi: draw(st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n))  # noqa: E731
    particles = pd.DataFrame({
        "rlnImageName": [f"{i:06d}@Extract/job001/s{k % stacks}.mrcs" for k, i in enumerate(idx)],
        "rlnOpticsGroup": draw(st.lists(st.integers(1, groups), min_size=n, max_size=n)),
        "rlnDefocusU": col(5000, 40000), "rlnDefocusV": col(5000, 40000), "rlnDefocusAngle": col(-180, 180),
        "rlnAngleRot": col(-180, 180), "rlnAngleTilt": col(0, 180), "rlnAnglePsi": col(-180, 180),
        "rlnOriginXAngst": col(-20, 20), "rlnOriginYAngst": col(-20, 20),
        "rlnClassNumber": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)),
        "rlnRandomSubset": [1 + k % 2 for k in range(n)]})
    return {"optics": optics, "particles": particles}


@settings(max_examples=40, deadline=None)
@given(_relion31_blocks())
def test_every_mapped_value_survives_from_star_and_back(blocks) -> None:
    from stacktools.cs.relion import from_star_blocks, to_star_blocks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedColumnsWarning)
        data = from_star_blocks(blocks, label="generated")
    back = to_star_blocks(data)
    ref, got = blocks["particles"], back["particles"]
    assert got["rlnImageName"].tolist() == ref["rlnImageName"].tolist()
    for c in ("rlnDefocusU", "rlnDefocusV", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-5, atol=1e-4, err_msg=c)
    # Angles: the same rotation (Euler triples are not unique), and the same defocus axis.
    np.testing.assert_allclose(_euler_matrices(got), _euler_matrices(ref), atol=1e-4)
    d = np.deg2rad(got["rlnDefocusAngle"].to_numpy() - ref["rlnDefocusAngle"].to_numpy())
    np.testing.assert_allclose(np.cos(2 * d), 1, atol=1e-6)
    for c in ("rlnClassNumber", "rlnRandomSubset", "rlnOpticsGroup"):
        assert got[c].tolist() == ref[c].tolist(), c
    by_group = back["optics"].set_index("rlnOpticsGroup")
    want = blocks["optics"].set_index("rlnOpticsGroup")
    for g in got["rlnOpticsGroup"].unique():
        for c in ("rlnImagePixelSize", "rlnImageSize", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast"):
            assert abs(float(by_group.loc[g, c]) - float(want.loc[g, c])) < 1e-5, (g, c)


# ---- from-star --json and its warning line -------------------------------------------------

# Columns of tests/data/relion/relion31.star with no .cs field, in file order (the
# coordinates too: its micrographs are absent and no --micrograph-shape is given).
RELION31_DROPPED = ["rlnCoordinateX", "rlnCoordinateY", "rlnImageOriginalName", "rlnNormCorrection",
                    "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
                    "rlnNrOfSignificantSamples", "rlnGroupNumber", "rlnMicrographOriginalPixelSize"]


def test_from_star_json_names_every_dropped_column(real_data: Path, tmp_path: Path) -> None:
    import json

    star = tmp_path / "relion31.star"
    shutil.copy(real_data / "relion" / "relion31.star", star)
    out = tmp_path / "out.cs"
    res = run_cli("cs", "from-star", star, "-o", out, "--box", "256", "--json", check=True)
    payload = json.loads(res.stdout)  # stdout is one JSON object and nothing else
    cs = read_cs(out)
    assert payload["output"] == str(out) and payload["rows"] == len(cs) == 5
    assert payload["bytes"] == out.stat().st_size and payload["fields"] == len(cs.dtype.names)
    assert payload["dropped_columns"] == RELION31_DROPPED
    # Every dropped column really is in the file, and every column of the file is
    # either converted or named.
    file_columns = {c for block in starfile.read(star, always_dict=True).values() for c in block.columns}
    assert set(RELION31_DROPPED) <= file_columns
    # One warning line on stderr, naming them all.
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacktools: warning: ")
    assert lines[0].endswith(", ".join(RELION31_DROPPED)) and f"{len(RELION31_DROPPED)} STAR column" in lines[0]


def test_from_star_without_dropped_columns_warns_nothing(tmp_path: Path) -> None:
    import json

    star = tmp_path / "p.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
                    "1@a.mrcs 1.0 64\n2@a.mrcs 1.0 64\n")
    res = run_cli("cs", "from-star", star, "-o", tmp_path / "out.cs", "--json", check=True)
    assert json.loads(res.stdout)["dropped_columns"] == [] and res.stderr == ""
    # Without --json the same line goes to stdout and the list is not printed.
    res = run_cli("cs", "from-star", star, "-o", tmp_path / "out2.cs", check=True)
    assert res.stdout.startswith("wrote 2 particles") and res.stderr == ""
