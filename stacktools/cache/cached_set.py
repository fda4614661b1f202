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
    from stacktools.formats.cs import write_cs

    check_output(out, [pset.source], overwrite=True)
    targets = [paths[named_path(p)] for p in pset.stack_paths]
    data = with_blob_paths(pset.data, targets, pset.stack_codes)
    clear_result_group(out, overwrite=True)
    write_cs(out, data)
    origin = f"{Path(pset.source).name} " if pset.source else ""
    write_result_group([(out, data.dtype, len(data))],
                       description=f"{origin}reading the node-local cache copies")
    return Path(out)
