"""stacktools: size, consolidate, manipulate and cache cryo-EM particle stacks.

The top-level functions are a small façade over layered modules:

* format I/O: :mod:`stacktools.formats.cs` (``.cs``) and :mod:`stacktools.formats.mrc` (MRC stacks)
* the particle model: :mod:`stacktools.particles`
* operations: :mod:`stacktools.size`, :mod:`stacktools.consolidate`,
  :mod:`stacktools.cs.dataset` (the ``.cs`` toolkit), :mod:`stacktools.cache` and
  :mod:`stacktools.placement`

Submodules are imported lazily so that ``import stacktools`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["read_cs", "write_cs", "read_header", "read_particle", "open_particles",
           "ParticleSet", "formula_bytes", "size_particles", "StacktoolsError",
           "CsDataset", "load_cs", "cs_info", "cs_to_star", "star_to_cs",
           "consolidate_particles", "ConsolidateResult", "verify_consolidated", "VerifyResult",
           "Cache", "Inventory", "plan_stacks",
           "load_nodes", "QueuedSet", "place_set", "place_queue", "simulate_queue"]

_LAZY = {
    "read_cs": "formats.cs", "write_cs": "formats.cs",
    "read_header": "formats.mrc", "read_particle": "formats.mrc",
    "open_particles": "particles", "ParticleSet": "particles",
    "formula_bytes": "size", "size_particles": "size",
    "StacktoolsError": "errors",
    "CsDataset": "cs.dataset", "load_cs": "cs.dataset",
    "cs_info": "cs.info", "cs_to_star": "cs.relion", "star_to_cs": "cs.relion",
    "consolidate_particles": "consolidate", "ConsolidateResult": "consolidate",
    "verify_consolidated": "verify", "VerifyResult": "verify",
    "Cache": "cache", "Inventory": "cache", "plan_stacks": "cache",
    "load_nodes": "placement", "QueuedSet": "placement", "place_set": "placement",
    "place_queue": "placement", "simulate_queue": "placement",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module 'stacktools' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
