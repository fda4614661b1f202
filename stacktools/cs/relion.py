"""Convert ``.cs`` datasets to and from RELION particle STAR files.

Reading STAR text is left to the ``starfile`` library and writing it to
:mod:`stacktools.formats.star`; this module maps fields, following pyem's
``csparc2star`` (the community's reference for it) except where noted:

=================================  ============================================
CryoSPARC                          RELION (3.1 written; 3.0 and 3.1 read)
=================================  ============================================
``uid``                            from ``rlnImageName`` (see below) or ``--uid-column``
``blob/idx``, ``blob/path``        ``rlnImageName`` = ``idx+1@path`` (``>`` stripped)
``blob/psize_A``                   ``rlnImagePixelSize``; 3.0: ``rlnDetectorPixelSize``
                                   × 10⁴ / ``rlnMagnification``; else ``psize=``
``blob/shape``                     ``rlnImageSize``, else the stack's MRC header, else ``box=``
``ctf/exp_group_id``               ``rlnOpticsGroup`` = id + 1 (a file without it is one group)
``ctf/accel_kv``, ``cs_mm``        ``rlnVoltage``, ``rlnSphericalAberration``
``ctf/amp_contrast``               ``rlnAmplitudeContrast``
``ctf/df1_A``, ``ctf/df2_A``       ``rlnDefocusU``, ``rlnDefocusV``
``ctf/df_angle_rad``               ``rlnDefocusAngle`` (degrees)
``ctf/phase_shift_rad``            ``rlnPhaseShift`` (degrees)
``ctf/bfactor``, ``ctf/scale``     ``rlnCtfBfactor``, ``rlnCtfScalefactor``
``ctf/cross_corr_ctffind4``        ``rlnCtfFigureOfMerit``
``ctf/ctf_fit_to_A``               ``rlnCtfMaxResolution``
``ctf/tilt_A``                     ``rlnBeamTiltX/Y`` (mrad): tilt = sin(mrad/1000) × Cs (Å)
``ctf/anisomag``                   ``rlnMagMat00/01/10/11`` − identity
``location/micrograph_path``       ``rlnMicrographName``
``location/center_x/y_frac``       ``rlnCoordinateX/Y`` ÷ the micrograph's width/height
``location/micrograph_shape``      the micrograph's MRC header ``[ny, nx]``, else ``micrograph_shape=``
``location/micrograph_uid``        a hash of ``rlnMicrographName``
``location/exp_group_id``          ``rlnOpticsGroup`` − 1
``location/micrograph_psize_A``    ``rlnMicrographPixelSize``, else the image pixel size
``alignments3D/pose``              ``rlnAngleRot/Tilt/Psi`` (rotation vector ⇄ ZYZ Euler)
``alignments2D/pose``              ``rlnAnglePsi`` (degrees)
``alignments*/shift``              ``rlnOriginX/YAngst`` ÷ pixel size; 3.0: ``rlnOriginX/Y`` (pixels)
``alignments*/class``, ``split``   ``rlnClassNumber``, ``rlnRandomSubset`` (1-based)
=================================  ============================================

Decisions a user should know:

- **uids** are a 64-bit hash of the normalised image name (stack path without
  ``./`` or ``//``, and the index), so two imports of the same STAR file give
  the same uids and set operations between them work. A repeated image name, or
  (never seen in practice) two names with one hash, is an error.
- **Y coordinates are not flipped.** CryoSPARC's ``center_y_frac`` × height and
  RELION's ``rlnCoordinateY`` both count rows of the micrograph as stored in its
  MRC file, from the first row. pyem's ``csparc2star`` flips Y by default because
  micrographs motion-corrected by MotionCor2 or RELION are stored flipped relative
  to CryoSPARC's Patch Motion; that is a property of the micrographs, not of the
  formats. ``invert_y=True`` does what pyem does, for STAR files that will name
  micrographs from another motion correction.
- **anisomag** is CryoSPARC's deviation from the identity (its default is zeros);
  RELION's ``rlnMagMat`` is the matrix itself. pyem copies one into the other.
- **Zernike terms** (``rlnOddZernike``, ``rlnEvenZernike``) have no CryoSPARC field
  in the same units (pyem does not map them either): non-zero values are refused.
- **CTF-premultiplied images** (``rlnCtfDataAreCtfPremultiplied`` = 1) would be
  used as if they were not: refused unless ``allow_premultiplied=True``.
- Every other column that has no ``.cs`` field is named in one
  :class:`~stacktools.errors.DroppedColumnsWarning`, never dropped silently.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from stacktools.cs.arrays import factorize
from stacktools.cs.rotation import euler_deg_to_rotvec, rotvec_to_euler_deg
from stacktools.cs.rows import field_matrix, require_fields
from stacktools.errors import (
    DroppedColumnsWarning,
    FieldError,
    Hint,
    MissingStackError,
    StarFormatError,
)
from stacktools.formats.cs import strip_import_marker
from stacktools.formats.star import CHUNK_ROWS, Coded, IndexedNames, StarLoop, read_star, write_star

# Per-optics-group values: each group must hold one value of each.
OPTICS_COLUMNS = {
    "ctf/amp_contrast": "rlnAmplitudeContrast",
    "ctf/cs_mm": "rlnSphericalAberration",
    "ctf/accel_kv": "rlnVoltage",
    "blob/psize_A": "rlnImagePixelSize",
}
MAG_MATRIX = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
BEAM_TILT = ("rlnBeamTiltX", "rlnBeamTiltY")
# Columns per particle that map one to one, with the conversion .cs → STAR.
CTF_COLUMNS = (("ctf/df1_A", "rlnDefocusU", None), ("ctf/df2_A", "rlnDefocusV", None),
               ("ctf/df_angle_rad", "rlnDefocusAngle", np.rad2deg),
               ("ctf/phase_shift_rad", "rlnPhaseShift", np.rad2deg),
               ("ctf/bfactor", "rlnCtfBfactor", None), ("ctf/scale", "rlnCtfScalefactor", None),
               ("ctf/cross_corr_ctffind4", "rlnCtfFigureOfMerit", None),
               ("ctf/ctf_fit_to_A", "rlnCtfMaxResolution", None))
_BOX_HINT = Hint("box", "; pass {} to give the box", None)
_PROJECT_HINT = Hint("project_dir", " or {} to say where the stacks are", None)
_MIC_HINT = Hint("micrograph_shape", "; pass {} (height and width in pixels)", None)


# ---- rlnImageName --------------------------------------------------------------------

class ImageNames(NamedTuple):
    """``rlnImageName`` values split: ``paths`` the distinct stack paths (first-seen
    order), ``codes`` each row's position in ``paths``, ``idx`` its 0-based index."""

    paths: list[str]
    codes: np.ndarray
    idx: np.ndarray

    def path_bytes(self) -> np.ndarray:
        """Each row's stack path as UTF-8 bytes (one encoding per distinct path)."""
        if not len(self.codes):
            return np.zeros(0, "S1")
        encoded = np.array([p.encode("utf-8", "surrogateescape") for p in self.paths])
        return encoded[self.codes]


