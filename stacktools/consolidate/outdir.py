"""OUTDIR's bookkeeping: the manifest, the lock, and removing only what a run made.

``OUTDIR/.stacktools-consolidate.json`` records the key of the run that owns OUTDIR,
its outputs, and the files of earlier runs still to be removed. Everything here
works from that record and from paths relative to OUTDIR and knows nothing of
plans, so reading a manifest never needs the planning or the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from stacktools.errors import OutputError, describe_os_error
from stacktools.formats.atomic import TMP_SUFFIX, atomic_output, tmp_name_for
from stacktools.shrink import ShrinkSpec

MANIFEST = ".stacktools-consolidate.json"
STACKS_DIR = "stacks"
MANIFEST_VERSION = 3  # 3: the shrink is recorded


def read_manifest(outdir: Path) -> dict | None:
    """The manifest in OUTDIR, or ``None`` when there is none (or it is unreadable).

    Args:
        outdir: The output directory.

    Returns:
        The manifest as written by :func:`write_manifest`, or ``None``.
    """
    try:
        return json.loads((outdir / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None


def is_run(manifest: dict | None, key: str) -> bool:
    """Whether ``manifest`` was written by a run with this plan key."""
    return manifest is not None and manifest.get("key") == key


def write_manifest(outdir: Path, *, key: str, cs: str | None, passthrough: str | None,
                   stacks: list[dict], stale: list[str], fsync: bool, csg: str | None = None,
                   star: str | None = None, shrink: ShrinkSpec | None = None) -> None:
    """Record atomically what a run writes, and what earlier runs left that it will remove.

    Args:
        outdir: The output directory.
        key: The plan key of the run.
        cs, passthrough: File names of the run's ``.cs`` outputs in OUTDIR.
        csg: File name of the result group beside ``cs``.
        star: File name of the run's STAR output (a STAR input's run), in OUTDIR.
        stacks: One ``{"path", "bytes", "particles"}`` per stack, ``path`` relative to OUTDIR.
        stale: Files of earlier runs to remove, relative to OUTDIR.
        shrink: The crop and Fourier crop every particle was written with, recorded
            so that ``verify`` can shrink the sources the same way.
        fsync: Flush the manifest to the device before renaming it into place.

    Raises:
        OutputError: The manifest cannot be written.
    """
    doc = {"tool": "stacktools consolidate", "version": MANIFEST_VERSION, "key": key,
           "cs": cs, "csg": csg, "passthrough": passthrough, "stacks": stacks, "stale": stale}
    if star is not None:
        doc["star"] = star
    if shrink:
        doc["shrink"] = {"crop": shrink.crop, "fourier_crop": shrink.fourier_crop}
    with atomic_output(outdir / MANIFEST, fsync=fsync) as fh:
        # Compact: an indent switches json to its pure-Python encoder, seconds at 10^5 stacks.
        fh.write(json.dumps(doc, separators=(",", ":")).encode())


def recorded_shrink(cs: str | os.PathLike) -> ShrinkSpec | None:
    """The crop and Fourier crop the manifest beside ``cs`` says its particles were written with.

    Args:
        cs: A consolidated ``.cs`` or STAR.

    Returns:
        The recorded shrink (an empty :class:`~stacktools.shrink.ShrinkSpec` for a run
        without one), or ``None`` when no manifest there names ``cs`` (a set copied
        elsewhere, or one from a version of stacktools that did not record it and
        wrote no shrink either: the two cannot be told apart, so nothing is assumed).
    """
    path = Path(cs)
    manifest = read_manifest(path.parent)
    if manifest is None or path.name not in (manifest.get("cs"), manifest.get("star")):
        return None
    rec = manifest.get("shrink")
    if not isinstance(rec, dict):
        return None if manifest.get("version", 1) < 3 else ShrinkSpec()
    return ShrinkSpec(rec.get("crop"), rec.get("fourier_crop"))


def listed_outputs(outdir: Path, manifest: dict) -> list[str]:
    """Everything a manifest says its run wrote or still has to remove.

    Args:
        outdir: The output directory the manifest is in.
        manifest: The manifest, from :func:`read_manifest`.

    Returns:
        Paths relative to OUTDIR, as the manifest gives them (not yet trusted).
    """
    listed = [s["path"] for s in manifest.get("stacks", ())]
    listed += [n for n in (manifest.get("csg"), manifest.get("cs"), manifest.get("star"),
                           manifest.get("passthrough")) if n]
    listed += manifest.get("stale", [])
    if manifest.get("version", 1) < 2:
        # Version 1 did not record the passthrough; its .cs outputs all end like this.
        with contextlib.suppress(OSError):
            listed += [e.name for e in os.scandir(outdir)
                       if e.name.endswith("_consolidated.cs") and e.is_file(follow_symlinks=False)]
    return listed


def unlink_own(outdir: Path, rel: str) -> None:
    """Remove OUTDIR/rel if it is a regular file, following no symlink on the way.

    ``rel`` comes from a manifest: anything that is not a plain relative path below
    OUTDIR is ignored rather than trusted.

    Args:
        outdir: The output directory.
        rel: The file, relative to OUTDIR.

    Raises:
        OutputError: The file is there but cannot be removed.
    """
    parts = rel.split("/")
    if os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            os.unlink(parts[-1], dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        if err.errno != errno.ELOOP:  # a symlink where a directory was: not ours
            raise OutputError(f"{outdir / rel}: cannot remove: "
                              f"{describe_os_error(err).split(': ', 1)[-1]}") from err
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(outdir: Path) -> Iterator[None]:
    """Hold OUTDIR's lock, so that two runs never write into it at once.

    Raises:
        OutputError: Another run holds the lock.
    """
    fd = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise OutputError(f"{outdir}: another stacktools consolidate is writing here") from err
        yield
    finally:
        os.close(fd)


def sweep_temps(finals: Iterable[Path]) -> int:
    """Remove the temporaries that a crashed run left for these final names.

    Args:
        finals: Files under their final names (they need not exist).

    Returns:
        The number of temporaries removed.
    """
    prefixes: dict[Path, set[str]] = {}
    for f in finals:
        prefixes.setdefault(f.parent, set()).add(tmp_name_for(f))
    removed = 0
    for d, pre in prefixes.items():
        if not d.is_dir():
            continue
        for entry in os.scandir(d):
            if entry.name.endswith(TMP_SUFFIX) and _has_prefix(entry.name, pre):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _has_prefix(name: str, prefixes: set[str]) -> bool:
    """Whether ``name`` starts with one of ``prefixes``, each of which ends in a dot:
    a set lookup per dot of the name, not a comparison per prefix."""
    end = name.find(".", 1)
    while end != -1:
        if name[:end + 1] in prefixes:
            return True
        end = name.find(".", end + 1)
    return False
