"""Atomic file output: write under a temporary name, fsync, rename into place.

Nothing half-written ever appears under a final name. Temporary names start with
``.`` and end with ``.stacktools-tmp`` so that a later run can recognise and sweep
the leftovers of a crashed one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from stacktools.errors import Hint, OutputError, SourceOverwriteError

# An existing output is replaced only when asked.
OVERWRITE_HINT = Hint("overwrite", " (use {} to overwrite)")

TMP_SUFFIX = ".stacktools-tmp"

# mkstemp makes 0600 files; outputs get the usual umask-derived mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


NAME_MAX = 255
# mkstemp appends 8 random characters, then the suffix.
_TMP_EXTRA = 8 + len(TMP_SUFFIX)


def fit_name(stem: str, tail: str = "", limit: int = NAME_MAX) -> str:
    """``stem + tail``, shortened deterministically to at most ``limit`` bytes.

    Args:
        stem: The part that may be shortened.
        tail: The part kept whole (an extension, a suffix).
        limit: Maximum length of the result in bytes (file system encoding).

    Returns:
        ``stem + tail`` when it fits; otherwise ``HEAD~HASH + tail``, where HEAD is the
        longest prefix of ``stem`` (cut between characters) that fits and HASH a
        digest of the whole stem, so distinct stems stay distinct.
    """
    if len(os.fsencode(stem + tail)) <= limit:
        return stem + tail
    mark = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
    budget = limit - len(os.fsencode(mark + tail))
    if budget < 0:
        raise ValueError(f"cannot fit a name ending in {tail!r} into {limit} bytes")
    head = stem
    while len(os.fsencode(head)) > budget:
        head = head[:-1]
    return head + mark + tail


def tmp_name_for(final: Path) -> str:
    """Prefix for a temporary sibling of ``final``, short enough for any final name.

    Args:
        final: The output's final path; only its name is used.

    Returns:
        ``.NAME.``, with NAME shortened by :func:`fit_name` when the temporary name
        would otherwise exceed NAME_MAX bytes. The prefix is deterministic, so a
        later run recognises (and sweeps) the temporaries of a crashed one.
    """
    return "." + fit_name(final.name, ".", NAME_MAX - _TMP_EXTRA - 1)


def tmp_name(final_name: str) -> str:
    """A fresh temporary name beside ``final_name``, for a caller that must know the
    name before it creates the file (then with ``O_EXCL``).

    The same form as :func:`atomic_output`'s temporaries: :func:`tmp_name_for`'s
    prefix, 8 random characters and :data:`TMP_SUFFIX`, within NAME_MAX for any
    legal ``final_name``.
    """
    return tmp_name_for(Path(final_name)) + secrets.token_hex(4) + TMP_SUFFIX


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so that a rename survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True,
                  fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    Parameters
    ----------
    path
        Final name of the output.
    overwrite
        If false and ``path`` exists, raise :class:`OutputError` before writing.
    fsync
        Flush data and the directory entry to the device before returning.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    if not overwrite and final.exists():
        raise OutputError(f"{final}: already exists", hints=[OVERWRITE_HINT])
    try:
        fd, tmp = tempfile.mkstemp(prefix=tmp_name_for(final), suffix=TMP_SUFFIX,
                                   dir=final.parent)
    except OSError as err:
        raise OutputError(f"cannot write in {final.parent}: {err.strerror}") from err
    with _into_place(tmp, final, fsync):
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)


@contextlib.contextmanager
def _into_place(tmp: str, final: str | os.PathLike, fsync: bool) -> Iterator[None]:
    """Around the writing of ``tmp`` (closed by the end of the body): rename it to
    ``final`` (and with ``fsync`` flush the directory entry); on any error remove it,
    leaving ``final`` untouched."""
    ok = False
    try:
        yield
        os.replace(tmp, final)
        ok = True
        if fsync:
            fsync_dir(Path(final).parent)
    except OSError as err:
        raise OutputError(f"{final}: {err.strerror or err}") from err
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_fd(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[int]:
    """:func:`atomic_output` as a bare descriptor, for writers that only ``pwrite``.

    The temporary (:func:`tmp_name`) is created with its final mode, so no buffered
    file object and no ``chmod``: a few system calls fewer for each of the 100,000s
    of small files a consolidation may write. On any exception the temporary is
    removed and ``path`` is untouched.
    """
    final = os.fspath(path)
    parent, name = os.path.split(final)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # as mkstemp opens
    for _ in range(100):  # a clash of the random part: draw again
        tmp = os.path.join(parent, tmp_name(name))
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask makes it FILE_MODE
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot write in {parent or '.'}: {err.strerror}") from err
    else:
        raise OutputError(f"cannot write in {parent or '.'}: no free temporary name")
    with _into_place(tmp, final, fsync):
        try:
            yield fd
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 overwrite: bool = False) -> Path:
    """Refuse an output before any work is done.

    Args:
        out: The file to be written.
        inputs: Files the command reads (``None`` entries are skipped).
        overwrite: Whether an existing ``out`` may be replaced.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        SourceOverwriteError: ``out`` is one of ``inputs`` (inputs are never overwritten).
        OutputError: ``out`` exists and ``overwrite`` is false, or its directory is missing.
    """
    out = Path(out)
    target = out.resolve()
    for p in inputs:
        if p is not None and Path(p).resolve() == target:
            raise SourceOverwriteError(f"{out}: is also an input; inputs are never overwritten")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists", hints=[OVERWRITE_HINT])
    if not out.parent.exists():
        raise OutputError(f"{out}: directory {out.parent} does not exist")
    return out
