"""Pre-stage sets into the SSD caches of the nodes that will run them, on a Dask cluster.

:func:`prestage` places the queue as ``cache place`` does
(:func:`stacktools.placement.place_queue`), then runs each set's ``cache sync``
(:func:`stacktools.cache.sync_particles`) as a task on a worker of the node
placement chose, and reports per node what was copied. A node with no worker in
the cluster is reported, and its sets are not staged.

Which worker is which node: a worker started with the Dask resource
``node-<name>`` (``dask worker --resources "node-gpu01=1" ...``) is node
``<name>`` of the nodes file, and that node's sets ask for the resource, so any
of its workers, a restarted one too, takes them. A node none of whose workers has
its resource is matched by name: each worker names its node by
``$STACKTOOLS_NODE`` when set, else by its host name (``socket.gethostname()``),
and matches a node whose name is the same, or whose short name (up to the first
dot) is its short name. Its sets are pinned to its workers' host, or, when
another node's worker shares that host, to its workers' addresses; a pinned worker
that leaves the cluster (a restart gives it a new address) stops the run with an
error that says so, rather than leaving its sets waiting. On the node, the cache is the one ``cache sync``
there would use (its config file or ``$STACKTOOLS_SSD_PATH``), else the nodes
file's ``ssd_path``, with the nodes file's quota, reserve and lifetime, the ones
placement planned with.

With ``hold`` the worker keeps each staged set pinned (nothing evicts it) for as
long as the worker lives; staging the set again without ``hold`` unpins it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from stacktools.cache import sync_particles
from stacktools.cache.store import Cache, SyncResult
from stacktools.cluster.tasks import Progress, TaskReporter, run_tasks
from stacktools.errors import CacheConfigError
from stacktools.particles import ParticleSet
from stacktools.placement import QueuePlan, load_nodes, place_queue, queue_from_cs
from stacktools.placement.nodes import NodeSpec, read_nodes_file

NODE_ENV = "STACKTOOLS_NODE"
NODE_RESOURCE_PREFIX = "node-"  # a worker with resource node-<name> is node <name>
SUMMARY = ("copied", "reused", "bytes_copied", "bytes_reused", "evicted", "bytes_evicted",
           "expired", "bytes_expired", "use_cache")

_held: dict[str, SyncResult] = {}  # on a worker: the pins of the sets staged with hold, by set


def worker_node() -> str:
    """The node a worker says it is: ``$STACKTOOLS_NODE``, else its host name."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


def node_resource(node: str) -> str:
    """The Dask worker resource that makes a worker node ``node``: ``node-<node>``."""
    return NODE_RESOURCE_PREFIX + node


def _short(name: str) -> str:
    return name.split(".", 1)[0]


@dataclass
class SetStaging:
    """One set's ``cache sync`` as its task receives it."""

    label: str
    path: str
    project_dir: str | None
    node: NodeSpec
    hold: bool
    allow_outside_project: bool = False


def _open_cache(spec: NodeSpec) -> Cache:
    policy = {"quota_mb": spec.quota_mb, "reserve_mb": spec.reserve_mb, "lifetime_days": spec.lifetime_days}
    try:
        return Cache(**policy)
    except CacheConfigError:
        if spec.ssd_path is None:
            raise
        return Cache(spec.ssd_path, **policy)


def stage_set_task(job: SetStaging, report: TaskReporter) -> dict:
    """On a worker of the chosen node: sync one set into its cache; what was done."""
    pset = ParticleSet.open(job.path, job.project_dir, allow_outside_project=job.allow_outside_project)
    caches: list[Cache] = []

    def open_cache() -> Cache:
        caches.append(_open_cache(job.node))
        return caches[-1]

    result = sync_particles(pset, open_cache, hold=job.hold, progress_for=lambda total: report)
    earlier = _held.pop(job.label, None)
    if job.hold:
        _held[job.label] = result
    if earlier is not None:  # after the new sync, so the set is never unpinned in between
        earlier.release()
    out = {k: getattr(result, k) for k in SUMMARY}
    out.update(set=job.label, node=job.node.name, pinned=job.hold, from_source=len(result.from_source),
               cache=str(caches[0].root) if caches else None)
    return out


