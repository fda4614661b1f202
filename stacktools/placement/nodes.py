"""The nodes of a placement: read and check a nodes file (TOML or JSON) into
:class:`NodeSpec` entries, and build each node's cache :class:`~stacktools.cache.Inventory`
snapshot, from its SSD as mounted here or from a snapshot exported on the node, with
the nodes file's quota, reserve and lifetime; nothing is created on any SSD.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacktools.cache.config import (
    CACHE_DIRNAME,
    DEFAULT_LIFETIME_DAYS,
    CacheConfig,
    days_to_seconds,
    expand_path,
    mb_to_bytes,
)
from stacktools.cache.plan import Inventory
from stacktools.cache.store import Cache
from stacktools.errors import CacheConfigError, NodesFileError

_REQUIRED = ("name", "quota_mb", "reserve_mb")
_OPTIONAL = ("ssd_path", "inventory", "lifetime_days")


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

    A nodes file lists the nodes::

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

    Args:
        path: The nodes file: a ``[[node]]`` array of tables in TOML, or in JSON an
            object ``{"node": [...]}`` (``"nodes"`` also accepted) or a bare list of
            nodes. Relative ``ssd_path`` and ``inventory`` values are resolved
            against the file's directory; ``$VARS`` and ``~`` in them are expanded.

    Returns:
        The nodes in file order.

    Raises:
        NodesFileError: The file cannot be read or parsed, or a node has a missing,
            unknown or ill-typed field (the message names the file, node and field).
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
    label = f"{p}: node {i}" + (f" ({name!r})" if isinstance(name, str) else "")
    unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise NodesFileError(f"{label}: unknown key {unknown[0]!r} "
                             f"(known: {', '.join(_REQUIRED + _OPTIONAL)})")
    for k in _REQUIRED:
        if k not in item:
            raise NodesFileError(f"{label}: missing {k}")
    if not isinstance(name, str) or not name.strip():
        raise NodesFileError(f"{label}: name must be a non-empty string")

    def number(k: str, default: float | None = None) -> float:
        v = item.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
            raise NodesFileError(f"{label}: {k} must be a number of at least 0, not {v!r}")
        return float(v)

    quota, reserve = number("quota_mb"), number("reserve_mb")
    lifetime = number("lifetime_days", DEFAULT_LIFETIME_DAYS)
    has = [k for k in ("ssd_path", "inventory") if k in item]
    if len(has) != 1:
        raise NodesFileError(f"{label}: give exactly one of ssd_path and inventory"
                             + (", not both" if has else ""))
    value = item[has[0]]
    if not isinstance(value, str) or not value:
        raise NodesFileError(f"{label}: {has[0]} must be a non-empty path string")
    try:
        resolved = expand_path(value, f"{label}: {has[0]}")
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

    Args:
        spec: The node, as :func:`read_nodes_file` returns it.

    Returns:
        The :class:`Inventory`, its ``node`` set to the node's name.

    Raises:
        NodesFileError: The SSD path is not a directory, or the snapshot cannot be
            read or is not a cache inventory.
    """
    if spec.ssd_path is not None:
        inv = _inventory_from_ssd(spec)
    else:
        inv = _inventory_from_file(spec)
    inv.quota_bytes = mb_to_bytes(spec.quota_mb)
    inv.reserve_bytes = mb_to_bytes(spec.reserve_mb)
    inv.lifetime_s = days_to_seconds(spec.lifetime_days)
    inv.node = spec.name
    return inv


def _inventory_from_ssd(spec: NodeSpec) -> Inventory:
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
                     free_bytes=v.f_bavail * v.f_frsize, lifetime_s=days_to_seconds(spec.lifetime_days),
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
    and :func:`node_inventory`).

    Args:
        path: The nodes file.

    Returns:
        One :class:`Node` per entry, in file order.

    Raises:
        NodesFileError: See :func:`read_nodes_file` and :func:`node_inventory`.
    """
    out = []
    for spec in read_nodes_file(path):
        out.append(Node(spec.name, node_inventory(spec), spec.ssd_path or spec.inventory or ""))
    return out
