"""Plans played forward on a snapshot: :func:`apply_plan` gives a node's
:class:`~stacktools.cache.Inventory` as it would be after a sync carried out a plan
(copies added, expired and evicted entries gone, free space spent), and
:func:`simulate_queue` runs a queue of jobs on one node, one after another, in the
planner; nothing touches a disk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from stacktools.cache.plan import CachePlan, Entry, Inventory, plan_stacks
from stacktools.errors import PlacementError

if TYPE_CHECKING:
    from stacktools.placement.place import QueuedSet


def apply_plan(inventory: Inventory, plan: CachePlan, *, hold: bool = True,
               now: float | None = None) -> Inventory:
    """The snapshot after a sync carried out ``plan`` (a new object; the input is kept).

    Args:
        inventory: The snapshot the plan was made against.
        plan: A plan that fits (from :func:`~stacktools.cache.plan_stacks`).
        hold: The job is still running: the set's entries (copied and already
            cached) are in use, so later plans cannot evict them. ``False``: the job
            has finished and its entries are evictable again (entries in use before
            stay in use).
        now: Time of the sync, recorded as the entries' last access and as the new
            snapshot's time (default: the snapshot's ``taken_at``).

    Returns:
        The new :class:`Inventory`.

    Raises:
        PlacementError: The plan does not fit.
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
    plan: CachePlan = field(repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "plan"}
        return d


def simulate_queue(sets: Sequence[QueuedSet], inventory: Inventory, *, hold: bool = False,
                   step_s: float = 60.0) -> list[QueueStep]:
    """Run a queue of jobs on one node in the planner, one after another.

    The same as :func:`~stacktools.placement.place_queue` on one node, except that by
    default each job's stacks are released when the next job starts. A job that
    does not fit leaves the cache as it was (a real sync fails before copying
    anything) and is reported with ``fits=False``.

    Args:
        sets: The jobs' sets, in the order they run.
        inventory: The node's snapshot before the first job (not modified).
        hold: ``False`` (default): each job finishes before the next starts, so its
            stacks become evictable. ``True``: all jobs run at once and pin their
            stacks.
        step_s: Seconds between job starts (orders the entries' last access, so
            that LRU eviction takes older jobs' stacks first).

    Returns:
        One :class:`QueueStep` per job, in queue order.
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
