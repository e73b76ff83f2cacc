"""Phase maps: which crystal (or vacuum) each probe position sees, from the radii of its spots.

Each candidate phase is a cubic lattice (parameter ``a`` in Å, structure giving the extinction
rule). A pattern's radial profile about the origin (ellipse-corrected, central disk excluded) is
compared with each phase's model profile (its allowed rings ``|g| = sqrt(h²+k²+l²)/a`` in the
zone, each drawn as the radial footprint of a probe disk) by cosine similarity; the best phase
wins. Positions that scatter almost nothing outside the central disk are vacuum (label 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from .virtual import _origin_field, array_module, as_cube, total_intensity

STRUCTURES = ("sc", "bcc", "fcc", "rocksalt", "antifluorite")


@dataclass(frozen=True)
class Phase:
    """A cubic phase: lattice parameter ``a`` (Å) and structure (extinction rule:
    sc none, bcc h+k+l even, fcc/rocksalt/antifluorite h, k, l unmixed)."""

    a: float
    structure: str = "fcc"

    def __post_init__(self):
        if not self.a > 0 or self.structure not in STRUCTURES:
            raise InputError(f"a Phase needs a > 0 (Å) and structure in {STRUCTURES}, got {self.a}, {self.structure!r}")

    def ring_radii(self, g_max: float, zone=(0, 0, 1)) -> np.ndarray:
        """Distinct allowed |g| (1/Å), 0 < |g| <= g_max, of reflections with (h, k, l)·zone = 0
        (``zone=None``: every reflection)."""
        n = int(g_max * self.a) + 1
        h, k, l = (v.ravel() for v in np.mgrid[-n : n + 1, -n : n + 1, -n : n + 1])
        ok = _allowed(self.structure, h, k, l) & ((h != 0) | (k != 0) | (l != 0))
        if zone is not None:
            ok &= h * zone[0] + k * zone[1] + l * zone[2] == 0
        g = np.sqrt(h[ok] ** 2 + k[ok] ** 2 + l[ok] ** 2) / self.a
        return np.unique(np.round(g[g <= g_max], 10))


PHASES = {
    "NiO": Phase(4.177, "rocksalt"),
    "Ni": Phase(3.524, "fcc"),
    "Na2O": Phase(5.55, "antifluorite"),
}


@dataclass
class PhaseMap:
    """labels (sy, sx) uint8: 0 vacuum, i = names[i]; confidence (sy, sx) in [0, 1] (cosine
    similarity of the winning phase; for vacuum 1 - scattered fraction / threshold)."""

    labels: object
    confidence: object
    names: tuple[str, ...]


def resolve_phases(phases) -> dict[str, Phase]:
    """Names from ``PHASES``, ``Phase`` objects or a ``{name: Phase}`` dict -> ``{name: Phase}``."""
    if isinstance(phases, str):
        phases = [p.strip() for p in phases.split(",") if p.strip()]
    items = phases.items() if isinstance(phases, dict) else [
        (p, None) if isinstance(p, str) else (f"phase{i + 1}", p) for i, p in enumerate(phases)]
    out = {}
    for name, phase in items:
        if phase is None:
            if name not in PHASES:
                raise InputError(f"unknown phase {name!r}; known phases: {sorted(PHASES)} (or pass a Phase)")
            phase = PHASES[name]
        if not isinstance(phase, Phase):
            raise InputError(f"phase {name!r} must be a Phase(a, structure), got {type(phase).__name__}")
        out[name] = phase
    if not out:
        raise InputError("phase_map needs at least one candidate phase")
    return out


def radial_profiles(cube, origin, ellipse=None, *, r_min: float, r_max: float, backend: str | None = None):
    """Radial intensity profiles (sy, sx, nbins) in 1-pixel bins from ``r_min`` to ``r_max``
    about a per-position origin, after ellipse correction; one vectorised bincount per chunk."""
    cube = as_cube(cube)
    xp = array_module(cube, backend)
    sy, sx = cube.scan_shape
    nbins = int(math.ceil(r_max - r_min))
    o = _origin_field(origin, (sy, sx), xp)
    out = xp.empty((sy, sx, nbins), xp.float64)
    for sl, chunk in cube.iter_rows(_backend.memory_budget("cpu" if xp is np else "gpu") // 4, xp):
        out[sl] = profile_rows(chunk, o[sl], ellipse, r_min, nbins, xp)
    return out


def profile_rows(chunk, origin_rows, ellipse, r_min: float, nbins: int, xp=np):
    """``radial_profiles`` of a chunk of scan rows ``(rows, sx, ky, kx)`` with its origins
    ``(rows, sx, 2)``: (rows, sx, nbins) float64, 1-pixel bins from ``r_min`` of the
    ellipse-corrected radius (one pass of the ``radial_sums`` kernel, float64 radii)."""
    from ..gpu_core.kernels.virtual_detector import radial_sums

    rows, sx, ky, kx = chunk.shape
    if ellipse is not None and not float(ellipse[0]) > 0:
        raise InputError(f"ellipse ratio must be positive, got {ellipse[0]}")
    _, prof = radial_sums(chunk.reshape(rows * sx, ky, kx), origin_rows.reshape(rows * sx, 2), (),
                          ellipse=ellipse, r_min=r_min, nbins=nbins)
    return prof.reshape(rows, sx, nbins)


def profile_range(detector_shape, radius: float) -> tuple[float, float]:
    """``(r_min, r_max)`` of the radial profiles phase_map compares: from just outside the
    central disk of ``radius`` px to the detector's inscribed circle."""
    ky, kx = detector_shape
    r_max, r_min = min(ky, kx) / 2.0 - 1.0, radius + 2.0
    if r_max - r_min < 2 * radius:
        raise InputError(f"detector {tuple(detector_shape)} leaves no room for Bragg disks of radius {radius:.1f} px")
    return r_min, r_max


