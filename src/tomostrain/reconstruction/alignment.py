"""Tilt-series alignment: tilt-axis angle, per-projection shifts and the rotation centre.

The result follows the one alignment formula of DESIGN.md §3, ``aligned(p) = raw(R(a) @ p + s)``.
Every step is a batched array operation over all projections (NumPy or CuPy); the intensities are
the series minus a per-image vacuum level (a low percentile), linear in projected mass.

For a given tilt-axis angle ``a`` the shifts come from four steps (``_shifts_at``):

1. **Coarse drift: cosine-stretched cross-correlation** (as IMOD's tiltxcorr). In the frame
   rotated by ``a`` (axis along the rows), each projection is stretched across the axis by
   ``cos(theta_near) / cos(theta)`` (``theta_near``: its neighbour one step nearer 0 degrees),
   band-passed, tapered and cross-correlated with that neighbour; the shifts accumulate outwards
   from the image nearest 0 degrees. Normalised correlation does not care about per-image
   intensity changes (HAADF non-linearity, fading) and the zero-padded correlation finds drifts
   of tens of pixels.
2. **Common field.** Only the part of the aligned frame that every projection covers takes part
   from here on (a mask, tapered at its edges), so an object that leaves the field of view along
   the axis (a needle, a sheet fragment) is cut the same way in every projection.
3. **Shifts along the axis (common line).** Within the common field the profile of each aligned
   projection along the axis (the sum across it) is the same curve at every tilt; the profiles
   are registered onto their mean.
4. **Shifts across the axis (centre of mass).** The centre of mass across the axis follows
   ``C + A cos(theta) + B sin(theta)``; each projection's deviation from the fitted sinusoid is
   removed, so the rotation axis lands on the image centre.

Then ``refine`` rounds of **projection matching**: reconstruct the aligned series (non-negative SIRT, on
projections binned to at most ``MATCH_SIZE`` pixels, each scaled to the mean mass in the common
field), reproject it and move each projection onto its reprojection (tapered-mask FFT
cross-correlation, parabolic sub-pixel peak). The last round's corrections are the per-image
``residuals_px``, and the relative mismatch of each projection with its reprojection is
``image_nrmse``: large values point at bad images.

**Tilt axis** (``find_tilt_axis``): a tilt axis is a direction, so ``a`` and ``a + 180`` describe
the same line. The search covers every direction:

- first, the profile spread (``_axis_from_profiles``): the profile of every projection along the
  axis direction (the sum across it) is the same marginal of the object at the true axis, for an
  object seen whole at every tilt and whatever the drift. Each profile is scaled to the mean mass
  (fading) and registered onto the others; the spread is scanned every ``PROFILE_STEP_DEG`` over
  180 degrees and, when its deepest point is decisive (below ``PROFILE_DECISIVE`` times the
  median: compact particles, plates, grains), walked downhill on a 0.5-degree grid. That is the
  axis. (The reprojection mismatch below is not used for these: on a compact platelet it falls
  steadily past the true axis, 41 degrees found for a true 4.) One exception: a rod's
  cross-section profile is the same at every tilt, so the direction across a rod is a decisive
  minimum too; when the object leaves the field across the direction found (``_leaves_across``:
  mass on the borders facing across it, none on those facing along it), which a tilt series does
  not do, the axis is turned by 90 degrees onto the rod and refined from the band centres. An
  object that leaves the field of view along the axis with features on it (the real needle) has
  its profiles cut where the field ends and gives a flat spread; then:
- global: the Fourier common line. By the central-section theorem the Fourier transform of every
  projection along the tilt-axis direction is the same central line of the object's transform,
  and its modulus does not change with drift. For each direction every degree over 180 the
  spread of the normalised log-moduli along that line is measured; its deepest local minima (and
  the prior, when one is given) are the candidates;
- local: the candidate with the lowest reprojection mismatch (after the steps above, on
  projections binned to at most ``SEARCH_SIZE``, SIRT) is walked downhill on a 2-degree grid that
  moves on while its best point lies at an edge (the grid is circular, so no window bounds it;
  a walk round the whole circle raises), then the parabola through the best point and its
  neighbours;
- fine: the band centres. Each band of rows along the axis has its own centre-of-mass sinusoid
  ``C_band + A cos(theta) + B sin(theta)``; with the axis turned by ``d`` the ``C_band`` lie on a
  line of slope ``tan(d)`` along the axis (ETSpy's tilt_com idea), which gives ``d``; a few
  rounds, at most ``BAND_REACH_DEG`` from the walk's result (else that result is kept).

A prior (``tilt_axis_deg=`` or ``series.meta["tilt_axis_deg"]``, e.g. from the microscope) starts
a walk on the common-line profile spread (the profiles along the axis, registered onto each other,
are one curve at the right axis; the walk has no window). If it ends more than ``search_deg``
from the prior, the search over every direction above decides, where the prior is one more
candidate, preferred when its mismatch is within ``PRIOR_TOLERANCE`` of the best.
**The ``a`` vs ``a + 180`` rule**: both fit the data equally (the second gives the point-inverted
volume); ``align`` returns the representative nearest the prior, or in ``(-90, 90]`` without one.

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

MATCH_SIZE = 128      # projection matching bins projections to at most this size
SEARCH_SIZE = 64      # the tilt-axis search bins projections to at most this size
LINE_SIZE = 128       # the Fourier common-line scan bins projections to at most this size
PRIOR_TOLERANCE = 0.05  # a prior axis wins when its mismatch is within 5 % of the best
VACUUM_PERCENTILE = 5.0  # per-image vacuum level: this percentile of the image
BAND_REACH_DEG = 3.0   # the band-centre refinement moves the axis at most this far
_CANDIDATES = 3       # local minima of the common-line scan searched locally
_SEARCH_ITERATIONS = 10  # SIRT iterations of each reconstruction in the tilt-axis search
PROFILE_STEP_DEG = 2.0  # grid of the all-direction profile-spread scan
PROFILE_DECISIVE = 0.25  # the profile spread decides when its deepest point is below this x its median
MATCH_NONNEGATIVE = True  # projection matching reconstructs non-negative (unconstrained measured worse)
EDGE_SHARE = 0.02     # an object with more than this share of its mass at the borders leaves the field


@dataclass
class Alignment:
    """Result of ``align``: DESIGN.md §3's ``aligned(p) = raw(R(a) @ p + s)``.

    shifts : (n_angles, 2) float64 ``(dy, dx)`` pixels, in the raw frame
    center : rotation-axis column of the aligned projections (pixels)
    tilt_axis_deg : in-plane tilt-axis angle ``a`` (degrees)
    residuals_px : (n_angles,) length (pixels) of each projection's correction in the last round
        of projection matching, or None without projection matching: large = a bad image
    image_nrmse : (n_angles,) ``||reprojection - projection|| / ||projection||`` of each aligned
        projection in the common field, at the last round of projection matching, or None
    """

    shifts: np.ndarray
    center: float
    tilt_axis_deg: float
    residuals_px: np.ndarray | None = None
    image_nrmse: np.ndarray | None = None

    def apply(self, series, order: int = 3):
        """Aligned projections (n_angles, n_rows, n_cols) float32 of ``series`` (a TiltSeries or
        its data array), on the same device; ``order`` is the spline order (1 linear, 3 cubic)."""
        data = series.data if hasattr(series, "angles_deg") else series
        return align_projections(data, self.shifts, self.tilt_axis_deg, order=order)


def align(series, angles_deg=None, *, tilt_axis_deg: float | None = None, search_deg: float = 15.0,
          find_tilt_axis: bool = True, refine: int = 3, refine_iterations: int = 20,
          backend: str | None = None) -> Alignment:
    """Align a tilt series: tilt axis, drift and centre (module docstring).

    series : a TiltSeries, or the (n_angles, n_rows, n_cols) data with ``angles_deg=``; intensity
        linear in projected mass with the vacuum dark (HAADF-STEM, or -log of bright field); a
        per-image vacuum level (``VACUUM_PERCENTILE``) is subtracted here, the input is untouched
    tilt_axis_deg : a prior for the tilt-axis angle ``a`` (degrees, DESIGN.md §3), e.g. from the
        microscope; None = ``series.meta["tilt_axis_deg"]`` when present, else no prior. With
        ``find_tilt_axis=False`` it is used as is (None = 0)
    search_deg : with a prior, the half-width (degrees) of the first local search around it; the
        search still covers every direction and walks past this window when the best lies there
    refine : rounds of projection matching (0 = cross-correlation, common line and centre of mass)
    refine_iterations : SIRT iterations of each projection-matching reconstruction
    backend : None = where the data live; "cpu" | "gpu" | "auto"

    Returns an ``Alignment`` (shifts on the host).
    """
    data, angles = unpack_series(series, angles_deg)
    n, ny, nx = data.shape
    if n < 3:
        raise InputError(f"alignment needs at least 3 projections, got {n}")
    prior = tilt_axis_deg
    if prior is None and isinstance(getattr(series, "meta", None), dict):
        prior = series.meta.get("tilt_axis_deg")
    prior = None if prior is None else float(prior)
    if not (0.0 <= search_deg <= 90.0) or (prior is not None and not np.isfinite(prior)):
        raise InputError(f"search_deg must be in [0, 90] and tilt_axis_deg finite, got {search_deg}, {prior}")
    if int(refine) < 0:
        raise InputError(f"refine must be >= 0 rounds, got {refine}")
    if np.any(np.abs(angles) >= 89.5):
        raise InputError("alignment needs tilt angles within (-89.5, 89.5) degrees (cosine stretch)")
    if backend is not None:
        data = _backend.to_device(data, _backend.resolve(backend))
    xp = _backend.xp_of(data)
    img = xp.asarray(data, dtype=xp.float32)
    img = img - vacuum_level(img)[:, None, None]
    if not bool((img.reshape(n, -1).astype(xp.float64).sum(axis=1) > 0).all()):
        raise InputError("a projection has no positive signal above the vacuum level: alignment needs "
                         "mass-linear contrast with a dark vacuum (HAADF, or -log of bright field)")

    if find_tilt_axis and prior is not None:
        a = _axis_near_prior(img, angles, prior, float(search_deg), xp)
    elif find_tilt_axis:
        a = _search_tilt_axis(img, angles, prior, float(search_deg), xp)
    else:
        a = 0.0 if prior is None else prior
    shifts, mask = _shifts_at(img, angles, a, xp)
    residuals = errors = None
    for _ in range(int(refine)):
        shifts, residuals, errors, _ = _match_projections(img, angles, shifts, a, mask, int(refine_iterations),
                                                          _bin_factor(img, MATCH_SIZE), xp, MATCH_NONNEGATIVE)
    return Alignment(shifts=shifts, center=(nx - 1) / 2.0, tilt_axis_deg=float(a),
                     residuals_px=residuals, image_nrmse=errors)


def vacuum_level(img):
    """(n,) per-image vacuum level of a stack (n, ny, nx): its ``VACUUM_PERCENTILE`` percentile,
    robust to an object that touches the image border (needles) and to drift."""
    xp = _backend.xp_of(img)
    return xp.percentile(img.reshape(img.shape[0], -1), VACUUM_PERCENTILE, axis=1).astype(xp.float32)


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


# ---------------------------------------------------------------------------------------------
# shifts at a given tilt axis
# ---------------------------------------------------------------------------------------------
def _shifts_at(img, angles, a_deg, xp):
    """(n, 2) raw-frame shifts at tilt axis ``a`` (steps 1-4 of the module docstring) and the
    common-field mask (ny, nx) of the aligned frame."""
    rot = _rotation(a_deg)
    small, b = _binned(img, _bin_factor(img, LINE_SIZE))
    delta = b * _stretched_xcorr(align_projections(small, None, a_deg, order=1), angles, xp)   # (along, across)
    mask = _common_field(img.shape, delta @ rot.T, a_deg, xp)
    aligned = align_projections(img, delta @ rot.T, a_deg, order=1)
    profiles = (aligned * mask[None]).sum(axis=2).astype(xp.float64)
    d, _, reference = _register_profiles(profiles, xp)
    d = _backend.to_host(shift_1d(profiles, reference, xp)).astype(np.float64)
    delta[:, 0] += d - d.mean()
    aligned = align_projections(img, delta @ rot.T, a_deg, order=1)
    delta[:, 1] += _across_correction(aligned, mask, np.radians(angles), xp)
    return delta @ rot.T, _common_field(img.shape, delta @ rot.T, a_deg, xp)


def _stretched_xcorr(rotated, angles, xp):
    """(n, 2) cumulative (along, across) shifts of the rotated projections (axis along the rows):
    each projection stretched across the axis by ``cos(theta_near) / cos(theta)`` and correlated,
    band-passed, with its neighbour one step nearer 0 degrees."""
    n, ny, nx = rotated.shape
    order = np.argsort(angles, kind="stable")
    k0 = int(np.argmin(np.abs(angles[order])))
    near = np.empty(n, np.int64)                               # index of each image's reference
    near[order[k0]] = order[k0]
    near[order[k0 + 1:]] = order[k0:-1]
    near[order[:k0]] = order[1:k0 + 1]
    th = np.radians(angles)
    factor = np.cos(th[near]) / np.cos(th)                     # > 1 away from 0 degrees
    stretched = _stretch_across(rotated, factor, xp)
    filt = _band_pass(rotated.shape[1:], xp)
    d = shift_2d(_filtered(stretched, filt, xp), _filtered(rotated[near], filt, xp), xp)
    d[:, 1] /= factor                                          # in the projection's own pixels
    d[order[k0]] = 0.0
    delta = np.zeros((n, 2))
    for k in list(range(k0 + 1, n)) + list(range(k0 - 1, -1, -1)):   # outwards from 0 degrees
        i = order[k]
        delta[i] = delta[near[i]] + d[i]
    return delta - delta.mean(axis=0)


def _stretch_across(images, factor, xp):
    """Images stretched along x (across the axis) about the centre column by ``factor`` each:
    ``out(y, x) = image(y, c + (x - c) / f)``, linear interpolation, zero outside."""
    n, ny, nx = images.shape
    c = (nx - 1) / 2.0
    src = c + (xp.arange(nx, dtype=xp.float64)[None, :] - c) / xp.asarray(factor)[:, None]   # (n, nx)
    lo = xp.floor(src).astype(xp.int64)
    frac = (src - lo).astype(xp.float32)
    inside = (lo >= 0) & (lo + 1 <= nx - 1)
    lo_c = xp.clip(lo, 0, nx - 2)
    left = xp.take_along_axis(images, lo_c[:, None, :].repeat(ny, axis=1), axis=2)
    right = xp.take_along_axis(images, (lo_c + 1)[:, None, :].repeat(ny, axis=1), axis=2)
    out = left * (1 - frac[:, None, :]) + right * frac[:, None, :]
    return out * inside[:, None, :]


def _band_pass(shape, xp, low=0.02, high=0.15):
    """rfft2 band-pass for coarse correlation: Gaussian high-pass ``low`` and low-pass ``high``
    (cycles per pixel)."""
    fy = xp.fft.fftfreq(shape[0])[:, None]
    fx = xp.fft.rfftfreq(shape[1])[None, :]
    k2 = fy ** 2 + fx ** 2
    return (xp.exp(-k2 / (2 * high ** 2)) * (1 - xp.exp(-k2 / (2 * low ** 2)))).astype(xp.float32)


def _filtered(images, filt, xp):
    return xp.fft.irfft2(xp.fft.rfft2(images) * filt, s=images.shape[1:]).astype(xp.float32)


def _common_field(shape, shifts, a_deg, xp):
    """(ny, nx) float32 mask of the aligned frame seen by every projection, with its edges tapered
    over ``_TAPER`` pixels: 1 inside, smoothly to 0 at the edge."""
    n, ny, nx = shape
    depth = _depth_inside(shape, shifts, a_deg, xp).min(axis=0)
    taper = max(2.0, 0.04 * min(ny, nx))
    return (0.5 - 0.5 * xp.cos(np.pi * xp.clip(depth / taper, 0.0, 1.0))).astype(xp.float32)


def _depth_inside(shape, shifts, a_deg, xp):
    """(n, ny, nx) distance (pixels) of each aligned-frame pixel inside its raw projection
    (negative outside)."""
    n, ny, nx = shape
    rot = _rotation(a_deg)
    c = (np.array([ny, nx]) - 1) / 2.0
    iy, ix = xp.indices((ny, nx), dtype=xp.float64)
    py, px = iy - c[0], ix - c[1]
    s = xp.asarray(shifts)
    qy = rot[0, 0] * py[None] + rot[0, 1] * px[None] + s[:, 0, None, None] + c[0]
    qx = rot[1, 0] * py[None] + rot[1, 1] * px[None] + s[:, 1, None, None] + c[1]
    return xp.minimum(xp.minimum(qy, ny - 1 - qy), xp.minimum(qx, nx - 1 - qx))


def _register_profiles(profiles, xp):
    """Move the axis profiles onto one another: each onto the mean of the moved profiles, twice
    (the first reference is the median profile). Returns ``(shifts, moved profiles, reference)``."""
    reference = xp.median(profiles, axis=0)
    for _ in range(2):
        d = shift_1d(profiles, reference, xp)
        moved = fourier_shift_1d(profiles, d, xp)
        reference = moved.mean(axis=0)
    return d, moved, reference


def _across_correction(aligned, mask, theta, xp):
    """(n,) correction across the axis: each aligned projection's centre of mass in the common
    field minus the fitted ``C + A cos(theta) + B sin(theta)``, ``C`` kept, so the axis is centred."""
    n, ny, nx = aligned.shape
    u = xp.arange(nx, dtype=xp.float64) - (nx - 1) / 2.0
    mass = (aligned * mask[None]).sum(axis=1).astype(xp.float64)     # (n, nx)
    total = mass.sum(axis=1)
    if not bool((total > 0).all()):
        raise InputError("a projection has no positive signal in the field every projection sees: "
                         "alignment needs mass-linear contrast with a dark vacuum")
    com = _backend.to_host((mass @ u) / total)
    design = np.stack([np.cos(theta), np.sin(theta)], 1)
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(theta), design]), com, rcond=None)
    return com - design @ coef[1:]


# ---------------------------------------------------------------------------------------------
# projection matching
# ---------------------------------------------------------------------------------------------
def _match_projections(img, angles, shifts, a_deg, mask, iterations, b, xp, nonnegative=True):
    """One round of projection matching on projections binned ``b`` x ``b`` (module docstring).

    Returns ``(new shifts, residuals_px (n,), image_nrmse (n,), total mismatch)``; the mismatch
    ``sum ||W (P v - p)||^2 / sum ||W p||^2`` (``W`` the common-field mask) is that of the
    shifts given, before this round's update."""
    from .api import reconstruct
    from .projectors import project

    aligned, _ = _binned(align_projections(img, shifts, a_deg, order=3), b)
    win, _ = _binned(mask[None], b)
    win = win[0]
    n = aligned.shape[0]
    mass = (aligned * win[None]).reshape(n, -1).astype(xp.float64).sum(axis=1)
    scale = (mass.mean() / xp.where(mass > 0, mass, mass.mean())).astype(xp.float32)
    aligned = aligned * scale[:, None, None]            # the same mass in every projection
    center = (img.shape[2] - b) / (2.0 * b)             # the image centre column, in binned pixels
    volume = reconstruct(aligned, method="sirt", angles_deg=angles, iterations=iterations, center=center,
                         nonnegative=nonnegative, backend="gpu" if _backend.is_gpu_array(aligned) else "cpu")
    reproj = project(volume, angles, center=center)
    diff = ((reproj - aligned) * win[None]).reshape(n, -1).astype(xp.float64)
    ref = (aligned * win[None]).reshape(n, -1).astype(xp.float64)
    per_image = _backend.to_host(xp.sqrt((diff ** 2).sum(axis=1) / xp.maximum((ref ** 2).sum(axis=1), 1e-300)))
    total = float((diff ** 2).sum() / max(float((ref ** 2).sum()), 1e-300))
    delta = b * shift_2d(aligned, reproj, xp, window=win)   # aligned(p + delta) ~ reproj(p), full pixels
    delta[:, 0] -= delta[:, 0].mean()                   # the common shift along the axis stays zero
    residuals = np.hypot(delta[:, 0], delta[:, 1])
    return shifts + delta @ _rotation(a_deg).T, residuals, per_image.astype(np.float64), total


