"""Placement: which GPU node's SSD cache should hold a particle set.

Built on the pure planner (:func:`stacktools.cache.plan_stacks`): every node is an
:class:`~stacktools.cache.Inventory` snapshot, either built here from an SSD path
visible from this machine, or exported on the node with ``stacktools cache status
--json --inventory``. Nothing is copied and no cache is created.

A nodes file (TOML or JSON) lists the nodes::

    [[node]]
    name = "gpu01"
    quota_mb = 500000
    reserve_mb = 10000
    ssd_path = "/mnt/gpu01-scratch"         # visible from here

    [[node]]
    name = "gpu02"
    quota_mb = 800000
    reserve_mb = 20000
    inventory = "snapshots/gpu02.json"      # relative to the nodes file

The quota and reserve of the nodes file are the ones used, whatever the snapshot
says. ``lifetime_days`` (default 30) may be given too.

Rules:

* One set (:func:`place_set`): among the nodes where the whole set fits, pick the
  one with the fewest bytes to copy; ties go to the node with the most room left
  afterwards, then to the first name in alphabetical order.
* A queue of sets (:func:`place_queue`): place the sets one after another (in the
  given order, or biggest first with ``order="biggest"``). After each placement the
  chosen node's snapshot is updated by :func:`apply_plan`: copied stacks become
  entries that are in use (the queued jobs run together, so none of them may evict
  another's stacks), evicted and expired entries are gone, free space shrinks. So
  two sets never land on a node that cannot hold both.
* One node, a queue of jobs that run one after another (:func:`simulate_queue`):
  the same, except that each job's stacks are released when the next job starts.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from stacktools.cache.plan import Entry, Inventory, Plan, SourceFile, plan_stacks
from stacktools.errors import MissingStackError, NodesFileError, PlacementError

MB = 1_000_000
DEFAULT_LIFETIME_DAYS = 30.0
ORDERS = ("given", "biggest")

_REQUIRED = ("name", "quota_mb", "reserve_mb")
_OPTIONAL = ("ssd_path", "inventory", "lifetime_days")


def _human(n: int) -> str:
    """Short size for explanations (the CLI shows exact bytes separately)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


# -- inputs ----------------------------------------------------------------------------


@dataclass
class QueuedSet:
    """A particle set to place: ``label`` names it in the output (e.g. its ``.cs``
    path); ``stacks`` are its distinct stacks as the planner sees them."""

    label: str
    stacks: list[SourceFile]

    @property
    def bytes(self) -> int:
        """Total size of the set's stacks (what a cold cache copies)."""
        return sum(s.size for s in self.stacks)

    @classmethod
    def from_particles(cls, pset: Any, label: str | None = None) -> "QueuedSet":
        """Stat the stacks of a :class:`~stacktools.particles.ParticleSet` (or a
        sequence of stack paths); ``label`` defaults to the set's ``.cs`` path."""
        paths = pset.stack_paths if hasattr(pset, "stack_paths") else list(pset)
        if label is None:
            label = getattr(pset, "source", None) or f"{len(paths)} stacks"
        return cls(str(label), set_sources(paths))


def set_sources(paths: Iterable[str | os.PathLike]) -> list[SourceFile]:
    """Stat each stack once, keyed by its resolved path; duplicates dropped, order kept.

    Parameters
    ----------
    paths
        Stack paths, e.g. ``ParticleSet.stack_paths``.

    Raises :class:`~stacktools.errors.MissingStackError` for a stack that is not there.
    """
    out, seen = [], set()
    for p in paths:
        try:
            s = SourceFile.from_path(p)
        except FileNotFoundError:
            raise MissingStackError(f"{p}: source stack not found") from None
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


