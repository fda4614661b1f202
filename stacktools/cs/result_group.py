"""The ``.csg`` beside a written particle ``.cs``: how CryoSPARC imports it back.

Every command that writes a particle set as ``.cs`` calls :func:`write_result_group`
once its ``.cs`` files are under their final names, so that a ``.csg`` only ever
names complete files; :func:`clear_result_group` runs before the ``.cs`` is replaced,
so that an earlier ``.csg`` never describes rows that are no longer there. In
CryoSPARC, Import Result Group on ``NAME.csg`` then brings the particles back with
their uids (and so their lineage).

Slots are the prefixes before ``/`` of the field names (``uid`` and fields without
a ``/`` belong to none). A slot's type is its name, except for CryoSPARC's numbered
families (``alignments_class_N`` are ``alignments3D``, ``components_mode_N`` are
``components``), as cryosparc-tools' slot specifications spell them. With a
passthrough, the slots that only it holds point at it. A set with exposure slots
(``micrograph_blob``, ``movie_blob``, ...) is not a particle set and gets no ``.csg``.
The text itself is :mod:`stacktools.formats.csg`.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from stacktools.errors import OutputError
from stacktools.formats.atomic import OVERWRITE_HINT
from stacktools.formats.csg import Result, csg_text, write_csg

CSG_SUFFIX = ".csg"

_NUMBERED = [(re.compile(r"alignments_class_\d+\Z"), "alignments3D"),
             (re.compile(r"components_mode_\d+\Z"), "components")]
# Slots only exposures (micrographs, movies) have.
_EXPOSURE_SLOTS = {"movie_blob", "micrograph_blob", "micrograph_blob_non_dw", "mscope_params",
                   "gain_ref_blob", "rigid_motion", "spline_motion", "background_blob", "ctf_stats",
                   "micrograph_thumbnail_blob_1x", "micrograph_thumbnail_blob_2x"}

def csg_path(cs_path: str | os.PathLike) -> Path:
    """The ``.csg`` that goes beside ``cs_path``: ``X.cs`` -> ``X.csg``."""
    p = Path(cs_path)
    return p.with_name(p.stem + CSG_SUFFIX) if p.suffix == ".cs" else p.with_name(p.name + CSG_SUFFIX)


def slots(dtype: np.dtype) -> list[str]:
    """The slots of a ``.cs`` dtype, in field order."""
    seen: dict[str, None] = {}
    for name in dtype.names or ():
        if "/" in name:
            seen.setdefault(name.split("/", 1)[0], None)
    return list(seen)


def slot_type(slot: str) -> str:
    """The data type of a slot, e.g. ``alignments_class_3`` -> ``alignments3D``."""
    for pattern, kind in _NUMBERED:
        if pattern.match(slot):
            return kind
    return slot


def is_particle_set(dtype: np.dtype) -> bool:
    """Whether a ``.cs`` dtype describes particles: uids, slots, and no exposure slots."""
    found = set(slots(dtype))
    return "uid" in (dtype.names or ()) and bool(found) and not (found & _EXPOSURE_SLOTS)


def clear_result_group(cs_path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Before ``cs_path`` is (re)written: refuse or remove the ``.csg`` beside it.

    Args:
        cs_path: The ``.cs`` about to be written.
        overwrite: Whether existing outputs may be replaced; if so an earlier ``.csg``
            is removed now (a regular file only, no symlink followed), so that it
            never names the new rows with the old counts.

    Returns:
        The ``.csg`` path.

    Raises:
        OutputError: The ``.csg`` exists and ``overwrite`` is false, or it cannot be removed.
    """
    csg = csg_path(cs_path)
    try:
        st = os.lstat(csg)
    except FileNotFoundError:
        return csg
    if not overwrite:
        raise OutputError(f"{csg}: already exists", hints=[OVERWRITE_HINT])
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OutputError(f"{csg}: exists and is not a file")
    try:
        os.unlink(csg)  # a symlink itself, never its target
    except FileNotFoundError:
        pass
    except OSError as err:
        raise OutputError(f"{csg}: cannot remove: {err.strerror}") from err
    return csg


def _version() -> str:
    # The package is imported before any of its modules, so its __version__ is at
    # hand without importlib.metadata (30 ms) or an import that would reach api.py.
    return getattr(sys.modules.get("stacktools"), "__version__", "(version unknown)")


def write_result_group(files: Sequence[tuple], *, description: str = "",
                       title: str = "Particles", fsync: bool = True) -> Path | None:
    """Write the ``.csg`` of a particle set whose ``.cs`` files are already written.

    Args:
        files: ``(path, dtype, rows)`` of each ``.cs`` of the set, in one directory:
            the main file first (it names the ``.csg``), then any passthrough. A slot
            in several files points at the first that has it.
        description: What made the set (the group's description in CryoSPARC).
        title: The group's title.
        fsync: Flush the ``.csg`` before renaming it into place.

    Returns:
        The ``.csg`` written beside the main file, or ``None`` when the set is not
        a particle set (see :func:`is_particle_set`).

    Raises:
        OutputError: The files have different numbers of rows, or a name is not UTF-8.
        DiskFullError: The device is full.
    """
    main = Path(files[0][0])
    if not is_particle_set(files[0][1]):
        return None
    rows = {int(n) for _, _, n in files}
    if len(rows) != 1:
        raise OutputError(f"{main}: its files have {sorted(rows)} rows; a result group needs one count")
    csg = csg_path(main)
    results: dict[str, Result] = {}
    for path, dtype, n in files:
        rel = os.path.relpath(path, csg.parent)
        for slot in slots(dtype):
            if slot not in results and slot not in _EXPOSURE_SLOTS:
                results[slot] = Result(slot, rel, int(n), f"particle.{slot_type(slot)}")
    made = f"written by stacktools {_version()}"
    try:
        text = csg_text(list(results.values()), group_type="particle", name="particles", title=title,
                        description=f"{description}; {made}" if description else made)
    except UnicodeEncodeError as err:
        raise OutputError(f"{csg}: cannot name {main.name!r} in a .csg: file names there must be UTF-8") from err
    return write_csg(csg, text, fsync=fsync)


__all__: Sequence[str] = ["clear_result_group", "csg_path", "is_particle_set", "slot_type", "slots",
                          "write_result_group"]
