"""Consolidate, check, verify and pre-stage caches on a Dask cluster (``stacktools[dask]``).

The same plans as the local commands, with one task per unit of work and the
decisions and the final writes on the client:

- :mod:`.tasks`: reaching a cluster (:func:`connect`) and running one task per
  item with the client's progress bar (:func:`run_tasks`);
- :mod:`.consolidate`: one task per output stack, for
  :func:`stacktools.consolidate.run_plan`;
- :mod:`.inspect`: ``check`` and ``verify``, one task per stack, merged here;
- :mod:`.prestage`: each set's ``cache sync`` on the node placement chose.

``distributed`` is imported only when one of these runs: the core needs no Dask.
Workers need stacktools installed, and see the same paths as the client (a
shared filesystem).
"""
