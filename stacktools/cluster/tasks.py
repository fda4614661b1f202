"""Reach a Dask cluster, and run one task per unit of work on it with the client's progress bar.

:func:`connect` turns an address as the command line gives it (``local:N``, a
scheduler address or a scheduler file) into a ``distributed.Client``.
:func:`run_tasks` submits one task per item, relays the bytes each task reports to
the client's progress callback, and on the first error tells the other tasks to
stop and waits for them, so that nothing is still writing when the caller cleans
up. ``distributed`` is imported only here and only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from stacktools.errors import ClusterError, StacktoolsError
from stacktools.stacks import Cancelled

Progress = Callable[[int], None]
REPORT_INTERVAL_S = 0.25  # how often a task sends its bytes to the client's bar
CONNECT_TIMEOUT_S = 30
WATCH_INTERVAL_S = 1.0  # how often a run with pinned tasks looks whether their workers are still there
PRELOAD = ("stacktools.cluster.consolidate", "stacktools.cluster.prestage")
NEEDS_EXTRA = "a Dask cluster needs the distributed package: pip install 'stacktools[dask]'"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(NEEDS_EXTRA) from None
    return distributed


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address``, closed (with its cluster, if it made one) at the end.

    Args:
        address: ``local:N`` (a ``LocalCluster`` of N single-threaded worker
            processes on this machine; ``local`` alone: one per core), a path to a
            scheduler file (``dask scheduler --scheduler-file``), or a scheduler
            address (``tcp://host:8786``).

    Raises:
        ClusterError: ``distributed`` is not installed, ``local:N`` has a bad N, or
            the scheduler cannot be reached.
    """
    distributed = _distributed()
    cluster = None
    try:
        if address == "local" or address.startswith("local:"):
            n_text = address.partition(":")[2] or str(os.cpu_count() or 1)
            if not n_text.isdigit() or int(n_text) < 1:
                raise ClusterError(f"{address}: local:N needs a number of workers N of 1 or more")
            # The workers import stacktools as they start, not in their first task.
            cluster = distributed.LocalCluster(n_workers=int(n_text), threads_per_worker=1, processes=True,
                                               dashboard_address=None, preload=list(PRELOAD))
            client = distributed.Client(cluster)
        elif address.endswith(".json") or Path(address).is_file():
            if not Path(address).is_file():
                raise ClusterError(f"{address}: no such scheduler file")
            client = distributed.Client(scheduler_file=address, timeout=CONNECT_TIMEOUT_S)
        else:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except StacktoolsError:
        raise
    except (OSError, TimeoutError, ValueError) as err:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"{address}: cannot reach the Dask scheduler: {err}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class TaskReporter:
    """A task's progress callback and stop flag, on a worker.

    Called with byte counts as the task works; sends their sum to the client at
    most every :data:`REPORT_INTERVAL_S`, and then looks whether the run has been
    told to stop (``is_set``, as a ``threading.Event`` is asked, so a
    copy's ``cancel`` can be this object).
    """

    def __init__(self, topic: str, item: int, stop_name: str):
        # Found here, on the task's thread: the callback may run on the task's own threads
        # (a cache sync copies on a pool), where Dask cannot tell which worker they are on.
        distributed = _distributed()
        self._worker = distributed.get_worker()
        self._client = distributed.get_client()
        self._stop_name, self._stop = stop_name, None  # made at the first report: most tasks never need it
        self._topic, self._item = topic, item
        self._pending = 0
        self._last = time.monotonic()
        self._stopped = False
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        # A task shorter than one interval never talks to the scheduler: the client
        # counts a finished task's bytes itself, and the stop flag waits for the next one.
        with self._lock:
            self._pending += nbytes
            now = time.monotonic()
            if now - self._last < REPORT_INTERVAL_S:
                return
            self._last = now
            pending, self._pending = self._pending, 0
        self._worker.log_event(self._topic, (self._item, pending))
        if self._stop is None:
            self._stop = _distributed().Event(self._stop_name, client=self._client)
        self._stopped = self._stopped or self._stop.is_set()

    def is_set(self) -> bool:
        return self._stopped


def _run_one(fn: Callable, item: Any, index: int, topic: str, stop_name: str, kwargs: dict) -> Any:
    """The task itself: ``fn(item, reporter, **kwargs)``."""
    return fn(item, TaskReporter(topic, index, stop_name), **kwargs)


class _Relay:
    """On the client: adds what the tasks report to the progress bar, never more
    than each item's size (a task rerun after its worker died reports again)."""

    def __init__(self, progress: Progress, sizes: Sequence[int]):
        self.progress, self.sizes = progress, list(sizes)
        self.done = [0] * len(self.sizes)
        self.lock = threading.Lock()

    def add(self, item: int, nbytes: int) -> None:
        with self.lock:
            n = max(0, min(nbytes, self.sizes[item] - self.done[item]))
            self.done[item] += n
        if n:
            self.progress(n)

    def __call__(self, event: tuple) -> None:
        _, (item, nbytes) = event
        self.add(item, nbytes)

    def finish(self, item: int) -> None:
        self.add(item, self.sizes[item])