def split_image_names(names, label: str = "STAR file") -> ImageNames:
    """Split ``rlnImageName`` values (``N@path``, ``N`` 1-based) into stacks and indices.

    Vectorised: 2 million names take about two seconds, the path strings being
    handled once per distinct stack.

    Args:
        names: The column (a pandas Series or anything it can be made from).
        label: Name of the file, for error messages.

    Raises:
        StarFormatError: A value is not ``N@path`` with an integer ``N >= 1``; the
            message names the (1-based) particle row.
    """
    import pandas as pd

    s = pd.Series(names).astype(str)
    parts = s.str.partition("@")
    head, sep, tail = parts[0], parts[1], parts[2]
    bad = ((sep != "@") | (head == "") | (tail == "")).to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise StarFormatError(f"{label}: particle row {r + 1}: rlnImageName {s.iloc[r]!r} is not idx@path")
    number = pd.to_numeric(head, errors="coerce")
    bad = (number.isna() | (number != np.floor(number))).to_numpy() if len(s) else bad
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise StarFormatError(f"{label}: particle row {r + 1}: rlnImageName {s.iloc[r]!r} "
                              "has a non-integer index")
    idx = number.to_numpy(dtype=np.int64) - 1
    if len(idx) and idx.min() < 0:
        r = int(np.argmin(idx))
        raise StarFormatError(f"{label}: particle row {r + 1}: image index must be 1 or more")
    codes, uniq = pd.factorize(tail, sort=False)
    return ImageNames([str(u) for u in uniq], np.asarray(codes, np.int64), idx)


def _stack_names(data: np.ndarray, mrcs: bool, prefix: tuple[str, str] | None, label: str,
                 rename: dict[str, str] | None = None) -> tuple[np.ndarray, list[bytes]]:
    """Codes into the distinct stack names as written in ``rlnImageName``."""
    uniq, codes = _factorized(data, "blob/path")
    # String work is done once per distinct stack, not once per particle.
    paths = [strip_import_marker(u) for u in uniq.tolist()]
    if rename:
        paths = [rename.get(p, p) for p in paths]
    if mrcs:
        paths = [p + "s" if p.endswith(".mrc") else p for p in paths]
    paths = _replace_prefix(paths, prefix, label)
    return codes, [os.fsencode(p) for p in paths]


def _replace_prefix(paths: list[str], prefix: tuple[str, str] | None, label: str) -> list[str]:
    if prefix is None or not paths:
        return paths
    old, new = prefix
    if not any(p.startswith(old) for p in paths):
        raise FieldError(f"{label}: no path starts with {old!r}, the prefix to replace "
                         f"(the first is {paths[0]!r})")
    return [new + p[len(old):] if p.startswith(old) else p for p in paths]


def _text(values) -> np.ndarray:
    """A column for a DataFrame: coded names as text."""
    if isinstance(values, IndexedNames):
        paths = np.array([os.fsdecode(p) for p in values.names] or [""], dtype=str)[values.codes]
        idx = np.char.zfill(np.asarray(values.index).astype(str), 6)
        return np.char.add(np.char.add(idx, "@"), paths) if len(idx) else np.zeros(0, dtype=str)
    if isinstance(values, Coded):
        text = np.array([os.fsdecode(v) for v in values.values] or [""], dtype=str)
        return text[values.codes] if len(values.codes) else np.zeros(0, dtype=str)
    return values


# ---- .cs → STAR ------------------------------------------------------------------------

def _pose_prefix(data: np.ndarray) -> str | None:
    names = data.dtype.names
    for prefix in ("alignments3D", "alignments2D"):
        if f"{prefix}/pose" in names:
            return prefix
    return None


@dataclass
class _StarPlan:
    """What is decided once for the whole dataset before rows are written in chunks."""

    columns: list[str]
    stack_codes: np.ndarray
    stack_names: list[bytes]
    mic_codes: np.ndarray | None
    mic_names: list[bytes]
    group: np.ndarray
    prefix: str | None
    psize_field: str | None
    random_subset: bool
    coordinates: bool
    invert_y: bool


def _plan(data: np.ndarray, mrcs: bool, prefix_map: tuple[str, str] | None, invert_y: bool,
          label: str, stack_names: dict[str, str] | None) -> _StarPlan:
    require_fields(data, ["blob/path", "blob/idx"], label)
    names = data.dtype.names
    n = len(data)
    codes, stacks = _stack_names(data, mrcs, prefix_map, label, stack_names)
    cols = ["rlnImageName"]
    mic_codes, mics = None, []
    if "location/micrograph_path" in names:
        uniq, mic_codes = _factorized(data, "location/micrograph_path")
        mics = [os.fsencode(p) for p in _replace_prefix([os.fsdecode(u) for u in uniq.tolist()],
                                                         prefix_map, label)]
        cols.append("rlnMicrographName")
    coordinates = all(f in names for f in ("location/center_x_frac", "location/center_y_frac",
                                           "location/micrograph_shape"))
    if coordinates:
        cols += ["rlnCoordinateX", "rlnCoordinateY"]
    cols += [col for field, col, _ in CTF_COLUMNS if field in names]
    group = (data["ctf/exp_group_id"].astype(np.int64) + 1 if "ctf/exp_group_id" in names
             else np.ones(n, dtype=np.int64))
    cols.append("rlnOpticsGroup")
    prefix = _pose_prefix(data)
    psize_field, random_subset = None, False
    if prefix is not None:
        cols += ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"] if prefix == "alignments3D" else ["rlnAnglePsi"]
        if f"{prefix}/shift" in names:
            psize_field = f"{prefix}/psize_A" if f"{prefix}/psize_A" in names else "blob/psize_A"
            require_fields(data, [psize_field], label)
            cols += ["rlnOriginXAngst", "rlnOriginYAngst"]
        if f"{prefix}/class" in names:
            cols.append("rlnClassNumber")
        if f"{prefix}/split" in names:
            split = data[f"{prefix}/split"]
            # One half only means no half-sets were assigned (as pyem does).
            random_subset = bool(n and split.min() != split.max())
            if random_subset:
                cols.append("rlnRandomSubset")
    return _StarPlan(cols, codes, stacks, mic_codes, mics, group, prefix, psize_field,
                     random_subset, coordinates, invert_y)