@dataclass
class NodeStaging:
    """What pre-staging did on one node: ``workers`` are the cluster's workers that
    are this node (none: the node is missing, its sets not staged); ``sets`` one
    summary per set staged there."""

    node: str
    workers: list[str]
    sets: list[dict] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # sets placed here but not staged (missing node)

    @property
    def missing(self) -> bool:
        return not self.workers

    @property
    def bytes_copied(self) -> int:
        return sum(s["bytes_copied"] for s in self.sets)

    def to_dict(self) -> dict:
        return {"node": self.node, "workers": self.workers, "missing": self.missing,
                "bytes_copied": self.bytes_copied, "sets": self.sets, "not_staged": self.waiting}


@dataclass
class PrestageResult:
    """:func:`prestage`'s answer: the placement, and per node what was staged."""

    placement: QueuePlan
    nodes: list[NodeStaging]
    hold: bool

    @property
    def missing_nodes(self) -> list[str]:
        return [n.node for n in self.nodes if n.missing and n.waiting]

    @property
    def unplaced(self) -> list[str]:
        return self.placement.unplaced

    @property
    def ok(self) -> bool:
        """Every set is staged on its node."""
        return not self.unplaced and not self.missing_nodes

    def to_dict(self) -> dict:
        return {"ok": self.ok, "hold": self.hold, "nodes": [n.to_dict() for n in self.nodes],
                "missing_nodes": self.missing_nodes, "unplaced": self.unplaced,
                "bytes_copied": sum(n.bytes_copied for n in self.nodes),
                "placement": self.placement.to_dict()}


def _node_names(client: Any, workers: dict[str, dict]) -> dict[str, str]:
    """Each worker's address → the node it is: its ``node-<name>`` resource, else what it says."""
    names = {}
    for addr, w in workers.items():
        tagged = [r[len(NODE_RESOURCE_PREFIX):] for r in w.get("resources") or {}
                  if r.startswith(NODE_RESOURCE_PREFIX)]
        if tagged:
            names[addr] = tagged[0]
    untagged = [a for a in workers if a not in names]
    if untagged:
        names.update(client.run(worker_node, workers=untagged))
    return names


def _workers_of(name: str, names: dict[str, str]) -> list[str]:
    exact = [a for a, n in names.items() if n == name]
    return sorted(exact or [a for a, n in names.items() if _short(n) == _short(name)])


@dataclass
class _Where:
    """Where one node's tasks may run: ``restrict`` as ``submit`` takes it, and
    ``pinned`` the worker addresses it names (none when a restart cannot strand it)."""

    restrict: dict
    pinned: list[str]


def _restrictions(workers: dict[str, dict], names: dict[str, str], nodes: list[NodeStaging]) -> dict[str, _Where]:
    """Each node's :class:`_Where`: its resource when one of its workers has it; else its
    hosts when no other node's worker shares them (a worker the Nanny restarts keeps its
    host, not its address); else its workers' addresses."""
    host = {a: w["host"] for a, w in workers.items()}
    out = {}
    for n in nodes:
        res = node_resource(n.node)
        if any(res in (workers.get(a, {}).get("resources") or {}) for a in n.workers):
            out[n.node] = _Where({"resources": {res: 1}}, [])
            continue
        hosts = sorted({host[a] for a in n.workers if a in host})
        shared = any(host.get(a) in hosts for a in names if a not in n.workers)
        if shared or not hosts:
            out[n.node] = _Where({"workers": n.workers, "allow_other_workers": False}, n.workers)
        else:
            out[n.node] = _Where({"workers": hosts, "allow_other_workers": False}, [])
    return out


