"""MRC headers and particle reads against mrcfile, for every supported mode."""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from stacktools.errors import (
    IndexOutOfRangeError,
    MissingStackError,
    MrcHeaderError,
    TruncatedStackError,
)
from stacktools.formats.mrc import (
    make_header,
    mode_dtype,
    mode_name,
    mode_of_dtype,
    read_header,
    read_particle,
    read_particles,
)

MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def _stack_with_mrcfile(path: Path, dtype, n=7, ny=12, nx=10, voxel=1.5, ext: bytes = b""):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((n, ny, nx)) * 40).astype(dtype)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = voxel
        if ext:
            m.set_extended_header(np.frombuffer(ext, dtype="V1"))
            m.header.exttyp = b"MRCO"
    return data


@pytest.mark.parametrize("mode", sorted(MODES))
def test_header_and_particles_match_mrcfile(tmp_path: Path, mode: int) -> None:
    p = tmp_path / f"m{mode}.mrcs"
    data = _stack_with_mrcfile(p, MODES[mode])
    h = read_header(p)
    assert (h.nx, h.ny, h.nz, h.mode, h.nsymbt) == (10, 12, 7, mode, 0)
    assert h.voxel_size == pytest.approx(1.5)
    assert h.file_size == p.stat().st_size == h.expected_size
    for i in (0, 3, 6):
        got = read_particle(p, i, h)
        assert got.dtype == MODES[mode]
        assert got.tobytes() == data[i].tobytes()
    assert read_particles(p, 2, 3, h).tobytes() == data[2:5].tobytes()


def test_extended_header_offsets(tmp_path: Path) -> None:
    p = tmp_path / "ext.mrcs"
    data = _stack_with_mrcfile(p, np.float32, ext=bytes(range(256)) * 3)
    h = read_header(p)
    assert h.nsymbt == 768
    assert h.data_offset == 1024 + 768
    assert read_particle(p, 4, h).tobytes() == data[4].tobytes()


def test_big_endian_stack(tmp_path: Path) -> None:
    p = tmp_path / "be.mrcs"
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    with mrcfile.new(p) as m:
        m.set_data(data.astype(">f4"))
        m.voxel_size = 1.75
    h = read_header(p)
    assert h.byte_order == ">" and (h.nx, h.ny, h.nz) == (5, 4, 3)
    assert h.voxel_size == pytest.approx(1.75)
    assert np.array_equal(read_particle(p, 2, h), data[2])


def test_relion_stack(real_data: Path) -> None:
    p = real_data / "relion" / "relion31.mrcs"
    h = read_header(p)
    assert (h.nx, h.ny, h.nz, h.mode) == (256, 256, 5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(p, permissive=True) as m:
            ref = np.array(m.data)
    assert read_particle(p, 3, h).tobytes() == ref[3].tobytes()


def test_truncated_stack_detected(tmp_path: Path) -> None:
    p = tmp_path / "t.mrc"
    _stack_with_mrcfile(p, np.float32)
    full = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(full - 1)
    h = read_header(p)
    with pytest.raises(TruncatedStackError, match="t.mrc"):
        h.check_complete()
    with pytest.raises(TruncatedStackError):
        read_particle(p, 6, h)
    assert read_particle(p, 5, h).shape == (12, 10)


def test_header_only_file_and_tiny_file(tmp_path: Path) -> None:
    p = tmp_path / "tiny.mrc"
    p.write_bytes(b"\0" * 100)
    with pytest.raises(TruncatedStackError, match="tiny.mrc"):
        read_header(p)


def test_bad_mode_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "bad.mrc"
    hdr = bytearray(make_header(4, 4, 1, 2))
    hdr[12:16] = (99).to_bytes(4, "little")
    p.write_bytes(bytes(hdr) + b"\0" * 64)
    with pytest.raises(MrcHeaderError, match="mode 99"):
        read_header(p)
    with pytest.raises(MissingStackError, match="nope.mrc"):
        read_header(tmp_path / "nope.mrc")


def test_index_out_of_range(tmp_path: Path) -> None:
    p = tmp_path / "s.mrc"
    _stack_with_mrcfile(p, np.float32)
    with pytest.raises(IndexOutOfRangeError, match="s.mrc"):
        read_particle(p, 7)


@pytest.mark.parametrize("mode", [2, 12])
def test_made_header_is_valid_mrc2014(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "made.mrcs"
    data = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(MODES[mode])
    p.write_bytes(make_header(8, 8, 3, mode, 1.25) + data.tobytes())
    assert mrcfile.validate(str(p), print_file=open("/dev/null", "w"))
    with mrcfile.open(p) as m:
        assert np.array_equal(m.data, data)
        assert float(m.voxel_size.x) == pytest.approx(1.25)
    assert read_header(p).voxel_size == pytest.approx(1.25)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_mode_table_accessors(mode: int) -> None:
    dt = mode_dtype(mode)
    assert dt == np.dtype(MODES[mode]).newbyteorder("<") and dt.byteorder in "<|"
    assert mode_dtype(mode, ">").str == np.dtype(MODES[mode]).newbyteorder(">").str
    assert mode_of_dtype(dt) == mode_of_dtype(np.dtype(MODES[mode]).name) == mode
    assert mode_name(mode) == np.dtype(MODES[mode]).name
    assert mode_name(3) == "3"  # complex int16: not a mode stacktools reads
