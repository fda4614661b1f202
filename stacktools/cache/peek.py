"""Plan against a cache without writing anything: what ``stacktools cache plan`` runs.

A plan is a check. It opens no lock file (opening one would create it), sweeps no
dead pin, absorbs no ledger line and creates no directory; it reads a private
copy of the index (made in the temporary directory, outside the cache) and judges
copies with one ``stat`` each, as ``sync`` does. Access times recorded per set are
folded in the query, not in the database. As everywhere in the cache, a symlink at
one of its own names is never followed: it raises
:class:`~stacktools.errors.CacheForeignPathError` (and is left alone).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
from pathlib import Path

from stacktools.cache.config import CACHE_DIRNAME, CacheConfig, missing_ssd_error
from stacktools.cache.locks import live_pins
from stacktools.cache.plan import CachePlan, Entry, Inventory, plan_stacks
from stacktools.cache.safefs import check_own_dir
from stacktools.cache.sources import stat_sources
from stacktools.cache.validity import locate_copies
from stacktools.errors import CacheConfigError, CacheForeignPathError

_ENTRIES = """
SELECT e.key, e.size, e.mtime_ns, e.ino, e.project, MAX(e.last_access, COALESCE((
    SELECT MAX(s.last_access) FROM set_members m JOIN sets s ON s.set_id = m.set_id
    WHERE m.key = e.key), 0))
FROM entries e
"""


def _own_file(path: Path) -> bool:
    """Whether the cache's file ``path`` exists; a symlink or non-file there raises."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise CacheForeignPathError(f"{path}: is a symlink or not a regular file; the cache "
                                    "does not follow it and leaves it alone")
    return True


def _own_dir(path: Path) -> bool:
    """Whether the cache's directory ``path`` exists; a symlink or non-directory raises."""
    if not os.path.lexists(path):
        return False
    check_own_dir(path)
    return True


def _read_rows(root: Path) -> list[tuple]:
    db = root / "index.db"
    if not _own_file(db):
        return []
    # Even a read-only SQLite connection writes its read marks into index.db-shm (and
    # creates it if missing). So the index and its write-ahead log are read from a
    # private copy outside the cache, where SQLite may do as it likes.
    with tempfile.TemporaryDirectory(prefix="stacktools-plan-") as tmp:
        try:
            for suffix in ("-wal", ""):  # the log first: a checkpoint in between only adds to the copy of the db
                src = Path(f"{db}{suffix}")
                if _own_file(src):
                    shutil.copyfile(src, os.path.join(tmp, f"index.db{suffix}"), follow_symlinks=False)
            con = sqlite3.connect(os.path.join(tmp, "index.db"), timeout=60.0)
            try:
                return con.execute(_ENTRIES).fetchall()
            finally:
                con.close()
        except (sqlite3.DatabaseError, FileNotFoundError):
            return []  # unreadable: plan as if empty (sync would rebuild it)


def _usage(path: Path) -> tuple[int, int]:
    while not path.exists():
        path = path.parent
    v = os.statvfs(path)
    return v.f_bavail * v.f_frsize, v.f_blocks * v.f_frsize


def peek_inventory(config: CacheConfig, create: bool = False) -> Inventory:
    """A snapshot of the cache that ``config`` names, made without writing anything.

    Args:
        config: The cache's settings.
        create: Plan as ``sync --create`` would run: a missing SSD path counts as
            an empty cache instead of an error (it is not created).

    Returns:
        The :class:`Inventory`.

    Raises:
        CacheConfigError: The SSD path is missing (and neither ``create`` nor the
            config's ``create_ssd_path`` allows it), or is not a directory.
    """
    ssd = config.ssd_path
    if ssd.exists() and not ssd.is_dir():
        raise CacheConfigError(f"{ssd}: SSD path is not a directory")
    if not ssd.exists() and not (create or config.create_ssd_path):
        raise missing_ssd_error(ssd)
    root = ssd / CACHE_DIRNAME
    have_root = _own_dir(root)
    if have_root:
        root = Path(os.path.realpath(root))  # as the cache names its own paths
    files = str(root / "files")
    jobs: set[str] = set()
    in_use, reserved = (live_pins(root / "pins", jobs=jobs, sweep=False)
                        if have_root and _own_dir(root / "pins") else (set(), {}))
    entries = []
    have_files = have_root and _own_dir(root / "files")
    for key, size, mtime_ns, ino, project, last_access in _read_rows(root) if have_files else []:
        try:
            st = os.lstat(files + key)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_ino == ino:
            entries.append(Entry(key, size, mtime_ns, last_access, in_use=key in in_use,
                                 owned=True, project=project, job=key in jobs))
    have = {e.key for e in entries}
    free, total = _usage(ssd)
    return Inventory(entries=entries, quota_bytes=config.quota_bytes, reserve_bytes=config.reserve_bytes,
                     free_bytes=free, lifetime_s=config.lifetime_s, taken_at=time.time(),
                     reserved={k: v for k, v in reserved.items() if k not in have},
                     node=socket.gethostname(), root=str(root), total_bytes=total)