def _task_error(err: BaseException, what: str) -> BaseException:
    """The error to raise on the client for a failed task."""
    distributed = _distributed()
    if isinstance(err, distributed.KilledWorker):
        return ClusterError(f"{what}: the Dask workers running it died again and again "
                            "(distributed.scheduler.allowed-failures); see the workers' logs")
    return err


def _completions(ac: Any, stranded: Callable[[], str | None] | None) -> Iterator[Any]:
    """``ac``'s futures as they complete; with ``stranded``, asked every
    :data:`WATCH_INTERVAL_S` while none is ready, the first problem it names is raised."""
    last = time.monotonic()
    while not ac.is_empty():
        if stranded is None or ac.has_ready():
            yield next(ac)
            continue
        if time.monotonic() - last >= WATCH_INTERVAL_S:
            last = time.monotonic()
            problem = stranded()
            if problem is not None:
                raise ClusterError(problem)
        time.sleep(0.05)


def run_tasks(client: Any, fn: Callable, items: Sequence[Any], *, label: str, what: Callable[[int], str],
              progress: Progress | None = None, sizes: Sequence[int] | None = None,
              on_done: Callable[[int], None] | None = None,
              placement: Callable[[int], dict] | None = None, kwargs: dict | None = None,
              stranded: Callable[[set[int]], str | None] | None = None) -> list:
    """Run ``fn(item, reporter, **kwargs)`` as one task per item; return the results in item order.

    ``fn`` runs on a worker and must be importable there (a module-level function of
    stacktools); each item is its small, picklable description of the work. A
    task whose worker dies is rerun by Dask on another worker, so ``fn`` must be
    safe to run twice.

    Args:
        client: A ``distributed.Client``.
        fn: The work for one item.
        items: One per task.
        label: Names the run's tasks on the dashboard.
        what: Names item ``i`` in an error message.
        progress: Called on the client with the bytes the tasks report.
        sizes: Each item's bytes (the progress a task reaches when it is done).
        on_done: Called on the client with the index of each task, as it succeeds.
        placement: For item ``i``, the ``workers=``/``resources=`` restrictions of its task.
        kwargs: Passed to every ``fn`` call.
        stranded: Asked now and then, with the items still running, while none has
            finished: why some can never run (their pinned workers are gone), or None.

    Raises:
        The first error a task raised (after every other task has stopped), or
        :class:`~stacktools.errors.ClusterError` when a task's workers kept dying
        or ``stranded`` named a problem.
    """
    distributed = _distributed()
    token = uuid.uuid4().hex[:12]
    topic = f"stacktools-{label}-progress-{token}"
    stop = distributed.Event(f"stacktools-{label}-stop-{token}", client=client)
    relay = _Relay(progress, sizes) if progress is not None and sizes is not None else None
    if relay is not None:
        client.subscribe_topic(topic, relay)
    keys = [f"stacktools-{label}-{i}-{token}" for i in range(len(items))]
    index = {key: i for i, key in enumerate(keys)}
    if placement is None:  # one message to the scheduler for the whole run
        futures = client.map(_run_one, [fn] * len(items), items, range(len(items)), key=keys, pure=False,
                             topic=topic, stop_name=stop.name, kwargs=kwargs or {})
    else:
        futures = [client.submit(_run_one, fn, item, i, topic, stop.name, kwargs or {}, key=keys[i],
                                 pure=False, **placement(i)) for i, item in enumerate(items)]
    results: list = [None] * len(futures)
    errors: list[tuple[int, BaseException]] = []
    succeeded = []
    try:
        # Completions come with the scheduler's stream, and the results, once every
        # task is done, in one gather: a round trip per batch of results cost more
        # than short tasks themselves (160 empty tasks: 1.1-1.3 s, now 0.6-0.85 s).
        pending = set(range(len(futures)))
        ac = distributed.as_completed(futures)
        for f in _completions(ac, None if stranded is None else lambda: stranded(pending)):
            i = index[f.key]
            pending.discard(i)
            if f.status != "finished":
                err = (f.exception() if f.status == "error"
                       else ClusterError(f"{what(i)}: its Dask task was {f.status}"))
                if not isinstance(err, Cancelled):
                    errors.append((i, err))
                stop.set()
                continue
            succeeded.append(f)
            if relay is not None:
                relay.finish(i)
            if on_done is not None:
                on_done(i)
        for f, result in zip(succeeded, client.gather(succeeded)):
            results[index[f.key]] = result
    except BaseException:  # Ctrl-C: stop the tasks at their next report
        with contextlib.suppress(Exception):
            stop.set()
            client.cancel(futures)
        raise
    finally:
        if relay is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)
    if errors:
        i, err = errors[0]
        raise _task_error(err, what(i)) from None
    return results
