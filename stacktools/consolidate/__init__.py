"""Consolidate a particle subset: new stacks holding only the selected particles.

After Select 2D or a picking threshold, a subset ``.cs`` still points into the full
extract stacks, so a cache copies every particle of every stack it references.
:func:`consolidate` writes new stacks holding only the selected particles and a new
``.cs`` that points at them; only ``blob/path`` and ``blob/idx`` change, every other
field, the row order and the ``uid`` values are kept. It is :func:`plan_consolidation`
(:mod:`~stacktools.consolidate.plan`, which writes nothing) followed by
:func:`run_plan` (:mod:`~stacktools.consolidate.run`), with OUTDIR's manifest and
lock in :mod:`~stacktools.consolidate.outdir`.
"""

from stacktools.consolidate.outdir import MANIFEST, STACKS_DIR, read_manifest, recorded_shrink
from stacktools.consolidate.plan import (
    DEFAULT_PARTICLES_PER_STACK,
    DTYPES,
    LAYOUTS,
    ConsolidationPlan,
    OutputStack,
    plan_consolidation,
)
from stacktools.consolidate.run import (
    DEFAULT_THREADS,
    ConsolidateResult,
    consolidate,
    run_plan,
)

# The name at the top of the package: there ``stacktools.consolidate`` is this package.

__all__ = [
    "DEFAULT_PARTICLES_PER_STACK",
    "DEFAULT_THREADS",
    "DTYPES",
    "LAYOUTS",
    "MANIFEST",
    "STACKS_DIR",
    "ConsolidateResult",
    "ConsolidationPlan",
    "OutputStack",
    "consolidate",
    "plan_consolidation",
    "read_manifest",
    "recorded_shrink",
    "run_plan",
]