def phase_map(
    cube,
    phases,
    q_pixel_size: float,
    *,
    origin=None,
    ellipse=None,
    disk_radius: float | None = None,
    zone=(0, 0, 1),
    vacuum_threshold: float = 0.03,
    backend: str | None = None,
) -> PhaseMap:
    """Classify every probe position as vacuum or one of ``phases``.

    cube : DataCube or 4D scan, or ``BraggPeaks`` from ``find_bragg_disks`` (then ``origin`` and
        ``disk_radius`` are required; the scattered fraction counts peak intensities)
    phases : names from ``PHASES`` ("NiO,Ni,Na2O" or a list), Phase objects, or {name: Phase};
        label i + 1 is the i-th phase
    q_pixel_size : 1/Å per pixel (across the ellipse's stretch)
    origin : pair or (sy, sx, 2); default ``cube.origin``, else ``calibrate.fit_origin(cube)``
    ellipse : (ratio, angle_deg) or None (default ``cube.ellipse``)
    disk_radius : probe disk radius (px); default measured on the central disk
    zone : zone axis [uvw] limiting the rings to reflections with h u + k v + l w = 0; None = all
    vacuum_threshold : largest share of a pattern's intensity outside the central disk for vacuum
    """
    table = resolve_phases(phases)
    if q_pixel_size is None or not q_pixel_size > 0:
        raise InputError(f"q_pixel_size must be positive (1/Å per pixel), got {q_pixel_size}")
    if hasattr(cube, "offsets") and hasattr(cube, "qy"):
        prof, scattered, radius, r_min, r_max, scan_shape, xp = _from_peaks(cube, origin, ellipse, disk_radius)
    else:
        prof, scattered, radius, r_min, r_max, scan_shape, xp = _from_cube(cube, origin, ellipse, disk_radius, backend)
    return classify_profiles(prof, scattered, table, q_pixel_size, radius, r_min, r_max, zone=zone,
                             vacuum_threshold=vacuum_threshold)


def classify_profiles(prof, scattered, phases, q_pixel_size: float, radius: float, r_min: float, r_max: float,
                      *, zone=(0, 0, 1), vacuum_threshold: float = 0.03) -> PhaseMap:
    """``phase_map`` from radial profiles ``(sy, sx, nbins)`` (1-px bins from ``r_min``) and the
    scattered fraction ``(sy, sx)`` (profile sum over total intensity) already measured."""
    table = resolve_phases(phases)
    xp = _backend.xp_of(prof)
    scan_shape = prof.shape[:2]
    centres = r_min + 0.5 + np.arange(prof.shape[-1])
    models = []
    for name, phase in table.items():
        rings = phase.ring_radii((r_max + radius) * q_pixel_size, zone) / q_pixel_size
        if rings.size == 0:
            raise InputError(f"phase {name!r} has no allowed ring on this detector (q_pixel_size {q_pixel_size})")
        d = centres[None, :] - rings[:, None]
        models.append(np.sqrt(np.clip(radius**2 - d**2, 0.0, None)).sum(0))
    models = np.stack(models)
    models /= np.linalg.norm(models, axis=1, keepdims=True) + 1e-30
    flat = prof.reshape(-1, prof.shape[-1])
    norm = xp.linalg.norm(flat, axis=1)
    score = (flat @ xp.asarray(models.T)) / xp.where(norm > 0, norm, 1.0)[:, None]
    best = xp.argmax(score, axis=1)
    sy, sx = scan_shape
    vacuum = (scattered < vacuum_threshold).reshape(-1)
    labels = xp.where(vacuum, 0, best + 1).astype(xp.uint8).reshape(sy, sx)
    conf = xp.where(vacuum, xp.clip(1.0 - scattered.reshape(-1) / vacuum_threshold, 0.0, 1.0),
                    xp.take_along_axis(score, best[:, None], 1)[:, 0]).reshape(sy, sx)
    return PhaseMap(labels, conf, ("vacuum", *table))


