"""Shared output helpers for the CLI: sizes, JSON, tables and progress bars.

Heavy modules (rich) are imported on first use so that ``stacktools --help``
starts quickly.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

import humanize


def fmt_bytes(n: int) -> str:
    """Human size plus the exact byte count: ``263.3 GB (263,296,000,000 bytes)``."""
    return f"{humanize.naturalsize(n)} ({n:,} bytes)"


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout, indented, with each flat object or list on
    one line (a consolidation's 100,000 outputs print in a fraction of a second:
    ``indent`` alone would switch json to its pure-Python encoder)."""
    sys.stdout.write(_encode(obj, 0))
    sys.stdout.write("\n")


_SCALARS = (str, int, float, bool, type(None))


def _encode(obj: Any, level: int) -> str:
    if not isinstance(obj, (dict, list, tuple, *_SCALARS)):
        obj = _json_default(obj)
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    nested = any(isinstance(v, (dict, list, tuple)) or not isinstance(v, _SCALARS) for v in values)
    if not nested or (isinstance(obj, dict) and not all(isinstance(k, str) for k in obj)):
        return json.dumps(obj, default=_json_default)
    pad, inner = "\n" + "  " * level, "\n" + "  " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{json.dumps(k)}: {_encode(v, level + 1)}" for k, v in obj.items()]
        return "{" + inner + ("," + inner).join(items) + pad + "}"
    return "[" + inner + ("," + inner).join(_encode(v, level + 1) for v in obj) + pad + "]"


def _json_default(o: Any):
    import os
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, set):
        return sorted(o)
    if hasattr(o, "to_dict"):  # the library's typed results
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False)


def table(title: str | None = None, columns: tuple[str, ...] = ()):
    """A rich table with the given columns (the first left-aligned, the rest right)."""
    from rich.table import Table
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    return t


def kv_table(rows: list[tuple[str, str]], title: str | None = None):
    """A two-column key/value table."""
    t = table(title, ("", ""))
    t.show_header = False
    for k, v in rows:
        t.add_row(k, v)
    return t


@contextlib.contextmanager
def byte_progress(description: str, total: int, quiet: bool = False
                  ) -> Iterator[Callable[[int], None]]:
    """Progress bar over ``total`` bytes on stderr; yields an ``advance(nbytes)`` callback.

    With ``quiet`` (or when stderr is not a terminal and nothing is long) the
    callback does nothing.
    """
    if quiet or total <= 0:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                    transient=True)
    with prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)


@contextlib.contextmanager
def count_progress(description: str, total: int, quiet: bool = False
                   ) -> Iterator[Callable[[int], None]]:
    """Progress bar over ``total`` items on stderr; yields an ``advance(n)`` callback."""
    if quiet or total <= 0:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console(stderr=True), transient=True)
    with prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)
