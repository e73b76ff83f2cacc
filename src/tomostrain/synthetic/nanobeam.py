"""Synthetic nano-beam 4D-STEM scan of a sodiated NiO particle, with its ground truth.

Kinematic [001] zone-axis patterns of rock-salt NiO, fcc Ni and antifluorite Na2O plus vacuum
(central disk only), rendered as probe disks with a dynamical-like intensity gradient inside each
Bragg disk, a descan plane, a 0.5 % elliptical distortion and Poisson noise. All conventions are
those of DESIGN.md §3: data ``(scan_y, scan_x, ky, kx)``, vectors ``(y, x)``, ``g`` in 1/Å,
``G = inv(F).T @ G_ref`` for a deformation ``F`` of the real-space lattice.

Labels: 0 vacuum, 1 Na2O, 2 NiO, 3 Ni (``LABEL_NAMES``).

Distortion model (what ``strain.calibrate.correct_ellipse`` undoes): about the origin, a detector
offset ``d`` (pixels, ``(y, x)``) is ``d = E @ q`` with ``q`` the undistorted offset and
``E = I + (ratio - 1) u u^T``, ``u = (sin phi, cos phi)``, ``phi = angle_deg``: the detector is
stretched by ``ratio`` along the direction at ``phi`` from +x towards +y and unchanged across it,
so ``q_pixel_size`` is exact across that direction.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

LABEL_NAMES = ("vacuum", "Na2O", "NiO", "Ni")
LATTICE_A = {"Na2O": 5.55, "NiO": 4.177, "Ni": 3.524}  # cubic lattice parameters (Å)
_Z = {"Ni": 28.0, "O": 8.0, "Na": 11.0}
_BASIS = {  # atoms of the primitive motif on each fcc lattice point (fractional coordinates)
    "Ni": (("Ni", (0.0, 0.0, 0.0)),),
    "NiO": (("Ni", (0.0, 0.0, 0.0)), ("O", (0.5, 0.0, 0.0))),
    "Na2O": (("O", (0.0, 0.0, 0.0)), ("Na", (0.25, 0.25, 0.25)), ("Na", (0.75, 0.75, 0.75))),
}
_DEBYE_WALLER = 2.0  # Å^2: intensity falloff exp(-B |g|^2), |g| in 1/Å, with Z-weighted f


def structure_factor(phase: str, h: int, k: int, l: int = 0) -> float:
    """|F_hkl| of a phase with atomic scattering f ~ Z (0 for reflections the fcc lattice forbids)."""
    if len({h % 2, k % 2, l % 2}) != 1:
        return 0.0
    f = sum(_Z[el] * np.exp(2j * np.pi * (h * x + k * y + l * z)) for el, (x, y, z) in _BASIS[phase])
    return float(abs(4 * f))


def zone_001_reflections(phase: str, g_max: float) -> list[tuple[int, int, float]]:
    """Allowed (h, k, 0) reflections of the [001] zone with 0 < |g| <= g_max (1/Å), as
    ``(h, k, relative intensity)``: |F|^2 exp(-B |g|^2), largest normalised to 1."""
    a = LATTICE_A[phase]
    n = int(g_max * a) + 1
    out = []
    for h in range(-n, n + 1):
        for k in range(-n, n + 1):
            g = math.hypot(h, k) / a
            if (h, k) == (0, 0) or g > g_max:
                continue
            f = structure_factor(phase, h, k, 0)
            if f > 1e-9:
                out.append((h, k, f * f * math.exp(-_DEBYE_WALLER * g * g)))
    top = max(w for _, _, w in out)
    return [(h, k, w / top) for h, k, w in out]


def reference_lattice(phase: str, rotation_deg: float = 0.0) -> np.ndarray:
    """G_ref (2x2, columns g1 = g(200), g2 = g(020) in (y, x), 1/Å), turned by ``rotation_deg``
    (positive turns +y towards +x). Unturned, g1 = (0, 2/a) and g2 = (2/a, 0)."""
    a = LATTICE_A[phase]
    return _rot(rotation_deg) @ np.array([[0.0, 2.0 / a], [2.0 / a, 0.0]])


def deformation(exx, eyy, exy, theta_deg) -> np.ndarray:
    """F (..., 2, 2) in (y, x) order whose DESIGN.md §3 read-out gives back exactly
    (exx, eyy, exy, theta): F = I + eps + omega with eps = [[eyy, exy], [exy, exx]] and
    omega = [[0, -w], [w, 0]], w = tan(theta) (2 + exx + eyy) / 2.

    (A rotation times a stretch, Rot(theta) @ (I + eps), agrees only to second order.)"""
    exx, eyy, exy, th = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (exx, eyy, exy, theta_deg)))
    w = np.tan(np.radians(th)) * (2.0 + exx + eyy) / 2.0
    F = np.empty(exx.shape + (2, 2))
    F[..., 0, 0] = 1.0 + eyy
    F[..., 0, 1] = exy - w
    F[..., 1, 0] = exy + w
    F[..., 1, 1] = 1.0 + exx
    return F


def strain_from_lattice(G, G_ref) -> dict:
    """DESIGN.md §3 strain read-out of lattices ``G`` (..., 2, 2) against ``G_ref`` (2, 2):
    A = inv(G).T, F = A @ inv(A_ref); returns exx, eyy, exy, theta (degrees)."""
    A = np.swapaxes(np.linalg.inv(G), -1, -2)
    A_ref = np.linalg.inv(G_ref).T
    F = A @ np.linalg.inv(A_ref)
    return {
        "exx": F[..., 1, 1] - 1.0,
        "eyy": F[..., 0, 0] - 1.0,
        "exy": (F[..., 0, 1] + F[..., 1, 0]) / 2.0,
        "theta": np.degrees(np.arctan2(F[..., 1, 0] - F[..., 0, 1], F[..., 0, 0] + F[..., 1, 1])),
    }


def ellipse_matrix(ratio: float, angle_deg: float) -> np.ndarray:
    """E = I + (ratio - 1) u u^T, u = (sin a, cos a): undistorted -> detector offsets, (y, x)."""
    a = math.radians(angle_deg)
    u = np.array([math.sin(a), math.cos(a)])
    return np.eye(2) + (ratio - 1.0) * np.outer(u, u)


def default_scene(scan_shape, seed: int = 0):
    """Labels (sy, sx) uint8 and thickness (sy, sx) nm of the default particle: NiO core, Na2O
    shell band, four Ni patches on the surface, vacuum around. Also returns the geometry dict."""
    sy, sx = scan_shape
    rng = np.random.default_rng(seed)
    cy, cx = (sy - 1) / 2.0, (sx - 1) / 2.0
    r_particle = 0.36 * min(sy, sx)
    r_core = 0.72 * r_particle
    r_patch = 0.09 * min(sy, sx)
    y, x = np.indices((sy, sx), dtype=np.float64)
    r = np.hypot(y - cy, x - cx)
    labels = np.zeros((sy, sx), np.uint8)
    labels[r < r_particle] = 1
    labels[r < r_core] = 2
    t_max = 60.0
    thickness = t_max * np.sqrt(np.clip(1.0 - (r / r_particle) ** 2, 0.0, None))
    angles = np.radians(rng.uniform(0, 90) + np.arange(4) * 90 + rng.uniform(-20, 20, 4))
    patches = []
    for i, ang in enumerate(angles):
        py, px = cy + r_particle * np.sin(ang), cx + r_particle * np.cos(ang)
        rr = np.hypot(y - py, x - px)
        inside = rr < r_patch
        labels[inside] = 3
        thickness[inside] = np.maximum(thickness[inside], 25.0 * np.sqrt(1.0 - (rr[inside] / r_patch) ** 2))
        patches.append(((py, px), inside))
    thickness = np.where(labels > 0, np.maximum(thickness, 15.0), 0.0)
    geometry = {"centre": (cy, cx), "r_particle": r_particle, "r_core": r_core, "r_patch": r_patch,
                "patches": patches}
    return labels, thickness, geometry


def default_strain(scan_shape, geometry) -> dict:
    """Smooth strain field over the NiO core: exx, eyy within ±2 %, exy ±1 %, theta ±1 degree."""
    sy, sx = scan_shape
    y, x = np.indices((sy, sx), dtype=np.float64)
    cy, cx = geometry["centre"]
    yn, xn = (y - cy) / geometry["r_core"], (x - cx) / geometry["r_core"]
    return {
        "exx": 0.02 * np.clip(xn, -1, 1),
        "eyy": -0.015 + 0.03 * np.clip(xn**2 + yn**2, 0, 1),
        "exy": 0.01 * np.clip(2 * xn * yn, -1, 1),
        "theta": 1.0 * np.clip(yn, -1, 1),
    }


def nanobeam_4dstem(
    scan_shape=(48, 48),
    detector_shape=(128, 128),
    *,
    phase_map=None,
    strain=None,
    seed: int = 0,
    q_pixel_size: float = 0.0135,
    dose: float = 3e4,
    noise: bool = True,
    disk_radius: float = 5.0,
    disk_gradient: float = 0.3,
    descan_px=(1.5, 3.0),
    origin_jitter_px: float = 0.02,
    ellipse=(1.005, 25.0),
    crystal_rotation_deg: float = 8.0,
    bragg_fraction: float = 0.4,
    diffuse_fraction: float = 0.05,
    dtype="float32",
):
    """Simulate a nano-beam 4D-STEM scan and return ``(data, truth)``.

    Parameters
    ----------
    scan_shape, detector_shape : (sy, sx) probe positions and (ky, kx) detector pixels
    phase_map : (sy, sx) labels (0 vacuum, 1 Na2O, 2 NiO, 3 Ni) replacing the default particle
    strain : dict of exx, eyy, exy (fractions) and theta (degrees), scalars or (sy, sx) arrays,
        applied to the NiO positions; default: the smooth field of ``default_strain``
    q_pixel_size : 1/Å per detector pixel (across the ellipse's stretch direction)
    dose : mean electrons per pattern (noise-free patterns sum exactly to it)
    noise : draw Poisson counts; False gives the expected counts
    disk_radius : probe disk radius (pixels); edges anti-aliased over one pixel
    disk_gradient : largest slope s of a Bragg disk's interior, intensity ∝ 1 + s (k - g)·ĝ / r;
        s varies with thickness, so intensity-weighted centres move by up to s r / 4 pixels
    descan_px : (dy, dx) swing of the origin plane across the scan (pixels) along y and x
    origin_jitter_px : standard deviation of per-position noise added to the origin plane
    ellipse : (ratio, angle_deg) of the elliptical distortion (see the module docstring)
    crystal_rotation_deg : in-plane turn of the NiO/Na2O lattice (Ni patches turn further)
    bragg_fraction, diffuse_fraction : share of a thickest-region pattern in Bragg disks and in a
        smooth diffuse background (both scale with thickness; vacuum has neither)
    dtype : "float32" or "uint16"

    Returns
    -------
    data : (sy, sx, ky, kx) float32 or uint16
    truth : dict with labels, label_names, thickness (nm), exx, eyy, exy, theta (degrees; zero
        outside NiO), origin (sy, sx, 2) px, origin_plane (sy, sx, 2), ellipse (ratio, angle_deg),
        q_pixel_size, g1_ref/g2_ref (NiO, 1/Å, undistorted), g_ref {phase: G_ref}, g1/g2 (sy, sx, 2)
        per position (NaN in vacuum), reflections {phase: [(h, k, weight)]}, probe (ky, kx)
        noise-free vacuum pattern centred on the detector, disk_radius px, dose.
    """
    sy, sx = (int(v) for v in scan_shape)
    ky, kx = (int(v) for v in detector_shape)
    if min(sy, sx) < 4 or min(ky, kx) < 16:
        raise InputError(f"scan_shape must be at least 4x4 and detector_shape 16x16, got {scan_shape}, {detector_shape}")
    if dtype not in ("float32", "uint16"):
        raise InputError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")
    if not (q_pixel_size > 0 and dose > 0 and disk_radius > 0):
        raise InputError("q_pixel_size, dose and disk_radius must be positive, got "
                         f"{q_pixel_size}, {dose}, {disk_radius}")
    rng = np.random.default_rng(seed)
    labels, thickness, geometry = default_scene((sy, sx), seed)
    if phase_map is not None:
        user = np.asarray(phase_map)
        if user.shape != (sy, sx) or user.min() < 0 or user.max() > 3:
            raise InputError(f"phase_map must be (sy, sx) = {(sy, sx)} labels in 0..3, got shape {user.shape}")
        labels = user.astype(np.uint8)
        thickness = np.where(labels > 0, np.maximum(thickness, 30.0), 0.0)
    field = default_strain((sy, sx), geometry) if strain is None else strain
    missing = {"exx", "eyy", "exy", "theta"} - set(field)
    if missing:
        raise InputError(f"strain needs keys exx, eyy, exy, theta; missing {sorted(missing)}")
    nio = labels == 2
    comp = {k: np.where(nio, np.broadcast_to(np.asarray(field[k], np.float64), (sy, sx)), 0.0)
            for k in ("exx", "eyy", "exy", "theta")}

    # lattices per position: G = inv(F).T @ G_ref (NiO strained; Na2O, Ni unstrained)
    g_ref = {"Na2O": reference_lattice("Na2O", crystal_rotation_deg),
             "NiO": reference_lattice("NiO", crystal_rotation_deg)}
    G = np.full((sy, sx, 2, 2), np.nan)
    G[labels == 1] = g_ref["Na2O"]
    F = deformation(comp["exx"], comp["eyy"], comp["exy"], comp["theta"])
    G[nio] = np.swapaxes(np.linalg.inv(F[nio]), -1, -2) @ g_ref["NiO"]
    ni_turns = crystal_rotation_deg + rng.uniform(-20, 20, len(geometry["patches"]))
    for (_, inside), turn in zip(geometry["patches"], ni_turns):
        G[inside & (labels == 3)] = reference_lattice("Ni", turn)
    if phase_map is not None:
        G[labels == 3] = reference_lattice("Ni", ni_turns[0])

    # calibration distortions: descan plane + jitter, ellipse
    yy, xx = np.indices((sy, sx), dtype=np.float64)
    centre = np.array([ky / 2.0 + 0.3, kx / 2.0 - 0.2])
    plane = np.empty((sy, sx, 2))
    plane[..., 0] = centre[0] + descan_px[0] * (yy / (sy - 1) - 0.5) + 0.3 * descan_px[0] * (xx / (sx - 1) - 0.5)
    plane[..., 1] = centre[1] + descan_px[1] * (xx / (sx - 1) - 0.5) - 0.2 * descan_px[1] * (yy / (sy - 1) - 0.5)
    origin = plane + rng.normal(0.0, origin_jitter_px, plane.shape)
    E = ellipse_matrix(*ellipse)
    E_inv = np.linalg.inv(E)

    # reflections that stay whole on the detector for every position
    reach = min(ky, kx) / 2.0 - np.abs(origin - np.array([ky / 2.0, kx / 2.0])).max() - disk_radius - 2.0
    g_max = reach * q_pixel_size / (max(ellipse[0], 1.0) * 1.03)
    reflections = {p: zone_001_reflections(p, g_max) if g_max > 2.0 / LATTICE_A[p] else [] for p in LATTICE_A}

    t_rel = thickness / 60.0
    f_bragg = bragg_fraction * np.clip(t_rel, 0, 1)
    f_diff = diffuse_fraction * np.clip(t_rel, 0, 1)
    slope = disk_gradient * np.sin(2 * np.pi * thickness / 45.0 + 0.6)
    area = math.pi * disk_radius**2

    pad = int(math.ceil(disk_radius)) + 3
    flat_origin = origin.reshape(-1, 2)
    canvas = np.zeros((sy * sx, ky + 2 * pad, kx + 2 * pad), np.float32)
    everyone = np.arange(sy * sx)
    _render_disks(canvas, everyone, np.zeros((sy * sx, 2)), flat_origin, (1.0 - f_bragg - f_diff).ravel() / area,
                  np.zeros(sy * sx), disk_radius, E_inv, pad)
    flat_labels, flat_G = labels.ravel(), G.reshape(-1, 2, 2)
    for code, name in enumerate(LABEL_NAMES[1:], start=1):
        idx = np.flatnonzero(flat_labels == code)
        if idx.size == 0 or not reflections[name]:
            continue
        total_w = sum(w for _, _, w in reflections[name])
        for h, k, w in reflections[name]:
            q = flat_G[idx] @ np.array([h / 2.0, k / 2.0]) / q_pixel_size  # undistorted px
            _render_disks(canvas, idx, q, flat_origin[idx], f_bragg.ravel()[idx] * (w / total_w) / area,
                          slope.ravel()[idx], disk_radius, E_inv, pad)
    patterns = canvas[:, pad : pad + ky, pad : pad + kx]

    data = np.empty((sy, sx, ky, kx), np.float32 if dtype == "float32" else np.uint16)
    flat_data = data.reshape(sy * sx, ky, kx)
    dy_det, dx_det = np.indices((ky, kx), dtype=np.float64)
    q0 = 0.25 * min(ky, kx)
    rows = max(1, 4096 // sx)
    for start in range(0, sy * sx, rows * sx):
        sl = slice(start, min(start + rows * sx, sy * sx))
        oy, ox = flat_origin[sl, 0, None, None], flat_origin[sl, 1, None, None]
        uy = E_inv[0, 0] * (dy_det - oy) + E_inv[0, 1] * (dx_det - ox)
        ux = E_inv[1, 0] * (dy_det - oy) + E_inv[1, 1] * (dx_det - ox)
        diffuse = 1.0 / (1.0 + (uy * uy + ux * ux) / (q0 * q0))
        diffuse *= (f_diff.ravel()[sl] / diffuse.sum((1, 2)))[:, None, None]
        lam = patterns[sl] + diffuse
        lam *= (dose / lam.sum((1, 2)))[:, None, None]
        flat_data[sl] = rng.poisson(lam) if noise else lam
    del canvas

    probe_canvas = np.zeros((1, ky + 2 * pad, kx + 2 * pad), np.float32)
    _render_disks(probe_canvas, np.zeros(1, int), np.zeros((1, 2)), np.array([[ky / 2.0, kx / 2.0]]),
                  np.ones(1), np.zeros(1), disk_radius, E_inv, pad)
    probe = probe_canvas[0, pad : pad + ky, pad : pad + kx]
    probe *= dose / probe.sum()

    crystal = labels > 0
    g1 = np.where(crystal[..., None], G[..., :, 0], np.nan)
    g2 = np.where(crystal[..., None], G[..., :, 1], np.nan)
    truth = {
        "labels": labels, "label_names": LABEL_NAMES, "thickness": thickness,
        **comp,
        "origin": origin, "origin_plane": plane, "ellipse": tuple(float(v) for v in ellipse),
        "q_pixel_size": float(q_pixel_size),
        "g1_ref": g_ref["NiO"][:, 0].copy(), "g2_ref": g_ref["NiO"][:, 1].copy(),
        "g_ref": {**g_ref, "Ni": [reference_lattice("Ni", t) for t in ni_turns]},
        "g1": g1, "g2": g2, "reflections": reflections, "probe": probe,
        "disk_radius": float(disk_radius), "dose": float(dose), "disk_slope": np.where(crystal, slope, 0.0),
    }
    return data, truth


def _render_disks(canvas, idx, q, origin, amplitude, slope, radius, E_inv, pad):
    """Add one disk per row of ``idx`` to the padded canvas (N, ky + 2 pad, kx + 2 pad).

    Disk centre: detector position ``origin + E @ q`` (q undistorted px). Pixel value:
    ``amplitude * clip(radius + 0.5 - |u - q|, 0, 1) * (1 + slope (u - q)·q̂ / radius)`` with
    ``u = E_inv @ (pixel - origin)``. Vectorised over positions; one window per disk.
    """
    half = int(math.ceil(radius)) + 2
    width = 2 * half + 1
    E = np.linalg.inv(E_inv)
    centre = origin + q @ E.T
    hmax, wmax = canvas.shape[1] - width, canvas.shape[2] - width
    y0 = np.clip(np.floor(centre[:, 0]).astype(np.int64) - half + pad, 0, hmax)
    x0 = np.clip(np.floor(centre[:, 1]).astype(np.int64) - half + pad, 0, wmax)
    ys = y0[:, None] + np.arange(width)  # padded canvas rows
    xs = x0[:, None] + np.arange(width)
    dy = (ys - pad - origin[:, :1])[:, :, None]
    dx = (xs - pad - origin[:, 1:])[:, None, :]
    uy = E_inv[0, 0] * dy + E_inv[0, 1] * dx - q[:, 0, None, None]
    ux = E_inv[1, 0] * dy + E_inv[1, 1] * dx - q[:, 1, None, None]
    edge = np.clip(radius + 0.5 - np.hypot(uy, ux), 0.0, 1.0)
    norm = np.hypot(q[:, 0], q[:, 1])
    safe = np.where(norm > 0, norm, 1.0)
    gy, gx = (q[:, 0] / safe)[:, None, None], (q[:, 1] / safe)[:, None, None]
    value = amplitude[:, None, None] * edge * (1.0 + slope[:, None, None] * (uy * gy + ux * gx) / radius)
    canvas[idx[:, None, None], ys[:, :, None], xs[:, None, :]] += value.astype(np.float32)


def _rot(deg: float) -> np.ndarray:
    """Rotation (y, x) turning +y towards +x by ``deg``."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])
