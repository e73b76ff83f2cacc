"""Virtual-detector reduction of a chunk of diffraction patterns.

For each pattern (flattened to P = ky*kx pixels) and M weight images (virtual detector masks):
``out[n, m] = sum_p frame[n, p] * mask[m, p]`` for m < M, then three more columns
``sum_p frame*iy``, ``sum_p frame*ix``, ``sum_p frame`` from which the intensity-weighted centre
of mass follows. One pass over each pattern serves every mask.

GPU: one block per pattern (grid-stride over patterns), threads stride over pixels, a shared-memory
tree reduction per column. CPU twin: ``prange`` over patterns. Both accumulate in float64 through
the same device function ``_accumulate``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda
from numba.extending import register_jitable

from ..backend import is_gpu_array, xp_of
from . import cupy_stream, register

THREADS = 128
MAX_MASKS = 13          # per launch; more masks run in groups
MAX_COLS = MAX_MASKS + 3


@register_jitable
def _accumulate(frame, masks, kx, start, step, acc):
    """acc[:M] += frame*masks, acc[M:M+3] += frame*(iy, ix, 1) over pixels start, start+step, ..."""
    n_masks = masks.shape[0]
    for p in range(start, frame.shape[0], step):
        v = frame[p]
        if v == 0.0:
            continue
        for m in range(n_masks):
            acc[m] += v * masks[m, p]
        iy = p // kx
        acc[n_masks] += v * iy
        acc[n_masks + 1] += v * (p - iy * kx)
        acc[n_masks + 2] += v


@cuda.jit
def virtual_detector_gpu(frames, masks, kx, out):
    """frames (N, P) float32, masks (M <= MAX_MASKS, P) float32, out (N, M+3) float64."""
    tid = cuda.threadIdx.x
    n_cols = masks.shape[0] + 3
    acc = cuda.local.array(MAX_COLS, numba.float64)
    shared = cuda.shared.array((MAX_COLS, THREADS), numba.float64)
    for n in range(cuda.blockIdx.x, frames.shape[0], cuda.gridDim.x):
        for c in range(n_cols):
            acc[c] = 0.0
        _accumulate(frames[n], masks, kx, tid, cuda.blockDim.x, acc)
        for c in range(n_cols):
            shared[c, tid] = acc[c]
        cuda.syncthreads()
        half = THREADS // 2
        while half > 0:
            if tid < half:
                for c in range(n_cols):
                    shared[c, tid] += shared[c, tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            for c in range(n_cols):
                out[n, c] = shared[c, 0]
        cuda.syncthreads()


@numba.njit(parallel=True, cache=True)
def virtual_detector_cpu(frames, masks, kx, out):
    n_cols = masks.shape[0] + 3
    for n in numba.prange(frames.shape[0]):
        acc = np.zeros(n_cols, np.float64)
        _accumulate(frames[n], masks, kx, 0, 1, acc)
        for c in range(n_cols):
            out[n, c] = acc[c]


def virtual_detector(frames, masks=None):
    """Masked sums and centre of mass of a chunk of patterns, on the device ``frames`` lives on.

    Parameters
    ----------
    frames : (N, ky, kx) array, NumPy or CuPy (cast to float32)
    masks : (M, ky, kx) array or None; any real weights (binary masks, annuli, soft masks)

    Returns
    -------
    sums : (N, M) float64, ``sum(frame * mask)`` per pattern and mask
    com : (N, 2) float64, intensity-weighted centre of mass ``(cy, cx)`` in pixels; NaN for an
        empty pattern
    total : (N,) float64, summed intensity
    """
    is_gpu = is_gpu_array(frames)
    xp = xp_of(frames)
    n, ky, kx = frames.shape
    flat = xp.ascontiguousarray(frames.reshape(n, ky * kx), dtype=xp.float32)
    if masks is None:
        masks = xp.zeros((0, ky, kx), xp.float32)
    mflat = xp.ascontiguousarray(xp.asarray(masks).reshape(-1, ky * kx), dtype=xp.float32)
    groups = [mflat[i : i + MAX_MASKS] for i in range(0, max(len(mflat), 1), MAX_MASKS)]
    sums, moments = [], None
    for group in groups:
        out = xp.empty((n, group.shape[0] + 3), xp.float64)
        if is_gpu:
            grid = min(n, 65535 * 16)
            virtual_detector_gpu[grid, THREADS, cupy_stream()](flat, group, kx, out)
        else:
            virtual_detector_cpu(flat, group, kx, out)
        sums.append(out[:, : group.shape[0]])
        moments = out[:, group.shape[0] :]
    total = moments[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = xp.where(total > 0, total, xp.nan)
        com = moments[:, :2] / safe[:, None]
    return xp.concatenate(sums, axis=1), com, total


def _sim_case(rng):
    frames = rng.poisson(3.0, (37, 9, 11)).astype(np.float32)  # 99 pixels: not a multiple of 128
    frames[5] = 0.0
    masks = rng.random((2, 99)).astype(np.float32)
    want = np.empty((37, 5), np.float64)
    virtual_detector_cpu(frames.reshape(37, 99), masks, 11, want)

    def launch():
        got = np.zeros_like(want)
        virtual_detector_gpu[5, THREADS](frames.reshape(37, 99), masks, 11, got)  # 5 blocks, 37 patterns
        return got

    return launch, want, 1e-9, 1e-9


register(
    "virtual_detector",
    virtual_detector_gpu,
    ["(float32[:, ::1], float32[:, ::1], int64, float64[:, ::1])"],
    _sim_case,
)

assert math.log2(THREADS).is_integer()  # the tree reduction halves THREADS