def _from_cube(cube, origin, ellipse, disk_radius, backend):
    """Radial profiles (sy, sx, nbins) and scattered fraction (sy, sx) of a scan."""
    from .calibrate import _disk_centres, _measure_origin, fit_origin

    cube = as_cube(cube)
    xp = array_module(cube, backend)
    where = "cpu" if xp is np else "gpu"
    origin = cube.origin if origin is None else origin
    if origin is None:
        measured, radius = _measure_origin(cube, xp)
        origin = fit_origin(measured)
    else:
        mean = sum(c.sum((0, 1), dtype=xp.float64) for _, c in cube.iter_rows(_backend.memory_budget(where), xp))
        radius = _disk_centres(mean[None], xp, with_radius=True)[1]
    radius = radius if disk_radius is None else float(disk_radius)
    ellipse = ellipse if ellipse is not None else cube.ellipse
    r_min, r_max = profile_range(cube.detector_shape, radius)
    prof = radial_profiles(cube, origin, ellipse, r_min=r_min, r_max=r_max, backend=where)
    total = total_intensity(cube, backend=where)
    scattered = prof.sum(-1) / xp.where(total > 0, total, 1.0)
    return prof, scattered, radius, r_min, r_max, cube.scan_shape, xp


def _from_peaks(peaks, origin, ellipse, disk_radius):
    """The same profiles built from detected Bragg peaks: each peak at distance rho from the origin
    (ellipse-corrected) adds ``intensity * sqrt(R² - (r - rho)²)``, a disk's radial footprint;
    scattered fraction = peak intensity beyond the central disk over all peak intensity."""
    from .calibrate import correct_ellipse

    if origin is None or disk_radius is None:
        raise InputError("phase_map from BraggPeaks needs origin= (pair or (sy, sx, 2)) and disk_radius= (px)")
    xp = _backend.xp_of(peaks.qy)
    sy, sx = peaks.scan_shape
    radius = float(disk_radius)
    o = _origin_field(origin, (sy, sx), xp).reshape(-1, 2)
    pos = peaks.positions()
    dy, dx = peaks.qy - o[pos, 0], peaks.qx - o[pos, 1]
    if ellipse is not None:
        dy, dx = correct_ellipse(dy, dx, *ellipse)
    rho = xp.hypot(dy, dx)
    inten = xp.clip(xp.asarray(peaks.intensity, dtype=xp.float64), 0.0, None)
    r_min = radius + 2.0
    r_max = max(float(rho.max()) + radius + 1.0 if rho.size else 0.0, r_min + 2 * radius)
    nbins = int(math.ceil(r_max - r_min))
    hist = xp.zeros(sy * sx * (nbins + 1), xp.float64)
    base = xp.floor(rho - r_min).astype(xp.int64)
    outside = rho >= r_min
    for j in range(-int(math.ceil(radius)) - 1, int(math.ceil(radius)) + 2):
        b = base + j
        w = inten * xp.sqrt(xp.clip(radius**2 - (r_min + b + 0.5 - rho) ** 2, 0.0, None))
        b = xp.where((b >= 0) & (b < nbins) & outside, b, nbins)
        hist += _backend.bincount(pos * (nbins + 1) + b, weights=w, minlength=hist.size)
    prof = hist.reshape(sy, sx, nbins + 1)[..., :nbins]
    all_int = _backend.bincount(pos, weights=inten, minlength=sy * sx)
    far = _backend.bincount(pos, weights=xp.where(outside, inten, 0.0), minlength=sy * sx)
    scattered = (far / xp.where(all_int > 0, all_int, 1.0)).reshape(sy, sx)
    return prof, scattered, radius, r_min, r_max, (sy, sx), xp


def _allowed(structure, h, k, l):
    if structure == "sc":
        return np.ones(h.shape, bool)
    if structure == "bcc":
        return (h + k + l) % 2 == 0
    return ((h % 2) == (k % 2)) & ((k % 2) == (l % 2))
