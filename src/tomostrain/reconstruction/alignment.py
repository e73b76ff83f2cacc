"""Tilt-series alignment: tilt-axis angle, per-projection shifts and the rotation centre.

The result follows the one alignment formula of DESIGN.md §3, ``aligned(p) = raw(R(a) @ p + s)``,
and is found in three steps, each a batched array operation over all projections (NumPy or CuPy):

1. **Tilt axis and shifts along it (common line).** In parallel projection the profile of a
   projection along the tilt axis, ``P(t) = sum over the perpendicular direction``, equals
   ``integral of f(y, z, x) dz dx`` at every tilt when the object stays in the field of view. So
   for the right axis angle ``a`` all profiles are one curve moved by each projection's shift along
   the axis, ``s . (cos a, -sin a)``. ``a`` minimises the spread of the profiles once each is moved
   onto the others (a grid over ``tilt_axis_deg +- search_deg``, then a parabola through the best
   three); the 180-degree twin ``a + 180`` (the same line, a mirrored volume) is excluded by the
   search window around the microscope's nominal axis.
2. **Shifts across the axis (centre of mass).** The centre of mass of a projection across the axis
   follows ``A cos(theta) + B sin(theta)`` about the rotation axis (the object's centre of mass at
   ``x = A, z = B``). Each projection's deviation from the fitted sinusoid is its shift, so the
   rotation axis lands on the image centre.
3. **Projection matching** (``refine`` rounds): reconstruct the aligned series (SIRT), reproject
   it, and move each projection onto its reprojection (batched FFT cross-correlation with a
   parabolic sub-pixel peak). This corrects what the centre of mass gets wrong (mass leaving the
   field of view at high tilt, background).

Shifts are defined up to a common translation (DESIGN.md §3); ``align`` fixes it by putting the
rotation axis on the image centre column (``center = (n_cols - 1) / 2``) and the mean shift along
the axis at zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from ..gpu_core.registration import fourier_shift_1d, shift_1d, shift_2d
from .geometry import _rotation, align_projections, unpack_series

_GRID_STEP_DEG = 0.5
MATCH_SIZE = 256     # the tilt-axis search and projection matching bin projections to this size


@dataclass
class Alignment:
    """Result of ``align``: DESIGN.md §3's ``aligned(p) = raw(R(a) @ p + s)``.

    shifts : (n_angles, 2) float64 ``(dy, dx)`` pixels, in the raw frame
    center : rotation-axis column of the aligned projections (pixels)
    tilt_axis_deg : in-plane tilt-axis angle ``a`` (degrees)
    """

    shifts: np.ndarray
    center: float
    tilt_axis_deg: float

    def apply(self, series, order: int = 3):
        """Aligned projections (n_angles, n_rows, n_cols) float32 of ``series`` (a TiltSeries or
        its data array), on the same device; ``order`` is the spline order (1 linear, 3 cubic)."""
        data = series.data if hasattr(series, "angles_deg") else series
        return align_projections(data, self.shifts, self.tilt_axis_deg, order=order)


def align(series, angles_deg=None, *, tilt_axis_deg: float = 0.0, search_deg: float = 10.0,
          find_tilt_axis: bool = True, refine: int = 2, refine_iterations: int = 20,
          backend: str | None = None) -> Alignment:
    """Align a tilt series of an object that stays in the field of view (module docstring).

    series : a TiltSeries, or the (n_angles, n_rows, n_cols) data with ``angles_deg=``; intensity
        linear in projected mass with the vacuum dark (HAADF-STEM, or -log of bright field)
    tilt_axis_deg : the nominal tilt-axis angle ``a`` (degrees, DESIGN.md §3), e.g. from the
        microscope; with ``find_tilt_axis`` it is searched within ``+- search_deg`` of this
    refine : rounds of projection matching (0 = common line and centre of mass only)
    refine_iterations : SIRT iterations of each projection-matching reconstruction
    backend : None = where the data live; "cpu" | "gpu" | "auto"

    Returns an ``Alignment`` (shifts on the host).
    """
    data, angles = unpack_series(series, angles_deg)
    n, ny, nx = data.shape
    if n < 3:
        raise InputError(f"alignment needs at least 3 projections, got {n}")
    if not (0.0 <= search_deg < 90.0) or not np.isfinite(tilt_axis_deg):
        raise InputError(f"search_deg must be in [0, 90) and tilt_axis_deg finite, got {search_deg}, {tilt_axis_deg}")
    if int(refine) < 0:
        raise InputError(f"refine must be >= 0 rounds, got {refine}")
    if backend is not None:
        data = _backend.to_device(data, _backend.resolve(backend))
    xp = _backend.xp_of(data)
    img = xp.asarray(data, dtype=xp.float32)
    img = img - _border_median(img, xp)[:, None, None]   # vacuum to zero

    if find_tilt_axis and search_deg > 0:
        a = _find_tilt_axis(_binned(img, _bin_factor(img))[0], float(tilt_axis_deg), float(search_deg), xp)
    else:
        a = float(tilt_axis_deg)
    along = _shifts_along_axis(_axis_profiles(img, a, xp), xp)
    across = _shifts_across_axis(img, a, np.radians(angles), xp)
    shifts = _raw_shifts(along, across, a)
    for _ in range(int(refine)):
        shifts = _match_projections(img, angles, shifts, a, int(refine_iterations), xp)
    return Alignment(shifts=shifts, center=(nx - 1) / 2.0, tilt_axis_deg=a)


def shift_errors(found, true, angles_deg, tilt_axis_deg: float) -> tuple[float, float]:
    """RMS differences (pixels) between two sets of raw-frame shifts ``(n, 2)``, across and along
    the tilt axis, ignoring what only moves the whole object: a common shift along the axis, and
    across it ``c + alpha cos(theta) + beta sin(theta)`` (the object moved in x and z)."""
    a = np.radians(tilt_axis_deg)
    diff = np.asarray(found, np.float64) - np.asarray(true, np.float64)
    along = diff @ np.array([np.cos(a), -np.sin(a)])
    across = diff @ np.array([np.sin(a), np.cos(a)])
    th = np.radians(np.asarray(angles_deg, np.float64))
    design = np.column_stack([np.ones_like(th), np.cos(th), np.sin(th)])
    across = across - design @ np.linalg.lstsq(design, across, rcond=None)[0]
    return float(np.sqrt(np.mean(across ** 2))), float(np.sqrt(np.mean((along - along.mean()) ** 2)))


def _border_median(img, xp):
    """Per-projection median of the one-pixel image border (the vacuum level)."""
    border = xp.concatenate([img[:, 0, :], img[:, -1, :], img[:, :, 0], img[:, :, -1]], axis=1)
    return xp.median(border, axis=1)


def _axes(a_deg):
    """Unit vectors (dy, dx) along the tilt axis and across it in the raw frame, for angle a."""
    a = np.radians(a_deg)
    return np.array([np.cos(a), -np.sin(a)]), np.array([np.sin(a), np.cos(a)])


def _axis_profiles(img, a_deg, xp):
    """(n, L) profiles of every projection along the tilt axis: pixel values binned (linear
    split between the two nearest unit bins) by ``t = (p - centre) . e_axis``."""
    n, ny, nx = img.shape
    e_axis, _ = _axes(a_deg)
    half = int(np.ceil(np.hypot(ny, nx) / 2.0)) + 1
    iy, ix = xp.indices((ny, nx), dtype=xp.float64)
    t = (iy - (ny - 1) / 2.0) * e_axis[0] + (ix - (nx - 1) / 2.0) * e_axis[1] + half
    lo = xp.floor(t).astype(xp.int64).ravel()
    frac = (t - xp.floor(t)).ravel()
    length = 2 * half + 2
    idx = (xp.arange(n)[:, None] * length + lo[None, :]).ravel()
    vals = img.reshape(n, -1).astype(xp.float64)
    prof = xp.bincount(idx, weights=(vals * (1.0 - frac)).ravel(), minlength=n * length)
    prof += xp.bincount(idx + 1, weights=(vals * frac).ravel(), minlength=n * length)
    return prof.reshape(n, length)


def _register_profiles(profiles, xp):
    """Move the axis profiles onto one another: each onto the mean of the moved profiles, twice
    (the first reference is the median profile). Returns ``(shifts, moved profiles, reference)``."""
    reference = xp.median(profiles, axis=0)
    for _ in range(2):
        d = shift_1d(profiles, reference, xp)
        moved = fourier_shift_1d(profiles, d, xp)
        reference = moved.mean(axis=0)
    return d, moved, reference


def _shifts_along_axis(profiles, xp):
    """Each profile's shift along the axis (pixels, mean zero)."""
    d, _, reference = _register_profiles(profiles, xp)
    d = shift_1d(profiles, reference, xp)
    return _backend.to_host(d - d.mean()).astype(np.float64)