def _open_dir(d: str) -> int:
    """Descriptor of an entry directory; -1 if missing or reached through a symlink."""
    if os.path.realpath(d) != d:
        return -1
    try:
        return os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return -1


def plan_without_writing(pset, config: CacheConfig, *, partial: bool = False,
                         consolidation: bool = False, create: bool = False) -> CachePlan:
    """What ``sync`` would do for ``pset`` on this node; creates and writes nothing.

    Args:
        pset: A :class:`~stacktools.particles.ParticleSet` or a sequence of stack paths.
        config: The cache's settings.
        partial: Plan what fits, in the set's order, when the whole set does not.
        consolidation: Fill ``cache_bytes``/``consolidated_bytes`` and ``choices`` from the headers.
        create: See :func:`peek_inventory`.

    Returns:
        The :class:`CachePlan` (``fits`` says whether ``sync`` would run).

    Raises:
        CacheConfigError: See :func:`peek_inventory`.
        MissingStackError: A stack of the set does not exist.
    """
    inv = peek_inventory(config, create)
    paths = pset.stack_paths if hasattr(pset, "stack_paths") else list(pset)
    stacks = stat_sources(paths)
    files = os.path.join(inv.root, "files")
    valid = locate_copies(files, stacks, _open_dir) if _own_dir(Path(files)) else {}
    return describe_set(plan_stacks(stacks, inv, valid=valid, partial=partial), pset, consolidation)


def plan_for_inventory(pset, inventory: Inventory | dict, *, partial: bool = False,
                       consolidation: bool = False, now: float | None = None) -> CachePlan:
    """Plan caching a set on the node an inventory snapshot describes. Copies nothing.

    Parameters
    ----------
    pset
        A :class:`~stacktools.particles.ParticleSet` or a sequence of stack paths;
        its sources are stat-ed here (they must be visible from this machine).
    inventory
        An :class:`Inventory`, or the dict from ``Inventory.to_dict()`` /
        ``stacktools cache status --json --inventory`` (its ``inventory`` member).
    partial
        Plan what fits, in the set's order, when the whole set does not.
    consolidation
        Fill ``cache_bytes``/``consolidated_bytes`` and ``choices`` from the stacks' headers.
    now
        Time for lifetime expiry (default: the snapshot's time).

    Entries count as cached and valid when the snapshot has the source's key, size
    and mtime; :meth:`Cache.plan` is the same planner with validity checked on disk.
    """
    inv = inventory if isinstance(inventory, Inventory) else Inventory.from_dict(inventory)
    paths = pset.stack_paths if hasattr(pset, "stack_paths") else list(pset)
    plan = plan_stacks(stat_sources(paths), inv, partial=partial, now=now)
    return describe_set(plan, pset, consolidation)



def describe_set(plan: CachePlan, pset, consolidation: bool) -> CachePlan:
    """Record the set's project on ``plan`` and, if asked, what consolidating (and
    shrinking) would take, and whether each fits."""
    project = getattr(pset, "project_dir", None)
    plan.project = os.path.realpath(project) if project else ""
    if consolidation and hasattr(pset, "stack_paths"):
        from stacktools.size import size_particles
        rep = size_particles(pset, validate=False)
        plan.cache_bytes, plan.consolidated_bytes = rep.cache_bytes, rep.consolidated_bytes
        plan.rate_choices(rep.choices())
    return plan

