"""Filtered (weighted) backprojection and Fourier-gridding FBP (gridrec).

Conventions (DESIGN.md §3): tilt series ``(n_angles, n_rows, n_cols)``, angles in degrees,
``center`` the detector column of the rotation axis (default ``(n_cols - 1) / 2``), volume
``(n_rows, n_x, n_x)`` indexed ``[y, z, x]`` with x, z measured from ``(n_x - 1) / 2`` and
``p(y, u) = integral of f along u = x cos(theta) + z sin(theta)``. Units: densities per voxel, so
a reconstructed uniform disk of density 1 reads ~1.

Both methods share one discretisation: the projections are zero-padded to ``L`` (next power of
two >= 2 n_cols), filtered with the DFT of the spatial-domain ramp kernel of Kak & Slaney
(``h[0] = 1/4``, ``h[n] = -1/(pi n)^2`` for odd n, 0 for even n; no DC bias) times an apodisation
window, and weighted per projection by its angular sector (``angular_weights``). ``fbp`` then
backprojects with ``projectors.backproject`` (distance-driven weights, DESIGN.md §3);
``gridrec`` evaluates the same filtered Fourier samples on their polar grid with a type-1
non-uniform FFT (Fourier slice theorem), which is exact band-limited interpolation and
O(N^2 log N) per slice.
"""
from __future__ import annotations

import functools
import math
import os

import finufft
import numpy as np

from ..errors import GeometryError, InputError
from ..gpu_core import backend, chunks
from ..gpu_core.kernels import gridding
from .geometry import TiltGeometry, check_series
from .projectors import backproject

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
WEIGHTINGS = ("auto", "uniform")
CPU_CHUNK_BYTES = 2 << 30
GRIDREC_EPS = 1e-5  # NUFFT tolerance: 10x below float32 GPU/CPU agreement, far below FBP error


# ---------------------------------------------------------------------------------------------
# filters and weights
# ---------------------------------------------------------------------------------------------
def padded_length(n_cols: int, padding: bool = True) -> int:
    """FFT length along the detector: next power of two >= 2 n_cols, or n_cols without padding."""
    if not padding:
        return int(n_cols)
    return 1 << int(math.ceil(math.log2(max(2 * n_cols, 2))))


