"""``stacktools cs …`` end to end: outputs, output rules, --json and one-line errors."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from stacktools.formats.cs import read_cs
from tests.helpers import assert_one_line_error, invoke_cli

J24 = "cryosparc_P12_J24_001_particles.cs"
J2 = "cryosparc_J2_particles_exported.cs"
EMPTY = "4k_dataset.cs"


@pytest.fixture
def cs():
    """Run ``stacktools cs ARGS`` in this process through the real entry point."""
    return functools.partial(invoke_cli, "cs")


@pytest.fixture
def files(real_data: Path, tmp_path: Path) -> Path:
    for name in (J24, J2, EMPTY):
        shutil.copy(real_data / "cryosparc" / name, tmp_path / name)
    return tmp_path


def test_info_json_and_table(cs, files: Path) -> None:
    r = cs("info", files / J24, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rows"] == 2019 and info["format"] == "numpy"
    assert info["box"] == [180] and info["psize_A"] == [2.95] and info["stacks"] == 50
    assert [f["name"] for f in info["groups"]["ctf"]][:2] == ["ctf/type", "ctf/exp_group_id"]
    assert info["groups"]["blob"][2] == {"name": "blob/shape", "dtype": "<u4", "shape": [2]}
    a = read_cs(files / J24)
    assert info["stats"]["ctf/df1_A"]["min"] == pytest.approx(float(a["ctf/df1_A"].min()))
    assert info["stats"]["ctf/df1_A"]["mean"] == pytest.approx(float(a["ctf/df1_A"].astype(float).mean()), rel=1e-6)
    assert info["stats"]["blob/path"]["distinct"] == 50
    r = cs("info", files / J24)
    assert r.returncode == 0 and "NumPy" in r.stdout and "2,019" in r.stdout and "180 px" in r.stdout
    empty = json.loads(cs("info", files / EMPTY, "--json").stdout)
    assert empty["rows"] == 0 and "alignments_class_2" in empty["groups"]


def test_show(cs, files: Path) -> None:
    r = cs("show", files / J2, "--fields", "uid,alignments2D/class", "--head", "3", "--json")
    data = json.loads(r.stdout)
    a = read_cs(files / J2)
    assert data["data"] == [{"uid": int(a["uid"][i]), "alignments2D/class": int(a["alignments2D/class"][i])}
                            for i in range(3)]
    r = cs("show", files / J2, "-F", "ctf/", "-n", "2")
    assert r.returncode == 0 and "ctf/df1_A" in r.stdout and "imported" in r.stdout


def test_filter_and_output_rules(cs, files: Path) -> None:
    src = files / J2
    before = src.read_bytes()
    out = files / "sel.cs"
    r = cs("filter", src, "--where", "alignments2D/class in [1, 4, 7]", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    a, sel = read_cs(src), read_cs(out)
    assert sel.dtype == a.dtype and sel.tobytes() == a[np.isin(a["alignments2D/class"], [1, 4, 7])].tobytes()
    assert json.loads(r.stdout)["rows"] == len(sel)
    # An existing output is only replaced with --force; inputs never.
    again = cs("filter", src, "--where", "uid > 0", "-o", out)
    assert_one_line_error(again, "sel.cs", "already exists", "--force")
    assert read_cs(out).tobytes() == sel.tobytes()
    assert cs("filter", src, "--where", "uid > 0", "-o", out, "--force").returncode == 0
    assert len(read_cs(out)) == len(a)
    assert_one_line_error(cs("filter", src, "--where", "uid > 0", "-o", src, "--force"), "is also an input")
    assert src.read_bytes() == before
    assert not [p for p in files.iterdir() if p.name.endswith(".stacktools-tmp")]


@pytest.mark.parametrize("expr, fragment", [
    ("ctf/df1_A <", "column 12"),
    ("ctf/df1 < 3", "no field 'ctf/df1'"),
    ("import os", "expected 'and', 'or' or the end"),
])
def test_bad_expression_is_one_line(cs, files: Path, expr: str, fragment: str) -> None:
    r = cs("filter", files / J2, "--where", expr, "-o", files / "x.cs")
    assert r.returncode == 2
    assert_one_line_error(r, fragment)
    assert not (files / "x.cs").exists()


def test_bad_files_are_one_line(cs, files: Path) -> None:
    (files / "junk.cs").write_bytes(b"not a cs file at all")
    assert_one_line_error(cs("info", files / "junk.cs"), "junk.cs", "not a .cs file")
    (files / "trunc.cs").write_bytes((files / J24).read_bytes()[:5000])
    assert_one_line_error(cs("union", files / "trunc.cs", files / J24, "-o", files / "u.cs"), "trunc.cs")
    assert_one_line_error(cs("info", files / "missing.cs"), "missing.cs")
    assert_one_line_error(cs("union", files / J24, files / J2, "-o", files / "u.cs"), "fields do not match")
    assert_one_line_error(cs("from-star", files / "junk.cs", "-o", files / "x.cs"), "junk.cs")


def test_set_operations_contract(cs, files: Path) -> None:
    a = read_cs(files / J24)
    write = lambda name, arr: np.save(open(files / name, "wb"), arr)  # noqa: E731
    write("A.cs", a[:1200])
    write("B.cs", a[800:])
    for op, expected in (("union", a), ("intersect", a[800:1200]), ("subtract", a[:800])):
        r = cs(op, files / "A.cs", files / "B.cs", "-o", files / f"{op}.cs", "--json")
        assert r.returncode == 0, r.stderr
        out = read_cs(files / f"{op}.cs")
        assert out.dtype == a.dtype
        assert out.tobytes() == expected.tobytes(), op
        assert json.loads(r.stdout)["rows"] == len(expected)


def test_join_contract(cs, demo) -> None:
    out = demo.project_dir / "joined.cs"
    r = cs("join", demo.selected_cs, demo.passthrough_cs, "-o", out)
    assert r.returncode == 0, r.stderr
    main, joined = read_cs(demo.selected_cs), read_cs(out)
    np.testing.assert_array_equal(joined["uid"], main["uid"])
    assert joined.dtype.names[:len(main.dtype.names)] == main.dtype.names
    assert "location/center_x_frac" in joined.dtype.names


def test_dedupe_cli(cs, demo) -> None:
    main = read_cs(demo.selected_cs)
    doubled = np.concatenate([main, main[:10]])
    np.save(open(demo.project_dir / "dup.cs", "wb"), doubled)
    r = cs("dedupe", demo.project_dir / "dup.cs", "-o", demo.project_dir / "d.cs", "--json")
    assert json.loads(r.stdout)["removed_repeated_uid"] == 10
    assert read_cs(demo.project_dir / "d.cs").tobytes() == main.tobytes()
    r = cs("dedupe", demo.selected_cs, "-o", demo.project_dir / "d2.cs", "--distance", "1e6",
           "--passthrough", demo.passthrough_cs, "--by", "pick_stats/ncc_score", "--json")
    assert r.returncode == 0, r.stderr
    out = read_cs(demo.project_dir / "d2.cs")
    assert out.dtype == main.dtype
    # Everything on a micrograph is "close" at 1 km: one pick per micrograph is left.
    from stacktools.cs.rows import join
    full = join(main, read_cs(demo.passthrough_cs))
    assert len(out) == len(np.unique(full["location/micrograph_uid"]))
    assert json.loads(r.stdout)["removed_by_distance"] == len(main) - len(out)


def test_split_and_sample(cs, files: Path) -> None:
    r = cs("split", files / J2, "--by", "alignments2D/class", "-o", files / "parts", "--json")
    assert r.returncode == 0, r.stderr
    parts = json.loads(r.stdout)["files"]
    assert sum(p["rows"] for p in parts) == 22
    first = read_cs(parts[0]["output"])
    assert (first["alignments2D/class"] == parts[0]["value"]).all()
    assert Path(parts[0]["output"]).name.startswith("cryosparc_J2_particles_exported_class_")
    r = cs("split", files / J2, "--into", "4", "--seed", "2", "-o", files / "rand", "--json")
    assert [p["rows"] for p in json.loads(r.stdout)["files"]] == [6, 6, 5, 5]
    r1 = cs("sample", files / J24, "-n", "100", "--seed", "7", "-o", files / "s1.cs")
    r2 = cs("sample", files / J24, "-n", "100", "--seed", "7", "-o", files / "s2.cs")
    assert r1.returncode == r2.returncode == 0
    assert (files / "s1.cs").read_bytes() == (files / "s2.cs").read_bytes()
    assert len(read_cs(files / "s1.cs")) == 100
    assert cs("sample", files / J24, "--fraction", "0.1", "-o", files / "s3.cs").returncode == 0
    assert len(read_cs(files / "s3.cs")) == 202
    assert cs("split", files / J2, "-o", files / "p").returncode != 0


def test_to_star_contract_and_back(cs, files: Path) -> None:
    r = cs("to-star", files / J24, "-o", files / "out.star", "--mrcs", "--json")
    assert r.returncode == 0, r.stderr
    blocks = starfile.read(files / "out.star", always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    assert len(blocks["particles"]) == 2019
    assert blocks["particles"]["rlnImageName"].iloc[0].endswith("_particles.mrcs")
    r = cs("from-star", files / "out.star", "-o", files / "back.cs")
    assert r.returncode == 0, r.stderr
    back, a = read_cs(files / "back.cs"), read_cs(files / J24)
    np.testing.assert_allclose(back["ctf/df1_A"], a["ctf/df1_A"], rtol=1e-6)


def test_to_csv_and_parquet(cs, files: Path) -> None:
    import pandas as pd
    r = cs("to-csv", files / J2, "-o", files / "j2.csv")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(files / "j2.csv")
    a = read_cs(files / J2)
    assert len(df) == 22 and "blob/shape[1]" in df.columns
    assert df["uid"].astype("uint64").tolist() == a["uid"].tolist()
    np.testing.assert_allclose(df["ctf/df1_A"], a["ctf/df1_A"], rtol=1e-7)
    pytest.importorskip("pyarrow")
    r = cs("to-csv", files / J2, "-o", files / "j2.parquet", "--to-parquet")
    assert r.returncode == 0, r.stderr
    pq = pd.read_parquet(files / "j2.parquet")
    assert pq["uid"].tolist() == a["uid"].tolist() and pq["ctf/df1_A"].dtype == np.float32


def test_subprocess_error_is_one_line(run_cli, files: Path) -> None:
    r = run_cli("cs", "filter", files / J2, "--where", "alignments2D/class in [1,", "-o", files / "x.cs")
    assert r.returncode == 2
    assert_one_line_error(r, "bad expression", "column")


def test_info_reports_csdat_format(cs, files: Path) -> None:
    from cryosparc.dataset import CSDAT_FORMAT, Dataset
    Dataset.load(str(files / J2)).save(str(files / "new.cs"), format=CSDAT_FORMAT)
    info = json.loads(cs("info", files / "new.cs", "--json").stdout)
    assert info["format"] == "csdat" and info["rows"] == 22 and info["box"] == [300]
    r = cs("filter", files / "new.cs", "--where", "alignments2D/class == 4", "-o", files / "c4.cs")
    assert r.returncode == 0, r.stderr
    assert (read_cs(files / "c4.cs")["alignments2D/class"] == 4).all()


def test_split_refuses_too_many_files(cs, files: Path) -> None:
    r = cs("split", files / J24, "--by", "ctf/df1_A", "--max-files", "10", "-o", files / "many")
    assert_one_line_error(r, "ctf/df1_A has 50 distinct values", "--max-files 10")
    assert not list((files / "many").glob("*.cs")) if (files / "many").exists() else True
