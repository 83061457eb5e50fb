"""Execution backends for chunked work: in-process (default) or a Dask cluster.

A backend has one job: ``backend.map(fn, chunks)`` returns an iterator over ``fn(chunk)`` **in the order of
``chunks``**, whatever order the work actually finishes in. The callers (:mod:`tregpd.scenarios.trial`,
:mod:`tregpd.scenarios.sensitivity`) make every chunk's result a pure function of the chunk description and
combine the results in chunk order, so the numbers do not depend on the backend or on the number of workers.

* :class:`InProcessBackend` runs the chunks one after another in this process; the chunk functions use the
  numba ``prange`` population kernel, which already uses every core. Dask is never imported.
* :class:`DaskBackend` sends the chunks to a Dask ``distributed`` cluster: an existing scheduler
  (``scheduler="tcp://host:8786"``) or a ``LocalCluster`` of ``n_workers`` single-threaded worker processes.
  Inside a worker the chunk functions use the *serial* numba kernel (one core per worker process; the
  parallel kernel in every worker would oversubscribe the cores). Dask is imported only when this backend is
  created.

Chunk functions must be module-level (picklable) and chunk descriptions small (indices, seeds, a few arrays):
the workers build their own inputs. At most ``max_in_flight`` chunks are submitted ahead of the one being
consumed, so results are held only for chunks not yet consumed.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from tregpd.errors import TregpdError


class BackendError(TregpdError):
    """A backend could not be created or a chunk failed on it."""


class Backend:
    """Interface: ``map(fn, chunks)`` yields ``fn(chunk)`` in chunk order.

    Attributes
    ----------
    name : str
        Short label used in provenance records ("in-process", "dask").
    parallel_kernel : bool
        Whether chunk functions should use the numba ``prange`` kernel (True in-process) or its serial twin
        (False on Dask workers, one process per core).
    n_workers : int
        Number of worker processes (1 in-process).
    """

    name = "abstract"
    parallel_kernel = True
    n_workers = 1

    def map(self, fn: Callable[[Any], Any], chunks: Iterable[Any]) -> Iterator[Any]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain-dict description for provenance."""
        return {"backend": self.name, "n_workers": self.n_workers, "parallel_kernel": self.parallel_kernel}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessBackend(Backend):
    """Run every chunk in this process, in order (no extra dependency)."""

    name = "in-process"

    def __init__(self, parallel_kernel: bool = True):
        self.parallel_kernel = bool(parallel_kernel)

    def map(self, fn, chunks):
        for chunk in chunks:
            yield fn(chunk)


class DaskBackend(Backend):
    """Run chunks on a Dask ``distributed`` cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"`` (start one with ``dask scheduler`` and
        workers with ``dask worker tcp://10.0.0.5:8786 --nworkers N --nthreads 1``). Workers must have the
        same tregpd version installed.
    n_workers : int, optional
        Without ``scheduler``: start a ``LocalCluster`` of this many worker processes, one thread each
        (default: the number of CPUs).
    max_in_flight : int, optional
        Chunks submitted ahead of the one being consumed (default: 2 per worker, at least 4).
    dashboard : bool
        Start the LocalCluster's diagnostics dashboard (off by default).
    parallel_kernel : bool
        Use the numba prange kernel inside each worker (default False: serial kernel, one core per worker
        process; see benchmarks/scale.py for the measurement behind the default).
    """

    name = "dask"
    parallel_kernel = False

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None,
                 max_in_flight: int | None = None, dashboard: bool = False, parallel_kernel: bool = False):
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - depends on the installation
            raise BackendError("the Dask backend needs dask[distributed]; install it with "
                               "pip install 'tregpd[sensitivity]'") from None
        self.parallel_kernel = bool(parallel_kernel)
        if scheduler is not None and n_workers is not None:
            raise BackendError("give either a scheduler address or a number of local workers, not both")
        self._cluster = None
        if scheduler is not None:
            if not isinstance(scheduler, str) or "://" not in scheduler:
                raise BackendError(f"scheduler address must look like tcp://host:port, got {scheduler!r}")
            try:
                self._client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise BackendError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
            self.address = scheduler
        else:
            n = (os.cpu_count() or 1) if n_workers is None else n_workers
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise BackendError(f"number of workers must be a positive integer, got {n_workers!r}")
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=":0" if dashboard else None,
                                         silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
            self.address = self._cluster.scheduler_address
        nthreads = self._client.nthreads()            # {worker address: threads}
        if not nthreads and scheduler is not None:
            try:
                self._client.wait_for_workers(1, timeout=20)
            except (TimeoutError, OSError):
                self.close()
                raise BackendError(f"the Dask scheduler at {scheduler} has no workers") from None
            nthreads = self._client.nthreads()
        self.n_workers = max(1, len(nthreads))
        self.n_threads = max(1, sum(nthreads.values()))
        self.max_in_flight = max_in_flight if max_in_flight is not None else max(4, 2 * self.n_threads)

    def describe(self) -> dict:
        return super().describe() | {"scheduler": self.address, "n_threads": self.n_threads,
                                     "local_cluster": self._cluster is not None}

    def map(self, fn, chunks):
        client = self._client
        pending: deque = deque()
        it = iter(chunks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.max_in_flight:
                    try:
                        chunk = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(client.submit(fn, chunk, pure=False))
                if not pending:
                    return
                fut = pending.popleft()
                try:
                    result = fut.result()
                except TregpdError:
                    raise
                except Exception as exc:  # worker died, lost connection, ...
                    raise BackendError(f"a chunk failed on the Dask cluster: {type(exc).__name__}: {exc}") \
                        from exc
                fut.release()
                yield result
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        client, cluster = getattr(self, "_client", None), getattr(self, "_cluster", None)
        self._client = self._cluster = None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_backend_options(workers: int | None = None, scheduler: str | None = None) -> None:
    """Refuse conflicting or excessive execution options before anything starts: ``--workers`` together with
    ``--scheduler`` (the cluster decides its own workers), and more local workers than CPUs available."""
    if workers is not None and scheduler is not None:
        raise BackendError("--workers and --scheduler cannot be combined: --workers starts a local cluster, "
                           "--scheduler uses an existing one (start its workers with 'dask worker'); give one")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise BackendError(f"--workers must be a positive integer, got {workers!r}")
        limit = available_cpus()
        if workers > limit:
            raise BackendError(f"--workers {workers} is more than the {limit} CPUs available on this machine "
                               f"(limit {limit}); more processes would only compete for the same cores")


def make_backend(workers: int | None = None, scheduler: str | None = None) -> Backend:
    """The backend the CLI options ask for.

    ``scheduler`` -> :class:`DaskBackend` on that cluster; ``workers`` -> a LocalCluster of that many
    processes (at most :func:`available_cpus`); neither -> :class:`InProcessBackend`. Both at once are
    refused (:func:`check_backend_options`).
    """
    check_backend_options(workers, scheduler)
    if scheduler is not None:
        return DaskBackend(scheduler=scheduler)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise BackendError(f"--workers must be a positive integer, got {workers!r}")
        return DaskBackend(n_workers=workers)
    return InProcessBackend()
