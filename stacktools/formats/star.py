"""RELION STAR text ⇄ tables (name → DataFrame), read and written with ``starfile``.

Only the text: what the columns mean for a ``.cs`` dataset is
:mod:`stacktools.cs.relion`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path

from stacktools.errors import StarFormatError
from stacktools.formats.atomic import atomic_output


def write_star(path: str | os.PathLike, blocks: dict, *, overwrite: bool = True) -> Path:
    """Write STAR ``blocks`` (name → DataFrame) atomically with ``starfile``.

    Parameters
    ----------
    path
        Destination ``.star``.
    blocks
        Data blocks in order, e.g. ``{"optics": ..., "particles": ...}``.
    overwrite
        If false, refuse to replace an existing file.
    """
    from starfile.writer import StarWriter

    writer = StarWriter(blocks, None)
    with atomic_output(path, overwrite=overwrite) as fh:
        for line in writer.lines():
            fh.write(line.encode())
            fh.write(b"\n")
    return Path(path)


def read_star(path: str | os.PathLike) -> dict:
    """Read every data block of a STAR file (name → DataFrame) with ``starfile``."""
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # starfile raises assorted types on bad input
        msg = " ".join(str(err).split()) or type(err).__name__
        raise StarFormatError(f"{path}: not a readable STAR file ({msg})") from err
    if not isinstance(blocks, dict) or not blocks:
        raise StarFormatError(f"{path}: no data blocks")
    return blocks