def _particle_columns(data: np.ndarray, plan: _StarPlan, lo: int, hi: int) -> dict:
    """The particle columns of rows ``lo:hi``."""
    rows = data[lo:hi]
    names = data.dtype.names
    n = len(rows)
    out: dict[str, object] = {
        "rlnImageName": IndexedNames(rows["blob/idx"].astype(np.int64) + 1,
                                     plan.stack_codes[lo:hi], plan.stack_names)}
    if plan.mic_codes is not None:
        out["rlnMicrographName"] = Coded(plan.mic_codes[lo:hi], plan.mic_names)
    if plan.coordinates:
        shape = field_matrix(rows, "location/micrograph_shape", np.float64)
        y = rows["location/center_y_frac"].astype(np.float64)
        out["rlnCoordinateX"] = rows["location/center_x_frac"].astype(np.float64) * shape[:, -1]
        out["rlnCoordinateY"] = (1.0 - y if plan.invert_y else y) * shape[:, 0]
    for field, col, conv in CTF_COLUMNS:
        if field in names:
            v = rows[field].astype(np.float64)
            out[col] = conv(v) if conv else v
    out["rlnOpticsGroup"] = plan.group[lo:hi]
    prefix = plan.prefix
    if prefix is not None:
        pose = np.asarray(rows[f"{prefix}/pose"], dtype=np.float64)
        if prefix == "alignments3D":
            angles = rotvec_to_euler_deg(pose.reshape(n, 3))
            out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = angles.T
        else:
            out["rlnAnglePsi"] = np.rad2deg(pose.reshape(n))
        if plan.psize_field is not None:
            psize = rows[plan.psize_field].astype(np.float64)
            shift = field_matrix(rows, f"{prefix}/shift", np.float64)
            out["rlnOriginXAngst"] = shift[:, 0] * psize
            out["rlnOriginYAngst"] = shift[:, 1] * psize
        if f"{prefix}/class" in names:
            out["rlnClassNumber"] = rows[f"{prefix}/class"].astype(np.int64) + 1
        if plan.random_subset:
            out["rlnRandomSubset"] = rows[f"{prefix}/split"].astype(np.int64) + 1
    return out


def star_loops(data: np.ndarray, *, mrcs: bool = False, prefix_map: tuple[str, str] | None = None,
               invert_y: bool = False, stack_names: dict[str, str] | None = None,
               label: str = "dataset", chunk_rows: int = CHUNK_ROWS) -> dict:
    """The ``optics`` block (a DataFrame) and the ``particles`` loop, computed chunk by chunk.

    Takes the options of :func:`to_star_blocks`; the particle rows are computed only
    as they are written, ``chunk_rows`` at a time.
    """
    plan = _plan(data, mrcs, prefix_map, invert_y, label, stack_names)
    optics_columns = _optics_columns(data, plan.group, label)
    optics = StarLoop(list(optics_columns), lambda: [optics_columns], len(optics_columns["rlnOpticsGroup"]))

    def chunks() -> Iterator[dict]:
        for lo in range(0, len(data), chunk_rows):
            yield _particle_columns(data, plan, lo, min(len(data), lo + chunk_rows))
            # Rows already written need not stay resident (a mapped file's pages
            # would otherwise count against memory until the end).
            drop_pages(data)

    return {"optics": optics, "particles": StarLoop(plan.columns, chunks, len(data))}


def to_star_blocks(data: np.ndarray, *, mrcs: bool = False, prefix_map: tuple[str, str] | None = None,
                   invert_y: bool = False, stack_names: dict[str, str] | None = None,
                   label: str = "dataset") -> dict:
    """RELION 3.1 ``optics`` and ``particles`` blocks (pandas DataFrames) for ``data``.

    Parameters
    ----------
    data
        A particle dataset with at least ``blob/path``, ``blob/idx``; join the
        passthrough first to carry CTF and location fields.
    mrcs
        Write ``.mrc`` stack names as ``.mrcs``.
    prefix_map
        ``(old, new)``: stack and micrograph paths starting with ``old`` start
        with ``new`` instead.
    invert_y
        Give ``rlnCoordinateY`` as height − y, as pyem's ``csparc2star`` does by
        default (see the module docstring for when that is right).
    stack_names
        ``blob/path`` (marker stripped) → the name to give that stack instead
        (the links :func:`stacktools.mrcs_links.link_mrcs` made).
    label
        Name of the dataset, for error messages.

    Each optics group must have one pixel size, box, voltage, Cs, amplitude
    contrast, beam tilt and magnification matrix; otherwise :class:`FieldError`
    names the group and the field.
    """
    import pandas as pd

    plan = _plan(data, mrcs, prefix_map, invert_y, label, stack_names)
    cols = _particle_columns(data, plan, 0, len(data))
    particles = pd.DataFrame({c: _text(cols[c]) for c in plan.columns})
    return {"optics": _optics_block(data, plan.group, label), "particles": particles}