def _profile_spread(img, a_deg, xp) -> float:
    """How far the axis profiles at angle ``a`` are from one curve once their shifts are undone
    (residual energy over total energy)."""
    _, moved, reference = _register_profiles(_axis_profiles(img, a_deg, xp), xp)
    return float(((moved - reference[None, :]) ** 2).sum() / ((moved ** 2).sum() + 1e-300))


def _find_tilt_axis(img, a0, search, xp) -> float:
    """Tilt-axis angle (degrees) minimising the profile spread within ``a0 +- search``: a grid
    every 0.5 degree, then the vertex of the parabola through the best point and its neighbours."""
    grid = a0 + np.arange(-search, search + 1e-9, _GRID_STEP_DEG)
    spread = np.array([_profile_spread(img, a, xp) for a in grid])
    k = int(np.argmin(spread))
    if 0 < k < len(grid) - 1:
        ym, y0, yp = spread[k - 1], spread[k], spread[k + 1]
        den = ym - 2.0 * y0 + yp
        if den > 0:
            return float(grid[k] + _GRID_STEP_DEG * 0.5 * (ym - yp) / den)
    return float(grid[k])


def _shifts_across_axis(img, a_deg, theta, xp):
    """Each projection's shift across the axis: its centre of mass there minus the fitted
    ``C + A cos(theta) + B sin(theta)`` with ``C`` kept in the shift, so the axis is the centre."""
    n, ny, nx = img.shape
    _, e_across = _axes(a_deg)
    iy, ix = xp.indices((ny, nx), dtype=xp.float64)
    u = (iy - (ny - 1) / 2.0) * e_across[0] + (ix - (nx - 1) / 2.0) * e_across[1]
    mass = img.reshape(n, -1).astype(xp.float64)
    total = mass.sum(axis=1)
    if not bool((total > 0).all()):
        raise InputError("a projection has no positive signal above the vacuum level: alignment needs "
                         "mass-linear contrast with a dark vacuum (HAADF, or -log of bright field)")
    com = _backend.to_host((mass @ u.ravel()) / total)
    design = np.stack([np.cos(theta), np.sin(theta)], 1)
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(theta), design]), com, rcond=None)
    return com - design @ coef[1:]


