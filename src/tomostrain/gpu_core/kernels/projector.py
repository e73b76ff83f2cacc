"""Matched parallel-beam forward and back projection of a stack of slices (DESIGN.md §3).

Geometry (per slice ``y``): ``x``, ``z`` are measured from the volume centre ``(n - 1) / 2`` and
the centre of voxel ``(z, x)`` lands at detector column ``t = c_k + x cos(theta_k) + z sin(theta_k)``
at angle ``k`` (``c_k``: that projection's rotation-axis column, column shift folded in).

Discretisation: distance driven. At angle ``k`` a voxel's footprint is ``[t - a/2, t + a/2]``
with ``a = max(|cos|, |sin|)`` (the footprints of one voxel row tile the detector), and its
weight in bin ``j`` is the overlap of that footprint with ``[j - 1/2, j + 1/2]`` divided by ``a``.
At 0 degrees this is linear interpolation; unlike pixel-driven interpolation it has no ripple
at 45 degrees. With unit voxels and bins a uniform disk of radius ``r`` projects to
``2 sqrt(r^2 - u^2)`` (line integrals in voxel units) and every voxel's weights sum to 1.

- Back projection (gather per voxel): ``bp[y, z, x] = sum_k sum_j w_kj(z, x) p[k, y, j]`` over
  the one or two bins the footprint touches; bins outside the detector contribute 0.
- Forward projection is its exact transpose, also a gather (no atomics): bin ``j`` sums
  ``w_kj(v) f(v)`` over the voxels with ``|t(v) - j| < 1``; for each ``z`` row (``|cos| >= |sin|``)
  or ``x`` column (otherwise) those few voxels follow analytically, about ``3 n`` visits per bin.

Both evaluate ``t`` and the weight with the same device functions in float32 and accumulate in
float32, so the pair is adjoint to float32 rounding. GPU: one thread per output element (voxel
or detector bin), fastest index along x / detector columns so that neighbouring threads touch
neighbouring memory; for steep angles the forward kernel reads a ``[y, x, z]`` copy of the
volume for the same reason. CPU twins, both voxel driven with the same functions, work in the
rows-last layout (volume ``[z, x, y]``, series ``[k, j, y]``): the footprint of a voxel at an
angle is the same for every slice, so per (angle, z row) one vectorised pass finds every voxel's
first bin and its two weights (``_row_footprints``) and each footprint then serves all rows in
one contiguous SIMD loop over y. Back projection is one task per (z row, block of ``XB`` x
voxels) gathering over angles (per voxel the GPU kernel's sum, in its order); forward projection
one task per (group of ``KA`` angles, block of ``RB`` rows) scattering into the detector rows it
owns (equal to rounding). ``forward``/``back`` take the GPU layout and transpose on the CPU
(``swap_last``); iterative methods keep their iterates rows-last (``forward_rows``,
``back_rows``) and transpose once. The per-angle constants come in one ``geometry_table``
``(n_angles, 5)``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda
from numba.extending import register_jitable

from ..backend import is_gpu_array
from . import blocks_for, cupy_stream, register

THREADS = 256
MAX_BLOCKS = 65535 * 8
XB = 64   # x voxels per task of ``back_rows_cpu`` (its tile of all rows stays in cache)
KA = 8    # angles per task of ``forward_rows_cpu`` (the volume is read once per group)
RB = 256  # rows per task of ``forward_rows_cpu`` (the SIMD loop over y; longer blocks are split)


@register_jitable
def _column(c, cs, sn, xc, zc):
    """Detector column (float32) of the voxel at centred coordinates ``(zc, xc)``."""
    return c + xc * cs + zc * sn


@register_jitable
def _weight(t, jf, half_a, inv_a):
    """Overlap of the footprint ``[t - a/2, t + a/2]`` with bin ``[j - 1/2, j + 1/2]``, over ``a``."""
    lo = max(t - half_a, jf - np.float32(0.5))
    hi = min(t + half_a, jf + np.float32(0.5))
    return max(hi - lo, np.float32(0.0)) * inv_a


@register_jitable
def _row_footprints(geo, k, zc, xs, j_max, j0, w0, w1):
    """Footprints at angle ``k`` of the voxel row ``zc`` (centred x coordinates ``xs``): first bin
    ``j0`` (uint32) of each and its weights ``w0``, ``w1`` in bins ``j0``, ``j0 + 1`` (CPU twins).

    The footprint (``a <= 1``) starts in bin ``floor(t - a/2 + 1/2)``; clamping that to
    ``[0, j_max]`` (``j_max = n_cols - 2``) keeps both bins on the detector, and ``_weight`` is the
    exact overlap with any bin, so a footprint partly or wholly off the detector keeps weight 0
    where it is absent. After the clamp at 0, truncation equals ``floor``; int32 keeps the loop
    vectorised.
    """
    cs = geo[k, 0]
    sn = geo[k, 1]
    c = geo[k, 2]
    half_a = geo[k, 3]
    inv_a = geo[k, 4]
    for ix in range(xs.size):
        t = _column(c, cs, sn, xs[ix], zc)
        j = min(max(np.int32(t - half_a + np.float32(0.5)), np.int32(0)), j_max)
        jf = np.float32(j)
        j0[ix] = np.uint32(j)
        w0[ix] = _weight(t, jf, half_a, inv_a)
        w1[ix] = _weight(t, jf + np.float32(1.0), half_a, inv_a)


@register_jitable
def _bp_voxel(proj, y, zc, xc, geo):
    """Sum over angles of the footprint-weighted bins of slice ``y`` seen by voxel (zc, xc)."""
    n_cols = proj.shape[2]
    acc = np.float32(0.0)
    for k in range(proj.shape[0]):
        half_a = geo[k, 3]
        t = _column(geo[k, 2], geo[k, 0], geo[k, 1], xc, zc)
        j0 = max(int(math.floor(t - half_a + np.float32(0.5))), 0)
        j1 = min(int(math.floor(t + half_a + np.float32(0.5))), n_cols - 1)
        for j in range(j0, j1 + 1):
            acc += _weight(t, np.float32(j), half_a, geo[k, 4]) * proj[k, y, j]
    return acc


@register_jitable
def _fp_bin(vol, vol_zx, y, j, geo, k):
    """Forward projection of slice ``y`` into detector bin ``j`` at angle ``k``.

    ``vol`` is ``[y, z, x]``, ``vol_zx`` the same data as ``[y, x, z]`` (read for steep angles).
    """
    n = vol.shape[2]
    cs = geo[k, 0]
    sn = geo[k, 1]
    c = geo[k, 2]
    half_a = geo[k, 3]
    inv_a = geo[k, 4]
    half = np.float32(0.5) * np.float32(n - 1)
    one = np.float32(1.0)
    jf = np.float32(j)
    acc = np.float32(0.0)
    if abs(cs) >= abs(sn):  # walk z rows; the voxels with |t - j| < 1 lie in a short x range
        inv = one / cs
        for iz in range(n):
            zc = np.float32(iz) - half
            base = jf - c - zc * sn
            a = (base - one) * inv + half
            b = (base + one) * inv + half
            i0 = max(int(math.floor(min(a, b))), 0)
            i1 = min(int(math.ceil(max(a, b))), n - 1)
            for ix in range(i0, i1 + 1):
                w = _weight(_column(c, cs, sn, np.float32(ix) - half, zc), jf, half_a, inv_a)
                if w > 0:
                    acc += w * vol[y, iz, ix]
    else:  # walk x columns, few z per column
        inv = one / sn
        for ix in range(n):
            xc = np.float32(ix) - half
            base = jf - c - xc * cs
            a = (base - one) * inv + half
            b = (base + one) * inv + half
            i0 = max(int(math.floor(min(a, b))), 0)
            i1 = min(int(math.ceil(max(a, b))), n - 1)
            for iz in range(i0, i1 + 1):
                w = _weight(_column(c, cs, sn, xc, np.float32(iz) - half), jf, half_a, inv_a)
                if w > 0:
                    acc += w * vol_zx[y, ix, iz]
    return acc


@cuda.jit
def backproject_gpu(proj, geo, out):
    """proj (n_angles, n_rows, n_cols) float32, geo (n_angles, 5) -> out (n_rows, n, n) [y, z, x]."""
    n_rows, nz, nx = out.shape
    half = np.float32(0.5) * np.float32(nx - 1)
    total = n_rows * nz * nx
    start = cuda.grid(1)
    for i in range(start, total, cuda.gridsize(1)):
        ix = i % nx
        r = i // nx
        iz = r % nz
        y = r // nz
        out[y, iz, ix] = _bp_voxel(proj, y, np.float32(iz) - half, np.float32(ix) - half, geo)


@numba.njit(parallel=True, cache=True)
def back_rows_cpu(proj, geo, out):
    """CPU twin of ``backproject_gpu`` in the rows-last layout (``n_cols >= 2``).

    proj (n_angles, n_cols, n_rows) ``[k, j, y]`` -> out (n, n, n_rows) ``[z, x, y]``. Voxel
    driven: one task per (z row, block of ``XB`` x voxels); per angle one vectorised pass finds
    the block's footprints (``_row_footprints``) and each footprint is applied to all rows at once,
    a contiguous SIMD loop over y, two angles per pass over the tile (per voxel the same sum in
    the same order as the GPU kernel: bit-identical).
    """
    n_angles, n_cols, n_rows = proj.shape
    nz, nx = out.shape[0], out.shape[1]
    half = np.float32(0.5) * np.float32(nx - 1)
    j_max = np.int32(n_cols - 2)
    one = np.uint32(1)
    n_xb = -(-nx // XB)
    for r in numba.prange(nz * n_xb):
        iz = r // n_xb
        x0 = (r % n_xb) * XB
        x1 = min(x0 + XB, nx)
        zc = np.float32(iz) - half
        xs = np.arange(x0, x1).astype(np.float32) - half
        m = x1 - x0
        j0 = np.empty(m, np.uint32)
        w0 = np.empty(m, np.float32)
        w1 = np.empty(m, np.float32)
        j0b = np.empty(m, np.uint32)
        w0b = np.empty(m, np.float32)
        w1b = np.empty(m, np.float32)
        tile = out[iz, x0:x1]
        tile[:] = np.float32(0.0)
        for k in range(0, n_angles - 1, 2):  # two angles per pass: one load and store of the tile
            _row_footprints(geo, k, zc, xs, j_max, j0, w0, w1)
            _row_footprints(geo, k + 1, zc, xs, j_max, j0b, w0b, w1b)
            for i in range(m):
                a = w0[i]
                b = w1[i]
                c = w0b[i]
                d = w1b[i]
                o = tile[i]
                p0 = proj[k, j0[i]]
                p1 = proj[k, j0[i] + one]
                p2 = proj[k + 1, j0b[i]]
                p3 = proj[k + 1, j0b[i] + one]
                for q in range(n_rows):  # from 0 with a plain trip count: LLVM vectorises it
                    # the GPU's additions in its order (angle k: bins j0, j0 + 1; then angle k + 1)
                    o[q] = (((o[q] + a * p0[q]) + b * p1[q]) + c * p2[q]) + d * p3[q]
        if n_angles % 2:
            k = n_angles - 1
            _row_footprints(geo, k, zc, xs, j_max, j0, w0, w1)
            for i in range(m):
                a = w0[i]
                b = w1[i]
                o = tile[i]
                p0 = proj[k, j0[i]]
                p1 = proj[k, j0[i] + one]
                for q in range(n_rows):
                    o[q] = (o[q] + a * p0[q]) + b * p1[q]


@cuda.jit
def forward_gpu(vol, vol_zx, geo, out):
    """vol, vol_zx (n_rows, n, n) float32, geo (n_angles, 5) -> out (n_angles, n_rows, n_cols)."""
    n_angles, n_rows, n_cols = out.shape
    total = n_angles * n_rows * n_cols
    start = cuda.grid(1)
    for i in range(start, total, cuda.gridsize(1)):
        j = i % n_cols
        r = i // n_cols
        y = r % n_rows
        k = r // n_rows
        out[k, y, j] = _fp_bin(vol, vol_zx, y, j, geo, k)


@numba.njit(parallel=True, cache=True)
def forward_rows_cpu(vol, geo, out):
    """CPU twin of ``forward_gpu`` in the rows-last layout (``n_cols >= 2``): the transpose of
    ``back_rows_cpu``.

    vol (n, n, n_rows) ``[z, x, y]`` -> out (n_angles, n_cols, n_rows) ``[k, j, y]``. One task per
    (group of ``KA`` angles, block of ``RB`` rows) owning those detector rows: the volume is read
    once per group, each voxel row's footprints are found once per angle and scattered into the
    bins for all the block's rows at once (a contiguous SIMD loop over y).
    """
    n_angles, n_cols, n_rows = out.shape
    nz, nx = vol.shape[0], vol.shape[1]
    half = np.float32(0.5) * np.float32(nx - 1)
    xs = np.arange(nx).astype(np.float32) - half
    j_max = np.int32(n_cols - 2)
    one = np.uint32(1)
    n_yb = -(-n_rows // RB)
    n_kb = -(-n_angles // KA)
    for r in numba.prange(n_kb * n_yb):
        y0 = (r % n_yb) * RB
        y1 = min(y0 + RB, n_rows)
        k0 = (r // n_yb) * KA
        k1 = min(k0 + KA, n_angles)
        j0 = np.empty(nx, np.uint32)
        w0 = np.empty(nx, np.float32)
        w1 = np.empty(nx, np.float32)
        out[k0:k1, :, y0:y1] = np.float32(0.0)
        for iz in range(nz):
            zc = np.float32(iz) - half
            for k in range(k0, k1):
                _row_footprints(geo, k, zc, xs, j_max, j0, w0, w1)
                for ix in range(nx):
                    a = w0[ix]
                    b = w1[ix]
                    v = vol[iz, ix, y0:y1]
                    o0 = out[k, j0[ix], y0:y1]
                    o1 = out[k, j0[ix] + one, y0:y1]
                    for q in range(y1 - y0):
                        o0[q] += a * v[q]
                        o1[q] += b * v[q]


@numba.njit(parallel=True, cache=True)
def _swap_last(a, out):
    """out[i, m, n] = a[i, n, m] for 3-D float32 arrays, in 32 x 32 tiles (one task per tile row)."""
    n_i, n_n, n_m = a.shape
    n_t = -(-n_n // 32)
    for r in numba.prange(n_i * n_t):
        i = r // n_t
        n0 = (r % n_t) * 32
        n1 = min(n0 + 32, n_n)
        for m0 in range(0, n_m, 32):
            m1 = min(m0 + 32, n_m)
            for m in range(m0, m1):
                for n in range(n0, n1):
                    out[i, m, n] = a[i, n, m]


def swap_last(a):
    """(i, n, m) -> C-contiguous (i, m, n) float32 copy (threaded on the CPU; CuPy on the GPU)."""
    if is_gpu_array(a):
        import cupy as cp

        return cp.ascontiguousarray(a.swapaxes(1, 2), dtype=cp.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty((a.shape[0], a.shape[2], a.shape[1]), np.float32)
    if a.size:
        _swap_last(a, out)
    return out


def volume_to_rows_last(vol):
    """Volume ``[y, z, x]`` -> rows-last ``[z, x, y]`` (C-contiguous float32 copy)."""
    n_rows, nz, nx = vol.shape
    return swap_last(vol.reshape(1, n_rows, nz * nx)).reshape(nz, nx, n_rows)


def volume_from_rows_last(vol_t):
    """Rows-last ``[z, x, y]`` -> volume ``[y, z, x]`` (C-contiguous float32 copy)."""
    nz, nx, n_rows = vol_t.shape
    return swap_last(vol_t.reshape(1, nz * nx, n_rows)).reshape(n_rows, nz, nx)


def forward_cpu(vol, geo, out):
    """CPU twin of ``forward_gpu`` in the GPU's layout: vol (n_rows, n, n) ``[y, z, x]`` -> out
    (n_angles, n_rows, n_cols), through ``forward_rows_cpu`` (``n_cols >= 2``)."""
    out_t = np.empty((out.shape[0], out.shape[2], out.shape[1]), np.float32)
    forward_rows_cpu(volume_to_rows_last(vol), geo, out_t)
    out[...] = swap_last(out_t)


def backproject_cpu(proj, geo, out):
    """CPU twin of ``backproject_gpu`` in the GPU's layout: proj (n_angles, n_rows, n_cols) ->
    out (n_rows, n, n) ``[y, z, x]``, through ``back_rows_cpu`` (``n_cols >= 2``)."""
    out_t = np.empty((out.shape[1], out.shape[2], out.shape[0]), np.float32)
    back_rows_cpu(swap_last(proj), geo, out_t)
    out[...] = volume_from_rows_last(out_t)


def forward_rows(vol_t, geo, n_cols: int):
    """CPU forward projection in the rows-last layout: vol_t (n, n, n_rows) ``[z, x, y]`` float32
    C-contiguous, geo the host ``geometry_table`` -> (n_angles, n_cols, n_rows) ``[k, j, y]``."""
    out = np.empty((geo.shape[0], max(n_cols, 2), vol_t.shape[2]), np.float32)
    forward_rows_cpu(vol_t, geo, out)
    return out if n_cols >= 2 else np.ascontiguousarray(out[:, :n_cols])


def back_rows(proj_t, geo, n_x: int):
    """CPU back projection in the rows-last layout: proj_t (n_angles, n_cols, n_rows) ``[k, j, y]``
    float32 C-contiguous -> (n_x, n_x, n_rows) ``[z, x, y]``."""
    if proj_t.shape[1] < 2:  # an empty second column changes nothing (see ``forward``)
        proj_t = np.pad(proj_t, ((0, 0), (0, 1), (0, 0)))
    out = np.empty((n_x, n_x, proj_t.shape[2]), np.float32)
    back_rows_cpu(proj_t, geo, out)
    return out


def geometry_table(cos, sin, centres):
    """(n_angles, 5) float32 host table ``[cos, sin, centre, a/2, 1/a]``, ``a = max(|cos|, |sin|)``."""
    cos = np.asarray(cos, np.float64)
    sin = np.asarray(sin, np.float64)
    a = np.maximum(np.abs(cos), np.abs(sin))
    return np.ascontiguousarray(np.stack([cos, sin, np.asarray(centres, np.float64), a / 2, 1 / a], 1),
                                dtype=np.float32)


def _launch_blocks(total: int) -> int:
    return min(blocks_for(total, THREADS), MAX_BLOCKS)


def forward(volume, geo, n_cols: int):
    """Forward projection on the device ``volume`` lives on.

    volume (n_rows, n, n) float32 C-contiguous ``[y, z, x]``; geo the ``geometry_table`` on the
    same device. Returns (n_angles, n_rows, n_cols) float32.
    """
    if not is_gpu_array(volume):
        # bins are absolute columns: a one-column detector is column 0 of a two-column one
        return swap_last(forward_rows(volume_to_rows_last(volume), geo, n_cols))
    import cupy as cp

    out = cp.empty((geo.shape[0], volume.shape[0], n_cols), cp.float32)
    steep = bool((cp.abs(geo[:, 1]) > cp.abs(geo[:, 0])).any())
    vol_zx = cp.ascontiguousarray(volume.transpose(0, 2, 1)) if steep else volume
    forward_gpu[_launch_blocks(out.size), THREADS, cupy_stream()](volume, vol_zx, geo, out)
    return out


def back(projections, geo, n_x: int):
    """Back projection on the device ``projections`` lives on.

    projections (n_angles, n_rows, n_cols) float32 C-contiguous; geo the ``geometry_table`` on
    the same device. Returns (n_rows, n_x, n_x) float32 ``[y, z, x]``.
    """
    if not is_gpu_array(projections):
        return volume_from_rows_last(back_rows(swap_last(projections), geo, n_x))
    import cupy as cp

    out = cp.empty((projections.shape[1], n_x, n_x), cp.float32)
    backproject_gpu[_launch_blocks(out.size), THREADS, cupy_stream()](projections, geo, out)
    return out


def _table(rng, n_angles, n_cols):
    theta = np.sort(rng.uniform(-np.pi / 2, np.pi / 2, n_angles))
    theta[0] = np.pi / 4  # the |cos| == |sin| boundary
    return geometry_table(np.cos(theta), np.sin(theta), (n_cols - 1) / 2 + rng.uniform(-1.5, 1.5, n_angles))


def _sim_forward(rng):
    vol = rng.random((5, 7, 7), dtype=np.float32)
    vol_zx = np.ascontiguousarray(vol.transpose(0, 2, 1))
    geo = _table(rng, 5, 9)
    want = np.empty((5, 5, 9), np.float32)
    forward_cpu(vol, geo, want)

    def launch():
        got = np.zeros_like(want)
        forward_gpu[2, 32](vol, vol_zx, geo, got)  # 64 threads for 225 bins
        return got

    return launch, want, 1e-5, 1e-5


def _sim_back(rng):
    proj = rng.random((5, 5, 9), dtype=np.float32)
    geo = _table(rng, 5, 9)
    want = np.empty((5, 7, 7), np.float32)
    backproject_cpu(proj, geo, want)

    def launch():
        got = np.zeros_like(want)
        backproject_gpu[3, 32](proj, geo, got)  # 96 threads for 245 voxels
        return got

    return launch, want, 1e-5, 1e-5


_VOL = "float32[:, :, ::1]"
_GEO = "float32[:, ::1]"
register("projector_forward", forward_gpu, [f"({_VOL}, {_VOL}, {_GEO}, {_VOL})"], _sim_forward)
register("projector_back", backproject_gpu, [f"({_VOL}, {_GEO}, {_VOL})"], _sim_back)