def _optics_values(data: np.ndarray) -> dict[str, np.ndarray]:
    names = data.dtype.names
    values: dict[str, np.ndarray] = {}
    for field, col in OPTICS_COLUMNS.items():
        if field in names:
            values[col] = data[field].astype(np.float64)
    if "blob/shape" in names:
        values["rlnImageSize"] = field_matrix(data, "blob/shape")[:, -1].astype(np.int64)
    if "ctf/tilt_A" in names and "ctf/cs_mm" in names:
        tilt = field_matrix(data, "ctf/tilt_A", np.float64)
        cs_angstrom = data["ctf/cs_mm"].astype(np.float64) * 1e7
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, col in enumerate(BEAM_TILT):
                values[col] = np.where(cs_angstrom > 0, np.arcsin(tilt[:, k] / cs_angstrom) * 1e3, 0.0)
    if "ctf/anisomag" in names:
        mag = field_matrix(data, "ctf/anisomag", np.float64) + np.array([1.0, 0.0, 0.0, 1.0])
        for k, col in enumerate(MAG_MATRIX):
            values[col] = mag[:, k]
    return values


def _optics_block(data: np.ndarray, group: np.ndarray, label: str):
    import pandas as pd

    return pd.DataFrame(_optics_columns(data, group, label))


def _optics_columns(data: np.ndarray, group: np.ndarray, label: str) -> dict:
    groups, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    cols: dict[str, object] = {
        "rlnOpticsGroup": groups,
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups.tolist()],
    }
    for col, v in _optics_values(data).items():
        ref = v[first][inverse]
        bad = np.flatnonzero(~np.isclose(v, ref, rtol=1e-6, atol=1e-9) if v.dtype.kind == "f" else v != ref)
        if len(bad):
            r = int(bad[0])
            raise FieldError(f"{label}: optics group {group[r]} mixes {col} values "
                             f"({ref[r]} and {v[r]} at row {r}); split it by ctf/exp_group_id first")
        cols[col] = v[first]
    cols["rlnImageDimensionality"] = np.full(len(groups), 2, dtype=np.int64)
    return cols


# ---- STAR → .cs ------------------------------------------------------------------------

