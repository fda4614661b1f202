"""Particle files that point at the cached copies, for the job to read."""

from __future__ import annotations

import os
from pathlib import Path

from stacktools.cache.sources import named_path


def write_cached_cs(pset, paths: dict[str, str], out: str | os.PathLike) -> Path:
    """Write a copy of ``pset``'s ``.cs`` whose ``blob/path`` points at the cached copies,
    and its ``.csg`` (for CryoSPARC's Import Result Group) beside it.

    Args:
        pset: The particle set that was synced.
        paths: ``SyncResult.paths``: source path -> path to read (absolute).
        out: The ``.cs`` to write (atomically).

    Returns:
        ``out``.

    Raises:
        SourceOverwriteError: ``out`` is the set's own ``.cs``.
    """
    from stacktools.cs.result_group import clear_result_group, write_result_group
    from stacktools.cs.rows import with_blob_paths
    from stacktools.formats.atomic import check_output
    from stacktools.formats.cs import detect_format, write_cs

    check_output(out, [pset.source], overwrite=True)
    targets = [paths[named_path(p)] for p in pset.stack_paths]
    data = with_blob_paths(pset.data, targets, pset.stack_codes)
    clear_result_group(out, overwrite=True)
    # A CSDAT input stays CSDAT (the format CryoSPARC wrote it in); a STAR's rows are NumPy.
    from_cs = pset.source is not None and pset.star is None
    write_cs(out, data, format=detect_format(pset.source) if from_cs else "numpy")
    origin = f"{Path(pset.source).name} " if pset.source else ""
    write_result_group([(out, data.dtype, len(data))],
                       description=f"{origin}reading the node-local cache copies")
    return Path(out)


def write_cached_star(pset, paths: dict[str, str], out: str | os.PathLike) -> Path:
    """Write a copy of ``pset``'s STAR whose ``rlnImageName`` points at the cached copies.

    Names are absolute (RELION resolves a relative name against the directory it
    runs in, which need not be the project). A ``.mrc`` stack is named ``x.mrc:mrcs``:
    RELION 3.1 refuses ``N@x.mrc`` ("extensions are reserved for 3D maps") and reads
    the file as a stack with its ``:mrcs`` type suffix. Every other block and column
    is kept.

    Args:
        pset: The particle set that was synced, read from a STAR.
        paths: ``SyncResult.paths``: source path -> path to read (absolute).
        out: The STAR to write (atomically).

    Returns:
        ``out``.

    Raises:
        FieldError: ``pset`` was not read from a STAR.
        SourceOverwriteError: ``out`` is the set's own STAR.
    """
    import numpy as np

    from stacktools.errors import FieldError
    from stacktools.formats.atomic import check_output
    from stacktools.formats.star import write_star
    from stacktools.particles import RELION_STACK_SUFFIX

    if pset.star is None:
        raise FieldError(f"{pset.source}: not a STAR file; write a .cs for it instead "
                         "(--write-cs)")
    check_output(out, [pset.source], overwrite=True)
    targets = [os.path.abspath(paths[named_path(p)]) for p in pset.stack_paths]
    targets = [t + RELION_STACK_SUFFIX if t.endswith(".mrc") else t for t in targets]
    blocks = pset.star.with_image_names(targets, pset.stack_codes,
                                        np.asarray(pset.data["blob/idx"], np.int64))
    return write_star(out, blocks, float_format=None)
