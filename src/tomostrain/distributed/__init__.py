"""The executor seam (DESIGN.md §2): chunked steps run inline, on threads or on Dask.

``executors`` holds the step protocol, the inline and thread executors and the drivers
(``map_into``, ``reduce``, ``gather``); ``dask_executor`` the Dask executor and the cluster
factory behind ``--cluster`` (imported lazily: tomostrain never needs Dask to import).
"""
from .executors import (ChunkedStep, Executor, InlineExecutor, Lowest, ThreadExecutor, collect, combine, gather,
                        map_into, reduce, run_chunk)


def open_cluster(spec):
    """The executor for a ``--cluster`` value or ``[cluster]`` table (a context manager)."""
    from .dask_executor import open_cluster as _open

    return _open(spec)


__all__ = ["ChunkedStep", "Executor", "InlineExecutor", "Lowest", "ThreadExecutor", "collect", "combine", "gather",
           "map_into",
           "reduce", "run_chunk", "open_cluster"]