def _raw_shifts(along, across, a_deg):
    """(n, 2) raw-frame ``(dy, dx)`` from the components along and across the tilt axis."""
    e_axis, e_across = _axes(a_deg)
    return along[:, None] * e_axis[None, :] + across[:, None] * e_across[None, :]


def _match_projections(img, angles, shifts, a_deg, iterations, xp):
    """One round of projection matching: shifts moving each aligned projection onto the
    reprojection of a SIRT reconstruction (module docstring, step 3), on projections binned to at
    most ``MATCH_SIZE`` pixels."""
    from .api import reconstruct
    from .projectors import project

    aligned, b = _binned(align_projections(img, shifts, a_deg, order=3), _bin_factor(img))
    center = (img.shape[2] - b) / (2.0 * b)         # the image centre column, in binned pixels
    volume = reconstruct(aligned, method="sirt", angles_deg=angles, iterations=iterations, center=center,
                         backend="gpu" if _backend.is_gpu_array(aligned) else "cpu")
    reproj = project(volume, angles, center=center)
    delta = b * shift_2d(aligned, reproj, xp)      # aligned(p + delta) ~ reproj(p), full pixels
    delta[:, 0] -= delta[:, 0].mean()               # the common shift along the axis stays zero
    rot = _rotation(a_deg)
    return shifts + delta @ rot.T                   # aligned'(p) = raw(R (p + delta) + s)


def _bin_factor(img) -> int:
    """Integer binning that brings the projections to at most ``MATCH_SIZE`` pixels a side."""
    return max(1, -(-max(img.shape[1:]) // MATCH_SIZE))


def _binned(img, b):
    """``(img binned b x b (mean, trailing pixels dropped), b)``."""
    if b == 1:
        return img, 1
    n, ny, nx = img.shape
    return img[:, : ny // b * b, : nx // b * b].reshape(n, ny // b, b, nx // b, b).mean(axis=(2, 4)), b
