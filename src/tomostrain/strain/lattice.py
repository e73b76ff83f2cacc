"""Index Bragg peaks and fit the lattice vectors g1, g2 at every probe position at once.

A peak at detector position ``q`` (pixels) of a position whose origin is ``o`` is indexed
``(h, k)`` by rounding the coordinates of ``q - o`` in the basis ``(g1, g2)``. The fit solves
``q = o + h g1 + k g2`` by weighted least squares for ``o, g1, g2`` per position: the y and x
components share one 3x3 normal matrix (design row ``(1, h, k)``), built for all positions with
``bincount`` over the peak table and solved as one batched ``linalg.solve``. The fitted vectors
are then corrected for the elliptical distortion of the detector and converted to 1/Å.
The ellipse model and its correction are those of ``strain.calibrate`` (``correct_ellipse``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError, InputError
from ..gpu_core import backend as _backend
from .calibrate import correct_ellipse
from .disks import BraggPeaks


@dataclass
class LatticeFit:
    """Per-position lattice (DESIGN.md §3), arrays ``(scan_y, scan_x, ...)``; NaN where unfit.

    g1, g2 : (sy, sx, 2) ``(gy, gx)``, 1/Å when ``q_pixel_size`` was given, else pixels;
        ellipse-corrected when ``ellipse`` was given
    origin_fit : (sy, sx, 2) fitted origin ``(qy0, qx0)`` in raw detector pixels
    residual : (sy, sx) weighted RMS distance of the indexed peaks from the fit (pixels)
    n_peaks : (sy, sx) number of indexed peaks used
    """

    g1: object
    g2: object
    origin_fit: object
    residual: object
    n_peaks: object


def index_peaks(peaks: BraggPeaks, origin, g1, g2, *, tol: float = 0.25):
    """Miller-like indices of every peak in the basis ``(g1, g2)`` about ``origin``.

    origin : (sy, sx, 2) or (2,) pixels; g1, g2 : (2,) or (sy, sx, 2) pixels (detector frame)
    tol : largest distance of the fractional indices from the nearest integers

    Returns ``h, k`` (int64 per peak) and ``ok`` (bool per peak: within ``tol``, finite).
    """
    xp = _backend.xp_of(peaks.qy)
    n_pos = peaks.scan_shape[0] * peaks.scan_shape[1]
    pos = peaks.positions()
    o = _per_position(origin, n_pos, xp, "origin")[pos]
    a = _per_position(g1, n_pos, xp, "g1")[pos]
    b = _per_position(g2, n_pos, xp, "g2")[pos]
    dy = peaks.qy - o[:, 0]
    dx = peaks.qx - o[:, 1]
    det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        hf = (dy * b[:, 1] - dx * b[:, 0]) / det
        kf = (a[:, 0] * dx - a[:, 1] * dy) / det
    ok = xp.isfinite(hf) & xp.isfinite(kf)
    hf = xp.where(ok, hf, 0.0)
    kf = xp.where(ok, kf, 0.0)
    h = xp.rint(hf)
    k = xp.rint(kf)
    ok &= (xp.abs(hf - h) <= tol) & (xp.abs(kf - k) <= tol)
    return h.astype(xp.int64), k.astype(xp.int64), ok


def fit_lattice(
    peaks: BraggPeaks,
    origin,
    g1_guess,
    g2_guess,
    *,
    ellipse=None,
    q_pixel_size: float | None = None,
    min_peaks: int = 4,
    weights="intensity",
    tol: float = 0.25,
) -> LatticeFit:
    """Fit ``q = origin + h g1 + k g2`` at every probe position (weighted least squares).

    Parameters
    ----------
    peaks : BraggPeaks (raw detector pixels)
    origin : (sy, sx, 2) or (2,) origin guess in pixels, used for indexing (the fit frees it);
        None takes each position's strongest peak (the central beam)
    g1_guess, g2_guess : (2,) lattice vectors in detector pixels (e.g. ``choose_lattice_vectors``)
    ellipse : (ratio, angle_deg) to correct, or None
    q_pixel_size : 1/Å per pixel, or None to return pixels
    min_peaks : fewest indexed peaks (>= 3) for a fit; positions with fewer are NaN
    weights : "intensity" (correlation value), None (equal), or an array with one weight per peak
    tol : indexing tolerance (see ``index_peaks``)

    Indexing runs twice: with the guesses, then with each position's own first fit, so strain and
    rotation larger than ``tol`` over the highest order are followed.
    """
    if not isinstance(peaks, BraggPeaks):
        raise InputError(f"peaks must be the BraggPeaks of find_bragg_disks, got {type(peaks).__name__}")
    xp = _backend.xp_of(peaks.qy)
    if min_peaks < 3:
        raise InputError(f"min_peaks must be >= 3 (three unknowns per axis), got {min_peaks}")
    if q_pixel_size is not None and not q_pixel_size > 0:
        raise InputError(f"q_pixel_size must be positive (1/Å per pixel), got {q_pixel_size}")
    sy, sx = peaks.scan_shape
    n_pos = sy * sx
    w = _weights(peaks, weights, xp)
    o0 = central_beam(peaks) if origin is None else _per_position(origin, n_pos, xp, "origin").reshape(sy, sx, 2)
    g1 = _per_position(g1_guess, n_pos, xp, "g1_guess")
    g2 = _per_position(g2_guess, n_pos, xp, "g2_guess")
    o = o0.reshape(n_pos, 2)
    fit = None
    for _ in range(2):
        h, k, ok = index_peaks(peaks, o, g1, g2, tol=tol)
        fit = _solve(peaks, h, k, xp.where(ok, w, 0.0), min_peaks, n_pos, xp)
        good = xp.isfinite(fit[0][:, 0])[:, None]
        o = xp.where(good, fit[0], o)
        g1 = xp.where(good, fit[1], g1)
        g2 = xp.where(good, fit[2], g2)
    origin_fit, g1, g2, residual, count = fit
    if ellipse is not None:
        g1 = xp.stack(correct_ellipse(g1[:, 0], g1[:, 1], *ellipse), axis=-1)
        g2 = xp.stack(correct_ellipse(g2[:, 0], g2[:, 1], *ellipse), axis=-1)
    if q_pixel_size is not None:
        g1, g2 = g1 * q_pixel_size, g2 * q_pixel_size
    shape = (sy, sx)
    return LatticeFit(g1.reshape(shape + (2,)), g2.reshape(shape + (2,)), origin_fit.reshape(shape + (2,)),
                      residual.reshape(shape), count.reshape(shape))


def central_beam(peaks: BraggPeaks):
    """(sy, sx, 2) position of each pattern's strongest peak (NaN where none): an origin guess."""
    xp = _backend.xp_of(peaks.qy)
    first = peaks.offsets[:-1]
    have = peaks.offsets[1:] > first
    idx = xp.minimum(first, max(len(peaks) - 1, 0))
    if len(peaks) == 0:
        return xp.full(peaks.scan_shape + (2,), xp.nan)
    out = xp.stack([peaks.qy[idx], peaks.qx[idx]], axis=-1).astype(xp.float64)
    return xp.where(have[:, None], out, xp.nan).reshape(peaks.scan_shape + (2,))


