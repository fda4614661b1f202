"""``cs info`` statistics against plain NumPy, sequential and threaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stacktools.cs.info as csinfo
from stacktools.formats.cs import read_cs

J24 = "cryosparc_P12_J24_001_particles.cs"


def test_stats_match_numpy(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / J24)
    info = csinfo.summarize(a)
    assert info["rows"] == 2019 and info["stacks"] == 50 and info["box"] == [180]
    for name in a.dtype.names:
        col = a[name]
        s = info["stats"][name]
        if col.dtype.base.kind == "S" or col.dtype.kind == "S":
            assert s["distinct"] == len(np.unique(col))
            continue
        assert s["min"] == pytest.approx(col.min()), name
        assert s["max"] == pytest.approx(col.max()), name
        assert s["mean"] == pytest.approx(col.astype(np.float64).mean(), rel=1e-6), name


def test_threaded_and_sequential_agree(real_data: Path, monkeypatch) -> None:
    a = read_cs(real_data / "cryosparc" / J24).copy()
    a["ctf/df2_A"][7] = np.nan
    sequential = csinfo.summarize(a)
    monkeypatch.setattr(csinfo, "_PARALLEL_ROWS", 1)
    assert csinfo.summarize(a) == sequential
    s = sequential["stats"]["ctf/df2_A"]
    assert s["nan"] == 1 and s["min"] == pytest.approx(np.nanmin(a["ctf/df2_A"]))


def test_distinct_counts_runs_and_scattered_values() -> None:
    v = np.array([b"b", b"b", b"a", b"c", b"a", b"a"])
    assert csinfo.distinct(v).tolist() == [b"a", b"b", b"c"]
    assert len(csinfo.distinct(v[:0])) == 0
