"""Convert ``.cs`` datasets to and from RELION 3.1 particle STAR files.

Reading and writing STAR text is left to the ``starfile`` library; this module
only maps fields, following pyem's ``csparc2star`` (the community's reference for
it):

===============================  ===========================================
CryoSPARC                        RELION 3.1
===============================  ===========================================
``blob/idx``, ``blob/path``      ``rlnImageName`` = ``idx+1@path`` (``>`` stripped)
``blob/psize_A``                 optics ``rlnImagePixelSize``
``blob/shape``                   optics ``rlnImageSize``
``ctf/exp_group_id``             ``rlnOpticsGroup`` = id + 1
``ctf/accel_kv``, ``cs_mm``      optics ``rlnVoltage``, ``rlnSphericalAberration``
``ctf/amp_contrast``             optics ``rlnAmplitudeContrast``
``ctf/df1_A``, ``ctf/df2_A``     ``rlnDefocusU``, ``rlnDefocusV``
``ctf/df_angle_rad``             ``rlnDefocusAngle`` (degrees)
``ctf/phase_shift_rad``          ``rlnPhaseShift`` (degrees)
``ctf/bfactor``                  ``rlnCtfBfactor``
``ctf/cross_corr_ctffind4``      ``rlnCtfFigureOfMerit``
``ctf/ctf_fit_to_A``             ``rlnCtfMaxResolution``
``location/*``                   ``rlnMicrographName``, ``rlnCoordinateX/Y`` (pixels)
``alignments3D/pose``            ``rlnAngleRot/Tilt/Psi`` (rotation vector → ZYZ Euler)
``alignments2D/pose``            ``rlnAnglePsi`` (degrees)
``alignments*/shift``            ``rlnOriginX/YAngst`` = shift × pixel size
``alignments*/class``, ``split`` ``rlnClassNumber``, ``rlnRandomSubset`` (1-based)
===============================  ===========================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stacktools.cs.arrays import factorize
from stacktools.cs.rotation import euler_deg_to_rotvec, rotvec_to_euler_deg
from stacktools.cs.rows import field_matrix, require_fields
from stacktools.errors import FieldError, StarFormatError
from stacktools.formats.cs import strip_import_marker
from stacktools.formats.star import read_star, write_star

OPTICS_COLUMNS = {
    "ctf/amp_contrast": "rlnAmplitudeContrast",
    "ctf/cs_mm": "rlnSphericalAberration",
    "ctf/accel_kv": "rlnVoltage",
    "blob/psize_A": "rlnImagePixelSize",
}


def _decode(values: np.ndarray) -> np.ndarray:
    """Byte strings as a NumPy unicode array, decoding each distinct value once."""
    uniq, codes = np.unique(values, return_inverse=True)
    text = np.array([u.decode("utf-8", errors="replace") for u in uniq.tolist()] or [""],
                    dtype=str)
    return text[codes.ravel()] if len(values) else np.zeros(0, dtype=str)


def image_names(data: np.ndarray, mrcs: bool = False) -> np.ndarray:
    """``rlnImageName`` values: ``{idx+1:06d}@path``, CryoSPARC's ``>`` stripped.

    With ``mrcs``, a path ending in ``.mrc`` is given as ``.mrcs`` (RELION reads
    stacks only under that extension; the files themselves must be linked or
    renamed to match).
    """
    uniq, codes = factorize(np.asarray(data["blob/path"]))
    # String work is done once per distinct stack, not once per particle.
    paths = [strip_import_marker(u) for u in uniq.tolist()]
    if mrcs:
        paths = [p + "s" if p.endswith(".mrc") else p for p in paths]
    paths = np.array(paths or [""], dtype=str)[codes] if len(data) else np.zeros(0, dtype=str)
    idx = np.char.zfill((data["blob/idx"].astype(np.int64) + 1).astype(str), 6)
    return np.char.add(np.char.add(idx, "@"), paths)


def _pose_prefix(data: np.ndarray) -> str | None:
    names = data.dtype.names
    for prefix in ("alignments3D", "alignments2D"):
        if f"{prefix}/pose" in names:
            return prefix
    return None


def to_star_blocks(data: np.ndarray, *, mrcs: bool = False, label: str = "dataset") -> dict:
    """RELION 3.1 ``optics`` and ``particles`` blocks (pandas DataFrames) for ``data``.

    Parameters
    ----------
    data
        A particle dataset with at least ``blob/path``, ``blob/idx``; join the
        passthrough first to carry CTF and location fields.
    mrcs
        Write ``.mrc`` stack names as ``.mrcs``.
    label
        Name of the dataset, for error messages.

    Each optics group must have one pixel size, box, voltage, Cs and amplitude
    contrast; otherwise :class:`FieldError` names the group and the field.
    """
    import pandas as pd

    require_fields(data, ["blob/path", "blob/idx"], label)
    names = data.dtype.names
    n = len(data)
    parts: dict[str, np.ndarray] = {"rlnImageName": image_names(data, mrcs)}

    if "location/micrograph_path" in names:
        parts["rlnMicrographName"] = _decode(data["location/micrograph_path"])
    if all(f in names for f in ("location/center_x_frac", "location/center_y_frac",
                                "location/micrograph_shape")):
        shape = field_matrix(data, "location/micrograph_shape", np.float64)
        parts["rlnCoordinateX"] = np.round(data["location/center_x_frac"] * shape[:, -1])
        parts["rlnCoordinateY"] = np.round(data["location/center_y_frac"] * shape[:, 0])

    for field, col, conv in (("ctf/df1_A", "rlnDefocusU", None), ("ctf/df2_A", "rlnDefocusV", None),
                             ("ctf/df_angle_rad", "rlnDefocusAngle", np.rad2deg),
                             ("ctf/phase_shift_rad", "rlnPhaseShift", np.rad2deg),
                             ("ctf/bfactor", "rlnCtfBfactor", None),
                             ("ctf/cross_corr_ctffind4", "rlnCtfFigureOfMerit", None),
                             ("ctf/ctf_fit_to_A", "rlnCtfMaxResolution", None)):
        if field in names:
            v = data[field].astype(np.float64)
            parts[col] = conv(v) if conv else v

    group = (data["ctf/exp_group_id"].astype(np.int64) + 1 if "ctf/exp_group_id" in names
             else np.ones(n, dtype=np.int64))
    parts["rlnOpticsGroup"] = group

    prefix = _pose_prefix(data)
    if prefix is not None:
        pose = np.asarray(data[f"{prefix}/pose"], dtype=np.float64)
        if prefix == "alignments3D":
            angles = rotvec_to_euler_deg(pose.reshape(n, 3))
            parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = angles.T
        else:
            parts["rlnAnglePsi"] = np.rad2deg(pose.reshape(n))
        if f"{prefix}/shift" in names:
            psize_field = f"{prefix}/psize_A" if f"{prefix}/psize_A" in names else "blob/psize_A"
            require_fields(data, [psize_field], label)
            psize = data[psize_field].astype(np.float64)
            shift = field_matrix(data, f"{prefix}/shift", np.float64)
            parts["rlnOriginXAngst"] = shift[:, 0] * psize
            parts["rlnOriginYAngst"] = shift[:, 1] * psize
        if f"{prefix}/class" in names:
            parts["rlnClassNumber"] = data[f"{prefix}/class"].astype(np.int64) + 1
        if f"{prefix}/split" in names:
            split = data[f"{prefix}/split"].astype(np.int64)
            # One half only means no half-sets were assigned (as pyem does).
            if n and split.min() != split.max():
                parts["rlnRandomSubset"] = split + 1

    particles = pd.DataFrame(parts)
    optics = _optics_block(data, group, label)
    return {"optics": optics, "particles": particles}


def _optics_block(data: np.ndarray, group: np.ndarray, label: str):
    import pandas as pd

    names = data.dtype.names
    groups, first = np.unique(group, return_index=True)
    cols: dict[str, object] = {
        "rlnOpticsGroup": groups,
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups.tolist()],
    }
    values: dict[str, np.ndarray] = {}
    for field, col in OPTICS_COLUMNS.items():
        if field in names:
            values[col] = data[field].astype(np.float64)
    if "blob/shape" in names:
        shape = field_matrix(data, "blob/shape")
        values["rlnImageSize"] = shape[:, -1].astype(np.int64)
    _, inverse = np.unique(group, return_inverse=True)
    inverse = inverse.ravel()
    for col, v in values.items():
        ref = v[first][inverse]
        bad = np.flatnonzero(~np.isclose(v, ref, rtol=1e-6, atol=0) if v.dtype.kind == "f" else v != ref)
        if len(bad):
            r = int(bad[0])
            raise FieldError(f"{label}: optics group {group[r]} mixes {col} values "
                             f"({ref[r]} and {v[r]} at row {r}); split it by ctf/exp_group_id first")
        cols[col] = v[first]
    cols["rlnImageDimensionality"] = np.full(len(groups), 2, dtype=np.int64)
    return pd.DataFrame(cols)


def particles_table(blocks: dict, label: str = "STAR file"):
    """The particles of STAR ``blocks`` with each row's optics values merged in.

    Accepts RELION 3.1 files (``optics`` and ``particles`` blocks) and older
    single-block files.
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
    if optics is not None and len(optics):
        if "rlnOpticsGroup" not in optics:
            raise StarFormatError(f"{label}: optics block lacks rlnOpticsGroup")
        if "rlnOpticsGroup" not in particles:
            raise StarFormatError(f"{label}: particles lack rlnOpticsGroup")
        extra = [c for c in optics.columns if c not in particles.columns or c == "rlnOpticsGroup"]
        merged = particles.merge(optics[extra], on="rlnOpticsGroup", how="left", sort=False,
                                 validate="many_to_one")
        missing = merged[extra[1]].isna() if len(extra) > 1 else None
        if missing is not None and missing.any():
            r = int(np.flatnonzero(missing.to_numpy())[0])
            raise StarFormatError(f"{label}: particle row {r + 1} names optics group "
                                  f"{particles['rlnOpticsGroup'].iloc[r]}, which the optics block lacks")
        return merged
    return particles