def bragg_vector_map(peaks: BraggPeaks, origin, *, shape, mask=None, weights="intensity"):
    """Histogram (``shape``, float64) of peak offsets ``q - origin``, bilinearly spread, with zero
    offset at pixel ``(shape[0] // 2, shape[1] // 2)``; only positions where ``mask`` is True."""
    xp = _backend.xp_of(peaks.qy)
    sy, sx = peaks.scan_shape
    pos = peaks.positions()
    o = (central_beam(peaks) if origin is None else _per_position(origin, sy * sx, xp, "origin")).reshape(-1, 2)
    w = _weights(peaks, weights, xp)
    if mask is not None:
        w = w * xp.asarray(mask, dtype=bool).reshape(-1)[pos]
    ny, nx = shape
    y = peaks.qy - o[pos, 0] + ny // 2
    x = peaks.qx - o[pos, 1] + nx // 2
    keep = xp.isfinite(y) & xp.isfinite(x) & (y >= 0) & (y < ny - 1) & (x >= 0) & (x < nx - 1)
    y, x, w = xp.where(keep, y, 0), xp.where(keep, x, 0), xp.where(keep, w, 0)
    y0, x0 = xp.floor(y), xp.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(xp.int64), x0.astype(xp.int64)
    out = xp.zeros(ny * nx)
    for dy, dx, share in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        out += _backend.bincount((y0 + dy) * nx + x0 + dx, weights=w * share, minlength=ny * nx)
    return out.reshape(ny, nx)


