"""The .csg result group beside every particle .cs: CryoSPARC's layout, read back with PyYAML.

Each command that writes a particle .cs must leave a .csg that names existing files
(relative to it) with their row counts and slot types; cryosparc-tools loads each
file it names. The kill -9 property for consolidate is checked in
test_consolidate_safety (every kill point, every .csg left behind).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.consolidate import consolidate
from stacktools.cs.result_group import csg_path, slot_type, write_result_group
from stacktools.formats.cs import write_cs
from stacktools.formats.csg import Result, csg_text
from tests import independent
from tests.helpers import assert_one_line_error, cli_json, invoke_cli

# Text a file name or a description can hold: anything but lone surrogates.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _check(csg: Path) -> dict:
    """The .csg reads as CryoSPARC reads it, and cryosparc-tools loads every file it names."""
    from cryosparc.dataset import Dataset
    doc = independent.result_group(csg)
    for name in {r["metafile"][1:] for r in doc["results"].values()}:
        assert len(Dataset.load(str(csg.parent / name))) == len(independent.read_cs(csg.parent / name))
    return doc


@settings(max_examples=200, deadline=None)
@given(description=_TEXT, title=_TEXT, metafile=_TEXT,
       slot=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), rows=st.integers(0, 2**40))
def test_csg_text_reads_back_exactly(description, title, metafile, slot, rows):
    text = csg_text([Result(slot, metafile, rows, f"particle.{slot}")], group_type="particle",
                    name="particles", title=title, description=description)
    doc = yaml.safe_load(text)
    assert doc["group"] == {"description": description, "name": "particles", "title": title,
                            "type": "particle"}
    assert doc["results"] == {slot: {"metafile": ">" + metafile, "num_items": rows,
                                     "type": f"particle.{slot}"}}


def test_csg_text_is_cryosparcs_layout():
    import datetime
    text = csg_text([Result("ctf", "J3_passthrough_p.cs", 7, "particle.ctf"),
                     Result("blob", "p.cs", 7, "particle.blob")], group_type="particle",
                    name="particles", title="All particles", description="from p.cs",
                    created=datetime.datetime(2024, 3, 11, 23, 50, 2, 123456))
    assert text == ("created: 2024-03-11 23:50:02.123456\n"
                    "group:\n"
                    "  description: 'from p.cs'\n"
                    "  name: particles\n"
                    "  title: 'All particles'\n"
                    "  type: particle\n"
                    "results:\n"
                    "  blob:\n"
                    "    metafile: '>p.cs'\n"
                    "    num_items: 7\n"
                    "    type: particle.blob\n"
                    "  ctf:\n"
                    "    metafile: '>J3_passthrough_p.cs'\n"
                    "    num_items: 7\n"
                    "    type: particle.ctf\n"
                    "version: v4.4.1\n")


def test_numbered_slots_have_their_data_type():
    assert slot_type("alignments_class_12") == "alignments3D"
    assert slot_type("components_mode_0") == "components"
    assert slot_type("alignments3D") == "alignments3D" and slot_type("blob") == "blob"


def _cs_commands(demo, out: Path) -> dict[str, list]:
    sel, pt, ext = demo.selected_cs, demo.passthrough_cs, demo.extracted_cs
    return {
        "filter": ["cs", "filter", sel, "-w", "alignments2D/class in [0, 1, 2]", "-o", out],
        "filter-passthrough": ["cs", "filter", sel, "--passthrough", pt, "-w", "ctf/df1_A > 0", "-o", out],
        "union": ["cs", "union", ext, ext, "-o", out],
        "intersect": ["cs", "intersect", ext, sel, "-o", out],
        "subtract": ["cs", "subtract", ext, sel, "-o", out],
        "join": ["cs", "join", sel, pt, "-o", out],
        "dedupe": ["cs", "dedupe", ext, "-d", "20", "-o", out],
        "sample": ["cs", "sample", ext, "-n", "17", "-o", out],
    }


@pytest.mark.parametrize("command", ["filter", "filter-passthrough", "union", "intersect", "subtract",
                                     "join", "dedupe", "sample"])
def test_cs_commands_write_a_result_group(demo, tmp_path, command):
    out = tmp_path / "out dir" / "kept's particles.cs"
    out.parent.mkdir()
    res = invoke_cli(*_cs_commands(demo, out)[command], "--json")
    assert res.returncode == 0, res.stderr
    doc = _check(csg_path(out))
    rows = independent.read_cs(out)
    held = {n.split("/")[0] for n in rows.dtype.names if "/" in n}
    assert set(doc["results"]) == held
    assert {r["metafile"] for r in doc["results"].values()} == {">kept's particles.cs"}


def test_split_writes_one_result_group_per_file(demo, tmp_path):
    res = invoke_cli("cs", "split", demo.selected_cs, "--by", "alignments2D/class", "-o", tmp_path / "s",
                     "--json")
    assert res.returncode == 0, res.stderr
    parts = sorted((tmp_path / "s").glob("*.cs"))
    assert len(parts) > 1
    assert sorted((tmp_path / "s").glob("*.csg")) == [csg_path(p) for p in parts]
    for p in parts:
        assert _check(csg_path(p))["results"]["blob"]["num_items"] == len(independent.read_cs(p))


def test_from_star_writes_a_result_group(real_data, tmp_path):
    out = tmp_path / "relion.cs"
    res = invoke_cli("cs", "from-star", real_data / "relion" / "relion31.star", "-o", out,
                     "--project-dir", real_data / "relion")
    assert res.returncode == 0, res.stderr
    doc = _check(csg_path(out))
    assert {"blob", "ctf"} <= set(doc["results"])


def test_consolidate_points_passthrough_slots_at_the_passthrough(demo):
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      passthrough=demo.passthrough_cs)
    assert res.csg == str(csg_path(res.cs))
    doc = _check(Path(res.csg))
    main, pt = ">" + Path(res.cs).name, ">" + Path(res.passthrough).name
    where = {slot: r["metafile"] for slot, r in doc["results"].items()}
    assert where == {"blob": main, "alignments2D": main, "ctf": pt, "location": pt, "pick_stats": pt}


def test_consolidate_rerun_with_force_replaces_the_result_group(demo):
    out = demo.project_dir / "J8"
    first = consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    rows = independent.read_cs(demo.selected_cs)
    write_cs(demo.selected_cs, rows[: len(rows) // 2])
    second = consolidate(demo.selected_cs, out, project_dir=demo.project_dir, force=True)
    assert second.csg == first.csg
    assert _check(Path(second.csg))["results"]["blob"]["num_items"] == len(rows) // 2
    assert sorted(p.name for p in out.glob("*.cs*")) == [Path(second.cs).name, Path(second.csg).name]


def test_cache_write_cs_writes_a_result_group(demo, tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    out = tmp_path / "cached.cs"
    cli_json("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir, "--ssd-path", ssd,
             "--reserve-mb", "0", "--quiet", "--write-cs", out)
    doc = _check(csg_path(out))
    assert set(doc["results"]) == {"blob", "alignments2D"}


def test_an_existing_result_group_is_replaced_only_with_force(demo, tmp_path):
    out = tmp_path / "kept.cs"
    csg = csg_path(out)
    csg.write_text("mine\n")
    args = ["cs", "filter", demo.selected_cs, "-w", "alignments2D/class == 1", "-o", out]
    res = invoke_cli(*args)
    assert res.returncode == 2
    assert_one_line_error(res, str(csg), "already exists")
    assert not out.exists() and csg.read_text() == "mine\n"
    assert invoke_cli(*args, "--force").returncode == 0
    _check(csg)


def test_a_symlinked_result_group_is_replaced_not_followed(demo, tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    out = tmp_path / "kept.cs"
    csg_path(out).symlink_to(target)
    res = invoke_cli("cs", "filter", demo.selected_cs, "-w", "alignments2D/class == 1", "-o", out, "--force")
    assert res.returncode == 0, res.stderr
    assert target.read_text() == "keep me\n"
    assert not csg_path(out).is_symlink()
    _check(csg_path(out))


def test_exposures_get_no_result_group(tmp_path):
    dtype = [("uid", "<u8"), ("micrograph_blob/path", "S20"), ("ctf/df1_A", "<f4")]
    out = tmp_path / "exposures.cs"
    write_cs(out, np.zeros(3, dtype))
    assert write_result_group([(out, np.dtype(dtype), 3)]) is None
    assert not csg_path(out).exists()


def test_real_cryosparc_files_get_their_slots(real_data, tmp_path):
    for src in sorted((real_data / "cryosparc").glob("*.cs")):
        out = tmp_path / src.name
        shutil.copy(src, tmp_path / ("in_" + src.name))
        res = invoke_cli("cs", "sample", tmp_path / ("in_" + src.name), "--fraction", "0.5", "-o", out)
        assert res.returncode == 0, res.stderr
        rows = independent.read_cs(out)
        held = {n.split("/")[0] for n in rows.dtype.names if "/" in n}
        assert set(_check(csg_path(out))["results"]) == held
