"""Virtual-detector reduction of a chunk of diffraction patterns.

For each pattern (flattened to P = ky*kx pixels) and M weight images (virtual detector masks):
``out[n, m] = sum_p frame[n, p] * mask[m, p]`` for m < M, then three more columns
``sum_p frame*iy``, ``sum_p frame*ix``, ``sum_p frame`` from which the intensity-weighted centre
of mass follows. One pass over each pattern serves every mask.

GPU: one block per pattern (grid-stride over patterns), threads stride over pixels, a shared-memory
tree reduction per column. CPU twin: ``prange`` over patterns. Both accumulate in float64 through
the same device function ``_accumulate``.

``radial_sums``: per pattern, the sums over M annuli ``inner <= r < outer`` about the pattern's own
origin (within a detector box) and the radial profile in 1-pixel bins ``floor(r_e - r_min)`` of the
ellipse-corrected radius ``r_e``, in one pass over the pixels, all in float64 (the virtual BF/ADF
images and the phase map's profiles). GPU: one block per pattern, threads stride over pixels and
add into the outputs atomically; CPU twin: ``prange`` over patterns. Both call ``_radial_pixel``.

``disk_centroids_cpu``: the thresholded centroid of the central disk (``calibrate.disk_centroids``)
on the CPU, for every pattern of a chunk in one pass per window; the GPU runs the same arithmetic as
CuPy array expressions (``calibrate._thresholded_centroid``), against which the tests hold it.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.extending import register_jitable

from ..backend import is_gpu_array, xp_of
from . import LazyKernel, cupy_stream, register

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


def _gpu():
    """The CUDA kernels (built once, on first use: importing numba.cuda costs ~0.4 s, which a CPU
    run does not pay)."""
    if _GPU:
        return _GPU["ns"]
    from types import SimpleNamespace

    global cuda  # a module global, as the CUDA simulator expects (it swaps the kernels' globals)
    from numba import cuda

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

    @cuda.jit
    def radial_sums_gpu(frames, origins, box, edges2, ell, r_min, sums, prof):
        """See ``radial_sums``; ``sums`` and ``prof`` zeroed before the launch."""
        tid = cuda.threadIdx.x
        ky = frames.shape[1]
        kx = frames.shape[2]
        n_prof = prof.shape[1]
        y0, y1, x0, x1 = _pixel_range(box, ky, kx, n_prof)
        width = x1 - x0
        for n in range(cuda.blockIdx.x, frames.shape[0], cuda.gridDim.x):
            for p in range(tid, (y1 - y0) * width, cuda.blockDim.x):
                y = y0 + p // width
                x = x0 + p - (p // width) * width
                v = frames[n, y, x]
                if v == 0.0:
                    continue
                r2, b = _radial_pixel(y, x, origins[n, 0], origins[n, 1], ell, r_min)
                if _in_box(y, x, box):
                    for m in range(edges2.shape[0]):
                        if r2 >= edges2[m, 0] and r2 < edges2[m, 1]:
                            cuda.atomic.add(sums, (n, m), float(v))
                if b >= 0 and b < n_prof:
                    cuda.atomic.add(prof, (n, b), float(v))

    _GPU["ns"] = SimpleNamespace(virtual_detector_gpu=virtual_detector_gpu, radial_sums_gpu=radial_sums_gpu)
    return _GPU["ns"]


_GPU: dict = {}


@numba.njit(parallel=True, cache=True)
def virtual_detector_cpu(frames, masks, kx, out):
    n_cols = masks.shape[0] + 3
    for n in numba.prange(frames.shape[0]):
        acc = np.zeros(n_cols, np.float64)
        _accumulate(frames[n], masks, kx, 0, 1, acc)
        for c in range(n_cols):
            out[n, c] = acc[c]


@register_jitable
def _radial_pixel(y, x, oy, ox, ell, r_min):
    """``(r², bin)`` of pixel ``(y, x)`` about ``(oy, ox)``: the squared plain radius (annuli) and
    the profile bin ``floor(r_e - r_min)`` of the ellipse-corrected radius ``r_e`` (``ell = (uy, ux,
    1 - 1/ratio)``, ``calibrate.correct_ellipse``; ``ell[2] = 0``: none); float64 throughout."""
    dy = y - oy
    dx = x - ox
    r2 = dy * dy + dx * dx
    if ell[2] != 0.0:
        along = (dy * ell[0] + dx * ell[1]) * ell[2]
        qy = dy - along * ell[0]
        qx = dx - along * ell[1]
        re = math.sqrt(qy * qy + qx * qx)
    else:
        re = math.sqrt(r2)
    t = re - r_min
    return r2, (int(t) if t >= 0.0 else -1)           # floor, for t >= 0


@register_jitable
def _in_box(y, x, box):
    return y >= box[0] and y < box[1] and x >= box[2] and x < box[3]


@register_jitable
def _pixel_range(box, ky, kx, n_prof):
    """The pixels a pattern's loop visits: the whole detector for a profile, else the box."""
    if n_prof > 0:
        return 0, ky, 0, kx
    return max(box[0], 0), min(box[1], ky), max(box[2], 0), min(box[3], kx)


