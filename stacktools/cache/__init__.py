"""Node-local SSD cache of particle stacks: copy once, evict safely, lose nothing.

Modules, one job each: :mod:`.config` (settings), :mod:`.locks` (flock locks and
pins), :mod:`.index` (SQLite record and ledger), :mod:`.copy` (one atomic copy),
:mod:`.plan` (pure planning against an inventory snapshot), :mod:`.digest`
(content digests of copies), :mod:`.peek` (a plan that writes nothing) and :mod:`.store`
(the :class:`Cache` that ties them together).

    from stacktools.cache import Cache
    from stacktools.particles import ParticleSet

    cache = Cache("/scratch/ssd", quota_mb=500_000)
    pset = ParticleSet.open("P1/J7/J7_particles_selected.cs", "P1")
    plan = cache.plan(pset)              # nothing copied
    with cache.execute(plan, hold=True) as result:   # pinned while the job runs
        result.paths                      # source path -> cached path

Planning for another node (placement): export ``cache.inventory().to_dict()`` there
(``stacktools cache status --json --inventory``), then here::

    plan = plan_for_inventory(pset, snapshot_dict)      # stats the sources here
    plan.bytes_to_copy, plan.fits, plan.to_dict()["evict"]
"""

from __future__ import annotations

from stacktools.cache.cached_set import write_cached_cs
from stacktools.cache.config import (
           CacheConfig,
           project_use_cache,
           resolve_config,
           set_project_use_cache,
           use_cache_for,
)
from stacktools.cache.maintenance import Removal, Status, Verification
from stacktools.cache.peek import peek_inventory, plan_for_inventory, plan_without_writing
from stacktools.cache.plan import CachePlan, Entry, Inventory, SourceFile, full_error, plan_stacks
from stacktools.cache.sources import stat_sources
from stacktools.cache.store import Cache, SyncResult, sync_particles

__all__ = ["Cache", "CacheConfig", "Entry", "Inventory", "CachePlan", "SourceFile", "SyncResult",
           "full_error", "Removal", "Status", "Verification", "peek_inventory", "plan_for_inventory", "plan_stacks", "plan_without_writing",
           "project_use_cache",
           "resolve_config", "set_project_use_cache", "stat_sources", "sync_particles", "use_cache_for",
           "write_cached_cs"]
