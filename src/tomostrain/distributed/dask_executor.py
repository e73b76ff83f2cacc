"""Dask: the executor seam on a cluster (a LocalCluster, an existing scheduler, SLURM through
dask-jobqueue, one worker per GPU through dask-cuda).

``DaskExecutor(client)`` scatters the step once to every worker (``broadcast=True``, so a worker
that dies does not take the only copy with it) and submits chunks in a window of
``WINDOW_PER_WORKER`` per worker thread. A worker that dies mid-job loses nothing: the scheduler
runs its chunks again on the others (Dask's ``allowed-failures``), and a partial that was not
yet gathered is recomputed the same way. Budgets are each worker's own: the chunk plan uses the
smallest ``memory_budget`` any worker reports, capped at half its Dask memory limit and divided
among its threads.

``open_cluster(spec)`` builds the executor for a ``--cluster`` value or a job file's
``[cluster]`` table (see ``parse``); it is a context manager that closes what it started.
"""
from __future__ import annotations

import contextlib
import os

from ..errors import InputError
from ..gpu_core import backend as _backend
from .executors import WINDOW_PER_WORKER, Executor, InlineExecutor, ThreadExecutor, run_chunk

#: job-file ``[cluster]`` keys passed to dask-jobqueue's SLURMCluster (others are refused)
SLURM_KEYS = ("queue", "account", "cores", "processes", "memory", "walltime", "job_extra_directives",
              "job_script_prologue", "local_directory", "log_directory", "interface", "python")


def _worker_budget(backend: str) -> int:
    return _backend.memory_budget(backend)


class DaskExecutor(Executor):
    """Chunks as Dask tasks on ``client``'s workers (see the module docstring)."""

    def __init__(self, client, owned=()):
        self.client = client
        self._owned = list(owned)  # cluster objects this executor started and closes

    @property
    def slots(self) -> int:
        return max(1, sum(int(w.get("nthreads", 1)) for w in _workers(self.client).values()))

    def budget(self, backend: str = "cpu") -> int:
        info = _workers(self.client)
        if not info:
            raise InputError(f"the Dask cluster at {self.client.scheduler.address} has no workers")
        reported = self.client.run(_worker_budget, backend)
        budgets = []
        for address, w in info.items():
            b = int(reported.get(address, 0)) or _backend.memory_budget("cpu")
            limit = int(w.get("memory_limit") or 0)
            if limit:
                b = min(b, limit // 2)
            budgets.append(b // max(1, int(w.get("nthreads", 1))))
        return max(1, min(budgets))

    def run(self, step, plan):
        from distributed import as_completed

        todo = list(plan)
        if not todo:
            return
        shipped = self.client.scatter(step, broadcast=True, hash=False)
        window = WINDOW_PER_WORKER * self.slots
        futures = {}

        def submit():
            sl = todo.pop(0)
            fut = self.client.submit(run_chunk, shipped, sl.start, sl.stop, pure=False,
                                     key=f"tomostrain-chunk-{sl.start}-{sl.stop}-{os.urandom(4).hex()}")
            futures[fut.key] = sl
            return fut

        pending = as_completed([submit() for _ in range(min(window, len(todo)))], with_results=True)
        for fut, result in pending:
            sl = futures.pop(fut.key)
            if todo:
                pending.add(submit())
            yield sl, result
            fut.release()
        del shipped

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.describe()
        with contextlib.suppress(Exception):
            self.client.close()
        for obj in reversed(self._owned):
            with contextlib.suppress(Exception):
                obj.close()

    def describe(self) -> str:
        if not hasattr(self, "_described"):  # asked again after close: the first answer stays
            try:
                self._described = f"dask {self.client.scheduler.address} ({len(_workers(self.client))} workers)"
            except Exception:  # noqa: BLE001 - a closed client still names its scheduler
                return f"dask {getattr(self.client.scheduler, 'address', '?')}"
        return self._described


def _workers(client) -> dict:
    """Every worker's scheduler info (newer Dask lists only 5 unless asked for all)."""
    import inspect

    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1)["workers"]
    return client.scheduler_info()["workers"]


def parse(spec) -> tuple[str, dict]:
    """A ``--cluster`` value or ``[cluster]`` table -> ``(kind, options)``.

    Strings: ``inline``, ``threads[:N]``, ``local[:N]`` (LocalCluster, N worker processes of one
    thread; default 2), ``tcp://HOST:PORT`` (join a running scheduler), ``slurm`` (dask-jobqueue,
    options from the job file), ``cuda`` (dask-cuda LocalCUDACluster, one worker per GPU).
    Tables: ``address`` (one of the strings above) plus options: ``workers``, and for slurm
    ``jobs`` (how many SLURM jobs to start) and the ``SLURM_KEYS``.
    """
    if spec is None:
        return "inline", {}
    if isinstance(spec, dict):
        options = dict(spec)
        address = str(options.pop("address", "local"))
        kind, base = parse(address)
        return kind, {**base, **options}
    text = str(spec).strip()
    if text.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return "scheduler", {"address": text}
    name, _, count = text.partition(":")
    if name not in ("inline", "threads", "local", "slurm", "cuda"):
        raise InputError(f"--cluster must be inline, threads[:N], local[:N], tcp://HOST:PORT, slurm or cuda, got {spec!r}")
    options = {}
    if count:
        try:
            options["workers"] = int(count)
        except ValueError:
            raise InputError(f"--cluster {spec!r}: the number after ':' must be an integer") from None
        if options["workers"] < 1:
            raise InputError(f"--cluster {spec!r}: at least one worker")
    return name, options


def slurm_cluster(options: dict):
    """A dask-jobqueue SLURMCluster from job-file options (nothing is submitted until scaled)."""
    from dask_jobqueue import SLURMCluster

    unknown = sorted(set(options) - set(SLURM_KEYS) - {"jobs", "workers"})
    if unknown:
        raise InputError(f"[cluster] slurm: unknown keys {unknown}; known: {sorted(SLURM_KEYS + ('jobs',))}")
    kw = {k: options[k] for k in SLURM_KEYS if k in options}
    kw.setdefault("cores", 1)
    kw.setdefault("memory", "4GB")
    kw.setdefault("processes", 1)
    return SLURMCluster(**kw)


@contextlib.contextmanager
def open_cluster(spec):
    """Context manager: the executor for ``spec`` (``parse``); closes what it started."""
    kind, options = parse(spec)
    if kind == "inline":
        executor = InlineExecutor()
    elif kind == "threads":
        executor = ThreadExecutor(options.get("workers"))
    else:
        from distributed import Client

        if kind == "scheduler":
            executor = DaskExecutor(Client(options["address"], timeout="30s"))
        elif kind == "local":
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=int(options.get("workers", 2)), threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
            executor = DaskExecutor(Client(cluster), owned=[cluster])
        elif kind == "slurm":
            cluster = slurm_cluster(options)
            cluster.scale(jobs=int(options.get("jobs", 1)))
            client = Client(cluster)
            client.wait_for_workers(1, timeout=options.get("wait_s", 600))
            executor = DaskExecutor(client, owned=[cluster])
        else:  # cuda
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                raise InputError("--cluster cuda needs dask-cuda (pip install 'tomostrain[distgpu]')") from None
            kw = {"n_workers": int(options["workers"])} if "workers" in options else {}
            cluster = LocalCUDACluster(threads_per_worker=1, dashboard_address=":0", **kw)
            executor = DaskExecutor(Client(cluster), owned=[cluster])
    try:
        yield executor
    finally:
        executor.close()
