"""IMOD ``.xf`` transforms <-> tomostrain's alignment (DESIGN.md §3), and applying them.

IMOD (``io.imod``) maps a raw image position to the aligned one about the image centre, in
``(x, y) = (column, row)`` order: ``X' = A X + d`` with ``X = (x - xc, y - yc)``. Row index =
IMOD y (MRC row 0 is y = 0, which IMOD draws at the bottom), and the centre is the same point as
tomostrain's ``((n_rows-1)/2, (n_cols-1)/2)`` in array indices (IMOD puts pixel centres at
i + 0.5 and the centre at n/2). tomostrain maps the other way, aligned to raw, in ``(y, x)``:
``q = R(a) p + s`` (``aligned(p) = raw(q)``). With ``P`` the swap of x and y:

    R(a) = P A^-1 P,    s = -P A^-1 d        and back    A = P R(a)^T P,    d = -P R(a)^T s

so tomostrain's ``R(a) = [[cos a, sin a], [-sin a, cos a]]`` is the IMOD matrix
``A = [[cos a, sin a], [-sin a, cos a]]`` (a rotation by -a, counter-clockwise positive with y
up, bringing the tilt axis from ``a`` to vertical) and a pure shift ``(dy, dx)`` is
``d = (DX, DY) = (-dx, -dy)``. IMOD and tomostrain both put the tilt axis along y (the rows'
direction) in the aligned frame.
"""
from __future__ import annotations

import numpy as np

from ..errors import GeometryError, InputError
from ..gpu_core import backend
from .geometry import _rotation, check_series, resample_projections

_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])
#: a transform is a rotation when ``|A - R(a)| <= ROTATION_TOLERANCE`` element-wise
ROTATION_TOLERANCE = 1e-6


def _check_xf(xf, n=None) -> np.ndarray:
    xf = np.asarray(backend.to_host(xf), dtype=np.float64)
    if xf.ndim != 3 or xf.shape[1:] != (2, 3) or xf.shape[0] == 0 or not np.isfinite(xf).all():
        raise InputError(f"xf must be a finite (n, 2, 3) array [[A11, A12, DX], [A21, A22, DY]], got {xf.shape}")
    if n is not None and xf.shape[0] != n:
        raise GeometryError(f"{xf.shape[0]} transforms for {n} projections: need one per projection")
    if np.any(np.abs(np.linalg.det(xf[:, :, :2])) < 1e-12):
        raise GeometryError("an xf transform is singular (its 2x2 matrix has determinant 0)")
    return xf


def alignment_to_xf(shifts, tilt_axis_deg: float = 0.0, shape=None, center=None) -> np.ndarray:
    """IMOD transforms ``(n, 2, 3)`` of a tomostrain alignment.

    shifts : (n, 2) ``(dy, dx)`` pixels (DESIGN.md §3); tilt_axis_deg : ``a``, degrees
    shape, center : ``(n_rows, n_cols)`` and the rotation-axis column of the aligned frame; when
        ``center`` is given, the common translation that puts it at the image centre (where IMOD
        expects the axis) is folded into the shifts: ``s + R(a) @ (0, center - (n_cols-1)/2)``.
    The transforms hold about the image centre, so without ``center`` they do not depend on the
    image size.
    """
    s = np.asarray(backend.to_host(shifts), dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or not np.isfinite(s).all():
        raise GeometryError(f"shifts must be finite (n, 2) as (dy, dx) pixels, got {s.shape}")
    rot = _rotation(float(tilt_axis_deg))
    if center is not None:
        if shape is None:
            raise InputError("alignment_to_xf needs shape=(n_rows, n_cols) with center=")
        delta = float(center) - (float(shape[-1]) - 1) / 2.0
        s = s + rot @ np.array([0.0, delta])
    rot_t = rot.T
    a = _SWAP @ rot_t @ _SWAP
    d = -(_SWAP @ rot_t @ s.T).T
    out = np.empty((s.shape[0], 2, 3))
    out[:, :, :2] = a
    out[:, :, 2] = d
    return out


def xf_to_alignment(xf) -> tuple[np.ndarray, float]:
    """``(shifts (n, 2) (dy, dx), tilt_axis_deg)`` of IMOD transforms that are one common rotation
    plus per-image shifts; GeometryError otherwise (then use ``apply_xf``)."""
    xf = _check_xf(xf)
    a = xf[:, :, :2]
    angle = float(np.degrees(np.arctan2(a[0, 0, 1], a[0, 0, 0])))
    want = _SWAP @ _rotation(angle).T @ _SWAP
    worst = float(np.max(np.abs(a - want)))
    if worst > ROTATION_TOLERANCE:
        raise GeometryError(
            f"the xf transforms are not one common rotation (they differ from a rotation by "
            f"{angle:.4g} deg by up to {worst:.3g}: scaling, stretch or per-image rotation); apply "
            "them with apply_xf instead")
    inv = np.linalg.inv(want)
    shifts = -(_SWAP @ inv @ xf[:, :, 2].T).T
    return shifts, angle


def xf_matrices(xf, shape) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(matrices (n, 2, 2), offsets (n, 2))`` in (row, col) indices such that
    ``aligned(p) = raw(matrices[k] @ p + offsets[k])`` for images of ``shape = (n_rows, n_cols)``."""
    xf = _check_xf(xf)
    c = (np.asarray(shape[-2:], dtype=np.float64) - 1) / 2.0
    inv = np.linalg.inv(xf[:, :, :2])
    m = _SWAP @ inv @ _SWAP                       # (n, 2, 2), (y, x) order
    s = -np.einsum("ij,njk,nk->ni", _SWAP, inv, xf[:, :, 2])
    offsets = c - m @ c + s
    return m, offsets


def apply_xf(data, xf, order: int = 1):
    """Aligned projections of raw ``data`` (n, n_rows, n_cols) under IMOD transforms ``xf`` (n, 2, 3):
    ``aligned(X') = raw(X)`` with ``X' = A X + d`` about the centre; float32 on the same device,
    edge values outside the raw image (as ``align_projections``). ``order``: spline order."""
    check_series(data)
    xf = _check_xf(xf, data.shape[0])
    m, offsets = xf_matrices(xf, data.shape[1:])
    return resample_projections(data, m, offsets, order=order, mode="nearest")
