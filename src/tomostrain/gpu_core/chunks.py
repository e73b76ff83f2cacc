"""Split work into pieces that fit a memory budget.

Tomography is split along detector rows / volume slices (axis 1 of a tilt series, axis 0 of a
volume); 4D-STEM along scan rows. Every chunked step is a pure per-chunk function plus a merge,
so it runs inline, on threads or on a Dask cluster.
"""
from __future__ import annotations

import contextlib
from typing import Callable

from ..errors import InputError


def chunk_size(bytes_per_item: int, budget_bytes: int, n_items: int, minimum: int = 1) -> int:
    """Largest number of items (slices, scan rows, patterns) whose working set fits the budget.

    ``bytes_per_item`` is the whole working set of one item (inputs, outputs, temporaries).
    Never below ``minimum``; never above ``n_items``.
    """
    if bytes_per_item <= 0 or n_items <= 0:
        raise InputError(f"chunk_size needs positive sizes, got bytes_per_item={bytes_per_item}, n_items={n_items}")
    return max(minimum, min(n_items, int(budget_bytes // bytes_per_item)))


def chunk_slices(n_items: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n_items)``."""
    if size < 1:
        raise InputError(f"chunk size must be >= 1, got {size}")
    return [slice(i, min(i + size, n_items)) for i in range(0, n_items, size)]


def plan(n_items: int, bytes_per_item: int, budget_bytes: int, minimum: int = 1) -> list[slice]:
    """Slices of ``range(n_items)`` whose working set each fits ``budget_bytes``."""
    return chunk_slices(n_items, chunk_size(bytes_per_item, budget_bytes, n_items, minimum))


def run_chunked(
    process: Callable[[slice], object],
    n_items: int,
    bytes_per_item: int,
    budget_bytes: int,
    merge: Callable[[list], object] | None = None,
    minimum: int = 1,
    on_oom_retry: int = 3,
):
    """Run ``process(slice)`` over a chunk plan and ``merge`` the per-chunk results.

    A GPU out-of-memory error (CuPy's ``OutOfMemoryError``, or a cuFFT/cuBLAS workspace that
    cannot be allocated) halves the chunk size and retries the failed chunk, up to
    ``on_oom_retry`` times (DESIGN.md §5), instead of failing the job.
    """
    size = chunk_size(bytes_per_item, budget_bytes, n_items, minimum)
    results = []
    start = 0
    retries = 0
    while start < n_items:
        sl = slice(start, min(start + size, n_items))
        try:
            results.append(process(sl))
        except Exception as exc:  # noqa: BLE001 - only OOM is retried, everything else re-raised
            if not _is_oom(exc) or retries >= on_oom_retry or size <= minimum:
                raise
            retries += 1
            size = max(minimum, size // 2)
            _free_gpu_pool()
            continue
        start = sl.stop
    return merge(results) if merge is not None else results


def _is_oom(exc: BaseException) -> bool:
    """CuPy's OutOfMemoryError, an out-of-memory error of the CUDA runtime (CuPy) or driver
    (Numba), or a CUDA library's workspace allocation failure (cuFFT plans:
    ``CuFFTError: CUFFT_ALLOC_FAILED``; cuBLAS, cuSOLVER alike)."""
    name, text = type(exc).__name__, str(exc).upper()
    if name == "OutOfMemoryError":
        return True
    if name in ("CUDARuntimeError", "CudaAPIError"):     # CuPy's runtime, Numba's driver API
        return "MEMORY" in text
    return isinstance(exc, RuntimeError) and "ALLOC_FAILED" in text


def _free_gpu_pool() -> None:
    try:
        import cupy
    except Exception:  # noqa: BLE001 - nothing to free without CuPy
        return
    with contextlib.suppress(Exception):
        cupy.fft.config.get_plan_cache().clear()  # cached cuFFT plans hold work areas
    with contextlib.suppress(Exception):
        cupy.get_default_memory_pool().free_all_blocks()


def run_split(process: Callable[[slice], object], sl: slice, combine: Callable[[list], object],
              minimum: int = 1, on_oom_retry: int = 3):
    """``process(sl)``; on a GPU out-of-memory error, run the two halves of ``sl`` instead (each
    split again if it must, at most ``on_oom_retry`` levels deep, never below ``minimum``
    items) and ``combine`` their results in order. The per-chunk retry of an executor's worker,
    which gets one chunk at a time and cannot change the plan the way ``run_chunked`` does."""
    try:
        return process(sl)
    except Exception as exc:  # noqa: BLE001 - only OOM is retried, everything else re-raised
        n = sl.stop - sl.start
        if not _is_oom(exc) or on_oom_retry <= 0 or n <= minimum or n < 2:
            raise
    _free_gpu_pool()
    mid = sl.start + max(minimum, n // 2)
    return combine([run_split(process, part, combine, minimum, on_oom_retry - 1)
                    for part in (slice(sl.start, mid), slice(mid, sl.stop))])
