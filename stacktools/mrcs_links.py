"""``.mrcs`` names for ``.mrc`` stacks: the symbolic links RELION needs to read them.

RELION reads a particle stack only under the ``.mrcs`` extension; CryoSPARC writes
``.mrc``. :func:`link_mrcs` makes ``x.mrcs -> x.mrc`` beside each stack, or in a
directory the user names. Each link is made under a temporary name and then
hard-linked into place (``linkat`` of the symlink itself), which fails rather than
replaces: an existing correct link is accepted, anything else at that name is an
error and is left as it is. Links point at their stack by a relative path, so they
survive a project being moved or mounted elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from stacktools.errors import MissingStackError, OutputError, OutputExistsError
from stacktools.formats.atomic import tmp_name
from stacktools.particles import ParticleSet


@dataclass
class MrcsLinks:
    """The links for a set: ``names`` maps each stack's ``blob/path`` (marker
    stripped) to the name the STAR file should give it."""

    names: dict[str, str] = field(default_factory=dict)
    made: int = 0
    existing: int = 0


def _is_link_to(link: Path, target: Path) -> bool:
    return link.is_symlink() and os.path.realpath(link) == os.path.realpath(target)


def _place_link(target_text: str, target: Path, link: Path) -> bool:
    """Make ``link -> target_text``; False if that exact link is already there."""
    if link.is_symlink() or link.exists():
        if _is_link_to(link, target):
            return False
        raise OutputExistsError(f"{link}: exists and is not a link to {target}; "
                                "it is left alone (move it away or link elsewhere)")
    tmp = link.parent / tmp_name(link.name)
    try:
        os.symlink(target_text, tmp)
    except OSError as err:
        raise OutputError(f"{link.parent}: cannot make a link there ({err.strerror})") from err
    try:
        os.link(tmp, link, follow_symlinks=False)  # never replaces an existing name
    except FileExistsError:
        if not _is_link_to(link, target):
            raise OutputExistsError(f"{link}: appeared while linking and is not a link to "
                                    f"{target}; it is left alone") from None
        return False
    except OSError as err:
        raise OutputError(f"{link}: cannot make a link ({err.strerror})") from err
    finally:
        os.unlink(tmp)  # ours: made above under a fresh random name
    return True


def link_mrcs(cs_path: str | os.PathLike, *, passthrough: str | os.PathLike | None = None,
              project_dir: str | os.PathLike | None = None,
              into: str | os.PathLike | None = None) -> MrcsLinks:
    """Make a ``.mrcs`` link for every ``.mrc`` stack of a set.

    Parameters
    ----------
    cs_path, passthrough, project_dir
        The set, as for :meth:`ParticleSet.open`.
    into
        A directory for the links (made if absent); by default each link goes
        beside its stack. Two stacks with one file name cannot share it.

    Raises
    ------
    MissingStackError
        A stack to link to does not exist.
    OutputExistsError
        A link's name holds a file that is not that link (nothing is replaced).
    """
    pset = ParticleSet.open(cs_path, project_dir, passthrough)
    out = MrcsLinks()
    plan: list[tuple[str, Path, Path, str]] = []
    seen: dict[Path, str] = {}
    if into is not None:
        into = Path(into)
        try:
            into.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{into}: cannot make the directory ({err.strerror})") from err
    for blob, stack in zip(pset.blob_paths, pset.stack_paths):
        if not blob.endswith(".mrc"):
            continue
        if not stack.is_file():
            raise MissingStackError(f"{stack}: stack to link to does not exist (from {cs_path})")
        if into is None:
            link, name, text = Path(str(stack) + "s"), blob + "s", stack.name
        else:
            link = into / (stack.name + "s")
            name = str(link)
            text = os.path.relpath(os.path.abspath(stack), os.path.abspath(into))
        if link in seen:
            raise OutputExistsError(f"{link}: would link both {seen[link]} and {blob}; "
                                    "link beside the stacks instead")
        seen[link] = blob
        plan.append((blob, stack, link, text))
        out.names[blob] = name
    for _blob, stack, link, text in plan:
        if _place_link(text, stack, link):
            out.made += 1
        else:
            out.existing += 1
    return out
