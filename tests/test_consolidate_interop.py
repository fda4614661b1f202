"""Consolidated sets open in cryosparc-tools and RELION."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from stacktools.consolidate import consolidate
from stacktools.formats.cs import read_cs
from stacktools.formats.mrc import read_particle


def test_cryosparc_tools_loads_with_identical_fields(demo):
    dataset = pytest.importorskip("cryosparc.dataset", reason="cryosparc-tools not installed")
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      passthrough=demo.passthrough_cs)
    old = dataset.Dataset.load(str(demo.selected_cs))
    new = dataset.Dataset.load(res.cs)
    assert new.fields() == old.fields()
    assert len(new) == len(old)
    for name in old.fields():
        if name in ("blob/path", "blob/idx"):
            continue
        a, b = np.asarray(old[name]), np.asarray(new[name])
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    raw = read_cs(res.cs)
    assert list(np.asarray(new["blob/path"])) == [p.decode() for p in raw["blob/path"]]
    assert np.array_equal(np.asarray(new["blob/idx"]), raw["blob/idx"])
    pt_old = dataset.Dataset.load(str(demo.passthrough_cs))
    pt_new = dataset.Dataset.load(res.passthrough)
    assert pt_new.fields() == pt_old.fields()
    assert np.array_equal(np.asarray(pt_new["uid"]), np.asarray(new["uid"]))


@pytest.mark.skipif(shutil.which("relion_image_handler") is None,
                    reason="relion_image_handler (Debian package relion) is not installed")
def test_relion_reads_the_mrcs_stacks(demo, tmp_path):
    # RELION 3.1 has no float16 mode, so write float32 for it.
    res = consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                      mrcs=True, dtype="float32")
    for o in res.outputs[:3]:
        stack = Path(o["path"])
        assert stack.suffix == ".mrcs"
        stats = subprocess.run(["relion_image_handler", "--i", str(stack), "--stats"],
                               capture_output=True, text=True, cwd=tmp_path)
        assert stats.returncode == 0, stats.stderr
        lines = [ln for ln in stats.stdout.splitlines() if "@" in ln and "avg=" in ln]
        assert len(lines) == o["particles"]
        assert all("angpix = 1.07" in ln for ln in lines)
        k = o["particles"] - 1
        one = tmp_path / f"p{k}.mrc"
        proc = subprocess.run(["relion_image_handler", "--i", f"{k + 1}@{stack}", "--o", str(one)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with mrcfile.open(one, permissive=True) as m:
            got = np.asarray(m.data, dtype=np.float32).reshape(read_particle(stack, k).shape)
        assert np.array_equal(got, read_particle(stack, k))
        avg = float(re.search(r"avg= *([-0-9.e]+)", lines[k]).group(1))
        assert avg == pytest.approx(float(read_particle(stack, k).mean()), rel=1e-4, abs=1e-4)
