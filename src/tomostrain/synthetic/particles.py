"""A family of sodiated-NiO particles: many shapes, sizes, shells and Ni loads, with ground truth.

Where :func:`~tomostrain.synthetic.phantoms.sodiated_particle` draws one kind of particle (the
demo's platelet filling a third of the volume), :func:`family_particle` draws from a family that
spans what a microscope sees: 60-97 % vacuum, one to three bodies (plates turned obliquely to the
beam, or chunky grains) with lumpy surfaces, a reacted shell 2-12 voxels thick that is conformal
or finger-like, and 5-60 Ni particles of radius 1-4 voxels resting on or sunk partly into the
surface. :func:`random_spec` draws the parameters from a seed; :func:`family_series` makes the
noisy tilt series with the project's simulator (``synthetic.tilt_series``, independent of the
reconstruction projectors).

Volumes are ``[y, z, x]`` (DESIGN.md §3); labels uint8: 0 vacuum, 1 reacted shell, 2 NiO core,
3 Ni particles (increasing density).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ..errors import InputError

FAMILY_DENSITIES = {"shell": 0.55, "core": 1.0, "particles": 1.7}


@dataclass(frozen=True)
class ParticleSpec:
    """Parameters of one family member. Lengths in voxels, angles in degrees.

    shape: ``(n_rows, n, n)``; vacuum_fraction: share of the volume outside the bodies (before the
    Ni particles are added); n_bodies: 1-3; kind: ``"plate"`` (thin superellipsoid, turned
    obliquely) or ``"grain"`` (chunky, near-isometric); lumpiness: amplitude of the smooth random
    surface relief relative to the body size; shell_thickness: mean reacted depth below the
    surface; shell_mode: ``"conformal"`` (smoothly varying, +-thickness_variation) or
    ``"finger"`` (a thin skin with narrow fingers reaching ~3x deeper); n_ni: Ni particles;
    ni_radius: (min, max) radius; ni_embed: largest fraction of a Ni radius sunk below the
    surface; densities: shell, core, particles (vacuum 0); tilt_range: the series runs
    -tilt_range..+tilt_range in tilt_step steps; dose: electrons per pixel at the brightest pixel.
    """

    shape: tuple[int, int, int] = (64, 64, 64)
    seed: int = 0
    vacuum_fraction: float = 0.9
    n_bodies: int = 1
    kind: str = "plate"
    lumpiness: float = 0.08
    shell_thickness: float = 4.0
    thickness_variation: float = 0.3
    shell_mode: str = "conformal"
    n_ni: int = 15
    ni_radius: tuple[float, float] = (1.5, 3.5)
    ni_embed: float = 0.5
    densities: dict = field(default_factory=lambda: dict(FAMILY_DENSITIES))
    tilt_range: float = 70.0
    tilt_step: float = 2.0
    dose: float = 2000.0


@dataclass
class FamilyTruth:
    """Ground truth of a family member. ``shell_thickness``: the drawn local thickness at the outer
    surface voxels (mean, std, min, max; voxels); ``ni_radii``/``ni_centres`` (y, z, x voxels) of
    the Ni spheres placed; ``ni_voxels``: voxels each owns; ``spec``: the spec actually realised
    (shell thickness clipped to leave a core, Ni count to what fits)."""

    spec: ParticleSpec
    densities: dict
    voxels: dict
    fractions: dict
    vacuum_fraction: float
    shell_thickness: dict
    n_particles: int
    ni_radii: np.ndarray
    ni_centres: np.ndarray
    ni_voxels: np.ndarray


def random_spec(seed: int, shape=(64, 64, 64), **overrides) -> ParticleSpec:
    """Draw a family member's parameters from ``seed`` (uniform over the family's ranges);
    ``overrides`` fix any of them."""
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(["plate", "grain"]))
    lo_r = float(rng.uniform(1.0, 2.0))
    spec = ParticleSpec(
        shape=tuple(int(s) for s in shape),
        seed=int(seed),
        vacuum_fraction=float(rng.uniform(0.80, 0.95) if kind == "plate" else rng.uniform(0.60, 0.97)),
        n_bodies=int(rng.integers(1, 4)),
        kind=kind,
        lumpiness=float(rng.uniform(0.03, 0.12)),
        shell_thickness=float(rng.uniform(2.0, 12.0)),
        thickness_variation=float(rng.uniform(0.1, 0.35)),
        shell_mode=str(rng.choice(["conformal", "conformal", "finger"])),
        n_ni=int(rng.integers(5, 61)),
        ni_radius=(lo_r, float(rng.uniform(lo_r + 0.5, 4.0))),
        ni_embed=float(rng.uniform(0.0, 0.6)),
        densities={k: v * float(rng.uniform(0.93, 1.07)) for k, v in FAMILY_DENSITIES.items()},
        tilt_range=float(rng.uniform(60.0, 75.0)),
        tilt_step=float(rng.choice([1.5, 2.0, 2.5])),
        dose=float(rng.uniform(500.0, 4000.0)),
    )
    return replace(spec, **overrides)


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    g = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return g / g.std()


def _random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _oblique_plate_rotation(rng):
    """A rotation whose plate normal (body axis 2) is 25-65 degrees from the beam (z at 0 deg)."""
    tilt = np.radians(rng.uniform(25, 65))
    azim = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.sin(tilt) * np.cos(azim), np.cos(tilt), np.sin(tilt) * np.sin(azim)])  # (y, z, x)
    a = np.cross(normal, rng.normal(size=3))
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    return np.stack([a, b, normal], axis=1)  # columns: body axes in (y, z, x)


def _bodies(spec: ParticleSpec, rng):
    """Boolean body mask with the requested vacuum fraction (inside the reconstruction circle)."""
    ny, n, _ = spec.shape
    centre = (np.array(spec.shape) - 1) / 2.0
    grid = np.indices(spec.shape, dtype=np.float32).reshape(3, -1).T - centre.astype(np.float32)
    field_ = np.full(grid.shape[0], np.inf, np.float32)
    spread = 0.18 * n if spec.n_bodies > 1 else 0.0
    for i in range(spec.n_bodies):
        if spec.kind == "plate":
            rot = _oblique_plate_rotation(rng)
            semi = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.35)])
            p = rng.uniform(2.5, 4.0)
        else:
            rot = _random_rotation(rng)
            semi = np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9)])
            p = rng.uniform(2.0, 3.0)
        c = rng.normal(size=3) * spread * np.array([ny / n, 1.0, 1.0])
        u = np.abs(((grid - c.astype(np.float32)) @ rot.astype(np.float32)) / semi.astype(np.float32))
        field_ = np.minimum(field_, ((u ** p).sum(1)) ** (1 / p))
    field_ = field_.reshape(spec.shape)
    field_ *= 1.0 + spec.lumpiness * 2.5 * _smooth_noise(rng, spec.shape, max(2.0, n / 16)).astype(np.float32)
    # room for the Ni particles: bodies stay inside a cylinder well within the reconstruction circle
    margin = spec.ni_radius[1] * 2 + 1.5
    g = np.indices(spec.shape, dtype=np.float32) - centre[:, None, None, None].astype(np.float32)
    allowed = (np.hypot(g[1], g[2]) <= 0.47 * n - margin) & (np.abs(g[0]) <= 0.5 * ny - margin)
    field_[~allowed] = np.inf
    target = int(round((1.0 - spec.vacuum_fraction) * field_.size))
    target = min(target, int(allowed.sum()))
    level = np.partition(field_.ravel(), target - 1)[target - 1]
    inside = field_ <= level
    inside = ndimage.binary_opening(inside, iterations=1)
    labels, count = ndimage.label(inside)
    if count > 1:  # keep bodies of real size only
        sizes = np.bincount(labels.ravel())[1:]
        inside = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    return inside


def family_particle(spec: ParticleSpec | None = None, **kw):
    """One family member: ``(density float32, labels uint8, FamilyTruth)``; ``kw`` builds the spec."""
    spec = ParticleSpec(**kw) if spec is None else replace(spec, **kw)
    dens = dict(spec.densities)
    ny, n, n2 = spec.shape
    if len(spec.shape) != 3 or n != n2 or min(spec.shape) < 24:
        raise InputError(f"shape must be (n_rows, n, n) with sizes >= 24, got {spec.shape!r}")
    if not 0.3 <= spec.vacuum_fraction < 0.995 or spec.kind not in ("plate", "grain") or not 1 <= spec.n_bodies <= 3:
        raise InputError(f"need 0.3 <= vacuum_fraction < 0.995, kind plate|grain, 1-3 bodies: {spec}")
    if spec.shell_mode not in ("conformal", "finger") or spec.shell_thickness <= 0:
        raise InputError(f"shell_mode must be conformal or finger and shell_thickness > 0: {spec}")
    if not 0 < dens["shell"] < dens["core"] < dens["particles"]:
        raise InputError(f"densities must give 0 < shell < core < particles, got {dens!r}")
    rng = np.random.default_rng(spec.seed)
    inside = _bodies(spec, rng)
    dist, idx = ndimage.distance_transform_edt(inside, return_indices=True)
    depth = dist - 0.5
    # keep a core: the shell reaches at most 60 % of the deepest point
    max_depth = float(depth.max())
    t_mean = min(spec.shell_thickness, 0.6 * max_depth / (1 + spec.thickness_variation))
    if spec.shell_mode == "conformal":
        rel = np.clip(_smooth_noise(rng, spec.shape, max(3.0, n / 10)), -1.5, 1.5) / 1.5
        thick_field = t_mean * (1 + spec.thickness_variation * rel)
    else:  # a thin skin plus narrow fingers that reach ~3x deeper
        width = 1.5  # finger radius ~ 2 width voxels
        spikes = ndimage.gaussian_filter((rng.random(spec.shape) < 0.002).astype(np.float64), width)
        spikes *= (2 * np.pi * width**2) ** 1.5  # each finger peaks at 1
        skin = max(1.0, 0.5 * t_mean)
        deep = min(3.0 * t_mean, 0.8 * max_depth)
        thick_field = skin + (deep - skin) * np.clip(spikes * 1.5, 0, 1)
    thick = thick_field[tuple(idx)]  # thickness read at the nearest outside voxel
    labels = np.zeros(spec.shape, np.uint8)
    labels[inside] = 2
    labels[inside & (depth < thick)] = 1
    outer = inside & ~ndimage.binary_erosion(inside)
    t_surf = thick[outer]
    thickness = {k: float(getattr(t_surf, k)()) for k in ("mean", "std", "min", "max")}

    radii, centres, counts = _place_ni(labels, inside, rng, spec)
    density = np.zeros(spec.shape, np.float32)
    for lab, name in ((1, "shell"), (2, "core"), (3, "particles")):
        density[labels == lab] = dens[name]
    nvox = {name: int(np.count_nonzero(labels == lab)) for lab, name in
            ((0, "vacuum"), (1, "shell"), (2, "core"), (3, "particles"))}
    total = nvox["shell"] + nvox["core"] + nvox["particles"]
    realised = replace(spec, shell_thickness=t_mean, n_ni=len(radii))
    truth = FamilyTruth(
        spec=realised, densities=dens, voxels=nvox,
        fractions={k: nvox[k] / total for k in ("shell", "core", "particles")},
        vacuum_fraction=nvox["vacuum"] / labels.size, shell_thickness=thickness, n_particles=len(radii),
        ni_radii=radii, ni_centres=centres, ni_voxels=counts,
    )
    return density, labels, truth


def _place_ni(labels, inside, rng, spec):
    """Ni spheres resting on the outer surface, sunk by up to ``ni_embed`` of their radius into
    the shell (never into the core); at least half a voxel apart. Writes label 3."""
    outside_dist = ndimage.distance_transform_edt(~inside)
    ny, n, _ = spec.shape
    centre = (np.array(spec.shape) - 1) / 2.0
    radii = np.sort(rng.uniform(*spec.ni_radius, size=int(spec.n_ni)))[::-1]
    taken = np.zeros(spec.shape, bool)
    kept, centres, counts = [], [], []
    core = labels == 2
    for r in radii:
        h = r * (1.0 - rng.uniform(0.0, spec.ni_embed)) - 0.3  # centre height above the surface
        cand = np.argwhere((np.abs(outside_dist - h - 0.5) < 0.5) & ~taken)
        if cand.size == 0:
            continue
        rel = cand - centre
        ok = (np.abs(rel[:, 0]) + r <= 0.5 * ny - 1.0) & (np.hypot(rel[:, 1], rel[:, 2]) + r <= 0.48 * n)
        if not ok.any():
            continue
        c = cand[rng.choice(np.flatnonzero(ok))].astype(np.float64)
        reach = r + spec.ni_radius[1] + 0.5  # the next centre keeps this far away
        lo = np.maximum(np.floor(c - reach).astype(int), 0)
        hi = np.minimum(np.ceil(c + reach).astype(int) + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.indices(hi - lo).reshape(3, -1).T + lo
        dist = np.linalg.norm(g - c, axis=1).reshape(hi - lo)
        ball = (dist <= r) & ~core[box] & (labels[box] != 3)
        if ball.sum() < 3:
            continue
        labels[box][ball] = 3
        taken[box] |= dist <= reach
        kept.append(r)
        centres.append(c)
        counts.append(int(ball.sum()))
    return np.array(kept), np.array(centres).reshape(-1, 3), np.array(counts, dtype=np.int64)


def family_series(density, spec: ParticleSpec, *, seed: int | None = None):
    """Noisy aligned tilt series of a family member: ``(data (n_angles, n_rows, n), angles_deg)``,
    -tilt_range..+tilt_range every tilt_step degrees, Poisson noise at ``spec.dose``."""
    from .tiltseries import tilt_series

    half = np.floor(spec.tilt_range / spec.tilt_step) * spec.tilt_step
    angles = np.arange(-half, half + spec.tilt_step / 2, spec.tilt_step)
    data, _ = tilt_series(density, angles, dose=spec.dose, seed=spec.seed + 1 if seed is None else seed)
    return data, angles