def _stranded(client: Any, jobs: list[SetStaging], where: list[NodeStaging],
              restrict: dict[str, _Where]) -> Callable[[set[int]], str | None] | None:
    """For :func:`run_tasks`: names a set whose pinned workers have all left the cluster."""
    if not any(w.pinned for w in restrict.values()):
        return None

    def check(pending: set[int]) -> str | None:
        alive = set(client.scheduler_info()["workers"])
        for i in sorted(pending):
            node = where[i].node
            pinned = restrict[node].pinned
            if pinned and not alive.intersection(pinned):
                return (f"node {node}: its worker {', '.join(pinned)} left the cluster before "
                        f"{jobs[i].label} was staged (a restarted worker has a new address); rerun, or start "
                        f'the node\'s workers with --resources "{node_resource(node)}=1" so that any of them '
                        "takes its sets")
        return None
    return check


def prestage(client: Any, nodes_file: str | os.PathLike, sets: Sequence[str | os.PathLike], *,
             project_dir: str | os.PathLike | None = None, order: str = "given", hold: bool = False,
             progress_for: Callable[[int], Progress | None] | None = None,
             allow_outside_project: bool = False) -> PrestageResult:
    """Place ``sets`` on the nodes of ``nodes_file`` and sync each into its node's cache there.

    Args:
        client: A ``distributed.Client`` whose workers run on the nodes.
        nodes_file: The nodes file, as for ``cache place``.
        sets: Particles ``.cs`` or STAR files, in queue order.
        project_dir: Their project directory (default: each file's own).
        order: ``"given"`` or ``"biggest"`` (first), as for ``cache place``.
        hold: Keep each set pinned on its node after staging (see the module).
        progress_for: Called with the bytes placement expects to copy, on every node
            together, once they are known; returns the progress callback for the
            copies (a progress bar's ``advance``), as for ``sync_particles``.
        allow_outside_project: See :class:`~stacktools.particles.ParticleSet`.

    Returns:
        :class:`PrestageResult`; sets that fit nowhere and nodes missing from the
        cluster are in it, not raised.

    Raises:
        NodesFileError, PlacementError: As for ``cache place``.
        StacktoolsError: The first error of a node's sync (a full cache, a missing
            stack, ...), once every other node's sync has finished.
    """
    specs = {s.name: s for s in read_nodes_file(nodes_file)}
    plan = place_queue(queue_from_cs(sets, project_dir), load_nodes(nodes_file), order=order)
    workers = client.scheduler_info()["workers"]
    names = _node_names(client, workers)
    staging = {n: NodeStaging(n, _workers_of(n, names)) for n in specs}
    paths = [os.fspath(s) for s in sets]
    jobs, sizes, where = [], [], []
    for p in plan.placements:
        if p.node is None:
            continue
        node = staging[p.node]
        if node.missing:
            node.waiting.append(p.label)
            continue
        jobs.append(SetStaging(p.label, paths[p.position], None if project_dir is None else os.fspath(project_dir),
                               specs[p.node], hold, allow_outside_project))
        sizes.append(p.chosen.bytes_to_copy)
        where.append(node)
    progress = progress_for(sum(sizes)) if progress_for is not None else None
    restrict = _restrictions(workers, names, [n for n in staging.values() if not n.missing])
    results = run_tasks(client, stage_set_task, jobs, label="prestage",
                        what=lambda i: f"node {where[i].node}: {jobs[i].label}", progress=progress, sizes=sizes,
                        placement=lambda i: restrict[where[i].node].restrict,
                        stranded=_stranded(client, jobs, where, restrict))
    for node, r in zip(where, results):
        node.sets.append(r)
    if not hold:  # a pin an earlier --hold left on another worker of the node
        alive = set(client.scheduler_info()["workers"])
        for node in staging.values():
            here = [a for a in node.workers if a in alive]
            if node.sets and here:
                client.run(release_held, [s["set"] for s in node.sets], workers=here)
    return PrestageResult(plan, list(staging.values()), hold)


def release_held(labels: list[str]) -> int:
    """On a worker: drop the pins that staging these sets with ``hold`` left; how many."""
    n = 0
    for label in labels:
        held = _held.pop(label, None)
        if held is not None:
            held.release()
            n += 1
    return n
