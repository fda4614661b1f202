"""A CSDAT input comes back out as CSDAT from consolidate and cache sync; --format chooses.

cryosparc-tools (CryoSPARC's reference reader) must read every output with the same
rows, fields and values as the NumPy-format run of the same command.
"""

from __future__ import annotations

import numpy as np
import pytest

from stacktools.formats.cs import detect_format, read_cs, write_cs
from tests.helpers import cli_json, run_cli

pytest.importorskip("cryosparc.dataset")


def _to_csdat(*paths) -> None:
    for p in paths:
        write_cs(p, read_cs(p), format="csdat")
        assert detect_format(p) == "csdat"


def _same_rows(a_path, b_path) -> None:
    from cryosparc.dataset import Dataset

    a, b = Dataset.load(str(a_path)), Dataset.load(str(b_path))
    assert len(a) == len(b) and [f[0] for f in a.descr()] == [f[0] for f in b.descr()]
    for name, *_ in a.descr():
        assert np.asarray(a[name]).tolist() == np.asarray(b[name]).tolist(), name


def test_consolidate_keeps_a_csdat_input_csdat(demo, tmp_path):
    ref = cli_json("consolidate", demo.selected_cs, "--passthrough", demo.passthrough_cs,
                   "--out", tmp_path / "np", "--quiet")
    _to_csdat(demo.selected_cs, demo.passthrough_cs)
    got = cli_json("consolidate", demo.selected_cs, "--passthrough", demo.passthrough_cs,
                   "--out", tmp_path / "csdat", "--quiet")
    assert detect_format(got["cs"]) == "csdat" and detect_format(got["passthrough"]) == "csdat"
    # The same rows as the NumPy run, apart from the stacks' new directory.
    a, b = read_cs(ref["cs"]), read_cs(got["cs"])
    assert a.dtype.names == b.dtype.names and len(a) == len(b)
    for name in a.dtype.names:
        if name != "blob/path":
            assert a[name].tolist() == b[name].tolist(), name
    _same_rows(ref["passthrough"], got["passthrough"])


def test_format_numpy_writes_numpy_from_a_csdat_input(demo, tmp_path):
    _to_csdat(demo.selected_cs)
    got = cli_json("consolidate", demo.selected_cs, "--out", tmp_path / "o", "--format", "numpy", "--quiet")
    assert detect_format(got["cs"]) == "numpy"


def test_a_bad_format_is_refused_and_nothing_is_written(demo, tmp_path):
    res = run_cli("consolidate", demo.selected_cs, "--out", tmp_path / "o", "--format", "parquet")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--format" in res.stderr
    assert not (tmp_path / "o").exists()


def test_cache_write_cs_keeps_a_csdat_input_csdat(demo, tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    _to_csdat(demo.selected_cs)
    out = tmp_path / "cached.cs"
    cli_json("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir, "--ssd-path", ssd,
             "--reserve-mb", "0", "--quiet", "--write-cs", out)
    assert detect_format(out) == "csdat"
    assert len(read_cs(out)) == demo.selected


def test_cache_write_cs_of_a_star_input_is_numpy(demo, tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    star = tmp_path / "particles.star"
    assert run_cli("cs", "to-star", demo.selected_cs, "-o", star).returncode == 0
    out = tmp_path / "cached.cs"
    cli_json("cache", "sync", star, "--project-dir", demo.project_dir, "--ssd-path", ssd,
             "--reserve-mb", "0", "--quiet", "--write-cs", out)
    assert detect_format(out) == "numpy" and len(read_cs(out)) == demo.selected


# ---- --format on every cs command that writes a particle .cs --------------------------------

def _cs_commands(demo, out):
    """(name, arguments writing ``out``) for each cs command that writes one particle .cs."""
    sel, ext, pt = demo.selected_cs, demo.extracted_cs, demo.passthrough_cs
    return [
        ("filter", ["filter", ext, "--where", "blob/idx < 100", "-o", out]),
        ("union", ["union", ext, ext, "-o", out]),
        ("intersect", ["intersect", ext, sel, "-o", out]),
        ("subtract", ["subtract", ext, sel, "-o", out]),
        ("join", ["join", sel, pt, "-o", out]),
        ("dedupe", ["dedupe", ext, "-o", out]),
        ("sample", ["sample", ext, "--count", "50", "-o", out]),
    ]


@pytest.mark.parametrize("which", ["filter", "union", "intersect", "subtract", "join", "dedupe", "sample"])
def test_format_csdat_on_each_cs_command(demo, tmp_path, which):
    np_out, cd_out = tmp_path / "np.cs", tmp_path / "csdat.cs"
    args = dict(_cs_commands(demo, np_out))[which]
    run_cli("cs", *args, "--quiet" if which != "sample" else "--json", check=True)
    assert detect_format(np_out) == "numpy"  # the input's format by default
    args = dict(_cs_commands(demo, cd_out))[which]
    run_cli("cs", *args, "--format", "CSDAT", check=True)
    assert detect_format(cd_out) == "csdat"
    _same_rows(np_out, cd_out)
    from cryosparc.dataset import Dataset
    assert [tuple(d) for d in Dataset.load(str(cd_out)).descr()] == \
        [tuple(d) for d in Dataset.load(str(np_out)).descr()]
    # and back: --format numpy from a CSDAT input
    back = tmp_path / "back.cs"
    run_cli("cs", "filter", cd_out, "--where", "blob/idx >= 0", "-o", back, "--format", "numpy", check=True)
    assert detect_format(back) == "numpy"
    _same_rows(back, np_out)


def test_format_csdat_on_split_and_from_star(demo, real_data, tmp_path):
    got = cli_json("cs", "split", demo.extracted_cs, "--into", "2", "-o", tmp_path / "parts",
                   "--format", "csdat")
    assert len(got["files"]) == 2
    assert all(detect_format(f["output"]) == "csdat" for f in got["files"])
    assert sum(len(read_cs(f["output"])) for f in got["files"]) == len(read_cs(demo.extracted_cs))
    out = tmp_path / "fs.cs"
    run_cli("cs", "from-star", real_data / "relion" / "relion31.star", "-o", out, "--box", "256",
            "--format", "csdat", check=True)
    assert detect_format(out) == "csdat"
    from cryosparc.dataset import Dataset
    assert len(Dataset.load(str(out))) == 5


@pytest.mark.parametrize("which", ["filter", "union", "join", "dedupe", "sample"])
def test_a_bad_cs_format_exits_2_and_writes_nothing(demo, tmp_path, which):
    out = tmp_path / "o.cs"
    res = run_cli("cs", *dict(_cs_commands(demo, out))[which], "--format", "parquet")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--format" in res.stderr
    assert not out.exists() and not (tmp_path / "o.csg").exists()