def _column(table, name: str, label: str, default=None) -> np.ndarray:
    if name in table:
        try:
            return table[name].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise StarFormatError(f"{label}: column {name} is not numeric") from err
    if default is None:
        raise StarFormatError(f"{label}: missing column {name}")
    return np.full(len(table), default, dtype=np.float64)


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


def from_star_blocks(blocks: dict, *, uid_column: str | None = None, seed: int | None = None,
                     label: str = "STAR file") -> np.ndarray:
    """A CryoSPARC particle dataset from RELION STAR ``blocks``.

    Parameters
    ----------
    blocks
        As returned by :func:`read_star`.
    uid_column
        A STAR column of unique integers to use as ``uid``; by default uids are
        random 64-bit integers, as CryoSPARC makes them.
    seed
        Seed for the random uids (``None`` for fresh randomness).
    label
        Name of the file, for error messages.

    Fields written: ``uid``, ``blob/*`` (``path`` from ``rlnImageName`` without the
    ``idx@``, ``idx`` 0-based, ``shape``, ``psize_A``, ``sign``), ``ctf/*`` when
    defocus values are present, and ``alignments3D/*`` (from rot/tilt/psi) or
    ``alignments2D/*`` (from psi alone) when angles are.
    """
    table = particles_table(blocks, label)
    n = len(table)
    images = split_image_names(table["rlnImageName"], label)
    idx, path_bytes = images.idx, images.path_bytes()
    width = max(1, path_bytes.dtype.itemsize)

    psize = _column(table, "rlnImagePixelSize", label, default=_legacy_psize(table))
    size = _column(table, "rlnImageSize", label, default=0)
    descr = [("uid", "<u8"), ("blob/path", f"S{width}"), ("blob/idx", "<u4"),
             ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("blob/sign", "<f4")]
    has_ctf = "rlnDefocusU" in table
    if has_ctf:
        descr += [("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
                  ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
                  ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
                  ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"), ("ctf/bfactor", "<f4")]
    full_pose = all(c in table for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    prefix = "alignments3D" if full_pose else "alignments2D" if "rlnAnglePsi" in table else None
    if prefix:
        pose = ("alignments3D/pose", "<f4", (3,)) if full_pose else ("alignments2D/pose", "<f4")
        descr += [(f"{prefix}/split", "<u4"), (f"{prefix}/shift", "<f4", (2,)), pose,
                  (f"{prefix}/psize_A", "<f4"), (f"{prefix}/class", "<u4")]

    out = np.zeros(n, dtype=descr)
    out["uid"] = _uids(table, uid_column, seed, label)
    out["blob/path"] = path_bytes
    out["blob/idx"] = idx
    out["blob/shape"] = size[:, None]
    out["blob/psize_A"] = psize
    out["blob/sign"] = -1.0
    group = _column(table, "rlnOpticsGroup", label, default=1)
    if has_ctf:
        out["ctf/type"] = b"imported"
        out["ctf/exp_group_id"] = np.maximum(group - 1, 0)
        out["ctf/accel_kv"] = _column(table, "rlnVoltage", label, default=300.0)
        out["ctf/cs_mm"] = _column(table, "rlnSphericalAberration", label, default=2.7)
        out["ctf/amp_contrast"] = _column(table, "rlnAmplitudeContrast", label, default=0.1)
        out["ctf/df1_A"] = _column(table, "rlnDefocusU", label)
        out["ctf/df2_A"] = _column(table, "rlnDefocusV", label, default=0.0) if "rlnDefocusV" in table \
            else out["ctf/df1_A"]
        out["ctf/df_angle_rad"] = np.deg2rad(_column(table, "rlnDefocusAngle", label, default=0.0))
        out["ctf/phase_shift_rad"] = np.deg2rad(_column(table, "rlnPhaseShift", label, default=0.0))
        out["ctf/scale"] = _column(table, "rlnCtfScalefactor", label, default=1.0)
        out["ctf/bfactor"] = _column(table, "rlnCtfBfactor", label, default=0.0)
    if prefix:
        if full_pose:
            angles = np.stack([_column(table, c, label) for c in
                               ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], axis=1)
            out["alignments3D/pose"] = euler_deg_to_rotvec(angles)
        else:
            out["alignments2D/pose"] = np.deg2rad(_column(table, "rlnAnglePsi", label))
        ox = _column(table, "rlnOriginXAngst", label, default=0.0)
        oy = _column(table, "rlnOriginYAngst", label, default=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{prefix}/shift"] = np.stack([ox / psize, oy / psize], axis=1)
        out[f"{prefix}/psize_A"] = psize
        out[f"{prefix}/class"] = np.maximum(_column(table, "rlnClassNumber", label, default=1) - 1, 0)
        out[f"{prefix}/split"] = np.maximum(_column(table, "rlnRandomSubset", label, default=1) - 1, 0)
    return out


def _legacy_psize(table) -> float | None:
    """RELION 3.0 pixel size: detector pixel (µm) / magnification."""
    if "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
        return float(table["rlnDetectorPixelSize"].iloc[0] * 1e4 / table["rlnMagnification"].iloc[0])
    return None


def _uids(table, uid_column: str | None, seed: int | None, label: str) -> np.ndarray:
    n = len(table)
    if uid_column is None:
        rng = np.random.default_rng(seed)
        uids = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
        # Collisions are astronomically unlikely; redraw them anyway.
        while n and len(np.unique(uids)) != n:
            uids = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
        return uids
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


def cs_to_star(cs_path: str | os.PathLike, star_path: str | os.PathLike, *,
               passthrough: str | os.PathLike | None = None, mrcs: bool = False,
               overwrite: bool = False) -> dict:
    """Convert a ``.cs`` file (optionally joined with its passthrough) to a STAR file.

    Returns the counts written: ``{"particles": n, "optics_groups": k}``.
    """
    from stacktools.cs.rows import join
    from stacktools.formats.cs import read_cs

    data = read_cs(cs_path)
    if passthrough is not None:
        data = join(data, read_cs(passthrough), label=(str(cs_path), str(passthrough)))
    blocks = to_star_blocks(data, mrcs=mrcs, label=str(cs_path))
    write_star(star_path, blocks, overwrite=overwrite)
    return {"particles": len(blocks["particles"]), "optics_groups": len(blocks["optics"])}


def star_to_cs(star_path: str | os.PathLike, cs_path: str | os.PathLike, *,
               uid_column: str | None = None, seed: int | None = None,
               overwrite: bool = False) -> np.ndarray:
    """Convert a RELION particle STAR file to a ``.cs`` file and the ``.csg`` beside it;
    return the dataset written."""
    from stacktools.cs.result_group import clear_result_group, write_result_group
    from stacktools.formats.cs import write_cs

    data = from_star_blocks(read_star(star_path), uid_column=uid_column, seed=seed,
                            label=str(star_path))
    clear_result_group(cs_path, overwrite=overwrite)
    write_cs(cs_path, data, overwrite=overwrite)
    write_result_group([(cs_path, data.dtype, len(data))],
                       description=f"from RELION {Path(star_path).name}")
    return data
