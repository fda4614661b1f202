"""stacktools: size, consolidate, manipulate and cache cryo-EM particle stacks.

The verbs are in :mod:`stacktools.api` and re-exported here; the layers beneath
them are described in ``ARCHITECTURE.md``: :mod:`stacktools.formats` (bytes ⇄
arrays), :mod:`stacktools.cs` (a ``.cs`` dataset in memory),
:mod:`stacktools.particles` (the particle model), :mod:`stacktools.stacks`, and the
operations :mod:`stacktools.size`, :mod:`stacktools.consolidate`,
:mod:`stacktools.verify`, :mod:`stacktools.cache` and :mod:`stacktools.placement`.

Everything is imported on first use, so ``import stacktools`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stacktools import api as _api  # light: the verbs import their modules when called

__version__ = "0.1.0"  # the one definition; pyproject.toml reads it

if TYPE_CHECKING:  # what an IDE sees; at run time __getattr__ imports on first use
    from stacktools.api import (
        check_particles,
        connect_cluster,
        consolidate_particles,
        cs_info,
        cs_to_star,
        formula_bytes,
        load_cs,
        load_nodes,
        open_cache,
        open_particles,
        place_queue,
        place_set,
        plan_consolidation,
        prestage_sets,
        read_cs,
        read_header,
        read_particle,
        read_star,
        simulate_queue,
        size_particles,
        star_to_cs,
        sync_particles,
        verify_consolidated,
        write_clean,
        write_cs,
        write_star,
    )
    from stacktools.cache import Cache, Inventory, plan_stacks
    from stacktools.check import CheckReport
    from stacktools.consolidate import ConsolidateResult, ConsolidationPlan
    from stacktools.cs.dataset import CsDataset
    from stacktools.errors import StacktoolsError
    from stacktools.particles import ParticleSet
    from stacktools.placement import QueuedSet
    from stacktools.verify import VerifyResult

# The classes callers meet, by module; the verbs are those of stacktools.api.
_CLASSES = {
    "ParticleSet": "particles", "StacktoolsError": "errors", "CsDataset": "cs.dataset",
    "ConsolidateResult": "consolidate", "ConsolidationPlan": "consolidate",
    "VerifyResult": "verify", "Cache": "cache", "Inventory": "cache", "plan_stacks": "cache",
    "QueuedSet": "placement", "CheckReport": "check",
}
__all__ = [*_api.__all__, *_CLASSES, "__version__"]


def __getattr__(name: str):
    if name in _api.__all__:
        return getattr(_api, name)
    if name in _CLASSES:
        import importlib
        return getattr(importlib.import_module(f"stacktools.{_CLASSES[name]}"), name)
    raise AttributeError(f"module 'stacktools' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_api.__all__) + list(_CLASSES))