@numba.njit(parallel=True, cache=True)
def radial_sums_cpu(frames, origins, box, edges2, ell, r_min, sums, prof):
    n_pat, ky, kx = frames.shape
    n_prof = prof.shape[1]
    n_ann = edges2.shape[0]
    y0, y1, x0, x1 = _pixel_range(box, ky, kx, n_prof)
    for n in numba.prange(n_pat):
        acc = np.zeros(n_ann, np.float64)
        hist = np.zeros(n_prof, np.float64)
        oy = origins[n, 0]
        ox = origins[n, 1]
        for y in range(y0, y1):
            for x in range(x0, x1):
                v = frames[n, y, x]
                if v == 0.0:
                    continue
                r2, b = _radial_pixel(y, x, oy, ox, ell, r_min)
                if _in_box(y, x, box):
                    for m in range(n_ann):
                        if r2 >= edges2[m, 0] and r2 < edges2[m, 1]:
                            acc[m] += v
                if b >= 0 and b < n_prof:
                    hist[b] += v
        for m in range(n_ann):
            sums[n, m] = acc[m]
        for b in range(n_prof):
            prof[n, b] = hist[b]


def radial_sums(frames, origins, edges=(), box=None, *, ellipse=None, r_min=0.0, nbins=0):
    """Annular sums and radial profiles of a chunk of patterns, each about its own origin, on the
    device ``frames`` lives on (module docstring).

    Parameters
    ----------
    frames : (N, ky, kx) float32 patterns (NumPy or CuPy)
    origins : (N, 2) origin ``(qy0, qx0)`` of each pattern, pixels
    edges : M pairs ``(inner, outer)``: the sums over ``inner <= r < outer`` (plain radius)
    box : ``(y0, y1, x0, x1)`` detector pixels the annuli are summed over (default: all)
    ellipse : ``(ratio, angle_deg)`` or None: the profile's radius is ``calibrate.correct_ellipse``'s
    r_min, nbins : profile bins ``r_min + [b, b + 1)`` px, ``b < nbins`` (0: no profile)

    Returns
    -------
    sums : (N, M) float64; prof : (N, nbins) float64
    """
    is_gpu = is_gpu_array(frames)
    xp = xp_of(frames)
    n, ky, kx = frames.shape
    frames = xp.ascontiguousarray(frames, dtype=xp.float32)
    origins = xp.ascontiguousarray(xp.asarray(origins, dtype=xp.float64).reshape(n, 2))
    edges2 = np.asarray(edges, np.float64).reshape(-1, 2) ** 2
    box = np.asarray((0, ky, 0, kx) if box is None else box, np.int64)
    if ellipse is None:
        ell = np.zeros(3)
    else:
        ratio, angle = float(ellipse[0]), float(ellipse[1])
        a = math.radians(angle)
        ell = np.array([math.sin(a), math.cos(a), 1.0 - 1.0 / ratio])
    sums = xp.zeros((n, edges2.shape[0]), xp.float64)
    prof = xp.zeros((n, int(nbins)), xp.float64)
    args = (frames, origins, xp.asarray(box), xp.asarray(edges2), xp.asarray(ell), float(r_min), sums, prof)
    if is_gpu:
        _gpu().radial_sums_gpu[min(max(n, 1), 65535 * 16), THREADS, cupy_stream()](*args)
    else:
        radial_sums_cpu(*args)
    return sums, prof


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
            _gpu().virtual_detector_gpu[grid, THREADS, cupy_stream()](flat, group, kx, out)
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
        _gpu().virtual_detector_gpu[5, THREADS](frames.reshape(37, 99), masks, 11, got)  # 5 blocks, 37 patterns
        return got

    return launch, want, 1e-9, 1e-9


