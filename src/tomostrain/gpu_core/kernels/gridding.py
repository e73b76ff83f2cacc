"""Gridding (spreading) of non-uniform Fourier samples: the core of a type-1 NUFFT.

A type-1 NUFFT evaluates ``f[k_z, k_x] = sum_j c_j exp(i (k_z z_j + k_x x_j))`` on the
``n_modes x n_modes`` integer modes ``k = -n_modes//2 .. (n_modes-1)//2`` (finufft's ordering,
isign = +1) for points ``(z_j, x_j)`` in radians. ``Spreader.type1`` does it in three steps:

1. spread every sample onto an oversampled periodic grid (``n = 2 n_modes``, spacing 2 pi / n)
   with the exponential-of-semicircle kernel ``psi(s) = exp(beta (sqrt(1 - s^2) - 1))``,
   ``s = offset / (width / 2)`` (finufft's kernel and width/beta rule for a tolerance);
2. an inverse FFT of the grid (xp: cuFFT or scipy.fft);
3. crop the modes and divide by the kernel's Fourier transform (deapodisation).

Step 1 is the kernel here. GPU: one thread per point (grid-stride), weights computed once and
spread to every slice with float32 atomics. CPU twin: ``prange`` over slices, sequential
spreading within a slice. Both compute weights with the same device function ``_es_weights``.
All slices share the points (many sinograms with the same angles).
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import cuda
from numba.extending import register_jitable

from ...errors import InputError
from . import blocks_for, cupy_stream, register

THREADS = 128
MAX_WIDTH = 16
OVERSAMPLING = 2


def kernel_params(eps: float) -> tuple[int, float]:
    """Kernel width (grid points) and shape beta for relative tolerance ``eps`` (finufft's rule)."""
    width = min(MAX_WIDTH, max(2, int(math.ceil(math.log10(1.0 / eps))) + 1))
    beta = {2: 2.20, 3: 2.26, 4: 2.38}.get(width, 2.30) * width
    return width, beta


@register_jitable
def _wrap(i, n):
    """Grid index ``i`` (at most one period outside ``[0, n)``) wrapped onto the periodic grid."""
    return i + n if i < 0 else (i - n if i >= n else i)


@register_jitable
def _es_weights(t, width, beta, weights):
    """Kernel weights of the grid points i0 .. i0+width-1 around grid coordinate ``t``; returns i0."""
    half = 0.5 * width
    i0 = int(math.ceil(t - half))
    for a in range(width):
        s = (i0 + a - t) / half
        arg = 1.0 - s * s
        weights[a] = math.exp(beta * (math.sqrt(arg) - 1.0)) if arg > 0.0 else 0.0
    return i0


@cuda.jit
def gridding_gpu(coords, values, width, beta, grid):
    """coords (M, 2) float64 grid units in [0, n); values (S, M, 2) float32 (re, im);
    grid (S, n, n, 2) float32, accumulated (+=)."""
    wz = cuda.local.array(MAX_WIDTH, numba.float32)
    wx = cuda.local.array(MAX_WIDTH, numba.float32)
    n = grid.shape[1]
    for j in range(cuda.grid(1), coords.shape[0], cuda.gridsize(1)):
        iz0 = _es_weights(coords[j, 0], width, beta, wz)
        ix0 = _es_weights(coords[j, 1], width, beta, wx)
        for s in range(values.shape[0]):
            re = values[s, j, 0]
            im = values[s, j, 1]
            for a in range(width):
                iz = _wrap(iz0 + a, n)
                for b in range(width):
                    ix = _wrap(ix0 + b, n)
                    w = wz[a] * wx[b]
                    cuda.atomic.add(grid, (s, iz, ix, 0), w * re)
                    cuda.atomic.add(grid, (s, iz, ix, 1), w * im)


@numba.njit(parallel=True, cache=True)
def gridding_cpu(coords, values, width, beta, grid):
    n = grid.shape[1]
    for s in numba.prange(values.shape[0]):
        wz = np.empty(MAX_WIDTH, np.float32)
        wx = np.empty(MAX_WIDTH, np.float32)
        for j in range(coords.shape[0]):
            iz0 = _es_weights(coords[j, 0], width, beta, wz)
            ix0 = _es_weights(coords[j, 1], width, beta, wx)
            re = values[s, j, 0]
            im = values[s, j, 1]
            for a in range(width):
                iz = _wrap(iz0 + a, n)
                for b in range(width):
                    ix = _wrap(ix0 + b, n)
                    w = wz[a] * wx[b]
                    grid[s, iz, ix, 0] += w * re
                    grid[s, iz, ix, 1] += w * im


def kernel_transform(k, n: int, width: int, beta: float) -> np.ndarray:
    """Fourier transform of the spreading kernel at integer modes ``k`` of a grid of n points:
    ``(width/2) * integral_{-1}^{1} psi(s) cos(k (2 pi / n) (width/2) s) ds`` (Gauss-Legendre)."""
    nodes, wts = np.polynomial.legendre.leggauss(4 * width + 16)
    psi = np.exp(beta * (np.sqrt(1.0 - nodes**2) - 1.0))
    half = width / 2
    phase = np.outer(np.asarray(k, dtype=np.float64) * (2 * np.pi / n) * half, nodes)
    return half * (np.cos(phase) @ (wts * psi))


class Spreader:
    """Type-1 NUFFT onto ``n_modes x n_modes`` modes for fixed points, on the device of ``xp``.

    ``points_z``, ``points_x``: (M,) radians (any real; periodic with 2 pi). ``eps``: tolerance.
    """

    def __init__(self, points_z, points_x, n_modes: int, eps: float, xp=np):
        self.xp = xp
        self.n_modes = int(n_modes)
        self.width, self.beta = kernel_params(eps)
        self.n = max(OVERSAMPLING * self.n_modes, 2 * self.width)
        self.n += self.n % 2
        scale = self.n / (2 * np.pi)
        coords = np.stack([np.asarray(points_z, np.float64), np.asarray(points_x, np.float64)], axis=1) * scale
        self.coords = xp.asarray(np.ascontiguousarray(np.mod(coords, self.n)))
        k = np.arange(self.n_modes) - self.n_modes // 2
        self.rows = xp.asarray(np.mod(k, self.n))
        inv = 1.0 / kernel_transform(k, self.n, self.width, self.beta)
        self.correction = xp.asarray(np.outer(inv, inv), dtype=xp.float32)

    def spread(self, values):
        """values (S, M) complex64 on xp -> oversampled grid (S, n, n, 2) float32."""
        xp = self.xp
        values = xp.ascontiguousarray(values, dtype=xp.complex64)
        n_slices, n_points = values.shape
        if n_points != self.coords.shape[0]:
            raise InputError(f"values have {n_points} samples per slice, the points are {self.coords.shape[0]}")
        pairs = values.view(xp.float32).reshape(n_slices, n_points, 2)
        grid = xp.zeros((n_slices, self.n, self.n, 2), xp.float32)
        if xp is np:
            gridding_cpu(self.coords, pairs, self.width, self.beta, grid)
        else:
            blocks = min(blocks_for(n_points, THREADS), 65535)
            gridding_gpu[blocks, THREADS, cupy_stream()](self.coords, pairs, self.width, self.beta, grid)
        return grid

    def type1(self, values):
        """values (S, M) complex -> (S, n_modes, n_modes) complex64 ``sum_j c_j exp(i k.x_j)``."""
        xp = self.xp
        grid = self.spread(values).view(xp.complex64)[..., 0]
        if xp is np:
            import scipy.fft

            spectrum = scipy.fft.ifft2(grid, norm="forward", workers=os.cpu_count())
        else:
            spectrum = xp.fft.ifft2(grid, norm="forward")
        modes = spectrum[:, self.rows[:, None], self.rows[None, :]]
        return (modes * self.correction).astype(xp.complex64)


def _sim_case(rng):
    n_slices, n_points, n = 3, 37, 16  # 37 points over 3 blocks of 16 threads: uneven
    coords = np.ascontiguousarray(rng.uniform(0, n, (n_points, 2)))
    coords[0] = (0.2, n - 0.3)  # the kernel footprint wraps around both edges
    values = rng.standard_normal((n_slices, n_points, 2)).astype(np.float32)
    width, beta = kernel_params(1e-4)
    want = np.zeros((n_slices, n, n, 2), np.float32)
    gridding_cpu(coords, values, width, beta, want)

    def launch():
        got = np.zeros_like(want)
        gridding_gpu[3, 16](coords, values, width, beta, got)
        return got

    return launch, want, 1e-5, 1e-6


register(
    "gridding",
    gridding_gpu,
    ["(float64[:, ::1], float32[:, :, ::1], int64, float64, float32[:, :, :, ::1])"],
    _sim_case,
)
