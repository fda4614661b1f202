"""Write CryoSPARC result-group files (``.csg``): the text that names a group's ``.cs`` files.

CryoSPARC's Import Result Group job reads a ``.csg`` to bring a set of ``.cs`` files
back into a project. The layout here follows the ``.csg`` files CryoSPARC itself
writes, as seen in exported groups (``exports/groups/J350_particles/
J350_particles_exported.csg`` in the reichow-lab subunit_enrichment README, written
by v4.4.1; a split main/passthrough group of v4.5.3 in cryofilter's tests;
cryoDRGN's notes on re-importing filtered particles; cryoPICLS, which rewrites them
with PyYAML). A ``.csg`` is YAML with keys in sorted order, as PyYAML dumps them::

    created: 2024-03-11 23:50:02.123456
    group:
      description: All particles that were processed, including alignments
      name: particles
      title: All particles
      type: particle
    results:
      blob:
        metafile: '>J350_particles_exported.cs'
        num_items: 456024
        type: particle.blob
      ctf:
        metafile: '>J350_passthrough_particles_exported.cs'
        num_items: 456024
        type: particle.ctf
    version: v4.4.1

``created`` is a plain YAML timestamp (local time, microseconds); ``results`` is a
mapping keyed by slot name (the prefix before ``/`` of the ``.cs`` field names);
``metafile`` starts with ``>``, which marks a path relative to the ``.csg``;
``type`` is ``<group type>.<slot type>``; ``version`` is the CryoSPARC release.

The text is emitted here rather than with a YAML library: it is small and fixed,
and strings are quoted so that any file name reads back unchanged.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stacktools.errors import DiskFullError, OutputError
from stacktools.formats.atomic import atomic_output

# Import Result Group reads ``version``; it names the CryoSPARC release whose
# exported groups this layout copies (stacktools itself is named in the description).
LAYOUT_VERSION = "v4.4.1"

# Plain (unquoted) only where YAML can read nothing else into it: an identifier that
# is not one of YAML 1.1's booleans or null.
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


@dataclass(frozen=True)
class Result:
    """One slot of a result group: where its rows are and how many there are.

    ``metafile`` is the file's path relative to the ``.csg`` (without the ``>``).
    """

    slot: str
    metafile: str
    num_items: int
    type: str


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar that reads back as exactly this string."""
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    # Control characters and the like: a double-quoted scalar with escapes.
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def csg_text(results: Sequence[Result], *, group_type: str, name: str, title: str,
             description: str, created: _dt.datetime | None = None,
             version: str = LAYOUT_VERSION) -> str:
    """The ``.csg`` text of one result group.

    Args:
        results: One per slot; written sorted by slot name, as CryoSPARC writes them.
        group_type: The group's data type, e.g. ``"particle"``.
        name, title, description: The group's name, title and description.
        created: When the group was made [default: now, local time].
        version: The ``version`` field.

    Returns:
        The YAML text, ending with a newline.

    Raises:
        ValueError: A string holds a lone surrogate (a file name that is not UTF-8),
            which no ``.csg`` can spell.
    """
    created = created or _dt.datetime.now()
    lines = [f"created: {created.replace(tzinfo=None).isoformat(sep=' ', timespec='microseconds')}",
             "group:",
             f"  description: {_scalar(description)}",
             f"  name: {_scalar(name)}",
             f"  title: {_scalar(title)}",
             f"  type: {_scalar(group_type)}",
             "results:" + ("" if results else " {}")]
    for r in sorted(results, key=lambda r: r.slot):
        lines += [f"  {_scalar(r.slot)}:",
                  f"    metafile: {_scalar('>' + r.metafile)}",
                  f"    num_items: {int(r.num_items)}",
                  f"    type: {_scalar(r.type)}"]
    lines.append(f"version: {_scalar(version)}")
    text = "\n".join(lines) + "\n"
    text.encode("utf-8")  # raises on a lone surrogate
    return text


def write_csg(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``.csg`` text atomically (replacing any file of that name).

    Raises:
        DiskFullError: The device is full.
        OutputError: The file cannot be written.
    """
    try:
        with atomic_output(path, fsync=fsync) as fh:
            fh.write(text.encode("utf-8"))
    except OutputError as err:
        cause = err.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on the device while writing") from err
        raise
    return Path(path)