def _radial_sim_case(rng):
    frames = rng.poisson(2.0, (7, 13, 11)).astype(np.float32)
    frames[3] = 0.0
    origins = np.column_stack([5.3 + rng.random(7), 4.6 + rng.random(7)])
    box = np.array([1, 12, 0, 10], np.int64)
    edges2 = np.array([[0.0, 3.2], [2.5, 5.5]]) ** 2
    ell = np.array([math.sin(0.4), math.cos(0.4), 1.0 - 1.0 / 1.07])
    want_s, want_p = np.zeros((7, 2)), np.zeros((7, 6))
    radial_sums_cpu(frames, origins, box, edges2, ell, 0.7, want_s, want_p)

    def launch():
        got_s, got_p = np.zeros_like(want_s), np.zeros_like(want_p)
        _gpu().radial_sums_gpu[3, 32](frames, origins, box, edges2, ell, 0.7, got_s, got_p)  # 3 blocks, 7 patterns
        return np.concatenate([got_s.ravel(), got_p.ravel()])

    return launch, np.concatenate([want_s.ravel(), want_p.ravel()]), 1e-12, 1e-9


register(
    "radial_sums",
    LazyKernel(_gpu, "radial_sums_gpu"),
    ["(float32[:, :, ::1], float64[:, ::1], int64[::1], float64[:, ::1], float64[::1], float64,"
     " float64[:, ::1], float64[:, ::1])"],
    _radial_sim_case,
)

register(
    "virtual_detector",
    LazyKernel(_gpu, "virtual_detector_gpu"),
    ["(float32[:, ::1], float32[:, ::1], int64, float64[:, ::1])"],
    _sim_case,
)

assert math.log2(THREADS).is_integer()  # the tree reduction halves THREADS


@numba.njit(parallel=True, cache=True)
def disk_centroids_cpu(frames, start, windows, radius, box, out):
    """Thresholded centroids of the central disk, ``calibrate._thresholded_centroid`` applied once
    per entry of ``windows`` in turn (each from the previous centre), for every pattern at once.

    frames (N, ky, kx) float32; start (N, 2) float64 first centres; windows (W,) float64; box
    ``(y0, y1, x0, x1)`` int64, the detector pixels read; out (N, 2) float64. Per window: ``level``
    = mean of the pixels with ``r < radius`` about the centre, weights ``max(f - level / 2, 0)``
    for ``r < window``, centre = their centroid (NaN where they sum to 0; a NaN centre stays NaN).
    Float64 sums where the NumPy/CuPy expression sums in float32: equal up to that rounding.
    The GPU path runs the array expression (CuPy); this twin spares the CPU its ~10 temporaries.
    """
    n_pat = frames.shape[0]
    y0, y1, x0, x1 = box[0], box[1], box[2], box[3]
    rad2 = radius * radius
    for n in numba.prange(n_pat):
        cy = start[n, 0]
        cx = start[n, 1]
        for w in range(windows.shape[0]):
            win2 = windows[w] * windows[w]
            s = 0.0
            c = 0.0
            for y in range(y0, y1):
                dy2 = (y - cy) * (y - cy)
                for x in range(x0, x1):
                    if dy2 + (x - cx) * (x - cx) < rad2:
                        s += frames[n, y, x]
                        c += 1.0
            half = 0.5 * (s / max(c, 1.0))
            tot = 0.0
            sy = 0.0
            sx = 0.0
            for y in range(y0, y1):
                dy2 = (y - cy) * (y - cy)
                for x in range(x0, x1):
                    if dy2 + (x - cx) * (x - cx) < win2:
                        v = frames[n, y, x] - half
                        if v > 0.0:
                            tot += v
                            sy += v * y
                            sx += v * x
            if tot > 0.0:
                cy = sy / tot
                cx = sx / tot
            else:
                cy = math.nan
                cx = math.nan
        out[n, 0] = cy
        out[n, 1] = cx
