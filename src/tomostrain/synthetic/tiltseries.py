"""Simulated HAADF tilt series with known misalignment, rotation centre and dose.

The projector here is deliberately independent of ``tomostrain.reconstruction``: each angle
resamples the volume on a rotated grid supersampled ``supersample`` times along the beam and the
detector (bilinear interpolation with zeros outside the volume, the same as
``ndimage.affine_transform(order=1, mode="grid-constant")``), sums along
the beam and bins the sub-columns; the resampling is one sparse matrix per angle, applied to every
row at once. Conventions are those of DESIGN.md §3.
"""
from __future__ import annotations

import numpy as np

from ..errors import GeometryError, InputError
from ..gpu_core.backend import to_host, xp_of
from ..gpu_core.filters import as_float_image, ndimage_for


def tilt_series(
    volume,
    angles_deg,
    *,
    dose: float | None = None,
    shifts=None,
    center_offset: float = 0.0,
    tilt_axis_deg: float = 0.0,
    seed: int = 0,
    supersample: int = 2,
):
    """Project ``volume`` at ``angles_deg`` and misalign the projections as a microscope would.

    Projection (DESIGN.md §3): ``p(y, u) = integral of f(y, z, x)`` along
    ``u = x cos(theta) + z sin(theta)``, x and z measured from the volume centre, u from the
    rotation-axis column ``center = (n_cols - 1) / 2 + center_offset`` (n_cols = n_x). Values are
    density x voxel length (HAADF is linear in projected density). Each detector pixel averages
    ``supersample`` rays, each sampled every ``1/supersample`` voxels with bilinear interpolation.

    The ideal (aligned) projections are then mapped to the raw frame with the inverse of the
    alignment formula ``aligned(p) = raw(R(a) @ p + s)``: ``raw(q) = aligned(R(a)^-1 (q - s))``,
    p, q = (y, x) from the image centre, cubic spline, zero outside.

    Noise: with ``dose`` (electrons per pixel at the brightest clean pixel of the whole series),
    ``data = Poisson(dose * clean / clean.max()) * clean.max() / dose`` (negative spline ringing
    counts as 0); without it the data are the clean projections.

    Args:
        volume: ``(n_rows, n_z, n_x)`` float array indexed ``[y, z, x]`` (NumPy or CuPy).
        angles_deg: ``(n_angles,)`` tilt angles, degrees.
        dose: electrons per pixel at the brightest pixel, or None for noise-free data.
        shifts: ``(n_angles, 2)`` per-projection ``(dy, dx)`` in pixels, or None for zero.
        center_offset: rotation-axis column minus ``(n_cols - 1) / 2``, pixels.
        tilt_axis_deg: in-plane tilt-axis angle ``a``, degrees.
        seed: seed of the Poisson noise (drawn on the host, so both backends agree).
        supersample: rays per pixel along each of u and the beam.

    Returns:
        ``(data, truth)``: data float32 ``(n_angles, n_rows, n_x)`` on the volume's device; truth a
        dict with ``angles_deg``, ``shifts`` (n, 2), ``center`` (column of the rotation axis in the
        aligned frame), ``tilt_axis_deg``, ``dose``, ``clean`` (raw frame, noise-free) and
        ``ideal`` (aligned frame, noise-free), arrays on the volume's device except the first two.
    """
    vol = as_float_image(volume)
    if vol.ndim != 3:
        raise InputError(f"volume must be 3D (n_rows, n_z, n_x), got shape {vol.shape}")
    angles = np.asarray(to_host(angles_deg), dtype=np.float64)
    if angles.ndim != 1 or angles.size == 0 or not np.isfinite(angles).all():
        raise GeometryError(f"angles_deg must be a non-empty 1D array of finite degrees, got shape {angles.shape}")
    n_ang = angles.size
    if shifts is None:
        shifts = np.zeros((n_ang, 2))
    shifts = np.asarray(to_host(shifts), dtype=np.float64)
    if shifts.shape != (n_ang, 2) or not np.isfinite(shifts).all():
        raise GeometryError(f"shifts must be finite with shape ({n_ang}, 2) (dy, dx per angle), got {shifts.shape}")
    if int(supersample) != supersample or supersample < 1:
        raise InputError(f"supersample must be an integer >= 1, got {supersample!r}")
    if dose is not None and not (np.isfinite(dose) and dose > 0):
        raise InputError(f"dose must be a positive number of electrons per pixel or None, got {dose!r}")
    if not (np.isfinite(center_offset) and np.isfinite(tilt_axis_deg)):
        raise GeometryError(f"center_offset and tilt_axis_deg must be finite, got {center_offset}, {tilt_axis_deg}")

    xp = xp_of(vol)
    ndi = ndimage_for(xp)
    ny, nz, nx = vol.shape
    center = (nx - 1) / 2.0 + float(center_offset)
    ss = int(supersample)
    ideal = _project(vol, np.radians(angles), center, ss, xp)

    if np.any(shifts) or tilt_axis_deg:
        a = np.radians(float(tilt_axis_deg))
        rinv = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # R(a)^-1 = R(a)^T
        c = (np.array([ny, nx]) - 1) / 2.0
        clean = xp.stack(
            [
                ndi.affine_transform(ideal[i], xp.asarray(rinv), offset=c - rinv @ (c + s), order=3, mode="constant")
                for i, s in enumerate(shifts)
            ]
        )
    else:
        clean = ideal.copy()

    if dose is None:
        data = clean.copy()
    else:
        host = np.clip(to_host(clean), 0.0, None)
        peak = float(host.max())
        if peak <= 0:
            raise InputError("the volume projects to all zeros; nothing to add noise to")
        counts = np.random.default_rng(seed).poisson(host * (dose / peak))
        data = xp.asarray((counts * (peak / dose)).astype(np.float32))
    truth = dict(
        angles_deg=angles,
        shifts=shifts,
        center=center,
        tilt_axis_deg=float(tilt_axis_deg),
        dose=dose,
        clean=clean,
        ideal=ideal,
    )
    return data.astype(xp.float32, copy=False), truth


