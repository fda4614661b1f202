"""The demo project generator and `stacktools demo`."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np

from stacktools.demo import make_demo_project
from stacktools.formats.cs import read_cs
from stacktools.formats.mrc import read_header


def test_project_is_cryosparc_shaped(tmp_path: Path) -> None:
    d = make_demo_project(tmp_path / "P1")
    full, sel, pas = read_cs(d.extracted_cs), read_cs(d.selected_cs), read_cs(d.passthrough_cs)
    assert len(full) == d.particles and len(sel) == len(pas) == d.selected
    assert len(np.unique(full["uid"])) == len(full)
    assert np.array_equal(sel["uid"], pas["uid"])
    order = np.argsort(full["uid"])
    pos = order[np.searchsorted(full["uid"][order], sel["uid"])]
    assert not np.all(np.diff(pos) > 0), "the Select 2D subset is shuffled"
    assert set(sel["uid"].tolist()) <= set(full["uid"].tolist())
    assert "alignments2D/class" in sel.dtype.names and "ctf/df1_A" in pas.dtype.names
    assert "blob/path" not in pas.dtype.names
    modes = {read_header(s).mode for s in d.stacks}
    assert modes == {2, 12}
    assert sum(read_header(s).nsymbt > 0 for s in d.stacks) == 1
    for s in d.stacks:
        assert s.name.endswith("_particles.mrc")
        assert mrcfile.validate(str(s), print_file=open("/dev/null", "w"))


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_demo_project(tmp_path / "a", micrographs=3)
    b = make_demo_project(tmp_path / "b", micrographs=3)
    for x, y in zip(a.stacks, b.stacks):
        assert x.read_bytes() == y.read_bytes()
    assert a.selected_cs.read_bytes() == b.selected_cs.read_bytes()


def test_demo_command(tmp_path: Path, run_cli) -> None:
    res = run_cli("demo", tmp_path / "demo", "--quiet", "--json", check=True)
    summary = json.loads(res.stdout)
    names = [s["name"] for s in summary["steps"]]
    assert names[:2] == ["project", "size"]
    # Re-running over an earlier demo is allowed; a foreign directory is refused.
    run_cli("demo", tmp_path / "demo", "--quiet", "--json", check=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    res = run_cli("demo", foreign)
    assert res.returncode == 2 and (foreign / "data.txt").read_text() == "keep me"
    res = run_cli("demo", tmp_path / "demo2", check=True)
    assert "Size of the Select 2D subset" in res.stdout
    # The README runs it with no argument: a relative default directory.
    res = run_cli("demo", "--quiet", check=True, cwd=tmp_path)
    assert (tmp_path / "stacktools-demo" / "J7").is_dir()
