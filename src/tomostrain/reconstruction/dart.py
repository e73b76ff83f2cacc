"""DART: discrete algebraic reconstruction for a few known grey levels (Batenburg & Sijbers 2011).

Start from SIRT; then repeat: segment into the grey levels (thresholds half way between
levels), free the boundary voxels (a neighbour in the slice's 3x3 neighbourhood has another
level) and a random fraction of the rest, fix every other voxel at its level, run SIRT on the
free voxels only (row weights of the free system), and smooth the free voxels with their 3x3
mean. The result is the final segmentation as grey levels. Everything is per slice (2-D
neighbourhoods), written once against ``xp``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..gpu_core import backend
from .iterative import _safe_inverse, prepare, sirt, tv


def estimate_levels(volume, n_classes: int = 3) -> np.ndarray:
    """Grey levels (class means, ascending) of ``n_classes`` multi-Otsu classes of ``volume``."""
    from skimage.filters import threshold_multiotsu

    host = backend.to_host(volume).astype(np.float64).ravel()
    thresholds = threshold_multiotsu(host, classes=n_classes)
    classes = np.digitize(host, thresholds)
    return np.array([host[classes == c].mean() if np.any(classes == c) else np.nan for c in range(n_classes)])


def phase_levels(volume, n_classes: int = 3, projections=None, operator=None) -> np.ndarray:
    """Grey levels (ascending, vacuum first) of ``n_classes`` phases from the envelope-first
    segmentation of ``volume`` (``gpu_core.phases.segment_phases``: vacuum mode, classes inside the
    particle envelope, the densest of 4+ classes as detected small particles), then refined by
    projection distance minimisation (van Aarle, Batenburg & Sijbers 2011) when the data are
    given: the levels ``rho`` minimising ``||sum_k rho_k A m_k - b||`` for the class masks
    ``m_k``, a ``n_classes`` x ``n_classes`` least-squares problem. Falls back to the multi-Otsu
    class means (:func:`estimate_levels`) when the volume holds no segmentable particle."""
    from ..gpu_core.phases import segment_phases

    try:
        seg = segment_phases(volume, n_classes)
    except InputError:
        return estimate_levels(volume, n_classes)
    levels = np.asarray(seg.levels, np.float64)
    if projections is None or operator is None:
        return levels
    xp = backend.xp_of(volume)
    b = xp.asarray(projections, dtype=xp.float64).ravel()
    for _ in range(PDM_ROUNDS):
        refined = _fit_levels(seg.labels, levels, n_classes, b, operator, xp)
        if refined is None:
            break
        change = float(np.max(np.abs(refined - levels)))
        levels = refined
        if change < 1e-3 * abs(levels[-1]):
            break
        # the class masks move with the thresholds (midpoints of the refined levels): segment again
        seg = segment_phases(volume, n_classes, levels=levels)
    return levels


PDM_ROUNDS = 1  # projection-distance fits (more rounds, each re-segmenting at the new midpoints, drift on SIRT masks)


def _fit_levels(labels, levels, n_classes, b, operator, xp):
    """Least-squares grey levels of the class masks against the data; None when degenerate."""
    cols = [operator.forward((labels == k).astype(xp.float32)).ravel().astype(xp.float64)
            for k in range(n_classes)]
    present = [k for k in range(n_classes) if float(xp.abs(cols[k]).sum()) > 0]
    a = xp.stack([cols[k] for k in present], axis=1)
    gram = backend.to_host(a.T @ a)
    rhs = backend.to_host(a.T @ b)
    try:
        fit = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        return None
    refined = np.asarray(levels, np.float64).copy()
    refined[present] = fit
    if not np.all(np.diff(refined) > 0):  # a degenerate fit (a class nearly empty): keep the levels
        return None
    return refined


def start_volume(b, op, start, iterations, support=None, weight=None):
    """DART's start: SIRT or TV-regularised least squares of ``iterations`` iterations, both
    non-negative (DART's levels and class masks come from it; its own updates clamp at the
    lowest level too)."""
    if start == "sirt":
        return sirt(b, geometry=op.geometry, iterations=iterations, n_x=op.n_x, support=support, nonnegative=True)
    if start == "tv":
        return tv(b, geometry=op.geometry, iterations=iterations, n_x=op.n_x, support=support, weight=weight)
    raise InputError(f"start must be 'sirt' or 'tv', got {start!r}")


def segment(volume, levels):
    """Each voxel set to the nearest of ``levels`` (ascending): thresholds half way between them."""
    xp = backend.xp_of(volume)
    lv = np.asarray(levels, np.float64)
    idx = xp.digitize(volume, xp.asarray((lv[1:] + lv[:-1]) / 2))
    return xp.asarray(lv, dtype=xp.float32)[idx]


def _neighbours(x):
    """The 8 in-slice neighbours of every voxel (edge values repeated): list of arrays."""
    xp = backend.xp_of(x)
    pad = xp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    n, m = x.shape[1:]
    return [pad[:, 1 + dz : 1 + dz + n, 1 + dx : 1 + dx + m] for dz in (-1, 0, 1) for dx in (-1, 0, 1)
            if dz or dx]


def _boundary(seg):
    xp = backend.xp_of(seg)
    out = xp.zeros(seg.shape, bool)
    for nb in _neighbours(seg):
        out |= nb != seg
    return out


def _smooth(x, free, strength):
    """Free voxels move ``strength`` of the way to their 3x3 neighbourhood mean."""
    xp = backend.xp_of(x)
    mean = x.copy()
    for nb in _neighbours(x):
        mean += nb
    mean /= 9.0
    return xp.where(free, (1 - strength) * x + strength * mean, x)


def dart(projections, angles_deg=None, center=None, shifts=None, *, geometry=None, levels=None, n_classes=3,
         iterations=20, sirt_iterations=10, initial_iterations=50, free_fraction=0.1, smoothing=0.0,
         seed=0, support=None, callback=None, n_x=None, start="sirt", tv_weight=None, refine_levels=False):
    """Discrete reconstruction with grey ``levels`` (ascending, background included, e.g. 0).

    levels : the phases' grey values; default: :func:`phase_levels` (``n_classes`` phases,
        envelope-first segmentation of the initial SIRT reconstruction, refined against the data)
    iterations : DART iterations; sirt_iterations: SIRT iterations on the free voxels per DART
        iteration; initial_iterations: SIRT iterations of the start volume
    free_fraction : probability that a non-boundary voxel is also freed in an iteration
    smoothing : weight of the 3x3 mean in the smoothing of free voxels (0 = none; 0.1-0.3 damps
        noise in noisy data, at some cost in accuracy on clean data)
    start : the start volume, ``"sirt"`` (``initial_iterations`` SIRT) or ``"tv"`` (as many
        TV-regularised iterations, weight ``tv_weight``, default ``default_tv_weight``): a sharper
        start gives levels and class masks closer to the truth on thin features (docs/design.md)
    refine_levels : after every DART iteration, refit the levels to the data by projection
        distance minimisation over DART's own (sharper) class masks; the vacuum level stays. Off
        by default: a volume reconstructed in row chunks would get levels per chunk
    seed : seed of the random free voxels (per call: volumes reconstructed in chunks draw their
        own voxels, so chunks agree with a one-piece run only statistically)
    projections, angles_deg, center, shifts, geometry, support, callback, n_x : as in ``sirt``

    Returns (n_rows, n_x, n_x) float32 volume whose voxels take the grey levels.
    """
    b, op, x, mask = prepare(projections, angles_deg, center, shifts, geometry, n_x, None, support)
    xp = op.xp
    if not 0 <= free_fraction <= 1 or not 0 <= smoothing <= 1:
        raise InputError(f"free_fraction and smoothing must lie in [0, 1], got {free_fraction}, {smoothing}")
    x = start_volume(b, op, start, initial_iterations, support, tv_weight)
    if levels is None:
        levels = phase_levels(x, n_classes, b, op)
    levels = np.sort(np.asarray(levels, np.float64))
    if levels.ndim != 1 or levels.size < 2 or not np.isfinite(levels).all():
        raise InputError(f"levels must be at least 2 finite grey values, got {levels!r}")
    col = op.column_weights()
    rng = xp.random.default_rng(seed)
    for it in range(int(iterations)):
        seg = segment(x, levels)
        free = _boundary(seg) | (rng.random(seg.shape, dtype=xp.float32) < free_fraction)
        if mask is not None:
            free &= mask
        x = xp.where(free, x, seg)
        row = _safe_inverse(op.forward(free.astype(xp.float32)))
        step = col * free
        for _ in range(int(sirt_iterations)):
            r = b - op.forward(x)
            x += step * op.back(row * r)
            x = xp.maximum(x, float(levels[0]), out=x)
        x = _smooth(x, free, smoothing)
        if refine_levels:
            lab = xp.digitize(x, xp.asarray((levels[1:] + levels[:-1]) / 2))
            fit = _fit_levels(lab, levels, levels.size, b.astype(xp.float64).ravel(), op, xp)
            if fit is not None:
                levels = np.concatenate([levels[:1], fit[1:]])
        if callback is not None:
            callback(it, x, float(xp.sqrt(xp.sum((b - op.forward(x)).astype(xp.float64) ** 2))))
    out = segment(x, levels)
    return out if mask is None else out * mask
