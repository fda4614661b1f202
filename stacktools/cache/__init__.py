"""Node-local SSD cache of particle stacks: copy once, evict safely, lose nothing.

Modules, one job each:

- :mod:`.store`: the :class:`Cache` that callers meet (plan, execute, pins, space);
- :mod:`.plan`: the pure planner, against an inventory snapshot;
- :mod:`.sources`: stat-ing the stacks a set needs;
- :mod:`.validity`: what counts as a valid copy (the warm check, verify's checks);
- :mod:`.copy` and :mod:`.digest`: one atomic copy and its content digest;
- :mod:`.index`, :mod:`.upkeep`, :mod:`.safefs`, :mod:`.locks`: the record and
  ledger, the cache's hold on its own directory, paths reached without following
  symlinks, and flock locks and pins;
- :mod:`.maintenance`: clean, clear, evict, verify and status;
- :mod:`.peek`: plans that write nothing; :mod:`.config`: settings and units;
- :mod:`.cached_set`: a ``.cs`` that points at the copies.

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

__all__ = ["Cache", "CacheConfig", "CachePlan", "Entry", "Inventory", "Removal", "SourceFile", "Status",
           "SyncResult", "Verification", "full_error", "peek_inventory", "plan_for_inventory", "plan_stacks",
           "plan_without_writing", "project_use_cache", "resolve_config", "set_project_use_cache",
           "stat_sources", "sync_particles", "use_cache_for", "write_cached_cs"]
