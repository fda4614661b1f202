"""`.cs` I/O: real files, exact dtypes, round trips, CSDAT and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stacktools.errors import CsFormatError, OutputError
from stacktools.formats.cs import detect_format, read_cs, write_cs

REAL = ["cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs", "4k_dataset.cs"]


@pytest.mark.parametrize("name", REAL)
def test_real_files_load_with_exact_dtype(real_data: Path, name: str) -> None:
    path = real_data / "cryosparc" / name
    ours = read_cs(path)
    ref = np.load(path, allow_pickle=False)
    assert ours.dtype == ref.dtype
    assert ours.dtype.names == ref.dtype.names
    assert ours.tobytes() == ref.tobytes()


def test_real_dtypes_are_the_documented_ones(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")
    assert len(a) == 2019
    assert a.dtype["uid"] == np.dtype("<u8")
    assert a.dtype["blob/path"] == np.dtype("S89")
    assert a.dtype["blob/idx"] == np.dtype("<u4")
    assert a.dtype["blob/shape"] == np.dtype(("<u4", (2,)))
    assert a.dtype["blob/shape"].shape == (2,)
    assert set(a["blob/shape"][:, 0].tolist()) == {180}
    empty = read_cs(real_data / "cryosparc" / "4k_dataset.cs")
    assert len(empty) == 0
    assert any(n.startswith("alignments_class_") for n in empty.dtype.names)


@pytest.mark.parametrize("name", REAL)
def test_real_files_round_trip_bit_exact(real_data: Path, tmp_path: Path, name: str) -> None:
    src = real_data / "cryosparc" / name
    out = tmp_path / "out.cs"
    write_cs(out, read_cs(src))
    a, b = np.load(src, allow_pickle=False), np.load(out, allow_pickle=False)
    assert a.dtype == b.dtype
    # The .npy header's padding varies between NumPy versions; the data block must not.
    n = a.nbytes
    assert out.read_bytes()[len(out.read_bytes()) - n:] == src.read_bytes()[len(src.read_bytes()) - n:]


def test_written_file_reads_in_cryosparc_tools(real_data: Path, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset
    src = read_cs(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    out = tmp_path / "x.cs"
    write_cs(out, src)
    d = Dataset.load(str(out))
    assert len(d) == len(src)
    assert set(d.fields()) == set(src.dtype.names)
    assert np.array_equal(d["uid"], src["uid"])
    assert np.array_equal(d["blob/idx"], src["blob/idx"])
    assert [p.encode() for p in d["blob/path"]] == src["blob/path"].tolist()
    assert np.array_equal(d["ctf/tetra_A"], src["ctf/tetra_A"])


def test_csdat_format_reads_same_rows(real_data: Path, tmp_path: Path) -> None:
    from cryosparc.dataset import CSDAT_FORMAT, Dataset
    src = real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs"
    csdat = tmp_path / "new.cs"
    Dataset.load(str(src)).save(str(csdat), format=CSDAT_FORMAT)
    assert csdat.read_bytes()[:6] == b"\x95CSDAT"
    assert detect_format(csdat) == "csdat"
    ours, ref = read_cs(csdat), read_cs(src)
    assert ours.dtype.names == ref.dtype.names
    for name in ref.dtype.names:
        assert np.array_equal(ours[name], ref[name]), name


def test_blob_path_keeps_import_marker(real_data: Path) -> None:
    a = read_cs(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    assert all(p.startswith(b">J1/imported/") for p in a["blob/path"])


@pytest.mark.parametrize("content", [b"", b"hello world, not a cs file", b"\x89PNG\r\n\x1a\n" + b"0" * 100])
def test_not_a_cs_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.cs"
    p.write_bytes(content)
    with pytest.raises(CsFormatError, match="bad.cs"):
        read_cs(p)


def test_truncated_cs(real_data: Path, tmp_path: Path) -> None:
    src = (real_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs").read_bytes()
    for cut in (8, 200, len(src) // 2, len(src) - 1):
        p = tmp_path / f"cut{cut}.cs"
        p.write_bytes(src[:cut])
        with pytest.raises(CsFormatError, match=f"cut{cut}.cs"):
            read_cs(p)


def test_write_refuses_existing_without_overwrite(tmp_path: Path) -> None:
    a = np.zeros(3, dtype=[("uid", "<u8")])
    p = tmp_path / "a.cs"
    write_cs(p, a)
    before = p.read_bytes()
    with pytest.raises(OutputError):
        write_cs(p, np.ones(5, dtype=[("uid", "<u8")]), overwrite=False)
    assert p.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["a.cs"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "a.cs"
    with pytest.raises(OutputError):
        write_cs(p, np.zeros(2, dtype=[("o", object)]))
    assert list(tmp_path.iterdir()) == []


# Arbitrary structured dtypes shaped like CryoSPARC's: scalars, fixed byte strings, subarrays.
_scalar = st.sampled_from(["<u8", "<u4", "<i4", "<f4", "<f8", "<u2", "|u1", "|b1"])
_field_type = st.one_of(
    _scalar,
    st.integers(1, 96).map(lambda n: f"|S{n}"),
    st.tuples(_scalar, st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple)),
)
_names = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}(/[a-z0-9_]{1,10})?", fullmatch=True),
                  min_size=1, max_size=8, unique=True)


@st.composite
def structured_arrays(draw):
    names = draw(_names)
    descr = []
    for n in names:
        t = draw(_field_type)
        descr.append((n, *t) if isinstance(t, tuple) else (n, t))
    dtype = np.dtype(descr)
    rows = draw(st.integers(0, 20))
    return draw(hnp.arrays(dtype, rows))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=structured_arrays())
def test_round_trip_arbitrary_dtypes(tmp_path: Path, arr: np.ndarray) -> None:
    p = tmp_path / "r.cs"
    write_cs(p, arr)
    back = read_cs(p)
    assert back.dtype == arr.dtype
    assert back.dtype.names == arr.dtype.names
    assert back.tobytes() == np.ascontiguousarray(arr).tobytes()
    ref = np.load(p, allow_pickle=False)
    assert ref.tobytes() == back.tobytes()


def test_csdat_without_cryosparc_tools_is_a_clear_error(real_data: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    from cryosparc.dataset import CSDAT_FORMAT, Dataset
    csdat = tmp_path / "new.cs"
    Dataset.load(str(real_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")).save(
        str(csdat), format=CSDAT_FORMAT)
    monkeypatch.setitem(__import__("sys").modules, "cryosparc.dataset", None)
    with pytest.raises(CsFormatError, match=r"new.cs.*stacktools\[csdat\]"):
        read_cs(csdat)