def ramp_filter(n_cols: int, filter: str = "ram-lak", padding: bool = True) -> np.ndarray:
    """Frequency response on the ``rfft`` bins ``k / L`` (k = 0..L/2) of the padded rows, float64.

    The ramp is the DFT of the spatial Kak & Slaney kernel (≈ |nu| in cycles/pixel, 0.5 at
    Nyquist, small positive at DC), times the window W(nu): shepp-logan ``sinc(nu)``, cosine
    ``cos(pi nu)``, hamming ``0.54 + 0.46 cos(2 pi nu)``, hann ``cos(pi nu)^2``.
    """
    if filter not in FILTERS:
        raise InputError(f"filter must be one of {FILTERS}, got {filter!r}")
    size = padded_length(n_cols, padding)
    n = np.arange(size)
    n = np.where(n > size // 2, n - size, n)
    h = np.zeros(size)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.fft.rfft(h).real
    nu = np.arange(response.size) / size
    if filter == "shepp-logan":
        response *= np.sinc(nu)
    elif filter == "cosine":
        response *= np.cos(np.pi * nu)
    elif filter == "hamming":
        response *= 0.54 + 0.46 * np.cos(2 * np.pi * nu)
    elif filter == "hann":
        response *= np.cos(np.pi * nu) ** 2
    return response


def angular_weights(angles_deg, weighting: str = "auto") -> np.ndarray:
    """Weight (radians) of each projection in the backprojection sum, in the input order.

    ``auto`` (weighted backprojection): each projection gets its angular sector, half the
    interval to each neighbour (the end projections the interval to their one neighbour), and
    the sectors are scaled to add up to pi. Uneven steps are thus integrated correctly, data over
    more than a half turn (every direction seen twice) are not counted twice, and a limited
    range (±70°) keeps the low frequencies, i.e. the densities, at their true level: a uniform
    disk of density 1 reads 1, where unscaled sectors over ±70° would read 141/180 of it. For evenly spaced
    angles this equals ``uniform``: pi / n_angles each (classic FBP, as ASTRA and scikit-image).
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    theta = np.radians(np.asarray(angles_deg, dtype=np.float64))
    n = theta.size
    if weighting == "uniform" or n == 1:
        return np.full(n, np.pi / n)
    order = np.argsort(theta, kind="stable")
    t = theta[order]
    gaps = np.diff(t)
    sector = np.empty(n)
    sector[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    sector[0], sector[-1] = gaps[0], gaps[-1]
    total = sector.sum()
    if total <= 0:  # every projection at the same angle
        return np.full(n, np.pi / n)
    sector *= np.pi / total
    weights = np.empty(n)
    weights[order] = sector
    return weights


def _check(projections, angles_deg, center, n_x):
    """Validate inputs; return (xp, angles float64 numpy, center float, n_x int)."""
    check_series(projections)
    n_angles, n_rows, n_cols = projections.shape
    geo = TiltGeometry(angles_deg, n_rows, n_cols, center=center)
    if geo.n_angles != n_angles:
        raise GeometryError(
            f"got {geo.n_angles} angles for {n_angles} projections (axis 0 of the tilt series); they must match"
        )
    n_x = n_cols if n_x is None else int(n_x)
    if n_x < 1:
        raise InputError(f"n_x must be a positive number of voxels, got {n_x}")
    return backend.xp_of(projections), geo.angles_deg, geo.center, n_x


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _rfft(xp, a, n):
    if xp is np:
        import scipy.fft

        return scipy.fft.rfft(a, n=n, axis=-1, workers=_cores())
    return xp.fft.rfft(a, n=n, axis=-1)


def _irfft(xp, a, n):
    if xp is np:
        import scipy.fft

        return scipy.fft.irfft(a, n=n, axis=-1, workers=_cores())
    return xp.fft.irfft(a, n=n, axis=-1)


def filter_projections(projections, filter: str = "ram-lak", padding: bool = True):
    """Ramp-filter every detector row along the columns (zero padding), float32, same device."""
    xp = backend.xp_of(projections)
    n_cols = projections.shape[-1]
    size = padded_length(n_cols, padding)
    response = xp.asarray(ramp_filter(n_cols, filter, padding), dtype=xp.float32)
    spectrum = _rfft(xp, xp.asarray(projections, dtype=xp.float32), size)
    spectrum *= response
    return xp.ascontiguousarray(_irfft(xp, spectrum, size)[..., :n_cols], dtype=xp.float32)


def _budget(xp) -> int:
    """Bytes per chunk of slices: the device budget; on the CPU at most CPU_CHUNK_BYTES (cache)."""
    if xp is np:
        return min(backend.memory_budget("cpu"), CPU_CHUNK_BYTES)
    return backend.memory_budget("gpu")


# ---------------------------------------------------------------------------------------------
# FBP
# ---------------------------------------------------------------------------------------------
def fbp(projections, angles_deg, center=None, filter="ram-lak", padding=True, weighting="auto", n_x=None):
    """Filtered (weighted) backprojection of a tilt series, slice by slice.

    Parameters
    ----------
    projections : (n_angles, n_rows, n_cols) array, NumPy or CuPy, linear in projected density
    angles_deg : (n_angles,) tilt angles in degrees
    center : detector column (pixels) of the rotation axis; default ``(n_cols - 1) / 2``
    filter : one of ``FILTERS`` (ramp times window)
    padding : zero-pad rows to the next power of two >= 2 n_cols before filtering
    weighting : ``"auto"`` angular-sector weights (limited/uneven tilts), ``"uniform"`` pi/n_angles
    n_x : reconstructed slice width (voxels); default n_cols

    Returns
    -------
    volume : (n_rows, n_x, n_x) float32 ``[y, z, x]``, on the device of ``projections``
    """
    xp, angles, center, n_x = _check(projections, angles_deg, center, n_x)
    if filter not in FILTERS:
        raise InputError(f"filter must be one of {FILTERS}, got {filter!r}")
    weights = xp.asarray(angular_weights(angles, weighting), dtype=xp.float32)[:, None, None]
    n_angles, n_rows, n_cols = projections.shape
    out = xp.empty((n_rows, n_x, n_x), xp.float32)
    size = padded_length(n_cols, padding)
    per_row = n_angles * (size * 12 + n_cols * 8) + n_x * n_x * 8

    def process(sl):
        filtered = filter_projections(projections[:, sl], filter, padding)
        filtered *= weights
        out[sl] = backproject(filtered, angles, center=center, n_x=n_x)

    chunks.run_chunked(process, n_rows, per_row, _budget(xp))
    return out


# ---------------------------------------------------------------------------------------------
# gridrec
# ---------------------------------------------------------------------------------------------
def polar_samples(angles_deg, n_cols, n_x, center, padding=True):
    """Polar grid of the filtered Fourier samples: ``(points_z, points_x)`` in radians/voxel,
    each (n_angles * K,), K = L/2 + 1, and the per-sample phase (n_angles, K) complex128.

    Sample (i, k) sits at frequency ``nu_k = k / L`` (cycles/pixel) along direction theta_i:
    ``2 pi nu_k (sin theta_i, cos theta_i)`` on the (z, x) axes. The phase
    ``exp(2 pi i nu_k (center + d (cos theta_i + sin theta_i)))`` moves the detector origin to
    ``center`` and the NUFFT's mode origin (index n_x // 2) to the volume centre (n_x - 1) / 2,
    ``d = n_x // 2 - (n_x - 1) / 2``.
    """
    size = padded_length(n_cols, padding)
    theta = np.radians(np.asarray(angles_deg, dtype=np.float64))
    nu = np.arange(size // 2 + 1) / size
    radius = 2 * np.pi * nu[None, :]
    points_z = (radius * np.sin(theta)[:, None]).ravel()
    points_x = (radius * np.cos(theta)[:, None]).ravel()
    shift = n_x // 2 - (n_x - 1) / 2
    phase = np.exp(2j * np.pi * nu[None, :] * (center + shift * (np.cos(theta) + np.sin(theta)))[:, None])
    return points_z, points_x, phase


@functools.lru_cache(maxsize=4)
def _polar_cached(angles_bytes, n_cols, n_x, center, padding):
    """``polar_samples`` for one geometry, kept for the next call (read-only arrays)."""
    out = polar_samples(np.frombuffer(angles_bytes, np.float64), n_cols, n_x, center, padding)
    for a in out:
        a.setflags(write=False)
    return out


def _polar_coefficients(xp, sinograms, factors, size, dtype):
    """rfft of (n_angles, S, n_cols) sinograms times factors (n_angles, K) -> (S, n_angles * K)."""
    spectrum = _rfft(xp, sinograms, size)  # (A, S, K)
    spectrum = spectrum * factors[:, None, :]
    return xp.ascontiguousarray(spectrum.transpose(1, 0, 2)).reshape(sinograms.shape[1], -1).astype(dtype)


#: finufft plans with their points set, reused across calls and chunks of the same geometry
#: (plan creation + setpts cost about as much as one 512^2 slice's transform); a few kept
_PLANS: dict = {}
_MAX_PLANS = 4


def _finufft_type1(points_z, points_x, n_x, eps, xp, key=None):
    """CPU type-1 NUFFT: finufft plans (one per chunk size) sharing the points; complex128.
    ``key`` names the geometry the points come from: plans are then cached across calls."""
    plans = {}

    def run(coeffs):
        count = coeffs.shape[0]
        full = None if key is None else (key, count, n_x, eps, _cores())
        plan = plans.get(count) if full is None else _PLANS.get(full)
        if plan is None:
            plan = finufft.Plan(1, (n_x, n_x), n_trans=count, eps=eps, isign=1, dtype=np.complex128,
                                nthreads=_cores())
            plan.setpts(points_z, points_x)
            if full is None:
                plans[count] = plan
            else:
                while len(_PLANS) >= _MAX_PLANS:
                    _PLANS.pop(next(iter(_PLANS)))
                _PLANS[full] = plan
        return plan.execute(coeffs)

    return run, np.complex128


def _gridding_type1(points_z, points_x, n_x, eps, xp, key=None):
    """Type-1 NUFFT by the gridding kernel (GPU kernel on CuPy, its Numba twin on NumPy); complex64."""
    return gridding.Spreader(points_z, points_x, n_x, eps, xp).type1, xp.complex64


def gridrec(projections, angles_deg, center=None, filter="ram-lak", padding=True, weighting="auto", n_x=None,
            eps=GRIDREC_EPS):
    """Fourier-gridding FBP: same arguments, discretisation and units as ``fbp``.

    Each padded, filtered, angle-weighted projection row's rfft gives the slice's 2-D Fourier
    transform on a polar grid; a type-1 NUFFT (finufft on the CPU, many slices per plan; the
    ``gpu_core.kernels.gridding`` kernel on the GPU) evaluates it on the Cartesian voxel grid.
    Voxel values are box averages: the spectrum carries the unit box's transfer function
    ``sinc(nu)`` along the radius, as fbp's distance-driven back projection does implicitly.
    ``eps`` is the NUFFT's relative tolerance.

    Returns (n_rows, n_x, n_x) float32 ``[y, z, x]`` on the device of ``projections``.
    """
    xp, angles, center, n_x = _check(projections, angles_deg, center, n_x)
    if not (0 < eps < 1):
        raise InputError(f"eps must be in (0, 1), got {eps}")
    n_angles, n_rows, n_cols = projections.shape
    size = padded_length(n_cols, padding)
    n_freq = size // 2 + 1
    points_z, points_x, phase = _polar_cached(np.asarray(angles, np.float64).tobytes(), n_cols, n_x, float(center),
                                              bool(padding))
    # rfft bins 1..L/2-1 stand for +-nu (Hermitian pair): weight 2, then keep the real part
    pair = np.full(n_freq, 2.0)
    pair[0] = 1.0
    pair[-1] = 1.0
    # voxel values are box averages (as fbp's distance-driven back projection and the phantoms'
    # rasterisation make them): the unit box's transfer function along the radius, sinc(nu)
    voxel = np.sinc(np.arange(n_freq) / size)
    factors = (angular_weights(angles, weighting)[:, None]
               * (ramp_filter(n_cols, filter, padding) * voxel * pair / size)[None, :] * phase)
    out = xp.empty((n_rows, n_x, n_x), xp.float32)
    per_row = n_angles * (n_cols * 8 + n_freq * 48) + n_x * n_x * 96

    if xp is np:
        key = (np.asarray(angles, np.float64).tobytes(), n_cols, float(center), bool(padding))
        type1, dtype = _finufft_type1(points_z, points_x, n_x, eps, xp, key=key)
    else:
        type1, dtype = _gridding_type1(points_z, points_x, n_x, eps, xp)
    real = xp.float64 if dtype == xp.complex128 else xp.float32
    factors = xp.asarray(factors, dtype=dtype)

    def process(sl):
        coeffs = _polar_coefficients(xp, projections[:, sl].astype(real), factors, size, dtype)
        out[sl] = type1(coeffs).real.reshape(sl.stop - sl.start, n_x, n_x)

    chunks.run_chunked(process, n_rows, per_row, _budget(xp), minimum=1)
    return out
