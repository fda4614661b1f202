"""Exception types raised by stacktools.

Every error that bad input can cause derives from :class:`StacktoolsError`, so a
caller can catch one type. The message is one line that names the file and, where
there is one, the row.
"""

from __future__ import annotations

from collections.abc import Callable


class StacktoolsError(Exception):
    """Base class for every error stacktools raises on bad input or environment."""


def _as_keyword(name: str, value: object) -> str:
    """How a Python caller sets an option: ``force=True``, ``dtype='float32'``."""
    return f"{name}={value!r}"


class HintedError(StacktoolsError):
    """An error that another option of the same call would avoid.

    ``detail`` says what is wrong. ``hint`` is a :meth:`str.format` template whose
    ``{name}`` fields are options, with their values in ``options``; ``str(err)``
    spells them as keyword arguments (``force=True``) and :meth:`spelled` as another
    front end does (the command line's ``--force``). ``detail`` is never formatted,
    so braces in a path are safe.
    """

    def __init__(self, detail: str, hint: str = "", **options: object) -> None:
        self.detail, self.hint, self.options = detail, hint, options
        super().__init__(self.spelled(_as_keyword))

    def spelled(self, spell: Callable[[str, object], str]) -> str:
        """The message with each option written as ``spell(name, value)``.

        Args:
            spell: Writes one option, from its keyword name and value.

        Returns:
            ``detail`` followed by the filled-in ``hint``.
        """
        return self.detail + self.hint.format(**{k: spell(k, v) for k, v in self.options.items()})


class CsFormatError(StacktoolsError):
    """A ``.cs`` file is unreadable: not NumPy nor CSDAT, truncated or corrupt."""


class FieldError(StacktoolsError):
    """A required field is missing, or fields do not match between datasets."""


class ExpressionError(StacktoolsError):
    """A ``--where`` / ``query`` expression is malformed or names an unknown field."""


class StarFormatError(StacktoolsError):
    """A RELION STAR file is unreadable or lacks the blocks and columns needed."""


class StackError(StacktoolsError):
    """An MRC stack is missing, unreadable or inconsistent with its ``.cs`` rows."""


class MissingStackError(StackError):
    """A stack referenced by ``blob/path`` does not exist."""


class MrcHeaderError(StackError):
    """An MRC header is invalid (bad mode, dimensions or byte order)."""


class TruncatedStackError(StackError):
    """A stack file is shorter than its header says it must be."""


class IndexOutOfRangeError(StackError):
    """A ``blob/idx`` points past the last particle of its stack."""


class BoxMismatchError(StackError):
    """Stacks or rows disagree on the box size."""


class PathEscapeError(StacktoolsError):
    """A path would resolve outside the root it must stay in."""


class OutputError(StacktoolsError):
    """An output cannot be written: it exists, is a source, or the disk is full."""


class OutputExistsError(HintedError, OutputError):
    """Outputs that are not this run's own are in the way; the ``force`` option replaces them."""


class DiskFullError(OutputError):
    """The output device ran out of space (or quota) while writing."""


class SourceOverwriteError(OutputError):
    """An output would be written onto a source file or into a source directory."""


class ModeMismatchError(HintedError, StackError):
    """Stacks with different pixel modes would have to share one output stack."""


class VerificationError(StacktoolsError):
    """A written particle or field does not match its source."""


class CacheError(StacktoolsError):
    """The SSD cache cannot do what was asked (bad state, busy, escape)."""


class CacheConfigError(CacheError):
    """Cache settings are missing or invalid (SSD path, quota, reserve, ...)."""


class CacheFullError(CacheError):
    """A set does not fit on the SSD even after evicting everything evictable."""


class CacheForeignPathError(CacheError):
    """A path the cache owns is a symlink or a file it did not make; it is left alone."""


class PlacementError(StacktoolsError):
    """Sets cannot be placed on nodes as asked (no nodes, a bad queue order, ...)."""


class NodesFileError(PlacementError):
    """A nodes file, or a node's inventory snapshot, is missing, malformed or incomplete."""


def describe_os_error(err: OSError) -> str:
    """One-line description of an ``OSError`` that names the file involved."""
    where = err.filename or ""
    if err.filename2:
        where = f"{where} -> {err.filename2}"
    reason = err.strerror or str(err)
    return f"{where}: {reason}" if where else reason
