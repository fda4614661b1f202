"""Which GPU node's SSD cache should hold a particle set, answered on top of the pure
cache planner (:func:`stacktools.cache.plan_stacks`) without copying anything or
creating any cache: :mod:`.nodes` reads a nodes file and builds each node's
:class:`~stacktools.cache.Inventory` snapshot, :mod:`.place` places one set or a
queue of sets that run together, and :mod:`.simulate` plays plans forward on a
snapshot, down to a queue of jobs on one node run one after another.
"""

from __future__ import annotations

from stacktools.placement.nodes import (
    Node,
    NodeSpec,
    load_nodes,
    node_inventory,
    read_nodes_file,
)
from stacktools.placement.place import (
    ORDERS,
    Candidate,
    NodeUsage,
    Placement,
    QueuedSet,
    QueuePlan,
    place_queue,
    place_set,
    queue_from_cs,
    queue_order,
    set_sources,
)
from stacktools.placement.simulate import QueueStep, apply_plan, simulate_queue

__all__ = ["ORDERS", "Candidate", "Node", "NodeSpec", "NodeUsage", "Placement", "QueuePlan",
           "QueueStep", "QueuedSet", "apply_plan", "load_nodes", "node_inventory", "place_queue",
           "place_set", "queue_from_cs", "queue_order", "read_nodes_file", "set_sources",
           "simulate_queue"]
