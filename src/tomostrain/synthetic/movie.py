"""Synthetic in situ TEM movies of a sodiating NiO sheet with a known reaction front.

The sheet (one of several outlines) reacts from its original surface inward: at time ``t`` every
point deeper than 0 and shallower than ``x(t) = k (t - t0)^n`` (nm, 0 before ``t0``) is reacted
(Na2O-rich, lower density), and the sheet swells outward by ``swelling * x(t)``. Ni nanoparticles
(dense dots) appear in the reacted region a little behind the front. Each frame is the sample seen
through a drifting stage (a random walk plus a trend, tens of pixels), a Gaussian PSF, an
illumination that fades and flickers and has a weak gradient, a static support-film texture and
Poisson noise. Bright field (``contrast="bf"``: vacuum bright, ``I ~ exp(-mu * density)``) or
dark field (``"df"``: vacuum dark, ``I ~ background + density``).

Truth: ``MovieTruth.front_nm`` per frame, the depth below the *first frame's* outline; the
registration shifts in the convention of ``gpu_core.registration`` (``frame_t(p + d_t) ~
frame_0(p)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

OUTLINES = ("edge", "wavy", "disc", "corner", "lobed")
SUPERSAMPLE = 4  # the outline is drawn on a 4x finer grid; its distance transform is the truth depth


@dataclass
class MovieTruth:
    """Ground truth of ``reaction_movie``: units nm, s and pixels as named."""

    k: float                      # nm / s^n
    n: float
    t0_s: float
    time_s: np.ndarray            # (frames,)
    front_nm: np.ndarray          # (frames,) depth of the front below the first frame's outline
    shifts_px: np.ndarray         # (frames, 2) registration truth: frame_t(p + d_t) ~ frame_0(p)
    pixel_size_nm: float
    frame_interval_s: float
    outline: str
    swelling: float
    contrast: str
    depth_px: np.ndarray          # (y, x) signed depth below the first frame's outline (frame 0 pixels)
    meta: dict = field(default_factory=dict)


def _smooth_field(shape, sigma, rng):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (f.std() + 1e-12)


def _outline_mask(kind, canvas, view0, size, rng):
    """Boolean sheet mask on the supersampled canvas; ``view0`` the first frame's origin (px)."""
    ss = SUPERSAMPLE
    ny, nx = canvas
    yy = (np.arange(ny * ss) + 0.5) / ss - 0.5
    xx = (np.arange(nx * ss) + 0.5) / ss - 0.5
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    cy, cx = view0[0] + size[0] / 2, view0[1] + size[1] / 2
    L = min(size)
    if kind in ("edge", "wavy"):
        a = rng.uniform(0, 2 * np.pi)
        u = (Y - cy) * np.cos(a) + (X - cx) * np.sin(a)
        v = -(Y - cy) * np.sin(a) + (X - cx) * np.cos(a)
        off = rng.uniform(0.15, 0.25) * L          # the sheet covers ~2/3 of the view
        if kind == "wavy":
            amp, lam = rng.uniform(2.0, 6.0), rng.uniform(0.3, 0.6) * L
            u = u + amp * np.sin(2 * np.pi * v / lam + rng.uniform(0, 2 * np.pi))
        return u > -off
    if kind == "corner":
        a = rng.uniform(0, 2 * np.pi)
        b = a + np.pi - np.radians(rng.uniform(70, 110))
        oy, ox = cy - 0.2 * L * np.cos(a + (b - a) / 2), cx - 0.2 * L * np.sin(a + (b - a) / 2)
        u1 = (Y - oy) * np.cos(a) + (X - ox) * np.sin(a)
        u2 = (Y - oy) * np.cos(b) + (X - ox) * np.sin(b)
        return (u1 > 0) & (u2 > 0)
    if kind in ("disc", "lobed"):
        r0 = rng.uniform(0.42, 0.5) * L
        oy, ox = cy + rng.uniform(-0.1, 0.1) * L, cx + rng.uniform(-0.1, 0.1) * L
        r = np.hypot(Y - oy, X - ox)
        th = np.arctan2(Y - oy, X - ox)
        if kind == "lobed":
            bump = sum(rng.uniform(0.03, 0.07) * np.cos(m * th + rng.uniform(0, 2 * np.pi)) for m in (2, 3, 5))
            return r < r0 * (1 + bump)
        return r < r0
    raise ValueError(f"unknown outline {kind!r}; choose from {OUTLINES}")