def _bin_factor(img, size) -> int:
    """Integer binning that brings the projections to at most ``size`` pixels a side."""
    return max(1, -(-max(img.shape[1:]) // int(size)))


def _binned(img, b):
    """``(img binned b x b (mean, trailing pixels dropped), b)``."""
    if b == 1:
        return img, 1
    n, ny, nx = img.shape
    return img[:, : ny // b * b, : nx // b * b].reshape(n, ny // b, b, nx // b, b).mean(axis=(2, 4)), b


# ---------------------------------------------------------------------------------------------
# tilt-axis search
# ---------------------------------------------------------------------------------------------
def _search_tilt_axis(img, angles, prior, search_deg, xp) -> float:
    """The tilt-axis angle (degrees) over all directions (module docstring), as the representative
    of ``a`` / ``a + 180`` nearest the prior, or in ``(-90, 90]`` without one."""
    lined = _binned(img, _bin_factor(img, LINE_SIZE))[0]
    by_profiles = _axis_from_profiles(lined, xp)
    if by_profiles is not None:      # a decisive profile minimum: the prior only picks the twin
        if _leaves_across(lined, by_profiles, xp):
            # a rod leaving the field: its cross-section profile is the same at every tilt, so the
            # direction across it is as consistent as the true axis along it; a tilt series
            # keeps the object in view across the axis, so the axis runs along the rod
            return _representative(_refine_by_band_centres(lined, angles, by_profiles + 90.0, xp), prior)
        return _representative(by_profiles, prior)
    small, _ = _binned(img, _bin_factor(img, SEARCH_SIZE))
    grid = np.arange(0.0, 180.0, 1.0)
    line = _common_line_spread(lined, grid, xp)
    line = np.convolve(np.concatenate([line[-2:], line, line[:2]]), np.ones(5) / 5.0, mode="valid")
    starts = [float(grid[k]) for k in _local_minima(line)[:_CANDIDATES]]
    cache: dict = {}

    def score(a):
        """Reprojection mismatch at tilt axis ``a`` after the drift steps (binned projections)."""
        key = round(float(a) % 180.0, 6)
        if key not in cache:
            shifts, mask = _shifts_at(small, angles, a, xp)
            cache[key] = _match_projections(small, angles, shifts, a, mask, _SEARCH_ITERATIONS, 1, xp)[3]
        return cache[key]

    best = min(starts, key=score)
    choice = _local_minimum(score, best, 2.0)
    if prior is not None:
        near_prior = _local_minimum(score, prior, max(1.0, min(search_deg, 90.0) / 4.0))
        if score(near_prior) <= (1.0 + PRIOR_TOLERANCE) * score(choice):
            choice = near_prior
    choice = _refine_by_band_centres(lined, angles, choice, xp)
    return _representative(choice, prior)


def _profile_spread(img, a_deg, xp) -> float:
    """Spread of the projections' profiles along the axis direction ``a`` (``_axis_profiles``),
    each scaled to the mean mass (per-image intensity changes: fading, dose) and registered onto
    the others: ``sum |moved - reference|^2 / sum |moved|^2``. Zero at the true axis for an object
    that every projection sees whole (each profile is the same marginal of the object along the
    axis), whatever the drift."""
    prof = _axis_profiles(img, a_deg, xp)
    mass = prof.sum(axis=1, keepdims=True)
    prof = prof * (mass.mean() / xp.where(mass > 0, mass, mass.mean()))
    _, moved, reference = _register_profiles(prof, xp)
    return float(((moved - reference[None, :]) ** 2).sum() / ((moved ** 2).sum() + 1e-300))


def _axis_from_profiles(img, xp, step=PROFILE_STEP_DEG):
    """The tilt axis from the profile spread (``_profile_spread``) over every direction, or None
    when the spread has no decisive minimum. On a ``step`` grid over 180 degrees the deepest point
    must lie below ``PROFILE_DECISIVE`` times the median spread (an object seen whole in every
    projection: compact particles, plates, grains); it is then walked downhill on a 0.5-degree
    grid (no window). An object that leaves the field of view (a needle along the axis) gives a
    flat spread (its profiles are cut where the field ends), and the caller searches otherwise."""
    grid = np.arange(0.0, 180.0, float(step))
    values = np.array([_profile_spread(img, a, xp) for a in grid])
    k = int(np.argmin(values))
    if not values[k] < PROFILE_DECISIVE * float(np.median(values)):
        return None
    cache: dict = {}

    def spread(a):
        key = round(float(a) % 180.0, 6)
        if key not in cache:
            cache[key] = _profile_spread(img, a, xp)
        return cache[key]

    return _local_minimum(spread, float(grid[k]), 0.5)


def _leaves_across(img, a_deg, xp) -> bool:
    """True when the object crosses the image border across the axis ``a`` rather than along it:
    the median (over projections) share of the mass in a border band on the two borders facing
    across the axis (the borders whose normal is nearer the across direction than the axis) is
    above ``EDGE_SHARE`` and more than twice that on the two facing along it."""
    n, ny, nx = img.shape
    w = max(2, int(round(0.04 * min(ny, nx))))
    total = xp.maximum(img.reshape(n, -1).sum(axis=1), 1e-30)
    bands = {(1.0, 0.0): img[:, :w].sum(axis=(1, 2)), (-1.0, 0.0): img[:, -w:].sum(axis=(1, 2)),
             (0.0, 1.0): img[:, :, :w].sum(axis=(1, 2)), (0.0, -1.0): img[:, :, -w:].sum(axis=(1, 2))}
    a = np.radians(a_deg)
    e_axis, e_across = np.array([np.cos(a), -np.sin(a)]), np.array([np.sin(a), np.cos(a)])
    facing = {k: abs(float(np.dot(k, e_across))) > abs(float(np.dot(k, e_axis))) for k in bands}
    across = sum(v for k, v in bands.items() if facing[k]) / total
    along = sum(v for k, v in bands.items() if not facing[k]) / total
    along, across = float(_backend.to_host(xp.median(along))), float(_backend.to_host(xp.median(across)))
    return across > EDGE_SHARE and across > 2.0 * max(along, 0.0)


def _axis_near_prior(img, angles, prior, search_deg, xp) -> float:
    """With a prior: the tilt axis minimising the common-line profile spread (the profiles along
    the axis, each registered onto the others, are one curve at the right axis), walked downhill
    from the prior on grids of 2 and 0.5 degrees (no window bounds it). When the walk ends more
    than ``search_deg`` from the prior (the profiles of an object leaving the field along the axis
    carry little axis information), the search over every direction decides instead."""
    small, _ = _binned(img, _bin_factor(img, LINE_SIZE))
    cache: dict = {}

    def spread(a):
        key = round(float(a), 6)
        if key not in cache:
            _, moved, reference = _register_profiles(_axis_profiles(small, a, xp), xp)
            cache[key] = float(((moved - reference[None, :]) ** 2).sum() / ((moved ** 2).sum() + 1e-300))
        return cache[key]

    try:
        a = _local_minimum(spread, _local_minimum(spread, prior, 2.0), 0.5)
    except InputError:
        a = None
    if a is None or abs(a - prior) > search_deg:
        return _search_tilt_axis(img, angles, prior, search_deg, xp)
    return _representative(a, prior)


def _axis_profiles(img, a_deg, xp):
    """(n, L) profiles of every projection along the tilt axis: pixel values binned (linear
    split between the two nearest unit bins) by ``t = (p - centre) . e_axis``."""
    n, ny, nx = img.shape
    a = np.radians(a_deg)
    e_axis = (np.cos(a), -np.sin(a))
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


def _refine_by_band_centres(img, angles, a_deg, xp, rounds=4, reach=BAND_REACH_DEG):
    """Refine the tilt axis from where the rotation axis sits in bands of rows: aligned at ``a``,
    each band of rows along the axis has its own centre-of-mass sinusoid
    ``C_band + A cos(theta) + B sin(theta)`` across the axis; with the axis turned by ``d`` from
    the true one, ``C_band`` moves by ``y_band tan(d)`` along the axis (a straight line), which
    per-image shifts cannot undo. The slope of ``C_band`` over ``y_band`` (mass-weighted) gives
    ``d``; a few rounds converge. A local refiner: it may move the axis at most ``reach`` degrees
    from ``a``; when it would go further (bands that do not hold one object's mass at every tilt
    bias the centres) ``a`` is kept."""
    theta = np.radians(angles)
    design = np.column_stack([np.ones_like(theta), np.cos(theta), np.sin(theta)])
    a = float(a_deg)
    for _ in range(rounds):
        shifts, mask = _shifts_at(img, angles, a, xp)
        # every projection whole across the axis (zero outside its own field), rows that every
        # projection sees: an object in the field is not cut, a needle is cut the same way
        seen = _depth_inside(img.shape, shifts, a, xp) >= 0
        aligned = align_projections(img, shifts, a, order=1) * seen
        common = _backend.to_host(seen.all(axis=0).mean(axis=1) > 0.5)
        rows = np.flatnonzero(common)
        if rows.size < 16:
            break
        aligned = aligned[:, rows.min():rows.max() + 1]
        n, ny, nx = aligned.shape
        n_bands = max(4, min(16, ny // 8))
        edges = np.linspace(0, ny, n_bands + 1).astype(int)
        u = xp.arange(nx, dtype=xp.float64) - (nx - 1) / 2.0
        centres, weights, ys = [], [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = aligned[:, lo:hi].sum(axis=1).astype(xp.float64)           # (n, nx)
            mass = _backend.to_host(band.sum(axis=1))
            if not (mass > 0).all():
                continue
            com = _backend.to_host(band @ u) / mass
            coef, *_ = np.linalg.lstsq(design, com, rcond=None)
            centres.append(coef[0])
            weights.append(mass.min())
            ys.append((lo + hi - 1) / 2.0 - (ny - 1) / 2.0)
        if len(ys) < 3:
            break
        w = np.asarray(weights) / max(weights)
        slope = np.polyfit(np.asarray(ys), np.asarray(centres), 1, w=np.sqrt(w))[0]
        step = float(np.degrees(np.arctan(slope)))
        a -= step
        if abs(a - a_deg) > reach:
            return float(a_deg)
        if abs(step) < 0.01:
            break
    return a


def _local_minimum(score, start, step) -> float:
    """Minimum of ``score`` near ``start``: a grid of ``step`` that walks downhill until its best
    point has a higher neighbour on each side, then the vertex of the parabola through the three.
    The grid is circular (180 degrees), so there is no bound; a walk round the whole circle means
    no minimum and raises."""
    x = float(start)
    values = {0: score(x)}
    k = 0
    for _ in range(int(np.ceil(180.0 / step)) + 2):
        for j in (k - 1, k + 1):
            if j not in values:
                values[j] = score(x + j * step)
        if values[k - 1] >= values[k] <= values[k + 1]:
            ym, y0, yp = values[k - 1], values[k], values[k + 1]
            den = ym - 2.0 * y0 + yp
            off = 0.5 * (ym - yp) / den if den > 0 else 0.0
            return x + step * (k + float(np.clip(off, -0.5, 0.5)))
        k = k - 1 if values[k - 1] < values[k + 1] else k + 1
    raise InputError("the tilt-axis search found no minimum of the reprojection mismatch over all "
                     "directions: the series carries no usable tilt-axis information")


def _representative(a, prior) -> float:
    """``a`` or ``a + 180`` (the same axis line): nearest the prior, or in ``(-90, 90]``."""
    ref = 0.0 if prior is None else prior
    out = ref + ((a - ref + 90.0) % 180.0) - 90.0          # in [ref - 90, ref + 90)
    if out == ref - 90.0:
        out += 180.0
    return float(out)


def _local_minima(values) -> list[int]:
    """Indices of the local minima of a circular sequence, deepest first."""
    v = np.asarray(values)
    is_min = (v <= np.roll(v, 1)) & (v <= np.roll(v, -1))
    idx = np.flatnonzero(is_min)
    return [int(i) for i in idx[np.argsort(v[idx])]]


def _common_line_spread(img, grid_deg, xp):
    """(len(grid),) spread of the Fourier moduli along each candidate axis direction: for each
    direction ``(cos a, -sin a)`` the log-moduli of every projection along that central line (DC
    excluded), each minus its mean and scaled to unit norm, and ``1 - |their mean|^2``."""
    n, ny, nx = img.shape
    win = (xp.hanning(ny)[:, None] * xp.hanning(nx)[None, :]).astype(xp.float32)
    spec = xp.abs(xp.fft.fftshift(xp.fft.fft2(img * win[None]), axes=(1, 2)))
    logs = xp.log(spec + 1e-3 * spec.max(axis=(1, 2), keepdims=True))
    half = min(ny, nx) // 2
    k = np.arange(2, half - 2, dtype=np.float64)
    out = np.empty(len(grid_deg))
    for j, a in enumerate(np.radians(np.asarray(grid_deg))):       # one gather per direction
        y = ny // 2 + k * np.cos(a)
        x = nx // 2 - k * np.sin(a)
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = xp.asarray(y - y0), xp.asarray(x - x0)
        line = ((1 - fy) * (1 - fx) * logs[:, y0, x0] + (1 - fy) * fx * logs[:, y0, x0 + 1]
                + fy * (1 - fx) * logs[:, y0 + 1, x0] + fy * fx * logs[:, y0 + 1, x0 + 1])
        line = line - line.mean(axis=1, keepdims=True)
        line = line / xp.maximum(xp.linalg.norm(line, axis=1, keepdims=True), 1e-30)
        out[j] = 1.0 - float((line.mean(axis=0) ** 2).sum())
    return out
