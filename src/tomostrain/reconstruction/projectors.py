"""Matched parallel-beam forward and back projection (DESIGN.md §3), on CPU or GPU.

Volume ``(n_rows, n, n)`` indexed ``[y, z, x]``; series ``(n_angles, n_rows, n_cols)``. With
``x``, ``z`` from the volume centre and the column ``u`` from ``center``, the projection at tilt
``theta`` integrates the slice along ``u = x cos(theta) + z sin(theta)`` (ASTRA 2D parallel
geometry with slice ``vol[y]`` as the image and angles ``-radians(theta)``). Lengths are in
voxel units. ``project`` and ``backproject`` are exact transposes of each other (distance-driven weights, see
``gpu_core.kernels.projector``), so they serve iterative methods as ``A`` and ``A^T``.

Column shifts ``dx`` are folded into each projection's centre (exact, adjoint). Row shifts ``dy``
and a tilt-axis angle are applied by linear resampling (``align_projections`` before back
projection, its inverse after forward projection); the pair is then adjoint only up to that
interpolation, which is why ``reconstruct`` resamples the data once and projects without them.
"""
from __future__ import annotations

from ..errors import GeometryError, InputError
from ..gpu_core import backend
from ..gpu_core.kernels import projector as _k
from .geometry import TiltGeometry, align_projections, check_series, unalign_projections


def _geometry(geometry, angles_deg, center, shifts, n_rows, n_cols):
    if geometry is None:
        if angles_deg is None:
            raise GeometryError("give angles_deg (degrees) or geometry=TiltGeometry(...)")
        return TiltGeometry(angles_deg, n_rows, n_cols, center=center, shifts=shifts)
    if not isinstance(geometry, TiltGeometry):
        raise GeometryError(f"geometry must be a TiltGeometry, got {type(geometry).__name__}")
    if angles_deg is not None or center is not None or shifts is not None:
        raise GeometryError("give either geometry= or angles_deg/center/shifts, not both")
    return geometry


def project(volume, angles_deg=None, center=None, shifts=None, n_cols=None, *, geometry=None):
    """Forward projection ``A f`` of a volume, on the device the volume lives on.

    volume : (n_rows, n, n) ``[y, z, x]`` NumPy or CuPy array (cast to float32)
    angles_deg : (n_angles,) tilt angles in degrees
    center : rotation-axis column on the detector; default ``(n_cols - 1) / 2``
    shifts : (n_angles, 2) ``(dy, dx)`` pixels: the projections are produced in the raw frame
    n_cols : detector width in pixels; default ``n``
    geometry : a TiltGeometry instead of angles_deg/center/shifts/n_cols

    Returns (n_angles, n_rows, n_cols) float32 line integrals in voxel units.
    """
    shape = getattr(volume, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] != shape[2] or min(shape) == 0:
        raise InputError(f"volume must be a non-empty (n_rows, n, n) array [y, z, x], got shape {shape}")
    geo = _geometry(geometry, angles_deg, center, shifts, shape[0], shape[2] if n_cols is None else n_cols)
    if geometry is not None and n_cols is not None and n_cols != geo.n_cols:
        raise GeometryError(f"n_cols={n_cols} disagrees with geometry.n_cols={geo.n_cols}")
    if geo.n_rows != shape[0]:
        raise GeometryError(f"geometry has n_rows={geo.n_rows} but the volume has {shape[0]} slices")
    xp = backend.xp_of(volume)
    vol = xp.ascontiguousarray(volume, dtype=xp.float32)
    frame = geo.aligned() if geo.needs_resampling else geo
    out = _k.forward(vol, frame.kernel_table(xp), geo.n_cols)
    if geo.needs_resampling:
        out = unalign_projections(out, geo.shifts, geo.tilt_axis_deg)
    return out


def backproject(projections, angles_deg=None, center=None, shifts=None, n_x=None, *, geometry=None):
    """Back projection ``A^T p`` (no filter), on the device the projections live on.

    projections : (n_angles, n_rows, n_cols) NumPy or CuPy array (cast to float32)
    angles_deg, center, shifts, geometry : as in ``project``
    n_x : slice size ``n`` of the volume; default ``n_cols``

    Returns (n_rows, n_x, n_x) float32 ``[y, z, x]``.
    """
    check_series(projections)
    n_angles, n_rows, n_cols = projections.shape
    geo = _geometry(geometry, angles_deg, center, shifts, n_rows, n_cols)
    if (geo.n_angles, geo.n_rows, geo.n_cols) != (n_angles, n_rows, n_cols):
        raise GeometryError(
            f"projections have shape {projections.shape} but the geometry expects "
            f"({geo.n_angles}, {geo.n_rows}, {geo.n_cols}) (n_angles, n_rows, n_cols)"
        )
    n_x = n_cols if n_x is None else int(n_x)
    if n_x < 1:
        raise InputError(f"n_x must be a positive number of voxels, got {n_x}")
    xp = backend.xp_of(projections)
    data = xp.ascontiguousarray(projections, dtype=xp.float32)
    if geo.needs_resampling:
        data = align_projections(data, geo.shifts, geo.tilt_axis_deg)
        geo = geo.aligned()
    return _k.back(data, geo.kernel_table(xp), n_x)
