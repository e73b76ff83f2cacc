"""Bragg-disk peaks of a chunk of correlation maps: local maxima, spacing rule, sub-pixel refinement.

Per pattern ``n`` (correlation map ``corr[n]`` and, for the edge fit, the pattern ``frames[n]``):

1. candidates: pixels at least ``edge`` pixels from the border that are local maxima of their 3x3
   neighbourhood (ties go to the first pixel in raster order) with ``corr >= thr[n]`` and ``> 0``;
2. selection: repeatedly take the strongest remaining candidate (ties: lowest pixel index) and drop
   every candidate closer than ``min_spacing`` pixels, up to ``max_peaks`` peaks;
3. refinement of each peak to sub-pixel precision, by ``mode``:
   ``PARABOLIC`` three-point parabola along y and x of the correlation,
   ``COM`` centre of mass of the 3x3 correlation above its minimum,
   ``EDGE`` Gauss-Newton fit of the pattern, in a window of radius ``radius + 3 width + 1.5``,
   to the probe's own disk profile with a free linear intensity gradient inside:
   ``m(y, x) = (a + b*u + c*v) * P(radius + (r - R) / s) + d``, ``r = |(y, x) - (cy, cx)|``,
   ``u, v = (y - cy, x - cx) / radius``, where ``P`` is the probe's radial profile tabulated at
   ``r = k * dr`` (1 inside, 0 outside) with its slope ``dP``; free ``cy, cx, R, a, b, c, d`` and
   the edge scale ``s``. Each pixel is weighted ``1 / (|m| + 0.03 a)`` (Poisson-like: variance
   grows with the expected counts; the floor keeps the background from dominating). The centre
   comes from where the edge is, not from how bright the inside is, so a thickness-dependent
   gradient does not bias it. It starts from the parabolic position with ``a`` = the correlation
   value (the probe-weighted mean inside the disk), solves each step by Cholesky, and stops when the
   centre moves by less than ``max(5e-3 px, 0.1 sigma)``, sigma being the centre's standard error
   (``A^-1`` scaled by the reduced chi-square), or after ``GN_ITER`` steps. It falls back to the
   parabolic position when the fit fails (not positive definite, or a move of more than
   ``radius / 2``, or ``R``, ``s`` out of range).

Output ``peaks[n, j] = (qy, qx, correlation at the peak pixel)`` for ``j < count[n]``, strongest
first; ``n_candidates[n]`` counts the step-1 candidates (more than ``MAX_CAND`` are not all seen).

GPU: one block per pattern (grid-stride over patterns); threads stride over pixels and append
candidates to shared memory with an atomic counter, thread 0 selects, then each warp refines one
peak at a time: its lanes share the window's pixels and sum the normal equations over shuffles,
and every lane takes the same step. CPU twin: ``prange`` over patterns, one thread per pattern
running every pixel. Both call the same device functions (``_pixel_sums``, ``_gn_step``, ...).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.extending import register_jitable

from ..backend import is_gpu_array, xp_of
from . import LazyKernel, cupy_stream, register

THREADS = 128        # 4 warps a pattern: a warp per peak in the edge fit
MAX_CAND = 1024      # candidates kept per pattern (step 1)
MAX_PEAKS = 256      # peaks returned per pattern at most (step 2)
PARABOLIC, COM, EDGE = 0, 1, 2
N_PAR = 8            # edge fit: cy, cx, R, a, b, c, d, s
N_TRI = N_PAR * (N_PAR + 1) // 2
N_STATE = N_PAR + 2  # the parameters and the previous centre step
# _pixel_sums' accumulators: J^T W J (lower triangle), J^T W res, 9 flat moments, chi2, count
MOM = N_TRI + N_PAR
CHI2 = MOM + 9
NPIX = CHI2 + 1
N_ACC = NPIX + 1
GN_ITER = 12
S_PRIOR = 0.2        # edge fit: standard deviation of the prior on the edge scale s (around 1)


@register_jitable
def _is_candidate(c, y, x, thr):
    """True when pixel ``(y, x)`` of map ``c`` (not on its border) is a thresholded local max."""
    v = c[y, x]
    if v < thr or v <= 0.0:
        return False
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            if dy == 0 and dx == 0:
                continue
            w = c[y + dy, x + dx]
            if dy < 0 or (dy == 0 and dx < 0):
                if w >= v:
                    return False
            elif w > v:
                return False
    return True


@register_jitable
def _select(cand_v, cand_i, m, kx, min_spacing, max_peaks, sel):
    """Greedy strongest-first selection with a minimum spacing; writes pixel indices to ``sel``.

    ``cand_v`` is overwritten (taken or suppressed candidates become -inf). Returns the count.
    """
    s2 = min_spacing * min_spacing
    n_sel = 0
    while n_sel < max_peaks:
        best = -1
        bv = -math.inf
        bi = 0
        for k in range(m):
            v = cand_v[k]
            if v > bv or (v == bv and best >= 0 and cand_i[k] < bi):
                best = k
                bv = v
                bi = cand_i[k]
        if best < 0:
            break
        sel[n_sel] = bi
        n_sel += 1
        cand_v[best] = -math.inf
        by = bi // kx
        bx = bi - by * kx
        for k in range(m):
            if cand_v[k] > -math.inf:
                iy = cand_i[k] // kx
                dy = iy - by
                dx = cand_i[k] - iy * kx - bx
                if dy * dy + dx * dx < s2:
                    cand_v[k] = -math.inf
    return n_sel


@register_jitable
def _parabola(a, b, c):
    """Offset in [-0.5, 0.5] of the vertex of the parabola through (-1, a), (0, b), (1, c)."""
    den = a - 2.0 * b + c
    if den >= 0.0:
        return 0.0
    off = 0.5 * (a - c) / den
    return min(0.5, max(-0.5, off))


@register_jitable
def _solve_spd(A, r, n, z):
    """Solve ``A x = r`` for symmetric positive definite ``A`` (n x n, lower triangle read) by
    Cholesky, in place: x in ``r``, the factor in A's lower triangle. Returns the largest of the
    diagonal entries 0 and 1 of ``A^-1`` (``z`` is work space), or -1 when A is not positive definite.
    """
    for j in range(n):
        d = A[j, j]
        for k in range(j):
            d -= A[j, k] * A[j, k]
        if not d > 1e-12 * A[j, j]:
            return -1.0
        d = math.sqrt(d)
        A[j, j] = d
        for i in range(j + 1, n):
            t = A[i, j]
            for k in range(j):
                t -= A[i, k] * A[j, k]
            A[i, j] = t / d
    for i in range(n):                      # L y = r
        t = r[i]
        for k in range(i):
            t -= A[i, k] * r[k]
        r[i] = t / A[i, i]
    for i in range(n - 1, -1, -1):          # L^T x = y
        t = r[i]
        for k in range(i + 1, n):
            t -= A[k, i] * r[k]
        r[i] = t / A[i, i]
    var = 0.0
    for e in range(2):                      # (A^-1)_ee = |L^-1 e|^2
        acc = 0.0
        for i in range(n):
            t = 1.0 if i == e else 0.0
            for k in range(i):
                t -= A[i, k] * z[k]
            z[i] = t / A[i, i]
            acc += z[i] * z[i]
        var = max(var, acc)
    return var


@register_jitable
def _profile(prof, dprof, dr, rr):
    """Value and slope of the tabulated disk profile at radius ``rr`` (0 beyond the table)."""
    t = max(rr / dr, 0.0)
    k = int(t)
    if k >= prof.shape[0] - 1:
        return 0.0, 0.0
    f = t - k
    return prof[k] * (1.0 - f) + prof[k + 1] * f, dprof[k] * (1.0 - f) + dprof[k + 1] * f


@register_jitable
def _add_flat(A, g, e, ey, ex, w0, wu, wv, wuu, wuv, wvv, r0, ru, rv):
    """Add the flat inside's pixels to the normal equations (lower triangle of ``A``, and ``g``).

    There ``P = 1, dP = 0``, so a pixel's Jacobian row is ``e + u E4 + v E5`` with the constant
    ``e = (ey, ex, 0, 1, 0, 0, 1, 0)`` (``ey = -b / radius``, ``ex = -c / radius``) and unit vectors
    ``E4, E5``: its sums need only the weighted moments ``w0 = sum w, wu = sum w u, ...`` and
    ``r0 = sum w res, ru = sum w u res, rv = sum w v res``. ``e`` is work space (length N_PAR).
    """
    for i in range(N_PAR):
        e[i] = 0.0
    e[0] = ey
    e[1] = ex
    e[3] = 1.0
    e[6] = 1.0
    for i in range(N_PAR):
        ci = (1.0 if i == 4 else 0.0)
        di = (1.0 if i == 5 else 0.0)
        g[i] += e[i] * r0 + ci * ru + di * rv
        for k in range(i + 1):
            ck = (1.0 if k == 4 else 0.0)
            dk = (1.0 if k == 5 else 0.0)
            A[i, k] += (e[i] * e[k] * w0 + (e[i] * ck + ci * e[k]) * wu + (e[i] * dk + di * e[k]) * wv
                        + ci * ck * wuu + (ci * dk + di * ck) * wuv + di * dk * wvv)


@register_jitable
def _pixel_sums(f, y0, x0, radius, width, prof, dprof, dr, par, lane, n_lanes, jac, acc):
    """Normal-equation sums of the edge fit at ``par`` over the window of radius
    ``radius + 3 width + 1.5`` about pixel (y0, x0): this lane's share, columns ``x0 - half + lane``,
    ``+ n_lanes``, ... of every window row (lane 0 of 1 on the CPU, a warp's lanes on the GPU).

    ``acc`` (N_ACC): ``[0:N_TRI]`` lower triangle of ``J^T W J`` (entry ``i, k <= i`` at
    ``i (i + 1) / 2 + k``), ``[N_TRI:MOM]`` ``J^T W res``, ``[MOM:MOM + 9]`` the flat inside's
    moments (``_add_flat``), ``[CHI2]`` chi-square, ``[NPIX]`` pixel count. ``jac`` is work space.
    """
    ky = f.shape[0]
    kx = f.shape[1]
    margin = 3.0 * width + 1.5
    reach = radius + margin
    half = int(reach)
    for i in range(N_ACC):
        acc[i] = 0.0
    flat = par[2] - par[7] * margin                 # the profile is 1 for r < flat
    flat2 = flat * flat if flat > 0.0 else -1.0
    for y in range(max(0, y0 - half), min(ky, y0 + half + 1)):
        for x in range(max(0, x0 - half) + lane, min(kx, x0 + half + 1), n_lanes):
            if (y - y0) ** 2 + (x - x0) ** 2 > reach * reach:
                continue
            dy = y - par[0]
            dx = x - par[1]
            u = dy / radius
            v = dx / radius
            lin = par[3] + par[4] * u + par[5] * v
            r2 = dy * dy + dx * dx
            if r2 < flat2:
                model = lin + par[6]
                res = f[y, x] - model
                wt = 1.0 / (abs(model) + 0.03 * abs(par[3]) + 1e-30)
                acc[MOM] += wt
                acc[MOM + 1] += wt * u
                acc[MOM + 2] += wt * v
                acc[MOM + 3] += wt * u * u
                acc[MOM + 4] += wt * u * v
                acc[MOM + 5] += wt * v * v
                acc[MOM + 6] += wt * res
                acc[MOM + 7] += wt * u * res
                acc[MOM + 8] += wt * v * res
                acc[CHI2] += wt * res * res
                acc[NPIX] += 1.0
                continue
            r = math.sqrt(r2)
            s, ds = _profile(prof, dprof, dr, radius + (r - par[2]) / par[7])
            ds /= par[7]                            # dS/dr
            ry = dy / r if r > 1e-9 else 0.0
            rx = dx / r if r > 1e-9 else 0.0
            jac[0] = -par[4] * s / radius - lin * ds * ry
            jac[1] = -par[5] * s / radius - lin * ds * rx
            jac[2] = -lin * ds
            jac[3] = s
            jac[4] = u * s
            jac[5] = v * s
            jac[6] = 1.0
            jac[7] = -lin * ds * (r - par[2]) / par[7]
            model = lin * s + par[6]
            res = f[y, x] - model
            wt = 1.0 / (abs(model) + 0.03 * abs(par[3]) + 1e-30)
            acc[CHI2] += wt * res * res
            acc[NPIX] += 1.0
            for i in range(N_PAR):
                wj = wt * jac[i]
                acc[N_TRI + i] += wj * res
                for k in range(i + 1):
                    acc[i * (i + 1) // 2 + k] += wj * jac[k]


@register_jitable
def _gn_step(acc, par, radius, cy0, cx0, A, g, z):
    """One damped Gauss-Newton step of the edge fit from the sums ``acc`` (``_pixel_sums``):
    updates ``par`` (``par[8:10]`` keep the previous centre step). Returns 1 when converged,
    0 to go on, -1 when the fit failed (module docstring). ``A, g, z`` are work space."""
    for i in range(N_PAR):
        g[i] = acc[N_TRI + i]
        for k in range(i + 1):
            A[i, k] = acc[i * (i + 1) // 2 + k]
    _add_flat(A, g, z, -par[4] / radius, -par[5] / radius, acc[MOM], acc[MOM + 1], acc[MOM + 2],
              acc[MOM + 3], acc[MOM + 4], acc[MOM + 5], acc[MOM + 6], acc[MOM + 7], acc[MOM + 8])
    red = acc[CHI2] / max(acc[NPIX] - N_PAR, 1.0)   # reduced chi-square: scales the weights
    A[7, 7] += red / S_PRIOR ** 2
    g[7] += red * (1.0 - par[7]) / S_PRIOR ** 2
    var = _solve_spd(A, g, N_PAR, z)
    if var < 0.0:
        return -1
    # converged when the centre moves by < 5e-3 px or < 0.1 of its own standard error
    tol = max(5e-3, 0.1 * math.sqrt(var * red))
    step = max(abs(g[0]), abs(g[1]))
    scale = 1.0 if step <= 0.5 else 0.5 / step      # trust region on the centre
    if g[0] * par[8] + g[1] * par[9] < 0.0:
        scale *= 0.5                                # the centre turned back: damp the 2-cycle
    par[8] = g[0]
    par[9] = g[1]
    for i in range(N_PAR):
        par[i] += scale * g[i]
    if not (abs(par[0] - cy0) <= 0.5 * radius and abs(par[1] - cx0) <= 0.5 * radius):
        return -1
    if not (abs(par[2] - radius) < 0.5 * radius and par[7] > 0.25 and par[7] < 4.0):
        return -1
    if not (math.isfinite(par[0]) and math.isfinite(par[1])):
        return -1
    return 1 if step < tol else 0


@register_jitable
def _fit_start(par, a0, cy0, cx0, radius):
    """Starting parameters of the edge fit (module docstring)."""
    par[0] = cy0
    par[1] = cx0
    par[2] = radius
    par[3] = a0
    for i in range(4, N_STATE):
        par[i] = 0.0
    par[7] = 1.0


@register_jitable
def _start(c, p, kx, mode, out):
    """Write (qy, qx, intensity) of the peak at flat pixel ``p`` to ``out``: the parabolic or COM
    position of the correlation peak (the edge fit's start)."""
    y = p // kx
    x = p - y * kx
    v = c[y, x]
    if mode == COM:
        lo = v
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                lo = min(lo, c[y + dy, x + dx])
        sw = 0.0
        sy = 0.0
        sx = 0.0
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                w = c[y + dy, x + dx] - lo
                sw += w
                sy += w * dy
                sx += w * dx
        oy = sy / sw if sw > 0.0 else 0.0
        ox = sx / sw if sw > 0.0 else 0.0
    else:
        oy = _parabola(c[y - 1, x], v, c[y + 1, x])
        ox = _parabola(c[y, x - 1], v, c[y, x + 1])
    out[0] = y + oy
    out[1] = x + ox
    out[2] = v


@register_jitable
def _fit_disk(f, p, kx, radius, width, prof, dprof, dr, out, par, jac, acc, A, g, z):
    """Edge fit of the disk at flat pixel ``p`` from the start in ``out``; on success its centre
    replaces ``out[0:2]`` (CPU: one thread runs every pixel)."""
    y0 = p // kx
    x0 = p - y0 * kx
    _fit_start(par, out[2], out[0], out[1], radius)
    for _ in range(GN_ITER):
        _pixel_sums(f, y0, x0, radius, width, prof, dprof, dr, par, 0, 1, jac, acc)
        status = _gn_step(acc, par, radius, out[0], out[1], A, g, z)
        if status < 0:
            return
        if status > 0:
            break
    out[0] = par[0]
    out[1] = par[1]


def _gpu():
    """The CUDA kernel and its warp reduction, built once on first use (importing numba.cuda costs
    ~0.4 s, which a CPU run does not pay)."""
    if _GPU:
        return _GPU["ns"]
    from types import SimpleNamespace

    global cuda  # a module global, as the CUDA simulator expects (it swaps the kernels' globals)
    from numba import cuda

    @cuda.jit(device=True)
    def _warp_sum(acc):
        """Every lane of the warp gets the warp's sum of ``acc`` (bitwise equal on all lanes)."""
        for i in range(N_ACC):
            v = acc[i]
            m = 16
            while m > 0:
                v += cuda.shfl_xor_sync(0xFFFFFFFF, v, m)
                m //= 2
            acc[i] = v


    @cuda.jit
    def disk_peaks_gpu(corr, frames, thr, edge, min_spacing, max_peaks, mode, radius, width,
                       prof, dprof, dr, peaks, counts, n_candidates):
        """corr, frames (N, ky, kx) float32; thr (N,) float32; peaks (N, >= max_peaks, 3) float32;
        counts, n_candidates (N,) int32. One block per pattern, blockDim a multiple of 32."""
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        n_warps = cuda.blockDim.x // 32
        cand_v = cuda.shared.array(MAX_CAND, numba.float32)
        cand_i = cuda.shared.array(MAX_CAND, numba.int32)
        sel = cuda.shared.array(MAX_PEAKS, numba.int32)
        n_cand = cuda.shared.array(1, numba.int32)
        n_sel = cuda.shared.array(1, numba.int32)
        out = cuda.local.array(3, numba.float64)
        par = cuda.local.array(N_STATE, numba.float64)
        jac = cuda.local.array(N_PAR, numba.float64)
        acc = cuda.local.array(N_ACC, numba.float64)
        A = cuda.local.array((N_PAR, N_PAR), numba.float64)
        g = cuda.local.array(N_PAR, numba.float64)
        z = cuda.local.array(N_PAR, numba.float64)
        ky = corr.shape[1]
        kx = corr.shape[2]
        for n in range(cuda.blockIdx.x, corr.shape[0], cuda.gridDim.x):
            if tid == 0:
                n_cand[0] = 0
            cuda.syncthreads()
            c = corr[n]
            f = frames[n]
            for y in range(edge, ky - edge):
                for x in range(edge + tid, kx - edge, cuda.blockDim.x):
                    if _is_candidate(c, y, x, thr[n]):
                        k = cuda.atomic.add(n_cand, 0, 1)
                        if k < MAX_CAND:
                            cand_v[k] = c[y, x]
                            cand_i[k] = y * kx + x
            cuda.syncthreads()
            if tid == 0:
                m = min(n_cand[0], MAX_CAND)
                n_sel[0] = _select(cand_v, cand_i, m, kx, min_spacing, max_peaks, sel)
                counts[n] = n_sel[0]
                n_candidates[n] = n_cand[0]
            cuda.syncthreads()
            # one warp per peak: the lanes share the window's pixels and sum over shuffles, then
            # every lane takes the same Gauss-Newton step (same sums, same decisions: no divergence)
            for j in range(warp, n_sel[0], n_warps):
                p = sel[j]
                _start(c, p, kx, mode, out)
                if mode == EDGE:
                    y0 = p // kx
                    x0 = p - y0 * kx
                    _fit_start(par, out[2], out[0], out[1], radius)
                    status = 0
                    for _ in range(GN_ITER):
                        _pixel_sums(f, y0, x0, radius, width, prof, dprof, dr, par, lane, 32, jac, acc)
                        _warp_sum(acc)
                        status = _gn_step(acc, par, radius, out[0], out[1], A, g, z)
                        if status != 0:
                            break
                    if status >= 0:
                        out[0] = par[0]
                        out[1] = par[1]
                if lane == 0:
                    for i in range(3):
                        peaks[n, j, i] = out[i]
            cuda.syncthreads()

    _GPU["ns"] = SimpleNamespace(disk_peaks_gpu=disk_peaks_gpu)
    return _GPU["ns"]


_GPU: dict = {}


@numba.njit(cache=True)
def _pattern_peaks_cpu(c, f, thr, edge, min_spacing, max_peaks, mode, radius, width, prof, dprof, dr, peaks):
    """One pattern of ``disk_peaks_cpu``: writes ``peaks (>= max_peaks, 3)``, returns ``(count,
    candidates)``. A function of its own (compiled once, serial), so the parallel loop around it
    stays small: Numba's parallel pipeline and LLVM then take a third of the time to compile it."""
    ky, kx = c.shape
    cand_v = np.empty(MAX_CAND, np.float32)
    cand_i = np.empty(MAX_CAND, np.int32)
    sel = np.empty(MAX_PEAKS, np.int32)
    out = np.empty(3, np.float64)
    par = np.empty(N_STATE, np.float64)
    jac = np.empty(N_PAR, np.float64)
    acc = np.empty(N_ACC, np.float64)
    A = np.empty((N_PAR, N_PAR), np.float64)
    g = np.empty(N_PAR, np.float64)
    z = np.empty(N_PAR, np.float64)
    m = 0
    for y in range(edge, ky - edge):
        for x in range(edge, kx - edge):
            if _is_candidate(c, y, x, thr):
                if m < MAX_CAND:
                    cand_v[m] = c[y, x]
                    cand_i[m] = y * kx + x
                m += 1
    k = _select(cand_v, cand_i, min(m, MAX_CAND), kx, min_spacing, max_peaks, sel)
    for j in range(k):
        _start(c, sel[j], kx, mode, out)
        if mode == EDGE:
            _fit_disk(f, sel[j], kx, radius, width, prof, dprof, dr, out, par, jac, acc, A, g, z)
        for i in range(3):
            peaks[j, i] = out[i]
    return k, m


@numba.njit(parallel=True, cache=True)
def disk_peaks_cpu(corr, frames, thr, edge, min_spacing, max_peaks, mode, radius, width,
                   prof, dprof, dr, peaks, counts, n_candidates):
    for n in numba.prange(corr.shape[0]):
        k, m = _pattern_peaks_cpu(corr[n], frames[n], thr[n], edge, min_spacing, max_peaks, mode, radius, width,
                                  prof, dprof, dr, peaks[n])
        counts[n] = k
        n_candidates[n] = m


def _make_pass(is_max):
    """A pass of the opening down the columns of ``src (R, C)`` into ``dst (R, C)``: ``dst[y, x]``
    = min (``is_max``: max) of ``src[y - half : y + half + 1, x]`` clipped to the column (scipy's
    ``mode="nearest"``), by van Herk / Gil-Werman: running extrema forwards and backwards in blocks
    of the window's height, about three comparisons a pixel whatever the window, each over a whole
    row at once (contiguous selects ``a if a < b else b``, which vectorise). ``fwd, bwd``: work
    space of at least ``(R + 2 half, C)``."""

    @register_jitable
    def one_pass(src, dst, half, fwd, bwd):
        n, n_cols = src.shape
        w = 2 * half + 1
        m = n + 2 * half
        for s0 in range(0, m, w):
            e = min(s0 + w, m)
            r = min(max(s0 - half, 0), n - 1)
            for x in range(n_cols):
                fwd[s0, x] = src[r, x]
            for j in range(s0 + 1, e):
                r = min(max(j - half, 0), n - 1)
                for x in range(n_cols):
                    a = fwd[j - 1, x]
                    b = src[r, x]
                    if is_max:
                        fwd[j, x] = a if a > b else b
                    else:
                        fwd[j, x] = a if a < b else b
            r = min(max(e - 1 - half, 0), n - 1)
            for x in range(n_cols):
                bwd[e - 1, x] = src[r, x]
            for j in range(e - 2, s0 - 1, -1):
                r = min(max(j - half, 0), n - 1)
                for x in range(n_cols):
                    a = bwd[j + 1, x]
                    b = src[r, x]
                    if is_max:
                        bwd[j, x] = a if a > b else b
                    else:
                        bwd[j, x] = a if a < b else b
        for y in range(n):
            for x in range(n_cols):
                a = bwd[y, x]
                b = fwd[y + w - 1, x]
                if is_max:
                    dst[y, x] = a if a > b else b
                else:
                    dst[y, x] = a if a < b else b

    return one_pass


_erode_pass = _make_pass(False)
_dilate_pass = _make_pass(True)


@register_jitable
def _transpose(src, dst):
    """``dst = src.T`` in 16 x 16 tiles."""
    n, n_cols = src.shape
    for y0 in range(0, n, 16):
        for x0 in range(0, n_cols, 16):
            for y in range(y0, min(y0 + 16, n)):
                for x in range(x0, min(x0 + 16, n_cols)):
                    dst[x, y] = src[y, x]


@numba.njit(parallel=True, cache=True)
def white_tophat_cpu(corr, half, out):
    """``out = corr - opening(corr)`` per map, the opening a minimum then a maximum filter over a
    ``(2 half + 1)^2`` square with ``mode="nearest"``: equal, bit for bit, to scipy.ndimage's
    (min and max are exact), which the GPU path runs (``cupyx.scipy.ndimage``)."""
    for n in numba.prange(corr.shape[0]):
        _tophat_one(corr[n], half, out[n])


@numba.njit(cache=True)
def _tophat_one(c, half, o):
    """One map of ``white_tophat_cpu`` (a serial function of its own: the parallel loop stays
    small, which halves what Numba's parallel pipeline and LLVM take to compile it)."""
    ky, kx = c.shape
    size = max(ky, kx)
    fwd = np.empty((size + 2 * half, size), np.float32)
    bwd = np.empty((size + 2 * half, size), np.float32)
    a = np.empty((ky, kx), np.float32)
    b = np.empty((kx, ky), np.float32)   # transposed work images
    t = np.empty((kx, ky), np.float32)
    _erode_pass(c, a, half, fwd, bwd)    # along y
    _transpose(a, t)
    _erode_pass(t, b, half, fwd, bwd)    # along x (transposed)
    _dilate_pass(b, t, half, fwd, bwd)   # along x
    _transpose(t, a)
    _dilate_pass(a, o, half, fwd, bwd)   # along y
    for y in range(ky):
        for x in range(kx):
            o[y, x] = c[y, x] - o[y, x]


def disk_profile(template, cy, cx, radius, width, dr=0.1):
    """Radial profile of a probe image about its centre ``(cy, cx)``: ``(P, dP/dr)`` float64
    sampled at ``r = k * dr`` out to where the disk has faded; local means over 0.3-pixel rings,
    then linear interpolation onto the grid. Normalised to 0 outside and exactly 1 on the flat
    inside ``r < max(radius / 2, radius - 3 width - 1.5)`` (the edge fit's moment region)."""
    t = np.asarray(template, dtype=np.float64)
    iy, ix = np.indices(t.shape)
    r = np.hypot(iy - cy, ix - cx).ravel()
    v = t.ravel()
    flat = max(0.5 * radius, radius - 3.0 * width - 1.5)
    inside = v[r < flat].mean()
    far = r > 1.6 * radius + 3
    outside = np.median(v[far]) if far.any() else 0.0
    bins = np.arange(0.0, 1.6 * radius + 3, 0.3)
    idx = np.digitize(r, bins) - 1
    ok = (idx >= 0) & (idx < len(bins) - 1)
    cnt = np.bincount(idx[ok], minlength=len(bins) - 1)
    tot = np.bincount(idx[ok], weights=v[ok], minlength=len(bins) - 1)
    rsum = np.bincount(idx[ok], weights=r[ok], minlength=len(bins) - 1)
    have = cnt > 0
    grid = np.arange(0.0, bins[-1] + dr, dr)
    prof = np.interp(grid, rsum[have] / cnt[have], tot[have] / cnt[have])
    prof = (prof - outside) / (inside - outside)
    prof[grid < flat] = 1.0
    prof[-1] = 0.0
    return prof, np.gradient(prof, dr)


def disk_peaks(corr, frames, thr, *, edge, min_spacing, max_peaks, mode, radius=1.0, width=1.0,
               profile=None, dr=0.1):
    """Peaks of a chunk of correlation maps, on the device ``corr`` lives on (module docstring).

    Parameters
    ----------
    corr : (N, ky, kx) float32 correlation maps (NumPy or CuPy, C-contiguous)
    frames : (N, ky, kx) float32 patterns, read only by ``mode=EDGE`` (pass ``corr`` otherwise)
    thr : (N,) float32 minimum correlation per pattern
    edge : border (pixels, >= 1) where no peak is taken; min_spacing : pixels;
    max_peaks : <= MAX_PEAKS; mode : PARABOLIC | COM | EDGE
    radius, width, profile, dr : for EDGE, the probe's disk radius and edge width (pixels) and
        ``disk_profile(...)`` sampled every ``dr`` pixels

    Returns
    -------
    peaks : (N, max_peaks, 3) float32 ``(qy, qx, intensity)``, rows ``>= counts[n]`` undefined
    counts : (N,) int32 peaks found; n_candidates : (N,) int32 local maxima above threshold
    """
    is_gpu = is_gpu_array(corr)
    xp = xp_of(corr)
    n = corr.shape[0]
    prof, dprof = profile if profile is not None else (np.zeros(2), np.zeros(2))
    prof = xp.asarray(prof, dtype=xp.float64)
    dprof = xp.asarray(dprof, dtype=xp.float64)
    peaks = xp.zeros((n, max_peaks, 3), xp.float32)
    counts = xp.zeros(n, xp.int32)
    n_cand = xp.zeros(n, xp.int32)
    args = (corr, frames, thr, int(edge), float(min_spacing), int(max_peaks), int(mode),
            float(radius), float(width), prof, dprof, float(dr), peaks, counts, n_cand)
    if is_gpu:
        _gpu().disk_peaks_gpu[min(n, 65535 * 16), THREADS, cupy_stream()](*args)
    else:
        disk_peaks_cpu(*args)
    return peaks, counts, n_cand


def _disk_image(shape, centres, radius, slope, rng):
    """Sum of soft disks with a linear gradient along x, plus uniform noise (sim case)."""
    iy, ix = np.indices(shape)
    img = np.zeros(shape)
    for cy, cx in centres:
        r = np.hypot(iy - cy, ix - cx)
        img += (1.0 + slope * (ix - cx) / radius) / (1.0 + np.exp((r - radius) / 0.7))
    return (img + 0.02 * rng.random(shape)).astype(np.float32)


def _sim_case(rng):
    shape = (23, 29)
    frames = np.stack([
        _disk_image(shape, [(6.3, 7.6), (15.2, 20.4)], 3.0, 0.5, rng),
        _disk_image(shape, [(11.0, 14.0)], 3.0, -0.4, rng),
        np.zeros(shape, np.float32),
    ])
    corr = frames.copy()   # the kernel only needs maps with peaks; the disks themselves do
    thr = np.full(3, 0.1, np.float32)
    prof, dprof = disk_profile(_disk_image((15, 15), [(7.0, 7.0)], 3.0, 0.0, rng), 7.0, 7.0, 3.0, 0.7)
    common = (2, 4.0, 4)
    runs = []
    for mode in (PARABOLIC, COM, EDGE):
        want = np.zeros((3, 4, 3), np.float32)
        counts = np.zeros(3, np.int32)
        cand = np.zeros(3, np.int32)
        disk_peaks_cpu(corr, frames, thr, *common, mode, 3.0, 0.7, prof, dprof, 0.1, want, counts, cand)
        runs.append(np.concatenate([want.ravel(), counts, cand]))

    def launch():
        got = []
        for mode in (PARABOLIC, COM, EDGE):
            peaks = np.zeros((3, 4, 3), np.float32)
            counts = np.zeros(3, np.int32)
            cand = np.zeros(3, np.int32)
            _gpu().disk_peaks_gpu[2, 32](corr, frames, thr, *common, mode, 3.0, 0.7, prof, dprof, 0.1, peaks, counts, cand)
            got.append(np.concatenate([peaks.ravel(), counts, cand]))
        return np.concatenate(got).astype(np.float64)

    return launch, np.concatenate(runs).astype(np.float64), 1e-5, 1e-5


register(
    "disk_peaks",
    LazyKernel(_gpu, "disk_peaks_gpu"),
    ["(float32[:, :, ::1], float32[:, :, ::1], float32[::1], int64, float64, int64, int64, float64,"
     " float64, float64[::1], float64[::1], float64, float32[:, :, ::1], int32[::1], int32[::1])"],
    _sim_case,
)
