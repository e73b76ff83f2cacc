"""The executor seam: chunked steps run inline, on threads or on a Dask cluster, same results.

A chunked step (``ChunkedStep``) is a picklable object that says how many items it has
(``n_items``: volume slices, scan rows), the working set of one item on a worker
(``bytes_per_item``, inputs + outputs + temporaries), and how to process a run of items
(``process(items: slice) -> partial``). Its ``kind`` says how partials merge:

- ``"map"``: the partial is the result for those items, stacked along axis 0 (a slab of
  slices, the rows of a scan-sized map; a tuple of such arrays is allowed). ``map_into``
  writes each slab into a sink as it arrives (an array, an HDF5 dataset, a resumable store).
- ``"reduce"``: partials are summed (numbers, arrays or tuples of them). ``reduce`` adds them
  in plan order, so the sum does not depend on which worker finished first. Global pre-steps
  (a histogram, a mean pattern, a maximum folded as a sum of one-hot parts, ...) are such a
  reduction followed by a map that uses its result.

An executor, handed in by the caller and never chosen inside an algorithm, plans the chunks
from its workers' own memory budget (``Executor.plan``), runs them (``Executor.run``: an
iterator of ``(items, partial)`` in completion order) and retries a chunk that runs out of GPU
memory as two halves on the worker (``gpu_core.chunks.run_split``). Like LiberTEM's executors,
the step is shipped once (Dask: scattered to every worker) and chunks are submitted in a
window of a few per worker, so the client never holds more than that many partials.
Dask lives in ``distributed.dask_executor``; importing this module never imports Dask.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from ..gpu_core import chunks

KINDS = ("map", "reduce")
WINDOW_PER_WORKER = 2  # chunks in flight per worker slot: one running, one queued


class ChunkedStep:
    """Base of a chunked step (see the module docstring). Subclasses set ``n_items``,
    ``bytes_per_item`` and ``kind`` and implement ``process``; they must pickle (hold file
    paths, dataset names and parameters, never open handles)."""

    kind: str = "map"
    n_items: int = 0
    bytes_per_item: int = 1
    minimum: int = 1

    def process(self, items: slice):
        raise NotImplementedError


class Lowest:
    """A merge kind: keep the ``k`` entries with the smallest scores (ties: the smallest index).
    Partials are ``(score (n,), index (n,), payload (n, ...))`` NumPy arrays; the merge does not
    depend on their order, so a pass can select, e.g., the least-scattering patterns as it goes."""

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, parts: list):
        score, index, payload = (np.concatenate([p[i] for p in parts]) for i in range(3))
        keep = np.lexsort((index, score))[: self.k]
        return score[keep], index[keep], payload[keep]


def combine(kind, parts: list):
    """Merge the partials of consecutive item runs: stack (map), sum (reduce), a callable merge
    (e.g. ``Lowest``), or, for a tuple kind, each element of tuple partials by its own kind."""
    if isinstance(kind, tuple):
        return tuple(combine(k, [p[i] for p in parts]) for i, k in enumerate(kind))
    if callable(kind):
        return kind(parts)
    if kind not in KINDS:
        raise InputError(f"a chunked step's kind must be one of {KINDS}, a merge callable or a tuple, got {kind!r}")
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(combine(kind, list(p)) for p in zip(*parts))
    if kind == "map":
        xp = _backend.xp_of(parts[0])
        return xp.concatenate(parts, axis=0)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def run_chunk(step: ChunkedStep, start: int, stop: int):
    """Process one chunk of ``step`` where this runs (a worker), halving it on GPU OOM."""
    return chunks.run_split(step.process, slice(start, stop), partial(combine, step.kind),
                            minimum=max(1, int(step.minimum)))


class Executor:
    """Runs the chunks of a step. ``slots``: how many chunks run at once."""

    slots: int = 1

    def budget(self, backend: str = "cpu") -> int:
        """Bytes one chunk may use on a worker: the worker's own budget over its threads."""
        return max(1, _backend.memory_budget(backend) // max(1, self.slots))

    def plan(self, step: ChunkedStep, backend: str = "cpu", budget: int | None = None) -> list[slice]:
        """Chunks of ``range(step.n_items)`` whose working set fits one worker's budget."""
        budget = self.budget(backend) if budget is None else int(budget)
        return chunks.plan(int(step.n_items), max(1, int(step.bytes_per_item)), budget, max(1, int(step.minimum)))

    def run(self, step: ChunkedStep, plan: Iterable[slice]) -> Iterator[tuple[slice, object]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return type(self).__name__


class InlineExecutor(Executor):
    """Every chunk in this process, one after the other, in plan order."""

    def run(self, step, plan):
        for sl in plan:
            yield sl, run_chunk(step, sl.start, sl.stop)

    def describe(self) -> str:
        return "inline"


class ThreadExecutor(Executor):
    """Chunks on ``n`` threads of this process (for steps whose kernels release the GIL)."""

    def __init__(self, n: int | None = None):
        self.slots = max(1, int(n or os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="tomostrain-chunk")

    def run(self, step, plan):
        todo = list(plan)
        running = {}
        while todo or running:
            while todo and len(running) < WINDOW_PER_WORKER * self.slots:
                sl = todo.pop(0)
                running[self._pool.submit(run_chunk, step, sl.start, sl.stop)] = sl
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield running.pop(fut), fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def describe(self) -> str:
        return f"threads:{self.slots}"


def map_into(executor: Executor, step: ChunkedStep, out, *, plan: list[slice] | None = None,
             backend: str = "cpu", progress: Callable[[int, int], None] | None = None):
    """Run a map step and write each slab into ``out`` as it arrives; return ``out``.

    out : anything with ``out[items] = slab`` (NumPy array, h5py dataset), or a sink with
        ``write(items, slab)`` and, for resumable sinks, ``done(items) -> bool``: chunks already
        done are skipped (a resumed job recomputes only what is missing)
    progress : ``progress(items_done, n_items)`` after every chunk
    """
    if step.kind != "map":
        raise InputError(f"map_into needs a map step, got kind {step.kind!r}")
    plan = executor.plan(step, backend) if plan is None else list(plan)
    done = getattr(out, "done", None)
    todo = [sl for sl in plan if done is None or not done(sl)]
    count = int(step.n_items) - sum(sl.stop - sl.start for sl in todo)
    if progress is not None:
        progress(count, int(step.n_items))
    write = getattr(out, "write", None)
    for sl, slab in executor.run(step, todo):
        if write is not None:
            write(sl, slab)
        else:
            out[sl] = slab
        count += sl.stop - sl.start
        if progress is not None:
            progress(count, int(step.n_items))
    return out


def collect(executor: Executor, step: ChunkedStep, *, plan: list[slice] | None = None, backend: str = "cpu",
            progress: Callable[[int, int], None] | None = None):
    """Run a step of any kind into memory and merge its partials in plan order (deterministic
    sums whatever finished first). A callable merge (``Lowest``) is applied as partials arrive,
    so only its running result is held."""
    plan = executor.plan(step, backend) if plan is None else list(plan)
    if not plan:
        raise InputError("a step over an empty plan")
    kinds = step.kind if isinstance(step.kind, tuple) else (step.kind,)
    running = {i: None for i, k in enumerate(kinds) if callable(k)}
    parts, count = {}, 0
    for sl, part in executor.run(step, plan):
        items = part if isinstance(step.kind, tuple) else (part,)
        items = list(items)
        for i in running:
            merged = items[i] if running[i] is None else kinds[i]([running[i], items[i]])
            running[i], items[i] = merged, None
        parts[sl.start] = items
        count += sl.stop - sl.start
        if progress is not None:
            progress(count, int(step.n_items))
    ordered = [parts[k] for k in sorted(parts)]
    out = tuple(running[i] if i in running else combine(k, [p[i] for p in ordered]) for i, k in enumerate(kinds))
    return out if isinstance(step.kind, tuple) else out[0]


def reduce(executor: Executor, step: ChunkedStep, *, plan: list[slice] | None = None, backend: str = "cpu"):
    """Run a reduce step: the sum of its partials, added in plan order (deterministic)."""
    if step.kind != "reduce":
        raise InputError(f"reduce needs a reduce step, got kind {step.kind!r}")
    return collect(executor, step, plan=plan, backend=backend)


def gather(executor: Executor, step: ChunkedStep, *, plan: list[slice] | None = None, backend: str = "cpu"):
    """Run a map step into memory: the partials stacked in item order (scan-sized results)."""
    if step.kind != "map":
        raise InputError(f"gather needs a map step, got kind {step.kind!r}")
    return collect(executor, step, plan=plan, backend=backend)


def host(array):
    """A chunk result as a NumPy array (partials travel between processes on the host)."""
    return np.asarray(_backend.to_host(array))