def choose_lattice_vectors(peaks: BraggPeaks, origin=None, *, mask=None, shape=None, min_angle_deg: float = 20.0):
    """The two shortest non-collinear lattice vectors ``(g1, g2)`` (pixels, (y, x)) of the lattice
    that indexes the strong Bragg spots.

    From the Bragg vector map of the positions in ``mask`` (all by default): its maxima other than
    the central beam that reach 10 % of the strongest are the candidate spots (the strongest 24).
    Every pair of them at least ``min_angle_deg`` apart is a trial basis; the lattice kept is the
    one with the highest score: the spot strength its integer combinations index (within 0.15 in
    each index) times the share of its sites within the candidates' radius that hold a candidate
    (a finer lattice built on a spurious spot indexes the same spots but leaves most sites empty; a
    coarser one indexes less). So a noise peak, a beam-stop edge or a weak extra spot near the
    centre is not taken as g1 because it is short. The basis is then reduced: g1 is the
    shortest lattice vector, g2 the shortest not parallel to it, on the side where
    ``g1_y g2_x - g1_x g2_y > 0``. Both are refined by one least-squares fit over all the indexed
    peaks of those positions.
    """
    from scipy import ndimage

    xp = _backend.xp_of(peaks.qy)
    if len(peaks) == 0:
        raise CalibrationError("no Bragg peaks: cannot choose lattice vectors")
    if shape is None:
        span = float(xp.nanmax(xp.abs(xp.stack([peaks.qy, peaks.qx]))))
        shape = (2 * int(span) + 3,) * 2
    bvm = _backend.to_host(bragg_vector_map(peaks, origin, shape=shape, mask=mask))
    smooth = ndimage.gaussian_filter(bvm, 1.0)
    peak_mask = (smooth == ndimage.maximum_filter(smooth, size=5)) & (smooth > 0)
    cy, cx = shape[0] // 2, shape[1] // 2
    ys, xs = np.nonzero(peak_mask)
    strength = smooth[ys, xs]
    # sub-pixel: centroid of the 3x3 neighbourhood of each maximum
    d = np.arange(-1, 2)
    nb = smooth[np.clip(ys[:, None, None] + d[None, :, None], 0, shape[0] - 1),
                np.clip(xs[:, None, None] + d[None, None, :], 0, shape[1] - 1)]
    tot = nb.sum((1, 2))
    vec = np.stack([ys - cy + (nb.sum(2) * d).sum(1) / tot, xs - cx + (nb.sum(1) * d).sum(1) / tot], 1)
    off_centre = np.hypot(vec[:, 0], vec[:, 1]) > 2.0
    vec, strength = vec[off_centre], strength[off_centre]
    if len(vec) < 2:
        raise CalibrationError("fewer than two Bragg spots besides the central beam: cannot choose g1, g2")
    strong = strength >= 0.1 * strength.max()
    order = np.argsort(-strength[strong], kind="stable")[:24]
    vec, strength = vec[strong][order], strength[strong][order]
    g1, g2 = _best_basis(vec, strength, min_angle_deg)
    n_pos = peaks.scan_shape[0] * peaks.scan_shape[1]
    o = (central_beam(peaks) if origin is None else _per_position(origin, n_pos, xp, "origin")).reshape(-1, 2)
    h, k, ok = index_peaks(peaks, o, xp.asarray(g1), xp.asarray(g2), tol=0.3)
    pos = peaks.positions()
    if mask is not None:
        ok &= xp.asarray(mask, dtype=bool).reshape(-1)[pos]
    w = xp.where(ok, _weights(peaks, "intensity", xp), 0.0)
    # one shared g1, g2 with a free origin per position: subtract each position's weighted means
    sw = _backend.bincount(pos, weights=w, minlength=n_pos)
    safe = xp.where(sw > 0, sw, 1.0)
    hc = h - (_backend.bincount(pos, weights=w * h, minlength=n_pos) / safe)[pos]
    kc = k - (_backend.bincount(pos, weights=w * k, minlength=n_pos) / safe)[pos]
    yc = peaks.qy - (_backend.bincount(pos, weights=w * peaks.qy, minlength=n_pos) / safe)[pos]
    xc = peaks.qx - (_backend.bincount(pos, weights=w * peaks.qx, minlength=n_pos) / safe)[pos]
    M = xp.asarray([[(w * hc * hc).sum(), (w * hc * kc).sum()], [(w * hc * kc).sum(), (w * kc * kc).sum()]])
    R = xp.asarray([[(w * hc * yc).sum(), (w * hc * xc).sum()], [(w * kc * yc).sum(), (w * kc * xc).sum()]])
    M = _backend.to_host(M)
    if not abs(np.linalg.det(M)) > 1e-12 * max(float(np.abs(M).max()), 1e-300):
        raise CalibrationError("too few indexed Bragg spots in the chosen region to fit g1 and g2 "
                               "(none, or all on one lattice line): widen the mask or lower the thresholds")
    sol = np.linalg.solve(M, _backend.to_host(R))
    return sol[0], sol[1]