def _project(vol, angles_rad, center: float, ss: int, xp):
    """Ideal projections ``(n_angles, n_rows, n_x)``; one sparse resampling operator per angle,
    applied to all rows at once."""
    ny, nz, nx = vol.shape
    flat = xp.ascontiguousarray(vol.reshape(ny, nz * nx).T)  # (voxels, rows)
    if xp is np:
        def to_op(m):
            return m
    else:
        from cupyx.scipy import sparse as gpu_sparse

        def to_op(m):
            return gpu_sparse.csr_matrix(m)

    out = xp.empty((len(angles_rad), ny, nx), dtype=xp.float32)
    for i, theta in enumerate(angles_rad):
        out[i] = (to_op(_resampling_operator(nz, nx, theta, center, ss)) @ flat).T
    return out


def _resampling_operator(nz: int, nx: int, theta: float, center: float, ss: int):
    """Sparse ``(n_x, n_z * n_x)`` float32 matrix of one projection.

    Rays run along the beam ``w`` at detector sub-columns ``u = j + (k + 0.5)/ss - 0.5 - center``
    (k < ss), sampled every ``1/ss`` voxels over the whole (z, x) square; each sample reads the
    volume at ``(z, x) = (cz + u sin + w cos, cx + u cos - w sin)`` by bilinear interpolation (zero
    outside). Pixel value = sum over w of samples / ss, averaged over the ss sub-columns. This is
    ``ndimage.affine_transform(order=1, mode="grid-constant")`` onto the rotated supersampled grid,
    summed along the beam and binned, written as one matrix so all rows project in one product.
    """
    from scipy import sparse

    cz, cx = (nz - 1) / 2.0, (nx - 1) / 2.0
    nw = int(np.ceil((np.hypot(nz, nx) + 2.0) * ss))
    w = (np.arange(nw) - (nw - 1) / 2.0) / ss
    u = (np.arange(nx * ss) + 0.5) / ss - 0.5 - center
    cos, sin = np.cos(theta), np.sin(theta)
    z = cz + u[None, :] * sin + w[:, None] * cos
    x = cx + u[None, :] * cos - w[:, None] * sin
    det = np.broadcast_to(np.arange(nx * ss) // ss, z.shape)
    keep = (z > -1) & (z < nz) & (x > -1) & (x < nx)
    z, x, det = z[keep], x[keep], det[keep]
    z0, x0 = np.floor(z).astype(np.int64), np.floor(x).astype(np.int64)
    fz, fx = z - z0, x - x0
    rows, cols, vals = [], [], []
    for dz, wz in ((0, 1 - fz), (1, fz)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            zi, xi = z0 + dz, x0 + dx
            ok = (zi >= 0) & (zi < nz) & (xi >= 0) & (xi < nx)
            rows.append(det[ok])
            cols.append(zi[ok] * nx + xi[ok])
            vals.append((wz * wx)[ok])
    vals = np.concatenate(vals) / (ss * ss)
    op = sparse.csr_matrix(
        (vals.astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(nx, nz * nx)
    )
    op.sum_duplicates()
    return op
