"""Placement of particle sets on nodes: for one set (:func:`place_set`), the node
whose SSD cache would copy the fewest bytes among the nodes where the whole set fits;
for a queue of sets whose jobs run together (:func:`place_queue`), each set in turn
against the snapshots as the sets placed before it left them, so no node is given
more than it can hold; each answer explained in one line per node.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from stacktools.cache.config import human_bytes
from stacktools.cache.plan import (
    CachePlan,
    Entry,
    Inventory,
    SourceFile,
    plan_stacks,
    room_bytes,
)
from stacktools.cache.sources import stat_sources
from stacktools.errors import PlacementError
from stacktools.placement.nodes import Node
from stacktools.placement.simulate import apply_plan

ORDERS = ("given", "biggest")


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


def queue_from_cs(cs_files: Iterable[str | os.PathLike],
                  project_dir: str | os.PathLike | None = None) -> list[QueuedSet]:
    """Open particle files (``.cs`` or RELION STAR) as a queue of sets, each labelled by its path.

    Args:
        cs_files: The ``.cs`` files, in queue order.
        project_dir: The CryoSPARC project directory (default: the parent of each
            file's job directory).

    Returns:
        One :class:`QueuedSet` per file, in the order given.

    Raises:
        StacktoolsError: A ``.cs`` file cannot be read as particles (see
            :meth:`~stacktools.particles.ParticleSet.open`).
        MissingStackError: A stack of a set is not there.
    """
    from stacktools.particles import ParticleSet  # reads .cs files: only when asked
    return [QueuedSet.from_particles(ParticleSet.open(p, project_dir), str(p)) for p in cs_files]


def set_sources(paths: Iterable[str | os.PathLike]) -> list[SourceFile]:
    """Stat each stack once, keyed by its resolved path; duplicates dropped, order kept.

    Args:
        paths: Stack paths, e.g. ``ParticleSet.stack_paths``.

    Returns:
        One :class:`~stacktools.cache.SourceFile` per distinct stack.

    Raises:
        MissingStackError: A stack is not there.
    """
    out, seen = [], set()
    for s in stat_sources(paths):
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
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
    plan: CachePlan = field(repr=False)

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


def _room_after(plan: CachePlan, inv: Inventory) -> int:
    reserved = sum(inv.reserved.values())
    return room_bytes(plan.free_bytes_after - reserved, plan.used_bytes_after + reserved,
                      inv.quota_bytes, inv.reserve_bytes)


def _candidate(node: Node, qset: QueuedSet) -> Candidate:
    inv = node.inventory
    plan = plan_stacks(qset.stacks, inv)
    room = _room_after(plan, inv)
    if plan.fits:
        parts = [f"fits: {len(plan.cached)} of {len(qset.stacks)} stacks already cached "
                 f"({human_bytes(plan.bytes_cached)}), copies {plan.files_to_copy} ({human_bytes(plan.bytes_to_copy)})"]
        if plan.waiting:
            parts.append(f"{len(plan.waiting)} being copied there now")
        removed = []
        if plan.expire:
            removed.append(f"expires {len(plan.expire)} entries ({human_bytes(sum(e.size for e in plan.expire))})")
        if plan.evict:
            removed.append(f"evicts {len(plan.evict)} least recently used "
                           f"({human_bytes(sum(e.size for e in plan.evict))})")
        if plan.replace:
            removed.append(f"replaces {len(plan.replace)} stale copies")
        parts.append(", ".join(removed) if removed else "evicts nothing")
        parts.append(f"{human_bytes(room)} room left")
        reason = "; ".join(parts)
    else:
        held = []
        if plan.held_in_use_bytes:
            held.append(f"in use {human_bytes(plan.held_in_use_bytes)}")
        if plan.reserved_bytes:
            held.append(f"copies in progress {human_bytes(plan.reserved_bytes)}")
        if plan.held_foreign_bytes and plan.limited_by == "reserve":
            held.append(f"not the cache's {human_bytes(plan.held_foreign_bytes)}")
        reason = (f"does not fit: would copy {human_bytes(plan.bytes_to_copy)}, "
                  f"{human_bytes(plan.shortfall_bytes)} more than the "
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

    Ties on bytes to copy go to the node with the most room left afterwards, then
    to the alphabetically first name, so the answer is deterministic.

    Args:
        qset: The set (see :meth:`QueuedSet.from_particles`).
        nodes: The candidate nodes with their snapshots (not modified).
        position: The set's place in a queue, recorded in the result.

    Returns:
        The :class:`Placement`; its ``node`` is ``None`` when the set fits on no node.

    Raises:
        PlacementError: ``nodes`` is empty.
    """
    if not nodes:
        raise PlacementError("no nodes to place on")
    cands = sorted((_candidate(n, qset) for n in nodes), key=_rank)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        why = "; ".join(f"{c.node}: short by {human_bytes(c.shortfall_bytes)} ({c.plan.limited_by or 'space'})"
                        for c in cands)
        return Placement(qset.label, len(qset.stacks), qset.bytes, None,
                         f"fits on no node ({why})", cands, position)
    best = fitting[0]
    reason = (f"{best.node}: copies {human_bytes(best.bytes_to_copy)} "
              f"({human_bytes(best.bytes_cached)} already there)")
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
                           f"chosen for more room left ({human_bytes(best.room_after_bytes)})")
    return Placement(qset.label, len(qset.stacks), qset.bytes, best.node, reason, cands, position)


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
    """Positions of ``sets`` in placement order.

    Args:
        sets: The sets, in queue order.
        order: ``"given"``, or ``"biggest"`` first (by total stack bytes; equal
            sizes keep their given order).

    Returns:
        Indexes into ``sets``.

    Raises:
        PlacementError: ``order`` is not one of :data:`ORDERS`.
    """
    if order not in ORDERS:
        raise PlacementError(f"unknown queue order {order!r}: use one of {', '.join(ORDERS)}")
    idx = list(range(len(sets)))
    if order == "biggest":
        idx.sort(key=lambda i: -sets[i].bytes)
    return idx


def place_queue(sets: Sequence[QueuedSet], nodes: Sequence[Node], order: str = "given") -> QueuePlan:
    """Place several sets that are queued together (their jobs may run at once).

    Each set goes where :func:`place_set` says against the snapshots as updated by
    the sets placed before it (:func:`~stacktools.placement.simulate.apply_plan` with
    ``hold=True``: copied stacks become entries in use, expired and evicted entries
    are gone, free space shrinks), so no node is given more than its SSD can hold
    and no set evicts another queued set's stacks.

    Args:
        sets: The sets, in queue order.
        nodes: The nodes with their snapshots (not modified).
        order: ``"given"`` (default): place in the order given; ``"biggest"``:
            biggest set first, which packs large sets before small ones take the room.

    Returns:
        The :class:`QueuePlan`; sets that fit nowhere are in its ``unplaced``.

    Raises:
        PlacementError: ``nodes`` is empty or ``order`` is unknown.
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
