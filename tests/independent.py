"""An independent reader for the tests: plain ``np.load`` and ``os.pread``.

It shares no code with stacktools, so a test that checks bytes through it cannot
be fooled by a bug in stacktools' own read path.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}


def read_cs(path) -> np.ndarray:
    """A ``.cs`` file as NumPy reads it, wide headers included."""
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False, max_header_size=10**8)


def header(path) -> dict:
    """The MRC header fields that locate particles: box, count, dtype, data offset."""
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = os.pread(fd, 1024, 0)
    finally:
        os.close(fd)
    assert len(raw) == 1024, f"{path}: short header"
    endian = ">" if raw[212] == 0x11 else "<"
    nx, ny, nz, mode = struct.unpack(endian + "4i", raw[:16])
    (nsymbt,) = struct.unpack(endian + "i", raw[92:96])
    dtype = np.dtype(_MODES[mode]).newbyteorder(endian)
    return {"nx": nx, "ny": ny, "nz": nz, "dtype": dtype, "offset": 1024 + nsymbt}


def read_particle(path, index: int) -> np.ndarray:
    """Particle ``index`` (0-based) of an MRC stack, read with one ``os.pread``."""
    h = header(path)
    assert 0 <= index < h["nz"], f"{path}: index {index} past the end ({h['nz']} particles)"
    n = h["nx"] * h["ny"] * h["dtype"].itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = os.pread(fd, n, h["offset"] + index * n)
    finally:
        os.close(fd)
    assert len(raw) == n, f"{path}: particle {index} truncated"
    return np.frombuffer(raw, h["dtype"]).reshape(h["ny"], h["nx"])


def blob_file(project_dir, blob_path) -> Path:
    """Where a ``blob/path`` value points: CryoSPARC's leading '>' stripped."""
    raw = blob_path if isinstance(blob_path, bytes) else str(blob_path).encode()
    raw = raw.rstrip(b"\x00")
    if raw.startswith(b">"):
        raw = raw[1:]
    return Path(os.fsdecode(raw)) if os.path.isabs(raw) else Path(project_dir) / os.fsdecode(raw)


def particles_by_uid(cs_path, project_dir) -> dict[int, bytes]:
    """Every row of a ``.cs``: uid -> the raw bytes of its particle."""
    rows = read_cs(cs_path)
    out = {}
    for r in rows:
        img = read_particle(blob_file(project_dir, r["blob/path"]), int(r["blob/idx"]))
        out[int(r["uid"])] = img.tobytes()
    return out


def assert_same_particles(new_cs, new_project, old_cs, old_project) -> None:
    """Each row of ``new_cs`` holds exactly the pixels its uid has in ``old_cs``."""
    new = particles_by_uid(new_cs, new_project)
    old_rows = read_cs(old_cs)
    assert set(new) == {int(u) for u in old_rows["uid"]}, "the two sets hold different uids"
    for r in old_rows:
        img = read_particle(blob_file(old_project, r["blob/path"]), int(r["blob/idx"]))
        assert new[int(r["uid"])] == img.tobytes(), f"uid {int(r['uid'])}: other pixels"


def read_bytes(path) -> bytes:
    """A whole file's bytes, read with one ``os.pread``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


# Slot types that are not the slot's own name (cryosparc-tools' slot specifications).
_SLOT_TYPES = (("alignments_class_", "alignments3D"), ("components_mode_", "components"))


def result_group(csg_path) -> dict:
    """Check a ``.csg`` as CryoSPARC's Import Result Group would read it, with PyYAML and
    ``np.load`` only; return the parsed document.

    Every result names, relative to the ``.csg``, a file that exists and has
    ``num_items`` rows and that slot's fields; every slot of the files it names is
    listed; a slot's type is ``particle.<its data type>``.
    """
    import datetime

    import yaml

    csg_path = Path(csg_path)
    doc = yaml.safe_load(csg_path.read_text(encoding="utf-8"))
    assert set(doc) == {"created", "group", "results", "version"}, f"{csg_path}: keys {sorted(doc)}"
    assert isinstance(doc["created"], datetime.datetime), f"{csg_path}: created {doc['created']!r}"
    assert doc["group"]["type"] == "particle" and doc["group"]["name"]
    assert {"description", "name", "title", "type"} == set(doc["group"])
    assert str(doc["version"]).startswith("v")
    files: dict[str, np.ndarray] = {}
    for slot, res in doc["results"].items():
        assert set(res) == {"metafile", "num_items", "type"}, f"{csg_path}: {slot}: {sorted(res)}"
        assert res["metafile"].startswith(">"), f"{csg_path}: {slot}: {res['metafile']!r}"
        target = csg_path.parent / res["metafile"][1:]
        assert target.is_file(), f"{csg_path}: {slot} names {target}, which is missing"
        rows = files.setdefault(res["metafile"], read_cs(target))
        assert len(rows) == res["num_items"], f"{csg_path}: {slot}: {len(rows)} rows in {target}"
        assert any(n.startswith(slot + "/") for n in rows.dtype.names), f"{csg_path}: {slot} not in {target}"
        kind = next((k for p, k in _SLOT_TYPES if slot.startswith(p)), slot)
        assert res["type"] == f"particle.{kind}", f"{csg_path}: {slot}: type {res['type']}"
    for name, rows in files.items():
        held = {n.split("/", 1)[0] for n in rows.dtype.names if "/" in n}
        assert held <= set(doc["results"]), f"{csg_path}: slots of {name} not listed: {held - set(doc['results'])}"
    return doc
