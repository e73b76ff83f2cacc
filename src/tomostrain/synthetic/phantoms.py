"""Phantoms with known ground truth: 2D Shepp-Logan and a 3D sodiated NiO particle.

Volumes are indexed ``[y, z, x]`` (DESIGN.md §3): ``y`` along the tilt axis, ``z`` along the beam
at 0 degrees, ``x`` along the detector columns. Labels are ``uint8`` ordered by increasing density:
0 vacuum, 1 reacted shell (Na2O + Ni matrix), 2 unreacted NiO core, 3 Ni nanoparticles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError

# Modified Shepp-Logan (Toft 1996): intensity, semi-axes (a, b), centre (x0, y0), angle (deg);
# unit radius. In ellipse_image/ellipse_sinogram the centre reads (x0, z0) in voxels after scaling.
SHEPP_LOGAN = np.array(
    [
        [1.0, 0.6900, 0.9200, 0.00, 0.0000, 0.0],
        [-0.8, 0.6624, 0.8740, 0.00, -0.0184, 0.0],
        [-0.2, 0.1100, 0.3100, 0.22, 0.0000, -18.0],
        [-0.2, 0.1600, 0.4100, -0.22, 0.0000, 18.0],
        [0.1, 0.2100, 0.2500, 0.00, 0.3500, 0.0],
        [0.1, 0.0460, 0.0460, 0.00, 0.1000, 0.0],
        [0.1, 0.0460, 0.0460, 0.00, -0.1000, 0.0],
        [0.1, 0.0460, 0.0230, -0.08, -0.6050, 0.0],
        [0.1, 0.0230, 0.0230, 0.00, -0.6060, 0.0],
        [0.1, 0.0230, 0.0460, 0.06, -0.6050, 0.0],
    ]
)

LABEL_NAMES = {0: "vacuum", 1: "shell", 2: "core", 3: "particles"}
DENSITIES = {"shell": 0.55, "core": 1.0, "particles": 1.6}


def shepp_logan(n: int) -> np.ndarray:
    """Modified Shepp-Logan phantom, ``(n, n)`` float32 in [0, 1], row 0 at the top.

    Pixel centres sample the square [-1, 1]^2; a pixel takes the summed intensity of the ellipses
    containing its centre (no anti-aliasing).
    """
    if int(n) != n or n < 2:
        raise InputError(f"shepp_logan needs an integer size n >= 2, got {n!r}")
    n = int(n)
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    x = c[None, :]
    y = -c[:, None]  # row 0 is the top of the image (y = +1)
    img = np.zeros((n, n), np.float64)
    for amp, a, b, x0, y0, phi in SHEPP_LOGAN:
        cp, sp = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        xr = (x - x0) * cp + (y - y0) * sp
        yr = -(x - x0) * sp + (y - y0) * cp
        img += amp * ((xr / a) ** 2 + (yr / b) ** 2 <= 1.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def ellipse_image(ellipses, n: int, supersample: int = 4) -> np.ndarray:
    """(n, n) float64 image ``[z, x]`` of ellipses given in voxels about the image centre.

    ``ellipses`` rows: density, semi-axes (a, b), centre (x0, z0), angle (deg, from +x towards
    +z). Each pixel is the mean of ``supersample**2`` samples.
    """
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    coord = (np.arange(n)[:, None] + sub[None, :]).ravel() - (n - 1) / 2
    z, x = coord[:, None], coord[None, :]
    img = np.zeros((n * supersample, n * supersample))
    for rho, a, b, x0, z0, phi in ellipses:
        cp, sp = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        xr = (x - x0) * cp + (z - z0) * sp
        zr = -(x - x0) * sp + (z - z0) * cp
        img += rho * ((xr / a) ** 2 + (zr / b) ** 2 <= 1.0)
    return img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def ellipse_sinogram(ellipses, angles_deg, n_cols: int, center=None) -> np.ndarray:
    """(n_angles, n_cols) float64 exact line integrals of ``ellipse_image``'s ellipses, each
    averaged over its detector pixel, in the projection geometry of DESIGN.md §3
    (``u = x cos(theta) + z sin(theta)``, ``center`` default ``(n_cols - 1) / 2``)."""
    c = (n_cols - 1) / 2 if center is None else center
    th = np.radians(np.asarray(angles_deg, dtype=np.float64))[:, None]
    u = np.arange(n_cols)[None, :] - c
    out = np.zeros((th.shape[0], n_cols))
    for rho, a, b, x0, z0, phi in ellipses:
        alpha = th - np.radians(phi)
        r = np.sqrt((a * np.cos(alpha)) ** 2 + (b * np.sin(alpha)) ** 2)
        s = u - (x0 * np.cos(th) + z0 * np.sin(th))

        def area(t):  # integral of sqrt(r^2 - t^2) from -r to t
            t = np.clip(t, -r, r)
            return 0.5 * (t * np.sqrt(r * r - t * t) + r * r * np.arcsin(t / r))

        out += rho * 2 * a * b / r**2 * (area(s + 0.5) - area(s - 0.5))
    return out


@dataclass
class ParticleTruth:
    """Ground truth of :func:`sodiated_particle`. Lengths in voxels, positions ``(y, z, x)`` indices.

    ``fractions``: voxel fractions of the particle (all non-vacuum voxels) per phase.
    ``shell_thickness``: local shell thickness at the outer-surface voxels (``mean``, ``std``,
    ``min``, ``max``), measured from the particle surface (half a voxel outside the outermost voxel
    centres) to the shell/core interface along the inward normal.
    ``particle_radii``: nominal sphere radii; ``particle_voxels``: voxels each Ni particle owns
    (a sphere sitting on the surface, minus the small cap that would cut into the shell).
    """

    shape: tuple[int, int, int]
    densities: dict[str, float]
    voxels: dict[str, int]
    fractions: dict[str, float]
    shell_thickness: dict[str, float]
    n_particles: int
    particle_radii: np.ndarray
    particle_centres: np.ndarray
    particle_voxels: np.ndarray
    rotation: np.ndarray = field(repr=False)

    @property
    def particle_diameters(self) -> np.ndarray:
        """Volume-equivalent diameters (voxels) of the Ni particles as drawn."""
        return (6.0 * self.particle_voxels / np.pi) ** (1.0 / 3.0)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation of (y, z, x) coordinates: any turn about y, then up to 25 degrees about z and x."""
    a, b, c = rng.uniform(0, 2 * np.pi), *np.radians(rng.uniform(-25, 25, 2))
    ry = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), 0, -np.sin(b)], [0, 1, 0], [np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ rz @ ry


def _thickness_field(rng: np.random.Generator, variation: float):
    """Smooth random function on the unit sphere with values in [1 - variation, 1 + variation]."""
    lin = rng.normal(size=3)
    quad = rng.normal(size=(3, 3))
    quad = (quad + quad.T) / 2
    quad -= np.trace(quad) / 3 * np.eye(3)
    probe = rng.normal(size=(4000, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    scale = np.abs(probe @ lin + np.einsum("ni,ij,nj->n", probe, quad, probe)).max()

    def field_at(u):  # u: (..., 3) unit vectors
        g = (u @ lin + np.einsum("...i,ij,...j->...", u, quad, u)) / scale
        return 1.0 + variation * np.clip(g, -1.0, 1.0)

    return field_at


def sodiated_particle(
    shape: tuple[int, int, int] = (64, 128, 128),
    seed: int = 0,
    *,
    shell_thickness: float = 4.0,
    thickness_variation: float = 0.4,
    n_particles: int = 8,
    particle_radius: tuple[float, float] = (2.5, 4.5),
    densities: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, ParticleTruth]:
    """A partially sodiated NiO nanosheet: NiO core, reacted shell of varying thickness, Ni dots.

    The particle is a rounded platelet (superellipsoid, exponent 4, semi-axes 0.34 n, 0.40 n_rows
    and 0.12 n before scaling) turned by a seed-determined rotation and scaled to fit inside
    the reconstruction circle (radius < 0.4 n in every (z, x) slice) and the rows, with room for the
    Ni particles. The shell is every particle voxel whose depth below the surface is less than the
    local thickness ``shell_thickness * (1 + thickness_variation * g)`` of the nearest surface point,
    with ``g`` a smooth random field in [-1, 1] over surface directions. ``n_particles`` Ni spheres
    (radii uniform in ``particle_radius``, voxels) sit on the outer surface, at least 2 voxels apart.

    Args:
        shape: ``(n_rows, n, n)`` volume shape, indexed ``[y, z, x]``.
        seed: makes the particle (rotation, thickness field, Ni positions) deterministic.
        shell_thickness: mean shell thickness, voxels.
        thickness_variation: relative amplitude of the thickness variation (0 <= v < 1).
        n_particles: number of Ni particles.
        particle_radius: ``(min, max)`` Ni particle radius, voxels.
        densities: densities of ``shell``, ``core``, ``particles`` (vacuum is 0);
            default 0.55, 1.0, 1.6. Must increase in that order.

    Returns:
        ``(density float32 (n_rows, n, n), labels uint8, ParticleTruth)``.
    """
    dens = dict(DENSITIES if densities is None else densities)
    if len(shape) != 3 or min(shape) < 16 or shape[1] != shape[2]:
        raise InputError(f"shape must be (n_rows, n, n) with sizes >= 16, got {shape!r}")
    if set(dens) != set(DENSITIES) or not 0 < dens["shell"] < dens["core"] < dens["particles"]:
        raise InputError(f"densities must give 0 < shell < core < particles, got {dens!r}")
    if not 0 <= thickness_variation < 1 or shell_thickness <= 0:
        raise InputError(
            f"need shell_thickness > 0 and 0 <= thickness_variation < 1, got {shell_thickness}, {thickness_variation}"
        )
    r_lo, r_hi = float(particle_radius[0]), float(particle_radius[1])
    if not 0 < r_lo <= r_hi or n_particles < 0:
        raise InputError(
            f"need n_particles >= 0 and 0 < particle_radius[0] <= [1], got {n_particles}, {particle_radius}"
        )
    ny, n, _ = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    rot = _rotation(rng)

    # Size: sample the unit superellipsoid surface, rotate, and scale to fit with a margin.
    p = 4.0
    semi = np.array([0.40 * ny, 0.34 * n, 0.12 * n])  # body (y, z, x) semi-axes before turning: thin z
    d = rng.normal(size=(20000, 3))
    d /= (np.abs(d) ** p).sum(1, keepdims=True) ** (1 / p)  # on |u|_p = 1
    pts = (d * semi) @ rot.T
    margin = r_hi * 2 + 1
    scale = min(
        1.0,
        (0.5 * ny - margin) / np.abs(pts[:, 0]).max(),
        (0.4 * n - margin) / np.hypot(pts[:, 1], pts[:, 2]).max(),
    )
    semi = semi * scale
    if semi.min() < shell_thickness * (1 + thickness_variation) + 2:  # keep a core
        raise InputError(
            f"shape {shape} is too small for shell_thickness={shell_thickness}: the platelet is "
            f"{2 * semi.min():.1f} voxels thick after fitting; use a larger shape or a thinner shell"
        )

    centre = (np.array([ny, n, n]) - 1) / 2.0
    coords = np.indices((ny, n, n), dtype=np.float32).reshape(3, -1).T - centre.astype(np.float32)
    body = (coords @ rot.astype(np.float32)) / semi.astype(np.float32)  # r_body = R^T r
    inside = ((np.abs(body) ** p).sum(1) <= 1.0).reshape(ny, n, n)

    # Depth below the surface and the nearest outside voxel (where the thickness is read).
    dist, idx = ndimage.distance_transform_edt(inside, return_indices=True)
    depth = dist - 0.5  # surface lies half a voxel outside the outermost voxel centres
    field_at = _thickness_field(rng, thickness_variation)
    surf_pos = np.stack([idx[i][inside] for i in range(3)], 1) - centre
    u = surf_pos @ rot / semi  # direction in the body frame, normalised to the unit shape
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    thick = np.zeros((ny, n, n), np.float64)
    thick[inside] = shell_thickness * field_at(u)

    labels = np.zeros((ny, n, n), np.uint8)
    labels[inside] = 2
    labels[inside & (depth < thick)] = 1

    outer = inside & ~ndimage.binary_erosion(inside)
    t_surf = thick[outer]
    thickness = {k: float(getattr(t_surf, k)()) for k in ("mean", "std", "min", "max")}

    radii, centres, counts = _place_particles(labels, inside, rng, n_particles, (r_lo, r_hi), centre, ny, n)

    density = np.zeros((ny, n, n), np.float32)
    for lab, name in ((1, "shell"), (2, "core"), (3, "particles")):
        density[labels == lab] = dens[name]
    nvox = {name: int(np.count_nonzero(labels == lab)) for lab, name in LABEL_NAMES.items()}
    total = nvox["shell"] + nvox["core"] + nvox["particles"]
    truth = ParticleTruth(
        shape=(ny, n, n),
        densities=dens,
        voxels=nvox,
        fractions={k: nvox[k] / total for k in ("shell", "core", "particles")},
        shell_thickness=thickness,
        n_particles=len(radii),
        particle_radii=radii,
        particle_centres=centres,
        particle_voxels=counts,
        rotation=rot,
    )
    return density, labels, truth


def _place_particles(labels, inside, rng, count, radius_range, centre, ny, n):
    """Draw Ni spheres on vacuum voxels just outside the surface; writes label 3 into ``labels``."""
    outside_dist = ndimage.distance_transform_edt(~inside)
    radii = np.sort(rng.uniform(*radius_range, size=count))[::-1]
    centres, kept, counts = [], [], []
    for r in radii:
        # centre 0.8 r from the nearest particle voxel: the sphere rests on the surface
        cand = np.argwhere(np.abs(outside_dist - 0.8 * r - 0.5) < 0.5).astype(np.float64)
        rel = cand - centre
        ok = (np.abs(rel[:, 0]) + r <= 0.5 * ny - 1.5) & (np.hypot(rel[:, 1], rel[:, 2]) + r <= 0.4 * n)
        for c, rc in zip(centres, kept):
            ok &= np.linalg.norm(cand - c, axis=1) >= r + rc + 2.0
        if not ok.any():
            raise InputError(f"no room for {count} Ni particles of radius up to {radius_range[1]} on this particle")
        c = cand[rng.choice(np.flatnonzero(ok))]
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(hi - lo).reshape(3, -1).T + lo
        ball = (np.linalg.norm(grid - c, axis=1) <= r).reshape(hi - lo) & (labels[box] == 0)
        labels[box][ball] = 3
        centres.append(c)
        kept.append(r)
        counts.append(int(ball.sum()))
    return np.array(kept), np.array(centres).reshape(-1, 3), np.array(counts)
