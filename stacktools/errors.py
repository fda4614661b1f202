"""Exception types raised by stacktools.

Every error that bad input can cause derives from :class:`StacktoolsError`, so a
caller can catch one type. The message is one line that names the file and, where
there is one, the row.
"""

from __future__ import annotations

from typing import NamedTuple


class Hint(NamedTuple):
    """What would change an outcome, named as a keyword argument of the library.

    ``text`` holds ``{}`` where the option goes; ``value`` is what to pass (``True``
    for a switch, ``None`` to name the option alone). The library spells the option as ``name=value``; the command
    line respells it as its flag (``cli/options.py``), so library messages never
    name flags.
    """

    option: str
    text: str
    value: object = True

    def spell(self, flag: str | None = None) -> str:
        """The hint with the option as ``flag`` (``None``: as the keyword argument)."""
        if self.value is None:  # the option itself, with no particular value
            return self.text.format(flag or self.option)
        if flag is None:
            return self.text.format(f"{self.option}={self.value!r}")
        return self.text.format(flag if self.value is True else f"{flag} {self.value}")


class StacktoolsError(Exception):
    """Base class for every error stacktools raises on bad input or environment.

    ``hints`` (keyword only) are appended to the message in the library's terms;
    :meth:`message_with` spells them another way (the CLI's flags).
    """

    def __init__(self, message: str = "", *args, hints: tuple[Hint, ...] | list[Hint] = ()):
        self.message = message
        self.hints = tuple(hints)
        super().__init__(self.message_with({}), *args)

    def message_with(self, flags: dict[str, str] | None) -> str:
        """The message with each hint's option spelled by ``flags`` (option -> flag);
        ``None`` or a missing option spells it as the library's keyword argument."""
        flags = flags or {}
        return self.message + "".join(h.spell(flags.get(h.option)) for h in self.hints)

    def __reduce__(self):
        # Whole across processes (a Dask worker's error reaches the client with its hints).
        return _rebuild, (type(self), self.args, self.__dict__.copy())


def _rebuild(cls: type, args: tuple, state: dict) -> StacktoolsError:
    err = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


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


class OutputExistsError(OutputError):
    """Outputs that are not this run's own are in the way; the ``force`` option replaces them."""


class DiskFullError(OutputError):
    """The output device ran out of space (or quota) while writing."""


class SourceOverwriteError(OutputError):
    """An output would be written onto a source file or into a source directory."""


class ShrinkError(StacktoolsError):
    """A crop, Fourier crop or pixel-type conversion cannot be done as asked."""


class Float16RangeError(ShrinkError):
    """A particle holds values beyond float16's range (|x| > 65504)."""


class ModeMismatchError(StackError):
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


class ClusterError(StacktoolsError):
    """A Dask cluster cannot be reached or used (no ``stacktools[dask]``, a bad
    address, workers that keep dying)."""


class NodesFileError(PlacementError):
    """A nodes file, or a node's inventory snapshot, is missing, malformed or incomplete."""


def describe_os_error(err: OSError) -> str:
    """One-line description of an ``OSError`` that names the file involved."""
    where = err.filename or ""
    if err.filename2:
        where = f"{where} -> {err.filename2}"
    reason = err.strerror or str(err)
    return f"{where}: {reason}" if where else reason


class DroppedColumnsWarning(UserWarning):
    """STAR columns that have no ``.cs`` field were not converted; ``columns`` lists them."""

    def __init__(self, label: str, columns: list[str]):
        self.columns = list(columns)
        super().__init__(f"{label}: {len(self.columns)} STAR column(s) have no .cs field and were "
                         f"not converted: {', '.join(self.columns)}")
