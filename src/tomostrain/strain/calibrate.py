"""Calibration of a 4D-STEM scan: probe template, diffraction origin (descan), ellipse, q pixel size.

Conventions (DESIGN.md §3): detector coordinates are pixel indices ``(qy, qx)``; the origin is
``(qy0, qx0)`` per probe position, ``(scan_y, scan_x, 2)``. Elliptical distortion ``(ratio,
angle_deg)``: about the origin, a detector offset ``d`` is ``E @ q`` of the undistorted offset
``q`` with ``E = I + (ratio - 1) u u^T``, ``u = (sin a, cos a)`` in ``(y, x)``, i.e. the detector
is stretched by ``ratio`` along the direction at ``a`` degrees from +x towards +y (``a`` in
``(-90, 90]``) and unchanged across it. ``correct_ellipse`` applies ``E^-1``.
"""
from __future__ import annotations

import numpy as np

from ..errors import CalibrationError, InputError
from ..gpu_core import backend as _backend
from .virtual import array_module, as_cube, detector_box


def probe_template(cube_or_image, region="auto", *, fraction: float = 0.05, backend: str | None = None):
    """Probe image for disk detection: the mean vacuum pattern, centred and normalised.

    cube_or_image : DataCube / 4D scan, a (ky, kx) probe image or a stack (n, ky, kx) of vacuum patterns
    region : "auto" (the ``fraction`` of positions that scatter least, i.e. with the lowest
        ratio of intensity outside to inside the central disk), or ``(y0, y1, x0, x1)`` scan
        rows/columns of a vacuum region (ignored for an image)

    Each chosen pattern is moved (Fourier shift, sub-pixel) so that its central disk's centre
    sits on ``(ky // 2, kx // 2)`` before averaging, so descan does not blur the template.
    Returns (ky, kx) float64, positive, summing to 1: the form ``find_bragg_disks`` takes (its
    correlation step normalises the kernel itself). On the device of the data or of ``backend``.
    """
    if np.ndim(cube_or_image) in (2, 3):  # a probe image, or a stack (n, ky, kx) of vacuum patterns
        xp = _backend.xp_of(cube_or_image)
        frames = xp.asarray(cube_or_image, dtype=xp.float64).reshape(-1, *cube_or_image.shape[-2:])
    else:
        cube = as_cube(cube_or_image)
        xp = array_module(cube, backend)
        frames = _vacuum_patterns(cube, region, fraction, xp)
    if not bool(xp.isfinite(frames).all()) or not float(frames.max()) > 0:
        raise CalibrationError("probe patterns must be finite with a positive maximum (vacuum patterns)")
    ky, kx = frames.shape[1:]
    centres = _disk_centres(frames, xp)
    shifted = _fourier_shift(frames, xp.asarray([ky // 2, kx // 2], dtype=xp.float64) - centres, xp, mean=True)
    probe = xp.clip(shifted, 0.0, None)
    return _central_disk_only(probe / probe.sum(), xp)


def measure_origin(cube, *, backend: str | None = None):
    """Per-position centre of the central disk, (sy, sx, 2) float64 detector pixels.

    The central disk is found on the scan's mean pattern (its brightest disk; radius from its
    half-maximum area). In each pattern, the centroid of the pixels above half the disk's mean level
    inside a window of the disk radius + descan margin is taken, then refined once in a window of
    radius + 2 pixels about that centroid. Bragg disks farther than that from the direct beam
    do not enter.
    """
    cube = as_cube(cube)
    return _measure_origin(cube, array_module(cube, backend))[0]


def _measure_origin(cube, xp):
    """measure_origin on ``xp``; also returns the central disk radius (px)."""
    sy, sx = cube.scan_shape
    ky, kx = cube.detector_shape
    budget = _backend.memory_budget("cpu" if xp is np else "gpu")
    mean = xp.zeros((ky, kx), xp.float64)
    for _, chunk in cube.iter_rows(budget, xp):
        mean += chunk.sum((0, 1), dtype=xp.float64)
    c0, radius = central_disk(mean, xp)
    box = origin_box(c0, radius, (ky, kx), xp)
    out = xp.empty((sy, sx, 2), xp.float64)
    for sl, chunk in cube.iter_rows(budget // 8, xp):  # ~8 float64 temporaries per pattern
        out[sl] = disk_centroids(chunk, c0, radius, box, xp)
    if not bool(xp.isfinite(out).all()):
        raise CalibrationError("no central disk found in some patterns (empty or saturated); "
                               "pass a com_map or a mask to fit_origin")
    return out, radius


def central_disk(mean_pattern, xp=np):
    """Centre ``(2,)`` and radius (px) of the central disk of the scan's mean (or summed) pattern:
    its brightest disk, radius from its half-maximum area."""
    (c0,), radius = _disk_centres(xp.asarray(mean_pattern, dtype=xp.float64)[None], xp, with_radius=True)
    return c0, radius


def origin_box(c0, radius, detector_shape, xp=np):
    """The detector crop that both centroid windows of ``disk_centroids`` lie in:
    ``c0 +- (3 radius + 6)`` (``virtual.detector_box`` form)."""
    half = int(np.ceil(3.0 * radius + 7.0))
    lo = np.floor(_backend.to_host(c0)) - half
    return detector_box(lo, lo + 2 * half + 2, detector_shape, xp)


def disk_centroids(chunk, c0, radius, box, xp=np):
    """Per-position centre of the central disk in a chunk of scan rows ``(rows, sx, ky, kx)``:
    the thresholded centroid in a window of 2 radius + 4 px about ``c0``, refined once in a window of
    radius + 2 px. Returns (rows, sx, 2) float64 detector pixels (NaN where no disk is found)."""
    (ys, xs), iy, ix = box
    rows, sx, ky, kx = chunk.shape
    windows = (2.0 * radius + 4.0, radius + 2.0)
    if xp is np:  # the Numba twin: one pass over the box per window, no temporaries
        frames = np.ascontiguousarray(chunk.reshape(-1, ky, kx), dtype=np.float32)
        start = np.broadcast_to(np.asarray(c0, np.float64), (frames.shape[0], 2))
        return _centroids_cpu(frames, start, windows, radius, (ys.start, ys.stop, xs.start, xs.stop)).reshape(rows, sx, 2)
    frames = chunk.reshape(-1, ky, kx)[:, ys, xs]
    centre = xp.broadcast_to(xp.asarray(c0), (frames.shape[0], 2))
    for window in windows:
        centre = _thresholded_centroid(frames, centre, window, radius, iy, ix, xp)
    return centre.reshape(rows, sx, 2)


def _centroids_cpu(frames, start, windows, radius, box):
    """``_thresholded_centroid`` for each of ``windows`` in turn on the CPU (``disk_centroids_cpu``):
    frames (n, ky, kx) float32, start (n, 2), box (y0, y1, x0, x1) -> (n, 2) float64."""
    from ..gpu_core.kernels.virtual_detector import disk_centroids_cpu

    out = np.empty((frames.shape[0], 2), np.float64)
    disk_centroids_cpu(frames, np.ascontiguousarray(start, dtype=np.float64), np.asarray(windows, np.float64),
                       float(radius), np.asarray(box, np.int64), out)
    return out


def fit_origin(cube_or_origins, mask=None, *, clip_sigma: float = 3.0, iterations: int = 10,
               backend: str | None = None):
    """Smooth origin field ``(sy, sx, 2)``: a plane ``o = c + a y + b x`` per component fitted to
    per-position origins with iterative sigma clipping (robust against disks that were missed).

    cube_or_origins : DataCube / 4D scan (origins measured with ``measure_origin``), or a measured
        origin map (sy, sx, 2) (e.g. a centre-of-mass map)
    mask : (sy, sx) bool, positions allowed in the fit (e.g. vacuum/thin regions); default all
    clip_sigma : positions farther than this many robust sigmas (1.4826 MAD) are rejected

    With fewer than 3 usable positions (a single frame, a 1x2 scan) the plane is not determined:
    the origin is then their (clipped) mean, the same at every position.
    """
    if np.ndim(cube_or_origins) == 3:
        measured = cube_or_origins
        xp = _backend.xp_of(measured)
    else:
        measured = measure_origin(cube_or_origins, backend=backend)
        xp = _backend.xp_of(measured)
    m = _backend.to_host(measured).astype(np.float64)
    if m.ndim != 3 or m.shape[2] != 2:
        raise InputError(f"origin map must be (scan_y, scan_x, 2), got shape {m.shape}")
    sy, sx, _ = m.shape
    use = np.isfinite(m).all(2)
    if mask is not None:
        mk = _backend.to_host(mask).astype(bool)
        if mk.shape != (sy, sx):
            raise InputError(f"mask must be (scan_y, scan_x) = {(sy, sx)}, got {mk.shape}")
        use &= mk
    if use.sum() < 1:
        raise CalibrationError("fit_origin found no usable position (no central disk measured)")
    yy, xx = np.indices((sy, sx), dtype=np.float64)
    design = np.stack([np.ones(sy * sx), yy.ravel(), xx.ravel()], 1)
    if use.sum() < 3:                      # 1 or 2 positions (tiny scans): one common origin
        design = design[:, :1]
    target = m.reshape(-1, 2)
    keep = use.ravel()
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
        resid = np.linalg.norm(np.where(use.ravel()[:, None], target - design @ coef, np.inf), axis=1)
        sigma = 1.4826 * np.median(resid[keep]) + 1e-12
        new = use.ravel() & (resid <= clip_sigma * sigma)
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return xp.asarray((design @ coef).reshape(sy, sx, 2))


def fit_ellipse(points, rings=None):
    """Elliptical distortion ``(ratio, angle_deg)`` from Bragg spots of equivalent reflections.

    points : (n, 2) detector offsets ``(qy, qx)`` from the origin (pixels) of spots that would lie
        on circles without distortion
    rings : (n,) int, which circle each spot belongs to (e.g. 0 for {200}, 1 for {220}); circles
        get their own radius. Default: one circle.

    Fits the conic ``d^T Q d = s_ring`` (linear least squares, s_0 = 1); ``Q ∝ E^-2`` so
    ``ratio = sqrt(lambda_max / lambda_min)`` and the angle is the eigenvector of the smallest
    eigenvalue (the stretch direction). Returns ``ratio >= 1`` and angle in (-90, 90].
    """
    p = np.asarray(_backend.to_host(points), np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or not np.isfinite(p).all():
        raise InputError(f"points must be a finite (n, 2) array of (qy, qx) offsets, got shape {p.shape}")
    r = np.zeros(len(p), np.int64) if rings is None else np.asarray(_backend.to_host(rings)).astype(np.int64)
    if r.shape != (len(p),):
        raise InputError(f"rings must have one entry per point ({len(p)}), got shape {r.shape}")
    ids, r = np.unique(r, return_inverse=True)
    if len(p) < 3 + len(ids):
        raise CalibrationError(f"fit_ellipse needs at least {3 + len(ids)} points, got {len(p)}")
    y, x = p[:, 0], p[:, 1]
    cols = [y * y, 2 * x * y, x * x] + [-(r == i).astype(float) for i in range(1, len(ids))]
    design = np.stack(cols, 1)
    rhs = (r == 0).astype(float)
    # scale each row by 1/|d|^2 so every spot weighs the same whatever its circle
    w = 1.0 / (y * y + x * x)
    sol, *_ = np.linalg.lstsq(design * w[:, None], rhs * w, rcond=None)
    Q = np.array([[sol[0], sol[1]], [sol[1], sol[2]]])
    vals, vecs = np.linalg.eigh(Q)
    if vals[0] <= 0:
        raise CalibrationError("the spots do not lie on an ellipse (fitted conic is not positive "
                               "definite); check the origin and the ring assignment")
    ratio = float(np.sqrt(vals[1] / vals[0]))
    uy, ux = vecs[:, 0]
    angle = float(np.degrees(np.arctan2(uy, ux)))
    angle = (angle + 90.0) % 180.0 - 90.0
    return ratio, (90.0 if angle == -90.0 else angle)


def square_lattice_ellipse(g1, g2, *, tol: float = 0.08):
    """Elliptical distortion from fitted lattice vectors ``g1, g2`` (n, 2) detector pixels that
    should be a square net (a cubic [001] zone: {200} = g1, g2 and {220} = g1 ± g2), or None.

    None when that premise does not hold on the data: the median ``|g1| / |g2|`` differs from 1,
    or the median angle between them from 90°, by more than ``tol`` (relative; as radians), or
    too few vectors for the 5 spots ``fit_ellipse`` needs. A
    rectangular or oblique zone (or another phase) then gets no ellipse instead of one that
    squeezes it square.
    """
    u = np.asarray(_backend.to_host(g1), np.float64).reshape(-1, 2)
    v = np.asarray(_backend.to_host(g2), np.float64).reshape(-1, 2)
    ok = np.isfinite(u).all(1) & np.isfinite(v).all(1)
    u, v = u[ok], v[ok]
    if 4 * len(u) < 5:
        return None
    lu, lv = np.hypot(*u.T), np.hypot(*v.T)
    angle = np.arccos(np.clip((u * v).sum(1) / (lu * lv), -1.0, 1.0))
    if abs(np.median(lu / lv) - 1.0) > tol or abs(np.median(angle) - np.pi / 2) > tol:
        return None
    pts = np.concatenate([u, v, u + v, u - v])
    return fit_ellipse(pts, np.repeat([0, 0, 1, 1], len(u)))


def correct_ellipse(qy, qx, ratio: float, angle_deg: float):
    """Undistorted offsets ``E^-1 (qy, qx)`` of detector offsets from the origin (pixels)."""
    if not ratio > 0:
        raise InputError(f"ellipse ratio must be positive, got {ratio}")
    a = np.radians(angle_deg)
    uy, ux = np.sin(a), np.cos(a)
    along = (qy * uy + qx * ux) * (1.0 - 1.0 / ratio)
    return qy - along * uy, qx - along * ux


def q_pixel_size(g_measured_px, a_known: float, hkl) -> float:
    """Diffraction pixel size (1/Å per pixel) from spots of one reflection family of a cubic
    lattice with known parameter ``a_known`` (Å): ``|g_hkl| = sqrt(h²+k²+l²) / a`` over the mean
    measured length.

    g_measured_px : (n, 2) ellipse-corrected spot offsets ``(qy, qx)`` from the origin, or (n,)
        spot distances from the origin (pixels)
    hkl : (h, k, l) of the family, e.g. (2, 0, 0)
    """
    g = np.asarray(_backend.to_host(g_measured_px), np.float64)
    if g.ndim not in (1, 2) or (g.ndim == 2 and g.shape[1] != 2):
        raise InputError(f"g_measured_px must be (n, 2) offsets or (n,) lengths, got shape {g.shape}")
    lengths = np.hypot(g[:, 0], g[:, 1]) if g.ndim == 2 else g
    if lengths.size == 0 or not np.isfinite(lengths).all() or (lengths <= 0).any():
        raise InputError("g_measured_px must hold finite, non-zero spot offsets (pixels)")
    if not a_known > 0 or len(hkl) != 3 or not any(hkl):
        raise InputError(f"need a positive lattice parameter and a non-zero (h, k, l), got {a_known}, {hkl}")
    return float(np.sqrt(sum(int(v) ** 2 for v in hkl)) / a_known / lengths.mean())


def _vacuum_patterns(cube, region, fraction, xp):
    sy, sx = cube.scan_shape
    if isinstance(region, str):
        if region != "auto":
            raise InputError(f"region must be 'auto' or (y0, y1, x0, x1), got {region!r}")
        from .virtual import total_intensity, virtual_bf

        where = "cpu" if xp is np else "gpu"
        origin, radius = _measure_origin(cube, xp)
        inside = virtual_bf(cube, radius + 2.0, origin, backend=where)
        total = total_intensity(cube, backend=where)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = _backend.to_host((total - inside) / inside).ravel()
        score[~np.isfinite(score)] = np.inf
        n = max(1, int(round(fraction * sy * sx)))
        chosen = np.sort(np.argsort(score, kind="stable")[:n])
        picked = [cube.rows(int(r), int(r) + 1, xp)[0, xp.asarray(chosen[chosen // sx == r] % sx)]
                  for r in np.unique(chosen // sx)]
        return xp.concatenate(picked).astype(xp.float64)
    try:
        y0, y1, x0, x1 = (int(v) for v in region)
    except (TypeError, ValueError):
        raise InputError(f"region must be 'auto' or (y0, y1, x0, x1), got {region!r}") from None
    if not (0 <= y0 < y1 <= sy and 0 <= x0 < x1 <= sx):
        raise CalibrationError(f"probe region {region} is outside the scan {(sy, sx)} or empty")
    block = cube.rows(y0, y1, xp)[:, x0:x1]
    return block.reshape(-1, *cube.detector_shape).astype(xp.float64)


def _edge_radius(image, centre):
    """Radius (px) of the steepest fall of ``image``'s radial profile (1-px rings) about ``centre``:
    the edge of a disk, also of a disk that sits on a halo or a diffuse background, where a
    half-maximum radius measures the halo instead."""
    img = np.asarray(_backend.to_host(image), np.float64)
    iy, ix = np.indices(img.shape)
    ring = np.rint(np.hypot(iy - centre[0], ix - centre[1])).astype(np.int64)
    n_r = int(min(img.shape) // 2)
    count = np.bincount(ring.ravel(), minlength=n_r + 1)[: n_r + 1]
    prof = np.bincount(ring.ravel(), weights=img.ravel(), minlength=n_r + 1)[: n_r + 1] / np.maximum(count, 1)
    fall = prof[:-1] - prof[1:]                       # fall from ring r to ring r + 1
    # the first fall that reaches half of the largest one (not a farther Bragg spot's edge)
    j = int(np.nonzero(fall >= 0.5 * fall.max())[0][0])
    while j + 1 < len(fall) and fall[j + 1] > fall[j]:
        j += 1
    if 0 < j < len(fall) - 1:                         # parabolic vertex between rings
        a, b, c = fall[j - 1], fall[j], fall[j + 1]
        den = a - 2 * b + c
        j = j + (0.5 * (a - c) / den if den < 0 else 0.0)
    return float(j + 0.5)


def _central_disk_only(probe, xp, dark: float = 0.02):
    """The central disk of a probe image (centred at ``(ky // 2, kx // 2)``, summing to 1), with
    what surrounds it removed when that is not dark.

    Where no position of a scan is vacuum, the least-scattering patterns still carry Bragg spots, a
    diffuse background and the halo of the direct beam; correlating with that blurs every peak into
    one. When the median level of the ring 3-6 px outside the disk's edge (``_edge_radius``)
    exceeds ``dark`` times the disk's level, that level is subtracted and everything beyond the
    ring's inner edge is zeroed; when the ring is dark but more than 1 % of the template lies
    beyond it (Bragg spots of patterns that all scatter), everything beyond it is zeroed. A vacuum
    probe (dark around its disk) is returned unchanged.
    """
    ky, kx = probe.shape
    c = (ky // 2, kx // 2)
    host = np.asarray(_backend.to_host(probe), np.float64)
    radius = _edge_radius(host, c)
    iy, ix = np.indices(host.shape)
    r = np.hypot(iy - c[0], ix - c[1])
    inside = r < max(radius - 1.0, 1.0)
    ring = (r >= radius + 3.0) & (r < radius + 6.0)
    if not inside.any() or not ring.any():
        return probe
    level, outside = float(host[inside].mean()), float(np.median(host[ring]))
    if outside > dark * level:
        cut = np.where(r < radius + 3.0, np.clip(host - outside, 0.0, None), 0.0)
    elif host[r >= radius + 6.0].sum() > 0.01 * host.sum():     # dark around, Bragg spots farther
        cut = np.where(r < radius + 6.0, host, 0.0)
    else:
        return probe
    if not cut.sum() > 0:
        return probe
    return xp.asarray(cut / cut.sum())


def _disk_centres(frames, xp, with_radius=False):
    """Centre (n, 2) of the brightest disk of each frame: centroid of pixels above half of the
    frame's maximum after a 3x3 box smoothing, restricted to the connected blob of the maximum
    via a window of 2 radii. Optionally also the radius (px) of the first frame's disk."""
    n, ky, kx = frames.shape
    smooth = _box3(frames, xp)
    peak = smooth.reshape(n, -1).max(1)
    above = smooth > 0.5 * peak[:, None, None]
    _check_not_flooded(above[0])
    radius = float(np.sqrt(float(above[0].sum()) / np.pi))
    arg = smooth.reshape(n, -1).argmax(1)
    start = xp.stack([arg // kx, arg % kx], 1).astype(xp.float64)
    iy, ix = xp.indices((ky, kx), dtype=xp.float32)
    if xp is np:  # counts (or their mean) in float32: rounding far below the centroid's precision
        centre = _centroids_cpu(frames.astype(np.float32), start, (2.0 * radius + 3.0, radius + 2.0), radius,
                                (0, ky, 0, kx))
    else:
        centre = _thresholded_centroid(frames, start, 2.0 * radius + 3.0, radius, iy, ix, xp)
        centre = _thresholded_centroid(frames, centre, radius + 2.0, radius, iy, ix, xp)
    if with_radius:
        above0 = above[0] & ((iy - float(centre[0, 0])) ** 2 + (ix - float(centre[0, 1])) ** 2 < (2 * radius + 3) ** 2)
        return centre, float(np.sqrt(float(above0.sum()) / np.pi))
    return centre


def _check_not_flooded(bright):
    """A clear error where the bright region (above half the smoothed maximum) covers most of the
    detector: saturated or flooded frames, where no central disk (and no Bragg disk) is seen."""
    share = float(bright.sum()) / bright.size
    if share > 0.5:
        raise CalibrationError(
            f"no central disk: {100 * share:.0f} % of the detector is above half its maximum, as in saturated "
            "or flooded frames; the probe radius and Bragg disks cannot be measured")


def _thresholded_centroid(frames, centre, window, radius, iy, ix, xp):
    """Centroid of ``frame - level/2`` (clipped at 0) within ``window`` px of ``centre``, where
    ``level`` is the mean intensity of the disk of ``radius`` about ``centre``."""
    cy, cx = centre[:, 0, None, None], centre[:, 1, None, None]
    r2 = (iy - cy) ** 2 + (ix - cx) ** 2
    disk = r2 < radius * radius
    level = xp.where(disk, frames, 0).sum((1, 2)) / xp.maximum(disk.sum((1, 2)), 1)
    w = xp.where(r2 < window * window, xp.clip(frames - 0.5 * level[:, None, None], 0, None), 0)
    tot = w.sum((1, 2))
    safe = xp.where(tot > 0, tot, xp.nan)
    return xp.stack([(w * iy).sum((1, 2)) / safe, (w * ix).sum((1, 2)) / safe], 1)


def _box3(frames, xp):
    pad = xp.pad(frames, ((0, 0), (1, 1), (1, 1)), mode="edge")
    ky, kx = frames.shape[1:]
    return sum(pad[:, i : i + ky, j : j + kx] for i in range(3) for j in range(3)) / 9.0


def _fourier_shift(frames, shift, xp, mean: bool = False):
    """Move each frame by ``shift`` (n, 2) pixels (+ moves content to higher indices); with
    ``mean``, the mean of the moved frames (ky, kx), by one inverse transform of the mean spectrum
    (the transform is linear). Real transforms (``scipy.fft`` on all cores on the CPU), equal to
    the real part of the complex round trip ``ifft2(fft2(f) ramp)`` up to rounding."""
    n, ky, kx = frames.shape
    if xp is np:
        import os

        import scipy.fft as fft

        kw = {"workers": os.cpu_count() or 1}
    else:
        fft, kw = xp.fft, {}
    fy = xp.fft.fftfreq(ky)[None, :, None]
    fx = xp.fft.rfftfreq(kx)[None, None, :]
    ey = xp.exp(-2j * np.pi * fy * shift[:, 0, None, None])
    # the Nyquist row, column and corner as the complex round trip's real part has them: cos(pi d)
    if ky % 2 == 0:
        ey[:, ky // 2, 0] = xp.cos(np.pi * shift[:, 0])
    ex = xp.exp(-2j * np.pi * fx * shift[:, 1, None, None])
    if kx % 2 == 0:
        ex[:, 0, kx // 2] = xp.cos(np.pi * shift[:, 1])
    ramp = ey * ex
    if ky % 2 == 0 and kx % 2 == 0:
        ramp[:, ky // 2, kx // 2] = xp.cos(np.pi * (shift[:, 0] + shift[:, 1]))
    spectra = fft.rfft2(frames, **kw) * ramp
    if mean:
        return fft.irfft2(spectra.mean(0), s=(ky, kx), **kw)
    return fft.irfft2(spectra, s=(ky, kx), **kw)