def particles_table(blocks: dict, label: str = "STAR file"):
    """The particles of STAR ``blocks`` with each row's optics values merged in.

    Accepts RELION 3.1 files (``optics`` and ``particles`` blocks) and older
    single-block files. Particles without ``rlnOpticsGroup`` belong to the optics
    block's only group; with several groups that is an error.
    """
    import pandas as pd

    particles = blocks.get("particles")
    if particles is None:
        loops = [b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnImageName" in b]
        if not loops:
            raise StarFormatError(f"{label}: no particles block with rlnImageName")
        particles = loops[0]
    if not isinstance(particles, pd.DataFrame) or "rlnImageName" not in particles:
        raise StarFormatError(f"{label}: particles block lacks rlnImageName")
    optics = blocks.get("optics")
    if isinstance(optics, dict):
        optics = pd.DataFrame({k: [v] for k, v in optics.items()})
    if optics is None or not len(optics):
        return particles
    if "rlnOpticsGroup" not in optics:
        if len(optics) != 1:
            raise StarFormatError(f"{label}: optics block lacks rlnOpticsGroup")
        optics = optics.assign(rlnOpticsGroup=1)
    if "rlnOpticsGroup" not in particles:
        if len(optics) != 1:
            raise StarFormatError(f"{label}: particles lack rlnOpticsGroup and the optics block "
                                  f"has {len(optics)} groups")
        particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
    if optics["rlnOpticsGroup"].duplicated().any():
        raise StarFormatError(f"{label}: optics block repeats an rlnOpticsGroup")
    extra = [c for c in optics.columns if c not in particles.columns or c == "rlnOpticsGroup"]
    merged = particles.merge(optics[extra], on="rlnOpticsGroup", how="left", sort=False,
                             validate="many_to_one")
    missing = merged[extra[1]].isna() if len(extra) > 1 else None
    if missing is not None and missing.any():
        r = int(np.flatnonzero(missing.to_numpy())[0])
        raise StarFormatError(f"{label}: particle row {r + 1} names optics group "
                              f"{particles['rlnOpticsGroup'].iloc[r]}, which the optics block lacks")
    return merged


class _Columns:
    """Numeric columns of a table, remembering which were read."""

    def __init__(self, table, label: str):
        self.table, self.label, self.used = table, label, set()

    def __contains__(self, name: str) -> bool:
        return name in self.table

    def get(self, name: str, default: float | None = None) -> np.ndarray:
        self.used.add(name)
        if name in self.table:
            try:
                return self.table[name].to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise StarFormatError(f"{self.label}: column {name} is not numeric") from err
        if default is None:
            raise StarFormatError(f"{self.label}: missing column {name}")
        return np.full(len(self.table), default, dtype=np.float64)

    def one(self, name: str, value: float) -> float:
        """``value`` checked against the column, if the file has one."""
        if name in self:
            v = self.get(name)
            if len(v) and not np.allclose(v, value, rtol=1e-5):
                r = int(np.flatnonzero(~np.isclose(v, value, rtol=1e-5))[0])
                raise StarFormatError(f"{self.label}: row {r + 1}: {name} is {v[r]:g}, "
                                      f"but {value:g} was given")
        return value


def _normalised_names(paths: np.ndarray, stack_key: Callable[[str], str] | None
                      ) -> tuple[np.ndarray, list[str]]:
    uniq, codes = np.unique(paths, return_inverse=True)
    norm = [stack_key(p) for p in uniq.tolist()] if stack_key is not None else uniq.tolist()
    # Names that one stack path is spelled as (./x, x//y) are one stack.
    merged, remap = np.unique(np.array(norm or [""], dtype=str), return_inverse=True)
    return remap.ravel()[codes.ravel()] if len(paths) else np.zeros(0, np.int64), merged.tolist()


def _mix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        x = x.copy()
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def name_uids(idx: np.ndarray, codes: np.ndarray, paths: list[str], label: str) -> np.ndarray:
    """Deterministic uids: a 64-bit hash of each (normalised stack path, index).

    Raises :class:`StarFormatError` if an image name repeats or two hash alike.
    """
    import xxhash

    n = len(idx)
    key = codes.astype(np.int64) * (int(idx.max()) + 1 if n else 1) + idx
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    if (counts > 1).any():
        r = int(first[np.flatnonzero(counts > 1)[0]])
        raise StarFormatError(f"{label}: particle row {r + 1}: image {idx[r] + 1}@{paths[codes[r]]} "
                              "appears more than once")
    path_hash = np.array([xxhash.xxh3_64_intdigest(p.encode("utf-8", "surrogateescape"))
                          for p in paths] or [0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        uids = _mix64(path_hash[codes] ^ _mix64(idx.astype(np.uint64) + np.uint64(1)))
    if len(np.unique(uids)) != n:
        raise StarFormatError(f"{label}: two image names hash to one uid; pass a uid column")
    return uids


def _column_uids(table, uid_column: str, label: str) -> np.ndarray:
    n = len(table)
    if uid_column not in table:
        raise StarFormatError(f"{label}: no column {uid_column} to take uids from")
    col = table[uid_column]
    try:
        uids = col.to_numpy().astype(np.uint64)
        ok = (col.astype("int64") >= 0).all() if col.dtype.kind in "iu" else False
    except (TypeError, ValueError, OverflowError) as err:
        raise StarFormatError(f"{label}: column {uid_column} does not hold integers") from err
    if col.dtype.kind not in "iu" or not ok:
        raise StarFormatError(f"{label}: column {uid_column} does not hold non-negative integers")
    if len(np.unique(uids)) != n:
        raise StarFormatError(f"{label}: column {uid_column} repeats values; uids must be unique")
    return uids


def _pixel_size(cols: _Columns, psize: float | None, label: str) -> np.ndarray:
    if "rlnImagePixelSize" in cols:
        v = cols.get("rlnImagePixelSize")
        if psize is not None:
            cols.one("rlnImagePixelSize", psize)
        cols.used.update(("rlnDetectorPixelSize", "rlnMagnification"))
    elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        v = cols.get("rlnDetectorPixelSize") * 1e4 / cols.get("rlnMagnification")
        if psize is not None and len(v) and not np.allclose(v, psize, rtol=1e-4):
            raise StarFormatError(f"{label}: rlnDetectorPixelSize / rlnMagnification give "
                                  f"{v[0]:g} Å, but {psize:g} was given")
    elif psize is not None:
        v = np.full(len(cols.table), float(psize))
    else:
        raise StarFormatError(f"{label}: no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize "
                              "and rlnMagnification)", hints=[Hint("psize", "; pass {} in Å", None)])
    if len(v) and not (v > 0).all():
        r = int(np.flatnonzero(~(v > 0))[0])
        raise StarFormatError(f"{label}: particle row {r + 1}: pixel size {v[r]:g} is not positive")
    return v


def _resolve_all(resolve: Callable[[str], Path], names: list[str]) -> list[Path]:
    return [resolve(n) for n in names]


def _read_shapes(paths: list[Path]) -> list | None:
    """MRC headers of ``paths``, or None if any is missing."""
    from stacktools.formats.mrc import read_headers

    if not all(p.is_file() for p in paths):
        return None
    try:
        return read_headers([str(p) for p in paths])
    except MissingStackError:
        return None


def _blob_shape(cols: _Columns, box: int | None, stack_paths: list[Path], codes: np.ndarray,
                idx: np.ndarray, label: str) -> np.ndarray:
    n = len(cols.table)
    if "rlnImageDimensionality" in cols:
        dims = cols.get("rlnImageDimensionality")
        if len(dims) and (dims != 2).any():
            raise StarFormatError(f"{label}: rlnImageDimensionality {dims[dims != 2][0]:g}: "
                                  "only 2-D particle images can become a .cs")
    if box is not None:
        cols.one("rlnImageSize", box)
        return np.full((n, 2), box, dtype=np.uint32)
    if "rlnImageSize" in cols:
        size = cols.get("rlnImageSize").astype(np.uint32)
        return np.stack([size, size], axis=1)
    headers = _read_shapes(stack_paths)
    if headers is None:
        missing = next(p for p in stack_paths if not p.is_file())
        raise MissingStackError(f"{label}: no rlnImageSize, and stack {missing} (read for the box) "
                                "is missing", hints=[_BOX_HINT, _PROJECT_HINT])
    shapes = np.array([[h.ny, h.nx] for h in headers] or [[0, 0]], dtype=np.uint32)
    counts = np.array([h.nz for h in headers] or [0])
    over = idx >= counts[codes]
    if over.any():
        r = int(np.flatnonzero(over)[0])
        raise StarFormatError(f"{label}: particle row {r + 1}: image {idx[r] + 1} is past the end of "
                              f"{stack_paths[codes[r]]} ({counts[codes[r]]} images)")
    return shapes[codes]


def _location(cols: _Columns, table, group: np.ndarray, psize: np.ndarray,
              resolve: Callable[[str], Path], micrograph_shape: tuple[int, int] | None,
              label: str) -> dict[str, tuple[str, np.ndarray]] | None:
    """``location/*`` fields from micrograph names and coordinates (None without names)."""
    import xxhash

    if "rlnMicrographName" not in table:
        return None
    cols.used.add("rlnMicrographName")
    mics = table["rlnMicrographName"].astype(str).to_numpy(dtype=str)
    uniq, codes = np.unique(mics, return_inverse=True)
    codes = codes.ravel()
    mic_bytes = np.char.encode(mics, "utf-8") if len(mics) else np.zeros(0, "S1")
    out: dict[str, tuple[str, np.ndarray]] = {
        "location/micrograph_uid": ("<u8", np.array(
            [xxhash.xxh3_64_intdigest(m.encode("utf-8", "surrogateescape")) for m in uniq.tolist()] or [0],
            dtype=np.uint64)[codes]),
        "location/exp_group_id": ("<u4", group),
        "location/micrograph_path": (f"S{max(1, mic_bytes.dtype.itemsize)}", mic_bytes),
    }
    if "rlnCoordinateX" in cols or "rlnCoordinateY" in cols:
        shapes = None
        if micrograph_shape is not None:
            shapes = np.tile(np.asarray(micrograph_shape, dtype=np.uint32), (len(uniq), 1))
        else:
            headers = _read_shapes(_resolve_all(resolve, uniq.tolist()))
            if headers is not None:
                shapes = np.array([[h.ny, h.nx] for h in headers] or [[0, 0]], dtype=np.uint32)
        if shapes is None:
            # Without the micrographs' size the coordinates cannot become fractions:
            # they are reported as dropped (micrograph_shape= or project_dir= keeps them).
            out["location/micrograph_psize_A"] = ("<f4", cols.get("rlnMicrographPixelSize", 0.0)
                                                  if "rlnMicrographPixelSize" in cols else psize)
            return out
        x, y = cols.get("rlnCoordinateX"), cols.get("rlnCoordinateY")
        shape = shapes[codes] if len(codes) else np.zeros((0, 2), np.uint32)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["location/micrograph_shape"] = ("<u4", shape)
            out["location/center_x_frac"] = ("<f4", x / shape[:, 1])
            out["location/center_y_frac"] = ("<f4", y / shape[:, 0])
    out["location/micrograph_psize_A"] = ("<f4", cols.get("rlnMicrographPixelSize", 0.0)
                                          if "rlnMicrographPixelSize" in cols else psize)
    return out


def _ctf(cols: _Columns, group: np.ndarray, label: str) -> dict[str, tuple[str, np.ndarray]] | None:
    if "rlnDefocusU" not in cols:
        return None
    df1 = cols.get("rlnDefocusU")
    cs_mm = cols.get("rlnSphericalAberration", 2.7)
    out = {
        "ctf/type": ("S9", np.full(len(df1), b"imported")),
        "ctf/exp_group_id": ("<u4", group),
        "ctf/accel_kv": ("<f4", cols.get("rlnVoltage", 300.0)),
        "ctf/cs_mm": ("<f4", cs_mm),
        "ctf/amp_contrast": ("<f4", cols.get("rlnAmplitudeContrast", 0.1)),
        "ctf/df1_A": ("<f4", df1),
        "ctf/df2_A": ("<f4", cols.get("rlnDefocusV") if "rlnDefocusV" in cols else df1),
        "ctf/df_angle_rad": ("<f4", np.deg2rad(cols.get("rlnDefocusAngle", 0.0))),
        "ctf/phase_shift_rad": ("<f4", np.deg2rad(cols.get("rlnPhaseShift", 0.0))),
        "ctf/scale": ("<f4", cols.get("rlnCtfScalefactor", 1.0)),
        "ctf/scale_const": ("<f4", np.zeros(len(df1))),
        "ctf/bfactor": ("<f4", cols.get("rlnCtfBfactor", 0.0)),
    }
    for field, col in (("ctf/cross_corr_ctffind4", "rlnCtfFigureOfMerit"),
                       ("ctf/ctf_fit_to_A", "rlnCtfMaxResolution")):
        if col in cols:
            out[field] = ("<f4", cols.get(col))
    if any(c in cols for c in BEAM_TILT):
        mrad = np.stack([cols.get(c, 0.0) for c in BEAM_TILT], axis=1)
        out["ctf/tilt_A"] = ("<f4", np.sin(mrad * 1e-3) * (cs_mm * 1e7)[:, None])
    if any(c in cols for c in MAG_MATRIX):
        identity = (1.0, 0.0, 0.0, 1.0)
        mag = np.stack([cols.get(c, d) - d for c, d in zip(MAG_MATRIX, identity)], axis=1)
        out["ctf/anisomag"] = ("<f4", mag)
    return out


def _check_unrepresentable(table, cols: _Columns, allow_premultiplied: bool, label: str) -> None:
    for col in ("rlnOddZernike", "rlnEvenZernike"):
        if col in table:
            cols.used.add(col)
            for r, text in enumerate(table[col].astype(str).tolist()):
                terms = [t for t in re.split(r"[\s,\[\]]+", text) if t]
                try:
                    nonzero = any(float(t) != 0.0 for t in terms)
                except ValueError:
                    nonzero = True
                if nonzero:
                    raise StarFormatError(f"{label}: particle row {r + 1}: {col} {text!r} has no .cs field "
                                          "(CryoSPARC's trefoil_A and tetra_A are not in its terms)")
    if "rlnCtfDataAreCtfPremultiplied" in table:
        flags = cols.get("rlnCtfDataAreCtfPremultiplied")
        if (flags != 0).any() and not allow_premultiplied:
            raise StarFormatError(
                f"{label}: the images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1), which a "
                ".cs cannot say: CryoSPARC would apply the CTF again",
                hints=[Hint("allow_premultiplied", "; pass {} to convert anyway")])
        if (flags != 0).any():
            cols.used.discard("rlnCtfDataAreCtfPremultiplied")  # reported as dropped


def _optics_names_regenerated(table, group: np.ndarray) -> bool:
    """True if ``rlnOpticsGroupName`` is what :func:`to_star_blocks` writes (opticsGroupN)."""
    names = table["rlnOpticsGroupName"].astype(str).to_numpy(dtype=str)
    expect = np.char.add("opticsGroup", (group + 1).astype(np.int64).astype(str))
    return bool(np.array_equal(names, expect))


def from_star_blocks(blocks: dict, *, uid_column: str | None = None, label: str = "STAR file",
                     psize: float | None = None, box: int | None = None,
                     micrograph_shape: tuple[int, int] | None = None,
                     resolve: Callable[[str], Path] | None = None,
                     allow_premultiplied: bool = False,
                     stack_key: Callable[[str], str] | None = None) -> np.ndarray:
    """A CryoSPARC particle dataset from RELION STAR ``blocks``.

    Parameters
    ----------
    blocks
        As returned by :func:`read_star`.
    uid_column
        A STAR column of unique integers to use as ``uid``; by default uids are a
        hash of each image name (the same file gives the same uids).
    label
        Name of the file, for error messages.
    psize
        Pixel size in Å for a file that gives none (checked against one that does).
    box
        Box in pixels for a file without ``rlnImageSize`` whose stacks are absent.
    micrograph_shape
        ``(height, width)`` of the micrographs, for coordinates whose micrographs
        are absent.
    resolve
        Maps a stack or micrograph name to its file (default: as a path from the
        current directory).
    allow_premultiplied
        Convert CTF-premultiplied images too (see the module docstring).
    stack_key
        The one spelling of a stack path (:func:`stacktools.particles.stack_key`,
        which ``stacktools.api`` passes), so that ``./x`` and ``x`` are one stack;
        default: names as written.

    Fields written: ``uid``, ``blob/*``, ``ctf/*`` when defocus values are present,
    ``location/*`` when micrograph names are, and ``alignments3D/*`` (from
    rot/tilt/psi) or ``alignments2D/*`` (from psi alone) when angles are. Columns
    with no ``.cs`` field are named in one :class:`DroppedColumnsWarning`.
    """
    resolve = resolve or Path
    table = particles_table(blocks, label)
    n = len(table)
    cols = _Columns(table, label)
    cols.used.add("rlnImageName")
    images = split_image_names(table["rlnImageName"], label)
    idx = images.idx
    path_codes, stacks = _normalised_names(np.array(images.paths or [""], dtype=str), stack_key)
    codes = path_codes[images.codes] if n else np.zeros(0, np.int64)
    _check_unrepresentable(table, cols, allow_premultiplied, label)
    psize_v = _pixel_size(cols, psize, label)
    shape = _blob_shape(cols, box, _resolve_all(resolve, stacks), codes, idx, label)
    group = np.maximum(cols.get("rlnOpticsGroup", 1.0) - 1, 0).astype(np.int64)
    if "rlnOpticsGroupName" in table and _optics_names_regenerated(table, group):
        cols.used.add("rlnOpticsGroupName")
    path_bytes = np.char.encode(np.array(stacks or [""], dtype=str), "utf-8")[codes] if n \
        else np.zeros(0, "S1")

    fields: dict[str, tuple[str, np.ndarray]] = {
        "uid": ("<u8", _column_uids(table, uid_column, label) if uid_column is not None
                else name_uids(idx, codes, stacks, label)),
        "blob/path": (f"S{max(1, path_bytes.dtype.itemsize)}", path_bytes),
        "blob/idx": ("<u4", idx),
        "blob/shape": ("<u4", shape),
        "blob/psize_A": ("<f4", psize_v),
        "blob/sign": ("<f4", np.full(n, -1.0)),
    }
    if uid_column is not None:
        cols.used.add(uid_column)
    fields.update(_ctf(cols, group, label) or {})
    fields.update(_location(cols, table, group, psize_v, resolve, micrograph_shape, label) or {})
    fields.update(_alignments(cols, psize_v) or {})

    descr = [(name, dt, v.shape[1:]) if np.ndim(v) > 1 else (name, dt) for name, (dt, v) in fields.items()]
    out = np.zeros(n, dtype=descr)
    for name, (_, v) in fields.items():
        out[name] = v
    dropped = [c for c in table.columns if c not in cols.used]
    if dropped:
        warnings.warn(DroppedColumnsWarning(label, dropped), stacklevel=2)
    return out


def _alignments(cols: _Columns, psize: np.ndarray) -> dict[str, tuple[str, np.ndarray]] | None:
    full_pose = all(c in cols for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    if not full_pose and "rlnAnglePsi" not in cols:
        return None
    prefix = "alignments3D" if full_pose else "alignments2D"
    if full_pose:
        angles = np.stack([cols.get(c) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], axis=1)
        pose = ("<f4", euler_deg_to_rotvec(angles))
    else:
        pose = ("<f4", np.deg2rad(cols.get("rlnAnglePsi")))
    if "rlnOriginXAngst" in cols or "rlnOriginYAngst" in cols:
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.stack([cols.get("rlnOriginXAngst", 0.0) / psize,
                              cols.get("rlnOriginYAngst", 0.0) / psize], axis=1)
        cols.used.update(("rlnOriginX", "rlnOriginY"))
    else:  # RELION 3.0: origins in pixels
        shift = np.stack([cols.get("rlnOriginX", 0.0), cols.get("rlnOriginY", 0.0)], axis=1)
    return {
        f"{prefix}/split": ("<u4", np.maximum(cols.get("rlnRandomSubset", 1.0) - 1, 0)),
        f"{prefix}/shift": ("<f4", shift),
        f"{prefix}/pose": pose,
        f"{prefix}/psize_A": ("<f4", psize),
        f"{prefix}/class": ("<u4", np.maximum(cols.get("rlnClassNumber", 1.0) - 1, 0)),
    }


_FACTORIZE_ROWS = 1 << 18


def drop_pages(data) -> None:
    """Let go of the resident pages of a memory-mapped ``data`` (they stay in the
    page cache; reading them again costs a minor fault). No-op for other arrays."""
    import mmap

    if isinstance(data, _MappedRows):
        drop_pages(data.main)
        drop_pages(data.other)
        return
    base = data
    while base is not None and getattr(base, "_mmap", None) is None:
        base = getattr(base, "base", None)
    mapping = getattr(base, "_mmap", None) if base is not None else None
    if mapping is not None and hasattr(mapping, "madvise") and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)


def _factorized(data, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``factorize`` of a string column, a bounded chunk of rows at a time (the
    column is never copied whole); through a :class:`_MappedRows`, on the file
    that holds the field."""
    if isinstance(data, _MappedRows):
        source, rows = data.source(name)
        uniq, codes = _factorized(source, name)
        return uniq, codes if rows is None else codes[rows]
    column = data[name]
    if len(column) <= _FACTORIZE_ROWS:
        return factorize(np.asarray(column))
    parts = []
    for lo in range(0, len(column), _FACTORIZE_ROWS):
        parts.append(factorize(np.asarray(column[lo:lo + _FACTORIZE_ROWS])))
        drop_pages(column)
    uniq, remap = factorize(np.concatenate([u for u, _ in parts]))
    codes = np.empty(len(column), np.int64)
    at, lo = 0, 0
    for u, c in parts:
        codes[lo:lo + len(c)] = remap[at:at + len(u)][c]
        at, lo = at + len(u), lo + len(c)
    return uniq, codes


class _MappedRows:
    """The rows to-star reads from a memory-mapped ``.cs``, inner-joined with its
    passthrough on ``uid`` if there is one, never copied whole.

    A whole field (``rows["ctf/df1_A"]``) is copied a bounded run of rows at a time,
    letting go of the mapped pages behind it, and a slice (``rows[lo:hi]``) builds
    those rows only; string fields come through :func:`_factorized`. Only the
    fields a STAR holds are kept. So memory stays at a chunk of rows and a few
    columns, not the size of the files, however many rows they hold.
    """

    def __init__(self, main: np.ndarray, other: np.ndarray | None = None,
                 label: tuple[str, str] = ("main dataset", "passthrough dataset")):
        from stacktools.cs.rows import uid_lookup

        wanted = _star_field_names()
        self.main, self.other = main, other
        self.main_rows: np.ndarray | None = None
        self.other_rows: np.ndarray | None = None
        names = [(n, main.dtype.fields[n][0]) for n in main.dtype.names if n in wanted]
        self._extra: set[str] = set()
        self._gathered: dict[str, np.ndarray] = {}
        if other is not None:
            require_fields(main, ["uid"], label[0])
            require_fields(other, ["uid"], label[1])
            rows = uid_lookup(_copy_column(main, "uid"), _copy_column(other, "uid"))
            keep = rows >= 0
            self.main_rows = None if keep.all() else np.flatnonzero(keep)
            self.other_rows = rows if self.main_rows is None else rows[self.main_rows]
            extra = [n for n in other.dtype.names if n in wanted and n not in main.dtype.names]
            names += [(n, other.dtype.fields[n][0]) for n in extra]
            self._extra = set(extra)
            # The passthrough is read in no useful order: its few numeric fields are
            # gathered once, compactly, and its mapped pages let go.
            self._gathered = {n: np.asarray(other[n][self.other_rows]) for n in extra
                              if other.dtype.fields[n][0].base.kind != "S"}
            drop_pages(other)
        self.dtype = np.dtype(names)

    def __len__(self) -> int:
        return len(self.main) if self.other_rows is None else len(self.other_rows)

    def source(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The file holding ``name`` and the rows of it to take (None: all, in order)."""
        if name in self._extra:
            return self.other, self.other_rows
        return self.main, self.main_rows

    def __getitem__(self, key):
        if isinstance(key, str):
            if key in self._gathered:
                return self._gathered[key]
            source, rows = self.source(key)
            return _copy_column(source, key) if rows is None else np.asarray(source[key][rows])
        lo, hi, _ = key.indices(len(self))
        out = np.zeros(hi - lo, dtype=self.dtype)
        for name in self.dtype.names:
            if name in self._gathered:
                out[name] = self._gathered[name][lo:hi]
            elif name not in self._extra:  # the passthrough's strings: by _factorized only
                rows = self.main_rows
                out[name] = self.main[name][lo:hi] if rows is None else self.main[name][rows[lo:hi]]
        return out


def _copy_column(data: np.ndarray, name: str) -> np.ndarray:
    """``data[name]`` copied, a run of rows at a time, letting go of mapped pages."""
    column = data[name]
    if len(column) <= _FACTORIZE_ROWS:
        return np.array(column)
    out = np.empty(column.shape, dtype=column.dtype)
    for lo in range(0, len(column), _FACTORIZE_ROWS):
        out[lo:lo + _FACTORIZE_ROWS] = column[lo:lo + _FACTORIZE_ROWS]
        drop_pages(data)
    return out


def _star_field_names() -> set[str]:
    """``uid`` and the fields :func:`star_loops` reads."""
    wanted = {"uid", "blob/path", "blob/idx", "blob/shape", "ctf/exp_group_id", "ctf/tilt_A",
              "ctf/anisomag", "location/micrograph_path", "location/center_x_frac",
              "location/center_y_frac", "location/micrograph_shape", *OPTICS_COLUMNS,
              *(field for field, _, _ in CTF_COLUMNS)}
    return wanted | {f"{prefix}/{f}" for prefix in ("alignments3D", "alignments2D")
                     for f in ("pose", "shift", "psize_A", "class", "split")}


# ---- files -------------------------------------------------------------------------------

def cs_to_star(cs_path: str | os.PathLike, star_path: str | os.PathLike, *,
               passthrough: str | os.PathLike | None = None, mrcs: bool = False,
               prefix_map: tuple[str, str] | None = None, invert_y: bool = False,
               stack_names: dict[str, str] | None = None, overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> dict:
    """Convert a ``.cs`` file (optionally joined with its passthrough) to a STAR file.

    Returns the counts written: ``{"particles": n, "optics_groups": k, "columns": c}``.
    """
    from stacktools.formats.cs import read_cs

    data = _MappedRows(read_cs(cs_path, mmap=True),
                       read_cs(passthrough, mmap=True) if passthrough is not None else None,
                       (str(cs_path), str(passthrough)))
    blocks = star_loops(data, mrcs=mrcs, prefix_map=prefix_map, invert_y=invert_y,
                        stack_names=stack_names, label=str(cs_path))
    write_star(star_path, blocks, overwrite=overwrite, progress=progress)
    return {"particles": len(data), "optics_groups": blocks["optics"].rows,
            "columns": len(blocks["particles"].columns)}


def star_to_cs(star_path: str | os.PathLike, cs_path: str | os.PathLike, *,
               uid_column: str | None = None, psize: float | None = None, box: int | None = None,
               micrograph_shape: tuple[int, int] | None = None,
               resolve: Callable[[str], Path] | None = None, allow_premultiplied: bool = False,
               overwrite: bool = False, format: str = "numpy",
               stack_key: Callable[[str], str] | None = None) -> np.ndarray:
    """Convert a RELION particle STAR file to a ``.cs`` file and the ``.csg`` beside it;
    return the dataset written.

    The options are :func:`from_star_blocks`'s; ``format`` is the ``.cs`` format.
    """
    from stacktools.cs.result_group import clear_result_group, write_result_group
    from stacktools.formats.cs import write_cs

    data = from_star_blocks(read_star(star_path), uid_column=uid_column, label=str(star_path),
                            psize=psize, box=box, micrograph_shape=micrograph_shape,
                            resolve=resolve, allow_premultiplied=allow_premultiplied,
                            stack_key=stack_key)
    clear_result_group(cs_path, overwrite=overwrite)
    write_cs(cs_path, data, overwrite=overwrite, format=format)
    write_result_group([(cs_path, data.dtype, len(data))],
                       description=f"from RELION {Path(star_path).name}")
    return data
