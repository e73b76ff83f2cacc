"""Strain tensor and lattice rotation against a reference lattice (DESIGN.md §3).

``G`` (2x2) has columns g1, g2 in (y, x) order; ``A = inv(G).T`` (columns = real-space lattice
vectors); ``F = A @ inv(A_ref)``; ``exx = F[1,1] - 1``, ``eyy = F[0,0] - 1``,
``exy = (F[0,1] + F[1,0]) / 2`` (tensor shear) and
``theta = degrees(atan2(F[1,0] - F[0,1], F[0,0] + F[1,1]))``, positive turning +y towards +x.
Positive strain is tensile. Since ``F = inv(G).T @ G_ref.T``, F does not depend on which spot is
called g1 as long as the reference uses the same choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from .lattice import LatticeFit


@dataclass
class StrainMap:
    """Strain maps (scan_y, scan_x): exx, eyy, exy (fractions), theta (degrees), and mask (True
    where the lattice fit is trusted; the maps are NaN elsewhere). G_ref is the (2, 2) reference."""

    exx: object
    eyy: object
    exy: object
    theta: object
    mask: object
    G_ref: object


def lattice_matrix(g1, g2):
    """``G`` (..., 2, 2) with columns g1, g2 from (..., 2) vectors."""
    xp = _backend.xp_of(g1)
    return xp.stack([xp.asarray(g1), xp.asarray(g2)], axis=-1)


def deformation_gradient(G, G_ref):
    """``F = inv(G).T @ G_ref.T`` (= A @ inv(A_ref)) for G (..., 2, 2) and G_ref (2, 2)."""
    xp = _backend.xp_of(G)
    a, b, c, d = G[..., 0, 0], G[..., 0, 1], G[..., 1, 0], G[..., 1, 1]
    det = a * d - b * c
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_t = xp.stack([xp.stack([d, -c], -1), xp.stack([-b, a], -1)], -2) / det[..., None, None]
    return inv_t @ xp.asarray(G_ref).T


def strain_map(g1, g2=None, reference=None, *, mask=None, min_peaks: int = 4, max_residual: float | None = None) -> StrainMap:
    """Strain and rotation of every probe position against a reference lattice.

    Parameters
    ----------
    g1, g2 : (sy, sx, 2) lattice vectors (any consistent unit), or ``g1`` a LatticeFit and
        ``g2`` None (then ``min_peaks`` and ``max_residual`` use its ``n_peaks`` and ``residual``)
    reference : (y_slice, x_slice) region or (sy, sx) boolean mask whose median G is the
        reference (strain averages to ~0 there), or a (2, 2) G_ref matrix (columns g1, g2)
    mask : (sy, sx) bool, positions to use (default all)
    min_peaks : fewest indexed peaks for a trusted position (LatticeFit only)
    max_residual : largest fit residual in pixels for a trusted position (LatticeFit only)
    """
    fit = g1 if isinstance(g1, LatticeFit) else None
    if fit is not None:
        if g2 is not None:
            raise InputError("pass either a LatticeFit or g1 and g2, not both")
        g1, g2 = fit.g1, fit.g2
    if g2 is None:
        raise InputError("strain_map needs g2 (or a LatticeFit as its first argument)")
    xp = _backend.xp_of(g1)
    g1, g2 = xp.asarray(g1, dtype=xp.float64), xp.asarray(g2, dtype=xp.float64)
    if g1.ndim != 3 or g1.shape[-1] != 2 or g2.shape != g1.shape:
        raise InputError(f"g1 and g2 must both be (scan_y, scan_x, 2), got {g1.shape} and {g2.shape}")
    scan = g1.shape[:2]
    G = lattice_matrix(g1, g2)
    valid = xp.isfinite(G).all(axis=(-2, -1))
    if mask is not None:
        m = xp.asarray(mask, dtype=bool)
        if m.shape != scan:
            raise InputError(f"mask must have the scan shape {scan}, got {m.shape}")
        valid &= m
    if fit is not None:
        valid &= xp.asarray(fit.n_peaks) >= min_peaks
        if max_residual is not None:
            valid &= xp.asarray(fit.residual) <= max_residual
    G_ref = _reference(G, valid, reference, xp)
    F = deformation_gradient(G, G_ref)
    nan = xp.nan
    exx = xp.where(valid, F[..., 1, 1] - 1.0, nan)
    eyy = xp.where(valid, F[..., 0, 0] - 1.0, nan)
    exy = xp.where(valid, (F[..., 0, 1] + F[..., 1, 0]) / 2.0, nan)
    theta = xp.where(valid, xp.degrees(xp.arctan2(F[..., 1, 0] - F[..., 0, 1], F[..., 0, 0] + F[..., 1, 1])), nan)
    return StrainMap(exx, eyy, exy, theta, valid, G_ref)


def _reference(G, valid, reference, xp):
    if reference is None:
        raise InputError("strain_map needs a reference: (y_slice, x_slice), a boolean mask or a 2x2 G_ref")
    if isinstance(reference, tuple) and len(reference) == 2 and all(isinstance(s, slice) for s in reference):
        region = xp.zeros(valid.shape, dtype=bool)
        region[reference] = True
    else:
        ref = xp.asarray(reference)
        if ref.shape == (2, 2) and ref.dtype != bool:
            G_ref = ref.astype(xp.float64)
            if not bool(xp.isfinite(G_ref).all()) or abs(float(xp.linalg.det(G_ref))) == 0:
                raise InputError("G_ref must be a finite, non-singular 2x2 matrix (columns g1, g2)")
            return G_ref
        if ref.shape != valid.shape:
            raise InputError(f"reference must be (y_slice, x_slice), a {valid.shape} boolean mask or a 2x2 G_ref, "
                             f"got shape {ref.shape}")
        region = ref.astype(bool)
    use = region & valid
    if not bool(use.any()):
        raise InputError("the reference region holds no position with a trusted lattice fit")
    return xp.median(G[use], axis=0)