def _best_basis(vec, strength, min_angle_deg, tol=0.15):
    """Reduced basis (g1, g2) of the lattice that indexes most of the candidate spots ``vec``
    (n, 2) weighted by ``strength`` (see ``choose_lattice_vectors``)."""
    length = np.hypot(vec[:, 0], vec[:, 1])
    i, j = np.triu_indices(len(vec), 1)
    cross = vec[i, 0] * vec[j, 1] - vec[i, 1] * vec[j, 0]
    ok = np.abs(cross) > np.sin(np.radians(min_angle_deg)) * length[i] * length[j]
    i, j, det = i[ok], j[ok], cross[ok]
    if len(i) == 0:
        raise CalibrationError("all strong Bragg spots lie on one line: cannot choose g2")
    # fractional indices of every candidate in every trial basis (pairs, spots)
    hf = (vec[None, :, 0] * vec[j, 1, None] - vec[None, :, 1] * vec[j, 0, None]) / det[:, None]
    kf = (vec[i, 0, None] * vec[None, :, 1] - vec[i, 1, None] * vec[None, :, 0]) / det[:, None]
    hit = (np.abs(hf - np.rint(hf)) <= tol) & (np.abs(kf - np.rint(kf)) <= tol)
    # indexed strength times the share of the trial lattice's sites (about pi R^2 / cell area
    # inside the candidates' radius R) that hold a candidate: a finer lattice built on a spurious
    # spot indexes as much but leaves most of its sites empty; a coarser one indexes less
    sites = np.pi * length.max() ** 2 / np.abs(det)
    score = (hit * strength[None, :]).sum(1) * np.minimum(1.0, hit.sum(1) / sites)
    best = int(np.argmax(score))
    a, b = vec[i[best]].copy(), vec[j[best]].copy()
    for _ in range(100):                              # Lagrange-Gauss reduction
        if a @ a > b @ b:
            a, b = b, a
        m = np.rint((a @ b) / (a @ a))
        if m == 0:
            break
        b = b - m * a
    if a[0] * b[1] - a[1] * b[0] < 0:
        b = -b
    return a, b


def _solve(peaks, h, k, w, min_peaks, n_pos, xp):
    """Per-position weighted least squares of ``q = o + h g1 + k g2``; NaN where unfit."""
    pos = peaks.positions()
    hf, kf = h.astype(xp.float64), k.astype(xp.float64)
    qy, qx = peaks.qy.astype(xp.float64), peaks.qx.astype(xp.float64)

    def seg(values):
        return _backend.bincount(pos, weights=values, minlength=n_pos)

    s1, sh, sk = seg(w), seg(w * hf), seg(w * kf)
    shh, shk, skk = seg(w * hf * hf), seg(w * hf * kf), seg(w * kf * kf)
    M = xp.stack([xp.stack([s1, sh, sk], -1), xp.stack([sh, shh, shk], -1), xp.stack([sk, shk, skk], -1)], -2)
    R = xp.stack([xp.stack([seg(w * qy), seg(w * qx)], -1), xp.stack([seg(w * hf * qy), seg(w * hf * qx)], -1),
                  xp.stack([seg(w * kf * qy), seg(w * kf * qx)], -1)], -2)
    count = seg((w > 0).astype(xp.float64)).astype(xp.int64)
    # well-posed: enough peaks and a normal matrix far from singular (h, k not all on one line)
    scale = xp.where(s1 > 0, s1, 1.0)
    det = xp.linalg.det(M / scale[:, None, None])
    good = (count >= min_peaks) & (det > 1e-6 * (1.0 + (shh + skk) / scale) ** 2)
    eye = xp.eye(3)[None]
    sol = xp.linalg.solve(xp.where(good[:, None, None], M, eye), R)  # (P, 3, 2): rows o, g1, g2
    sol = xp.where(good[:, None, None], sol, xp.nan)
    model_y = sol[pos, 0, 0] + hf * sol[pos, 1, 0] + kf * sol[pos, 2, 0]
    model_x = sol[pos, 0, 1] + hf * sol[pos, 1, 1] + kf * sol[pos, 2, 1]
    sq = xp.where(w > 0, (qy - model_y) ** 2 + (qx - model_x) ** 2, 0.0)
    residual = xp.sqrt(seg(w * sq) / scale)
    residual = xp.where(good, residual, xp.nan)
    return sol[:, 0], sol[:, 1], sol[:, 2], residual, count


def _weights(peaks, weights, xp):
    if weights is None:
        return xp.ones(len(peaks))
    if isinstance(weights, str):
        if weights != "intensity":
            raise InputError(f"weights must be 'intensity', None or an array, got {weights!r}")
        return xp.maximum(peaks.intensity.astype(xp.float64), 0.0)
    w = xp.asarray(weights, dtype=xp.float64)
    if w.shape != (len(peaks),):
        raise InputError(f"weights must have one value per peak ({len(peaks)}), got shape {w.shape}")
    return w


def _per_position(value, n_pos, xp, name):
    """(2,) or (..., 2) with n_pos rows -> (n_pos, 2) float64 on xp."""
    v = xp.asarray(value, dtype=xp.float64)
    if v.shape == (2,):
        return xp.broadcast_to(v, (n_pos, 2))
    if v.size != 2 * n_pos or v.shape[-1] != 2:
        raise InputError(f"{name} must be (2,) or one (y, x) pair per probe position ({n_pos}), got shape {v.shape}")
    return v.reshape(n_pos, 2)
