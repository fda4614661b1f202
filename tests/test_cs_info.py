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


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_stats_match_numpy_on_unaligned_rows(chunk: int) -> None:
    """Fields at odd offsets (after an S5 path), array fields, mixed types, any chunk."""
    rng = np.random.default_rng(2)
    a = np.zeros(101, dtype=[("uid", "<u8"), ("p", "S5"), ("i", "<u4"), ("s", "<u4", (2,)),
                             ("f", "<f4"), ("v", "<f4", (3,)), ("d", "<f8"), ("j", "<i2")])
    a["uid"] = rng.integers(0, 2**64 - 1, len(a), dtype=np.uint64)
    a["i"] = rng.integers(0, 2**32 - 1, len(a), dtype=np.uint32)
    a["s"] = rng.integers(0, 500, (len(a), 2))
    a["f"], a["v"], a["d"] = rng.normal(size=len(a)), rng.normal(size=(len(a), 3)), rng.normal(size=len(a))
    a["j"] = rng.integers(-300, 300, len(a))
    stats = csinfo.numeric_stats(a, chunk=chunk)
    assert list(stats) == [n for n in a.dtype.names if n != "p"]
    for name, s in stats.items():
        col = a[name]
        assert s["min"] == col.min() and s["max"] == col.max(), name
        assert s["mean"] == pytest.approx(col.astype(np.float64).mean(), rel=1e-6), name
    # Integers up to 32 bits are summed exactly.
    assert stats["i"]["mean"] == float(int(a["i"].astype(np.uint64).sum()) / len(a))