def reaction_movie(shape=(128, 128), n_frames=150, *, n=0.5, k=None, t0_s=None, frame_interval_s=1.0,
                   pixel_size_nm=None, final_depth_px=None, outline="edge", swelling=0.5, drift_px=20.0,
                   fading=0.4, flicker=0.03, dose=300.0, ni_dots=40, contrast="bf", psf_px=0.7, seed=0):
    """A movie ``(n_frames, y, x)`` float32 (counts) and its ``MovieTruth``.

    k : nm/s^n; default such that the front reaches ``final_depth_px`` (default 28 % of the frame)
        in the last frame. pixel_size_nm : default 1 nm unless ``k`` is given, then chosen so that
        the front reaches ``final_depth_px``. t0_s : default 2-8 frame intervals after the first
        frame. swelling : outward growth of the outline as a fraction of the front depth.
        drift_px : the stage's total wander (random walk + trend). fading : illumination lost by
        the last frame (fraction); flicker : frame-to-frame gain std; dose : vacuum counts per
        pixel (bf) or per unit density (df). ni_dots : number of Ni particles appearing.
    """
    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in shape)
    time_s = np.arange(n_frames) * float(frame_interval_s)
    if t0_s is None:
        t0_s = rng.uniform(2, 8) * frame_interval_s
    final_depth_px = final_depth_px or 0.28 * min(size)
    span = max(time_s[-1] - t0_s, frame_interval_s)
    if k is None:
        pixel_size_nm = pixel_size_nm or 1.0
        k = final_depth_px * pixel_size_nm / span ** n
    elif pixel_size_nm is None:
        pixel_size_nm = k * span ** n / final_depth_px
    front_nm = k * np.clip(time_s - t0_s, 0.0, None) ** n
    x_px = front_nm / pixel_size_nm

    # stage drift: a random walk plus a linear trend, scaled to drift_px in total, starting at 0
    steps = rng.standard_normal((n_frames, 2)) + rng.standard_normal(2) * 1.5
    walk = np.cumsum(steps, 0)
    walk -= walk[0]
    walk *= drift_px / max(np.abs(walk).max(), 1e-9)
    margin = int(np.ceil(np.abs(walk).max())) + 6
    canvas = (size[0] + 2 * margin, size[1] + 2 * margin)
    view0 = (margin, margin)

    sheet = _outline_mask(outline, canvas, view0, size, rng)
    ss = SUPERSAMPLE
    phi = (ndimage.distance_transform_edt(sheet) - ndimage.distance_transform_edt(~sheet)) / ss
    phi = phi + np.where(sheet, -0.5 / ss, 0.5 / ss)  # distance to the boundary between samples

    rho = rng.uniform(0.45, 0.65)                # reacted density / NiO density
    thick = 1.0 + 0.04 * _smooth_field(canvas, 6.0, rng)
    film = 0.025 * _smooth_field(canvas, 1.2, rng)
    grad_dir = rng.uniform(0, 2 * np.pi)
    # Ni dots: positions inside the sheet at depths the front will reach; they appear a few px behind it
    n_dots = int(ni_dots)
    dot_amp = np.zeros(canvas)
    dot_depth = np.full(canvas, np.inf)
    if n_dots:
        cand = np.argwhere((phi[ss // 2::ss, ss // 2::ss][: canvas[0], : canvas[1]] > 1.5)
                           & (phi[ss // 2::ss, ss // 2::ss][: canvas[0], : canvas[1]] < x_px[-1] - 2))
        if len(cand):
            pick = cand[rng.choice(len(cand), min(n_dots, len(cand)), replace=False)] + rng.uniform(-0.5, 0.5, (min(n_dots, len(cand)), 2))
            yy, xx = np.mgrid[: canvas[0], : canvas[1]]
            for (py, px), rad, lag in zip(pick, rng.uniform(0.9, 2.2, len(pick)), rng.uniform(1.0, 4.0, len(pick))):
                y0, y1 = max(int(py) - 5, 0), min(int(py) + 6, canvas[0])
                x0, x1 = max(int(px) - 5, 0), min(int(px) + 6, canvas[1])
                r = np.hypot(yy[y0:y1, x0:x1] - py, xx[y0:y1, x0:x1] - px)
                amp = np.clip(rad + 0.5 - r, 0.0, 1.0)
                d_here = _sample(phi, np.array([[py], [px]]), ss)[0]
                sel = amp > dot_amp[y0:y1, x0:x1]
                dot_amp[y0:y1, x0:x1][sel] = amp[sel]
                dot_depth[y0:y1, x0:x1][sel] = d_here + lag

    gy, gx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    ramp = 1.0 + 0.05 * (((gy - size[0] / 2) * np.cos(grad_dir) + (gx - size[1] / 2) * np.sin(grad_dir)) / (min(size) / 2))
    gain = (1.0 - fading * time_s / max(time_s[-1], 1e-9)) * (1.0 + flicker * rng.standard_normal(n_frames))
    mu = rng.uniform(0.8, 1.2)
    movie = np.empty((n_frames,) + size, np.float32)
    for t in range(n_frames):
        cy, cx = gy + view0[0] + walk[t, 0], gx + view0[1] + walk[t, 1]
        coords = np.stack([cy.ravel(), cx.ravel()])
        d = _sample(phi, coords, ss).reshape(size)
        sampled = [ndimage.map_coordinates(f, coords, order=1, mode="nearest").reshape(size)
                   for f in (thick, film, dot_amp)]
        dots_here = ndimage.map_coordinates(dot_depth, coords, order=0, mode="nearest").reshape(size) < x_px[t]
        material = _step((d + swelling * x_px[t]) / psf_px)
        reacted = _step((x_px[t] - d) / psf_px)
        density = material * ((1.0 - reacted) * sampled[0] + reacted * rho)
        density = density + np.where(dots_here, sampled[2], 0.0) * (1.6 - rho) * material
        density = ndimage.gaussian_filter(density, psf_px * 0.5)
        if contrast == "bf":
            signal = np.exp(-mu * density) + sampled[1]
        elif contrast == "df":
            signal = 0.08 + density + sampled[1]
        else:
            raise ValueError(f"contrast must be 'bf' or 'df', got {contrast!r}")
        lam = np.clip(dose * gain[t] * ramp * signal, 0.0, None)
        movie[t] = rng.poisson(lam)
    depth0 = _sample(phi, np.stack([(gy + view0[0]).ravel(), (gx + view0[1]).ravel()]), ss).reshape(size)
    truth = MovieTruth(k=float(k), n=float(n), t0_s=float(t0_s), time_s=time_s, front_nm=front_nm,
                       shifts_px=-walk, pixel_size_nm=float(pixel_size_nm), frame_interval_s=float(frame_interval_s),
                       outline=outline, swelling=float(swelling), contrast=contrast, depth_px=depth0,
                       meta={"rho": rho, "mu": mu, "dose": dose, "fading": fading, "flicker": flicker,
                             "n_dots": int(np.isfinite(dot_depth).any() and n_dots), "seed": seed})
    return movie, truth


def _step(u):
    from scipy.special import ndtr

    return ndtr(u)


def _sample(phi, coords, ss):
    """Signed depth (px) at canvas coordinates ``coords`` (2, m) from the supersampled map."""
    return ndimage.map_coordinates(phi, (coords + 0.5) * ss - 0.5, order=1, mode="nearest")


def reaction_volumes(shape=(48, 48, 48), n_volumes=12, *, n=0.5, k=None, t0_s=None, interval_s=10.0,
                     voxel_size_nm=1.0, final_depth_px=None, swelling=0.4, drift_px=4.0, noise=0.05, seed=0):
    """A sequence of reconstructed volumes ``(n_volumes, z, y, x)`` of a reacting grain (an
    ellipsoid) with a known front depth below the first volume's surface; returns (volumes, truth).

    Densities: vacuum 0, NiO 1, reacted ``rho`` (0.45-0.65); Gaussian noise of ``noise``; the
    grain drifts by up to ``drift_px`` voxels. ``truth.depth_px`` is the signed depth map of the
    first volume.
    """
    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in shape)
    time_s = np.arange(n_volumes) * float(interval_s)
    t0_s = rng.uniform(0.2, 0.8) * interval_s if t0_s is None else t0_s
    radii = np.array(size) * rng.uniform(0.32, 0.4, 3)
    final_depth_px = final_depth_px or 0.45 * radii.min()
    span = time_s[-1] - t0_s
    k = final_depth_px * voxel_size_nm / span ** n if k is None else k
    front_nm = k * np.clip(time_s - t0_s, 0.0, None) ** n
    x_px = front_nm / voxel_size_nm
    walk = np.cumsum(rng.standard_normal((n_volumes, 3)), 0)
    walk -= walk[0]
    walk *= drift_px / max(np.abs(walk).max(), 1e-9)
    ss = 2
    grid = np.meshgrid(*[(np.arange(s * ss) + 0.5) / ss - 0.5 for s in size], indexing="ij")
    centre = (np.array(size) - 1) / 2
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
    phi = (ndimage.distance_transform_edt(inside) - ndimage.distance_transform_edt(~inside)) / ss
    phi = phi + np.where(inside, -0.5 / ss, 0.5 / ss)
    rho = rng.uniform(0.45, 0.65)
    base = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in size], indexing="ij")).reshape(3, -1)
    vols = np.empty((n_volumes,) + size, np.float32)
    for t in range(n_volumes):
        d = ndimage.map_coordinates(phi, (base + walk[t][:, None] + 0.5) * ss - 0.5, order=1, mode="nearest").reshape(size)
        material = _step((d + swelling * x_px[t]) / 0.7)
        reacted = _step((x_px[t] - d) / 0.7)
        vols[t] = material * ((1 - reacted) + reacted * rho) + noise * rng.standard_normal(size)
    depth0 = ndimage.map_coordinates(phi, (base + 0.5) * ss - 0.5, order=1, mode="nearest").reshape(size)
    truth = MovieTruth(k=float(k), n=float(n), t0_s=float(t0_s), time_s=time_s, front_nm=front_nm,
                       shifts_px=-walk, pixel_size_nm=float(voxel_size_nm), frame_interval_s=float(interval_s),
                       outline="ellipsoid", swelling=float(swelling), contrast="density", depth_px=depth0,
                       meta={"rho": rho, "noise": noise, "seed": seed})
    return vols, truth
