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
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from tregpd.errors import TregpdError


class BackendError(TregpdError):
    """A backend could not be created or a chunk failed on it."""


#: seconds allowed for connecting to a ``--scheduler`` *and* its whole handshake (TCP connect, the comm
#: handshake, and one request answered); a listener that accepts and never answers fails within it
SCHEDULER_DEADLINE_S = 10.0
#: protocols accepted in a scheduler address
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss")


def check_scheduler_address(address) -> str:
    """Check a Dask scheduler address before any work: ``PROTOCOL://HOST:PORT`` with a protocol of
    :data:`SCHEDULER_SCHEMES`, a host, and an integer port 1-65535 (IPv6 hosts in brackets,
    ``tcp://[::1]:8786``). Returns the address; a bad one is a one-line :class:`BackendError` naming it."""
    from urllib.parse import urlsplit
    from tregpd.safeio import shorten
    shown = shorten(address if isinstance(address, str) else address, 120)
    form = "PROTOCOL://HOST:PORT, e.g. tcp://127.0.0.1:8786 or tcp://[::1]:8786"
    if not isinstance(address, str) or not address.strip():
        raise BackendError(f"--scheduler address must be {form}, got {shown}")
    if any(c.isspace() or not c.isprintable() for c in address):
        raise BackendError(f"--scheduler address {shown} contains spaces or control characters; expected {form}")
    if "://" not in address:
        raise BackendError(f"--scheduler address {shown} has no protocol; expected {form}")
    scheme = address.split("://", 1)[0].lower()
    if scheme not in SCHEDULER_SCHEMES:
        raise BackendError(f"--scheduler address {shown}: unknown protocol {shorten(scheme, 40)}; use one of "
                           f"{', '.join(p + '://' for p in SCHEDULER_SCHEMES)}")
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port could not be cast to integer value", out of range
        raise BackendError(f"--scheduler address {shown} is not valid ({exc}); expected {form}") from None
    if not host:
        raise BackendError(f"--scheduler address {shown} has no host; expected {form}")
    if port is None:
        raise BackendError(f"--scheduler address {shown} has no port; expected {form}")
    if not 1 <= port <= 65535:
        raise BackendError(f"--scheduler address {shown}: port {port} is outside 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise BackendError(f"--scheduler address {shown} has more than a host and port; expected {form}")
    return address


def probe_scheduler(address: str, deadline_s: float | None = None) -> dict:
    """Connect to a Dask scheduler, complete the comm handshake and ask for its identity, all within
    ``deadline_s`` seconds (one ``asyncio`` deadline over the whole exchange). Returns the identity dict.

    Raises :class:`BackendError` (one line naming the address) when nothing answers, the peer accepts but
    never answers, sends something that is not the Dask protocol, or answers as something other than a
    scheduler.
    """
    import asyncio
    from tregpd.safeio import shorten
    deadline_s = SCHEDULER_DEADLINE_S if deadline_s is None else float(deadline_s)

    async def exchange():
        from distributed.comm import connect
        from distributed.security import Security
        args = Security().get_connection_args("client")
        comm = await connect(address, timeout=deadline_s, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded():
        return await asyncio.wait_for(exchange(), deadline_s)

    where = f"the Dask scheduler at {shorten(address, 120)}"
    try:
        info = asyncio.run(bounded())
    except (asyncio.TimeoutError, TimeoutError):
        raise BackendError(f"{where} did not complete the connection within {deadline_s:g} s (nothing "
                           f"listening, or a peer that does not speak the Dask protocol)") from None
    except OSError as exc:
        raise BackendError(f"cannot connect to {where}: {shorten(exc.strerror or str(exc), 160)}") from None
    except Exception as exc:  # garbage from the peer: decoding errors of every kind, closed comm, ...
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise BackendError(f"{where} answered with something that is not the Dask protocol "
                           f"({type(exc).__name__}: {shorten(msg, 120)})") from None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise BackendError(f"{where} is not a Dask scheduler (it answered as {shorten(kind, 60)})")
    return info


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
    local_directory : str or Path, optional
        Dask's temporary directory (worker folders, spill and lock files); the command line passes the run's
        staging area, so that nothing is written under the system temporary folder.
    connect_deadline_s : float, optional
        With ``scheduler``: seconds for the whole connection (TCP, handshake, first answer; default
        :data:`SCHEDULER_DEADLINE_S`), see :func:`probe_scheduler`.
    """

    name = "dask"
    parallel_kernel = False

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None,
                 max_in_flight: int | None = None, dashboard: bool = False, parallel_kernel: bool = False,
                 local_directory: str | os.PathLike | None = None, connect_deadline_s: float | None = None):
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - depends on the installation
            raise BackendError("the Dask backend needs dask[distributed]; install it with "
                               "pip install 'tregpd[sensitivity]'") from None
        self.parallel_kernel = bool(parallel_kernel)
        if scheduler is not None and n_workers is not None:
            raise BackendError("give either a scheduler address or a number of local workers, not both")
        self._cluster = self._client = None
        self._config = None
        self._children_before = _child_pids()
        if local_directory is not None:
            # worker folders, spill files and their lock files go here (inside the run's staging area),
            # never under the system temporary folder
            local_directory = str(local_directory)
            os.makedirs(local_directory, exist_ok=True)
            self._config = dask.config.set({"temporary-directory": local_directory})
        try:
            if scheduler is not None:
                check_scheduler_address(scheduler)
                if connect_deadline_s is None:
                    connect_deadline_s = SCHEDULER_DEADLINE_S
                probe_scheduler(scheduler, connect_deadline_s)   # the whole handshake, within the deadline
                try:
                    self._client = Client(scheduler, timeout=f"{connect_deadline_s}s")
                except (OSError, TimeoutError) as exc:
                    raise BackendError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
                self.address = scheduler
            else:
                n = (os.cpu_count() or 1) if n_workers is None else n_workers
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise BackendError(f"number of workers must be a positive integer, got {n_workers!r}")
                from tregpd.rundir import hold_signals
                # SIGINT/SIGTERM while the cluster starts are held until it has started (a few seconds), then
                # raised: a half-built cluster cannot be closed cleanly and would be left to Dask's atexit hook
                with hold_signals():
                    # the worker processes' own logs are silenced below CRITICAL: a task's error reaches the
                    # caller as an exception through the client, while a worker that loses the scheduler as the
                    # cluster shuts down (e.g. after SIGTERM) would otherwise print tracebacks (not errors of
                    # the run) on the shared stderr, where tregpd promises one line
                    self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                 dashboard_address=":0" if dashboard else None,
                                                 silence_logs=logging.CRITICAL, local_directory=local_directory)
                    self._client = Client(self._cluster)
                self.address = self._cluster.scheduler_address
        except BaseException:  # an interrupt or an error while starting: no process left behind
            self.close()
            raise
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
        """Close the client and the local cluster, then make sure no worker process survives: every child
        process still alive is terminated (then killed) and reaped. Safe to call twice, and after an
        interrupt."""
        client, cluster = getattr(self, "_client", None), getattr(self, "_cluster", None)
        self._client = self._cluster = None
        # workers losing the scheduler while it shuts down log errors with tracebacks: not errors of the run
        quiet = logging.getLogger("distributed")
        level = quiet.level
        if cluster is not None:
            quiet.setLevel(logging.CRITICAL)
        try:
            if client is not None:
                try:
                    client.close(timeout=10)
                except Exception:  # a broken connection: the processes are reaped below
                    pass
            if cluster is not None:
                try:
                    cluster.close(timeout=10)
                except Exception:
                    pass
        finally:
            if cluster is not None:
                reap_children(keep=getattr(self, "_children_before", set()))
                quiet.setLevel(level)
            config, self._config = getattr(self, "_config", None), None
            if config is not None:
                config.__exit__(None, None, None)


def _child_pids() -> set:
    import multiprocessing
    return {p.pid for p in multiprocessing.active_children()}


def reap_children(grace_s: float = 5.0, keep: set = frozenset()) -> int:
    """Terminate and reap the ``multiprocessing`` children of this process still alive, except the pids in
    ``keep`` (SIGTERM, then SIGKILL after ``grace_s``); returns how many there were. Used after a local cluster
    is closed (``keep``: the children that existed before it started), so that an error or an interrupt never
    leaves worker processes behind."""
    import multiprocessing
    import time
    children = [p for p in multiprocessing.active_children() if p.pid not in keep]
    for p in children:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2.0)
    return len(children)


@contextmanager
def process_pool(max_workers: int, mp_context=None, **kwargs):
    """A ``concurrent.futures.ProcessPoolExecutor`` that never outlives an error or an interrupt.

    On normal exit the pool is shut down as usual (waiting for its jobs). On an exception, Ctrl-C or SIGTERM
    (KeyboardInterrupt, see :func:`tregpd.cli.main`) pending jobs are cancelled and the pool's processes are
    terminated and reaped at once (:func:`reap_children`), instead of waiting for the running jobs to end
    (``with ProcessPoolExecutor()`` would wait, minutes for a profile likelihood)."""
    from concurrent.futures import ProcessPoolExecutor
    before = _child_pids()
    ex = ProcessPoolExecutor(max_workers=max_workers, mp_context=mp_context, **kwargs)
    try:
        yield ex
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        reap_children(grace_s=2.0, keep=before)
        raise
    else:
        ex.shutdown(wait=True)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_backend_options(workers: int | None = None, scheduler: str | None = None) -> None:
    """Refuse conflicting or excessive execution options before anything starts: ``--workers`` together with
    ``--scheduler`` (the cluster decides its own workers), and more local workers than CPUs available."""
    if scheduler is not None:
        check_scheduler_address(scheduler)
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


def make_backend(workers: int | None = None, scheduler: str | None = None,
                 local_directory: str | os.PathLike | None = None) -> Backend:
    """The backend the CLI options ask for.

    ``scheduler`` -> :class:`DaskBackend` on that cluster; ``workers`` -> a LocalCluster of that many
    processes (at most :func:`available_cpus`); neither -> :class:`InProcessBackend`. Both at once are
    refused (:func:`check_backend_options`). ``local_directory``: Dask's temporary directory (the CLI passes
    the run's staging area, so that nothing is written outside ``--out``).
    """
    check_backend_options(workers, scheduler)
    if scheduler is not None:
        return DaskBackend(scheduler=scheduler, local_directory=local_directory)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise BackendError(f"--workers must be a positive integer, got {workers!r}")
        return DaskBackend(n_workers=workers, local_directory=local_directory)
    return InProcessBackend()