@dataclass
class NodeSpec:
    """One node as a nodes file names it: ``quota_mb``/``reserve_mb`` are its cache
    policy; exactly one of ``ssd_path`` (visible from here) and ``inventory`` (a JSON
    snapshot exported on the node) says where its cache contents come from."""

    name: str
    quota_mb: float
    reserve_mb: float
    ssd_path: str | None = None
    inventory: str | None = None
    lifetime_days: float = DEFAULT_LIFETIME_DAYS

    def to_dict(self) -> dict:
        return {"name": self.name, "quota_mb": self.quota_mb, "reserve_mb": self.reserve_mb,
                "ssd_path": self.ssd_path, "inventory": self.inventory,
                "lifetime_days": self.lifetime_days}


@dataclass
class Node:
    """A node ready for placement: its ``name``, its cache ``inventory`` snapshot and
    ``source``, where the snapshot came from (an SSD path or a snapshot file)."""

    name: str
    inventory: Inventory
    source: str = ""


def read_nodes_file(path: str | os.PathLike) -> list[NodeSpec]:
    """Read and check a nodes file (``.toml``, or ``.json``; other names are tried as
    TOML then JSON).

    Parameters
    ----------
    path
        The nodes file: a ``[[node]]`` array of tables in TOML, or in JSON an object
        ``{"node": [...]}`` (``"nodes"`` also accepted) or a bare list of nodes.
        Relative ``ssd_path`` and ``inventory`` values are resolved against the
        file's directory; ``$VARS`` and ``~`` in them are expanded.

    Raises :class:`~stacktools.errors.NodesFileError` naming the file, node and field
    for anything missing, unknown or of the wrong type.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise NodesFileError(f"{p}: cannot read nodes file: {err.strerror or err}") from None
    data = _parse_nodes(p, raw)
    if isinstance(data, dict):
        keys = [k for k in data if k in ("node", "nodes")]
        unknown = sorted(set(data) - {"node", "nodes"})
        if unknown:
            raise NodesFileError(f"{p}: unknown top-level key {unknown[0]!r} (expected [[node]] entries)")
        if len(keys) != 1:
            raise NodesFileError(f"{p}: no nodes: expected [[node]] entries" if not keys
                                 else f"{p}: give either 'node' or 'nodes', not both")
        items = data[keys[0]]
    else:
        items = data
    if not isinstance(items, list) or not items:
        raise NodesFileError(f"{p}: no nodes: expected a non-empty list of [[node]] entries")
    specs, names = [], set()
    for i, item in enumerate(items, 1):
        spec = _node_spec(p, i, item)
        if spec.name in names:
            raise NodesFileError(f"{p}: node {i}: duplicate name {spec.name!r}")
        names.add(spec.name)
        specs.append(spec)
    return specs


def _parse_nodes(p: Path, raw: bytes) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    suffix = p.suffix.lower()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise NodesFileError(f"{p}: nodes file is not UTF-8 text") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as err:
            raise NodesFileError(f"{p}: not valid JSON: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        if suffix == ".toml":
            raise NodesFileError(f"{p}: not valid TOML: {err}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise NodesFileError(f"{p}: neither valid TOML nor valid JSON") from None


def _node_spec(p: Path, i: int, item: Any) -> NodeSpec:
    if not isinstance(item, dict):
        raise NodesFileError(f"{p}: node {i}: must be a table of settings, not {type(item).__name__}")
    name = item.get("name")
    where = f"{p}: node {i}" + (f" ({name!r})" if isinstance(name, str) else "")
    unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise NodesFileError(f"{where}: unknown key {unknown[0]!r} "
                             f"(known: {', '.join(_REQUIRED + _OPTIONAL)})")
    for k in _REQUIRED:
        if k not in item:
            raise NodesFileError(f"{where}: missing {k}")
    if not isinstance(name, str) or not name.strip():
        raise NodesFileError(f"{where}: name must be a non-empty string")

    def number(k: str, default: float | None = None) -> float:
        v = item.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
            raise NodesFileError(f"{where}: {k} must be a number of at least 0, not {v!r}")
        return float(v)

    quota, reserve = number("quota_mb"), number("reserve_mb")
    lifetime = number("lifetime_days", DEFAULT_LIFETIME_DAYS)
    has = [k for k in ("ssd_path", "inventory") if k in item]
    if len(has) != 1:
        raise NodesFileError(f"{where}: give exactly one of ssd_path and inventory"
                             + (", not both" if has else ""))
    value = item[has[0]]
    if not isinstance(value, str) or not value:
        raise NodesFileError(f"{where}: {has[0]} must be a non-empty path string")
    from stacktools.cache.config import expand_path
    from stacktools.errors import CacheConfigError
    try:
        resolved = expand_path(value, f"{where}: {has[0]}")
    except CacheConfigError as err:
        raise NodesFileError(str(err)) from None
    if not resolved.is_absolute():
        resolved = Path(os.path.abspath(p.parent / resolved))
    return NodeSpec(name=name, quota_mb=quota, reserve_mb=reserve, lifetime_days=lifetime,
                    **{has[0]: str(resolved)})


def node_inventory(spec: NodeSpec) -> Inventory:
    """The cache snapshot of one node, with the nodes file's quota and reserve.

    For ``ssd_path``: the live cache's :meth:`~stacktools.cache.Cache.inventory` if
    a cache exists there; otherwise an empty snapshot with the device's free space
    (nothing is created on the SSD). For ``inventory``: the JSON snapshot, either
    :meth:`Inventory.to_dict` output or the whole ``cache status --json --inventory``
    object.

    Raises :class:`~stacktools.errors.NodesFileError` when the SSD path is not a
    directory or the snapshot cannot be read.
    """
    if spec.ssd_path is not None:
        inv = _inventory_from_ssd(spec)
    else:
        inv = _inventory_from_file(spec)
    inv.quota_bytes = int(spec.quota_mb * MB)
    inv.reserve_bytes = int(spec.reserve_mb * MB)
    inv.lifetime_s = spec.lifetime_days * 86400.0
    inv.node = spec.name
    return inv


def _inventory_from_ssd(spec: NodeSpec) -> Inventory:
    from stacktools.cache.config import CacheConfig
    from stacktools.cache.store import CACHE_DIRNAME, Cache
    ssd = Path(spec.ssd_path)
    if not ssd.is_dir():
        raise NodesFileError(f"node {spec.name!r}: ssd_path {ssd} is not a directory")
    if (ssd / CACHE_DIRNAME).is_dir():
        cfg = CacheConfig(ssd_path=ssd, quota_mb=spec.quota_mb, reserve_mb=spec.reserve_mb,
                          lifetime_days=spec.lifetime_days)
        return Cache(config=cfg).inventory()
    # No cache there yet: an empty one, without creating anything.
    v = os.statvfs(ssd)
    return Inventory(entries=[], quota_bytes=None, reserve_bytes=0,
                     free_bytes=v.f_bavail * v.f_frsize, lifetime_s=spec.lifetime_days * 86400.0,
                     root=str(ssd / CACHE_DIRNAME), total_bytes=v.f_blocks * v.f_frsize)


def _inventory_from_file(spec: NodeSpec) -> Inventory:
    p = Path(spec.inventory)
    try:
        d = json.loads(p.read_text())
    except OSError as err:
        raise NodesFileError(f"node {spec.name!r}: cannot read inventory {p}: "
                             f"{err.strerror or err}") from None
    except ValueError as err:
        raise NodesFileError(f"node {spec.name!r}: inventory {p} is not valid JSON: {err}") from None
    if isinstance(d, dict) and isinstance(d.get("inventory"), dict):
        d = d["inventory"]  # the whole `cache status --json --inventory` object
    if not isinstance(d, dict) or "free_bytes" not in d:
        raise NodesFileError(f"node {spec.name!r}: {p} is not a cache inventory snapshot "
                             "(from `stacktools cache status --json --inventory`): no free_bytes")
    try:
        return Inventory.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise NodesFileError(f"node {spec.name!r}: {p}: bad inventory snapshot: "
                             f"{type(err).__name__} {err}") from None


def load_nodes(path: str | os.PathLike) -> list[Node]:
    """Read a nodes file and build every node's snapshot (see :func:`read_nodes_file`
    and :func:`node_inventory`)."""
    out = []
    for spec in read_nodes_file(path):
        out.append(Node(spec.name, node_inventory(spec), spec.ssd_path or spec.inventory or ""))
    return out


# -- one set ---------------------------------------------------------------------------


@dataclass
class Candidate:
    """One node's answer for one set.

    ``fits`` whether the whole set fits there; ``files_cached``/``bytes_cached`` what
    is already cached and valid; ``files_to_copy``/``bytes_to_copy`` what would be
    copied; ``expire`` and ``evict`` the entries removed first (expired, then least
    recently used); ``room_after_bytes`` the room left under both the quota and the
    reserve after the placement (the tie-breaker); ``shortfall_bytes`` how much more
    room a set that does not fit would need; ``reason`` one line that explains it;
    ``plan`` the planner's full answer.
    """

    node: str
    fits: bool
    files_cached: int
    bytes_cached: int
    files_to_copy: int
    bytes_to_copy: int
    expire: list[Entry]
    evict: list[Entry]
    room_after_bytes: int
    shortfall_bytes: int
    reason: str
    plan: Plan = field(repr=False)

    @property
    def bytes_removed(self) -> int:
        """Bytes expired, evicted or replaced (stale copies of changed sources)."""
        return self.plan.bytes_freed

    def to_dict(self) -> dict:
        return {"node": self.node, "fits": self.fits,
                "files_cached": self.files_cached, "bytes_cached": self.bytes_cached,
                "files_to_copy": self.files_to_copy, "bytes_to_copy": self.bytes_to_copy,
                "expire": [e.to_dict() for e in self.expire],
                "evict": [e.to_dict() for e in self.evict],
                "bytes_expired": sum(e.size for e in self.expire),
                "bytes_evicted": sum(e.size for e in self.evict),
                "bytes_removed": self.bytes_removed,
                "room_after_bytes": self.room_after_bytes,
                "shortfall_bytes": self.shortfall_bytes,
                "limited_by": self.plan.limited_by or None,
                "reason": self.reason}


@dataclass
class Placement:
    """The recommendation for one set.

    ``label`` names the set; ``files``/``bytes`` its distinct stacks and their size;
    ``node`` the chosen node (``None``: it fits on none); ``reason`` why;
    ``candidates`` every node's answer, best first; ``position`` the set's place in
    the queue as given (0 for a single set).
    """

    label: str
    files: int
    bytes: int
    node: str | None
    reason: str
    candidates: list[Candidate]
    position: int = 0

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.node == self.node), None)

    def to_dict(self) -> dict:
        c = self.chosen
        return {"set": self.label, "position": self.position, "files": self.files,
                "bytes": self.bytes, "node": self.node, "fits": self.node is not None,
                "bytes_to_copy": c.bytes_to_copy if c else None,
                "bytes_cached": c.bytes_cached if c else None,
                "reason": self.reason, "candidates": [x.to_dict() for x in self.candidates]}


def _room_after(plan: Plan, inv: Inventory) -> int:
    reserved = sum(inv.reserved.values())
    room = plan.free_bytes_after - reserved - inv.reserve_bytes
    if inv.quota_bytes is not None:
        room = min(room, inv.quota_bytes - plan.used_bytes_after - reserved)
    return room


def _candidate(node: Node, qset: QueuedSet) -> Candidate:
    inv = node.inventory
    plan = plan_stacks(qset.stacks, inv)
    room = _room_after(plan, inv)
    if plan.fits:
        parts = [f"fits: {len(plan.cached)} of {len(qset.stacks)} stacks already cached "
                 f"({_human(plan.bytes_cached)}), copies {plan.files_to_copy} ({_human(plan.bytes_to_copy)})"]
        if plan.waiting:
            parts.append(f"{len(plan.waiting)} being copied there now")
        removed = []
        if plan.expire:
            removed.append(f"expires {len(plan.expire)} entries ({_human(sum(e.size for e in plan.expire))})")
        if plan.evict:
            removed.append(f"evicts {len(plan.evict)} least recently used "
                           f"({_human(sum(e.size for e in plan.evict))})")
        if plan.replace:
            removed.append(f"replaces {len(plan.replace)} stale copies")
        parts.append(", ".join(removed) if removed else "evicts nothing")
        parts.append(f"{_human(room)} room left")
        reason = "; ".join(parts)
    else:
        held = []
        if plan.held_in_use_bytes:
            held.append(f"in use {_human(plan.held_in_use_bytes)}")
        if plan.reserved_bytes:
            held.append(f"copies in progress {_human(plan.reserved_bytes)}")
        if plan.held_foreign_bytes and plan.limited_by == "reserve":
            held.append(f"not the cache's {_human(plan.held_foreign_bytes)}")
        reason = (f"does not fit: would copy {_human(plan.bytes_to_copy)}, "
                  f"{_human(plan.shortfall_bytes)} more than the "
                  f"{plan.limited_by or 'space'} allows after evicting everything evictable"
                  + (f" (held: {', '.join(held)})" if held else ""))
    return Candidate(node=node.name, fits=plan.fits, files_cached=len(plan.cached),
                     bytes_cached=plan.bytes_cached, files_to_copy=plan.files_to_copy,
                     bytes_to_copy=plan.bytes_to_copy, expire=list(plan.expire),
                     evict=list(plan.evict), room_after_bytes=room,
                     shortfall_bytes=plan.shortfall_bytes, reason=reason, plan=plan)


def _rank(c: Candidate) -> tuple:
    # Fitting nodes first; then fewest bytes to copy, most room left, name.
    if c.fits:
        return (0, c.bytes_to_copy, -c.room_after_bytes, c.node)
    return (1, c.shortfall_bytes, 0, c.node)


def place_set(qset: QueuedSet, nodes: Sequence[Node], position: int = 0) -> Placement:
    """Recommend the node for one set: fewest bytes to copy among the nodes where it fits.

    Parameters
    ----------
    qset
        The set (see :meth:`QueuedSet.from_particles`).
    nodes
        The candidate nodes with their snapshots (not modified).
    position
        The set's place in a queue, recorded in the result.

    Ties on bytes to copy go to the node with the most room left afterwards, then
    to the alphabetically first name, so the answer is deterministic.
    """
    if not nodes:
        raise PlacementError("no nodes to place on")
    cands = sorted((_candidate(n, qset) for n in nodes), key=_rank)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        why = "; ".join(f"{c.node}: short by {_human(c.shortfall_bytes)} ({c.plan.limited_by or 'space'})"
                        for c in cands)
        return Placement(qset.label, len(qset.stacks), qset.bytes, None,
                         f"fits on no node ({why})", cands, position)
    best = fitting[0]
    reason = (f"{best.node}: copies {_human(best.bytes_to_copy)} "
              f"({_human(best.bytes_cached)} already there)")
    if len(fitting) == 1:
        reason += ("; the only node where it fits" if len(cands) > 1 else "")
    else:
        reason += f"; fewest bytes to copy of the {len(fitting)} nodes where it fits"
        ties = [c for c in fitting[1:] if c.bytes_to_copy == best.bytes_to_copy]
        if ties:
            if any(c.room_after_bytes == best.room_after_bytes for c in ties):
                reason += f"; tied with {', '.join(c.node for c in ties)}, first by name"
            else:
                reason += (f"; tied with {', '.join(c.node for c in ties)} on bytes to copy, "
                           f"chosen for more room left ({_human(best.room_after_bytes)})")
    return Placement(qset.label, len(qset.stacks), qset.bytes, best.node, reason, cands, position)


# -- applying a plan to a snapshot ---------------------------------------------------------


def apply_plan(inventory: Inventory, plan: Plan, *, hold: bool = True,
               now: float | None = None) -> Inventory:
    """The snapshot after a sync carried out ``plan`` (a new object; the input is kept).

    Parameters
    ----------
    inventory
        The snapshot the plan was made against.
    plan
        A plan that fits (from :func:`~stacktools.cache.plan_stacks`).
    hold
        The job is still running: the set's entries (copied and already cached) are
        in use, so later plans cannot evict them. ``False``: the job has finished
        and its entries are evictable again (entries in use before stay in use).
    now
        Time of the sync, recorded as the entries' last access and as the new
        snapshot's time (default: the snapshot's ``taken_at``).

    Raises :class:`~stacktools.errors.PlacementError` for a plan that does not fit.
    """
    if not plan.fits:
        raise PlacementError("cannot apply a plan that does not fit")
    now = inventory.taken_at if now is None else now
    inv = copy.deepcopy(inventory)
    gone = {e.key for e in plan.expire + plan.evict + plan.replace}
    freed = sum(e.size for e in inventory.entries if e.key in gone)
    cached = {s.key for s in plan.cached}
    entries = []
    for e in inv.entries:
        if e.key in gone:
            continue
        if e.key in cached:
            e.last_access = now
            e.in_use = e.in_use or hold
        entries.append(e)
    for s in plan.to_copy:
        entries.append(Entry(s.key, s.size, s.mtime_ns, now, in_use=hold, owned=True,
                             project=plan.project))
    inv.entries = entries
    inv.free_bytes = inventory.free_bytes + freed - plan.bytes_to_copy
    inv.taken_at = now
    return inv


# -- a queue of sets over several nodes ------------------------------------------------------


@dataclass
class NodeUsage:
    """One node before and after a queue plan: usage, free space, what was placed."""

    node: str
    source: str
    quota_bytes: int | None
    reserve_bytes: int
    used_bytes_before: int
    free_bytes_before: int
    used_bytes_after: int
    free_bytes_after: int
    sets: list[str] = field(default_factory=list)
    bytes_to_copy: int = 0
    bytes_removed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class QueuePlan:
    """A combined placement of several sets queued together.

    ``order`` is ``"given"`` or ``"biggest"``; ``placements`` are in the order they
    were made (each set's ``position`` is its place in the queue as given);
    ``nodes`` every node's usage before and after; ``inventories`` the nodes'
    snapshots after the whole queue (what the next planner would see).
    """

    order: str
    placements: list[Placement]
    nodes: list[NodeUsage]
    inventories: dict[str, Inventory] = field(default_factory=dict, repr=False)

    @property
    def unplaced(self) -> list[str]:
        return [p.label for p in self.placements if p.node is None]

    def rows(self) -> list[dict]:
        """One flat record per set, in placement order (for a table or a DataFrame)."""
        out = []
        for p in self.placements:
            c = p.chosen
            out.append({"set": p.label, "node": p.node, "stacks": p.files, "set_bytes": p.bytes,
                        "bytes_cached": c.bytes_cached if c else None,
                        "bytes_to_copy": c.bytes_to_copy if c else None,
                        "entries_evicted": len(c.evict) + len(c.expire) if c else None,
                        "bytes_evicted": c.bytes_removed if c else None,
                        "reason": p.reason})
        return out

    def to_dict(self) -> dict:
        return {"order": self.order, "placements": [p.to_dict() for p in self.placements],
                "nodes": [n.to_dict() for n in self.nodes], "unplaced": self.unplaced,
                "bytes_to_copy": sum(n.bytes_to_copy for n in self.nodes)}


def queue_order(sets: Sequence[QueuedSet], order: str = "given") -> list[int]:
    """Positions of ``sets`` in placement order: as given, or ``"biggest"`` first
    (by total stack bytes; equal sizes keep their given order)."""
    if order not in ORDERS:
        raise PlacementError(f"unknown queue order {order!r}: use one of {', '.join(ORDERS)}")
    idx = list(range(len(sets)))
    if order == "biggest":
        idx.sort(key=lambda i: -sets[i].bytes)
    return idx


def place_queue(sets: Sequence[QueuedSet], nodes: Sequence[Node], order: str = "given") -> QueuePlan:
    """Place several sets that are queued together (their jobs may run at once).

    Parameters
    ----------
    sets
        The sets, in queue order.
    nodes
        The nodes with their snapshots (not modified).
    order
        ``"given"`` (default): place in the order given; ``"biggest"``: biggest set
        first, which packs large sets before small ones take the room.

    Each set goes where :func:`place_set` says against the snapshots as updated by
    the sets placed before it (:func:`apply_plan` with ``hold=True``), so no node is
    given more than its SSD can hold and no set evicts another queued set's stacks.
    """
    if not nodes:
        raise PlacementError("no nodes to place on")
    live = [Node(n.name, copy.deepcopy(n.inventory), n.source) for n in nodes]
    by_name = {n.name: n for n in live}
    usage = {n.name: NodeUsage(n.name, n.source, n.inventory.quota_bytes, n.inventory.reserve_bytes,
                               n.inventory.owned_bytes, n.inventory.free_bytes,
                               n.inventory.owned_bytes, n.inventory.free_bytes) for n in nodes}
    placements = []
    for i in queue_order(sets, order):
        p = place_set(sets[i], live, position=i)
        placements.append(p)
        if p.node is None:
            continue
        c = p.chosen
        node = by_name[p.node]
        node.inventory = apply_plan(node.inventory, c.plan, hold=True)
        u = usage[p.node]
        u.sets.append(p.label)
        u.bytes_to_copy += c.bytes_to_copy
        u.bytes_removed += c.bytes_removed
        u.used_bytes_after = node.inventory.owned_bytes
        u.free_bytes_after = node.inventory.free_bytes
    return QueuePlan(order, placements, [usage[n.name] for n in nodes],
                     {n.name: n.inventory for n in live})


# -- a queue of jobs on one node ------------------------------------------------------------


@dataclass
class QueueStep:
    """One job of :func:`simulate_queue`: ``label``; whether it ``fits``; bytes
    copied, already cached and removed (expired, evicted, replaced); the cache's
    ``used_bytes`` and the device's ``free_bytes`` after it; the node's
    ``quota_bytes`` and ``reserve_bytes``; the ``plan`` it ran."""

    label: str
    fits: bool
    bytes_to_copy: int
    bytes_cached: int
    bytes_removed: int
    entries_removed: int
    used_bytes: int
    free_bytes: int
    quota_bytes: int | None
    reserve_bytes: int
    plan: Plan = field(repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "plan"}
        return d


def simulate_queue(sets: Sequence[QueuedSet], inventory: Inventory, *, hold: bool = False,
                   step_s: float = 60.0) -> list[QueueStep]:
    """Run a queue of jobs on one node in the planner, one after another.

    Parameters
    ----------
    sets
        The jobs' sets, in the order they run.
    inventory
        The node's snapshot before the first job (not modified).
    hold
        ``False`` (default): each job finishes before the next starts, so its
        stacks become evictable. ``True``: all jobs run at once and pin their stacks.
    step_s
        Seconds between job starts (orders the entries' last access, so that LRU
        eviction takes older jobs' stacks first).

    A job that does not fit leaves the cache as it was (a real sync fails before
    copying anything) and is reported with ``fits=False``.
    """
    inv = inventory
    steps = []
    for k, qset in enumerate(sets):
        now = inventory.taken_at + k * step_s
        inv = copy.copy(inv)
        inv.taken_at = now
        plan = plan_stacks(qset.stacks, inv, now=now)
        if plan.fits:
            inv = apply_plan(inv, plan, hold=hold, now=now)
        steps.append(QueueStep(qset.label, plan.fits, plan.bytes_to_copy if plan.fits else 0,
                               plan.bytes_cached, plan.bytes_freed if plan.fits else 0,
                               len(plan.expire) + len(plan.evict) + len(plan.replace) if plan.fits else 0,
                               inv.owned_bytes, inv.free_bytes, inv.quota_bytes, inv.reserve_bytes,
                               plan))
    return steps
