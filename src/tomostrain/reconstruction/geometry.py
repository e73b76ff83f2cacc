"""Tilt geometry and the resampling of projections onto the aligned frame (DESIGN.md §3).

Angles are degrees in the public API and radians inside. ``center`` is the column of the
rotation axis in the aligned frame; a projection's ``(dy, dx)`` shift means
``aligned(y, x) = raw(y + dy, x + dx)`` (tilt axis ``a = 0``), so in the raw projection the axis
sits at column ``center + dx``. Column shifts are folded exactly into that per-angle centre; row
shifts and an in-plane tilt-axis rotation are applied by resampling the projections once
(``align_projections``) before the slice-wise projectors run.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import GeometryError, InputError
from ..gpu_core import backend
from ..gpu_core.kernels import projector


@dataclass(frozen=True)
class TiltGeometry:
    """Parallel-beam single-axis tilt geometry of a series ``(n_angles, n_rows, n_cols)``.

    angles_deg : (n_angles,) tilt angles in degrees (any order, duplicates allowed)
    n_rows, n_cols : detector size in pixels (rows run along the tilt axis)
    center : column (pixels) of the rotation axis in the aligned frame; default ``(n_cols-1)/2``
    shifts : (n_angles, 2) ``(dy, dx)`` per projection in pixels, or None for none
    tilt_axis_deg : in-plane tilt-axis angle ``a`` of DESIGN.md §3, degrees
    """

    angles_deg: np.ndarray
    n_rows: int
    n_cols: int
    center: float | None = None
    shifts: np.ndarray | None = None
    tilt_axis_deg: float = 0.0

    def __post_init__(self):
        angles = np.asarray(backend.to_host(self.angles_deg), dtype=np.float64)
        if angles.ndim != 1 or angles.size == 0:
            raise GeometryError(f"angles_deg must be a non-empty 1-D array, got shape {angles.shape}")
        if not np.isfinite(angles).all():
            raise GeometryError("angles_deg contains NaN or Inf; expected finite tilt angles in degrees")
        for name in ("n_rows", "n_cols"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise GeometryError(f"{name} must be a positive integer, got {value!r}")
        n_rows, n_cols = int(self.n_rows), int(self.n_cols)
        center = (n_cols - 1) / 2 if self.center is None else float(self.center)
        if not (np.isfinite(center) and 0.0 <= center <= n_cols - 1):
            raise GeometryError(
                f"center={self.center!r} is outside the detector: expected a column in [0, {n_cols - 1}]"
            )
        shifts = None
        if self.shifts is not None:
            shifts = np.asarray(backend.to_host(self.shifts), dtype=np.float64)
            if shifts.shape != (angles.size, 2):
                raise GeometryError(
                    f"shifts must have shape (n_angles, 2) = ({angles.size}, 2) as (dy, dx) pixels, "
                    f"got {shifts.shape}"
                )
            if not np.isfinite(shifts).all():
                raise GeometryError("shifts contains NaN or Inf; expected finite (dy, dx) in pixels")
        tilt = float(self.tilt_axis_deg)
        if not np.isfinite(tilt):
            raise GeometryError(f"tilt_axis_deg must be finite, got {self.tilt_axis_deg!r}")
        for name, value in (("angles_deg", angles), ("n_rows", n_rows), ("n_cols", n_cols),
                            ("center", center), ("shifts", shifts), ("tilt_axis_deg", tilt)):
            object.__setattr__(self, name, value)

    @property
    def n_angles(self) -> int:
        return int(self.angles_deg.size)

    @property
    def angles_rad(self) -> np.ndarray:
        return np.deg2rad(self.angles_deg)

    @property
    def needs_resampling(self) -> bool:
        """True when row shifts or a tilt-axis rotation must be applied by ``align_projections``."""
        return self.tilt_axis_deg != 0.0 or (self.shifts is not None and bool(np.any(self.shifts[:, 0] != 0)))

    def column_centres(self) -> np.ndarray:
        """(n_angles,) rotation-axis column of each raw projection: ``center + dx``."""
        if self.shifts is None:
            return np.full(self.n_angles, self.center)
        return self.center + self.shifts[:, 1]

    def aligned(self) -> "TiltGeometry":
        """The geometry of the projections after ``align_projections``: no shifts, no tilt."""
        return replace(self, shifts=None, tilt_axis_deg=0.0)

    def subset(self, index) -> "TiltGeometry":
        """The geometry of the projections ``index`` (an index array or slice into the angles)."""
        shifts = None if self.shifts is None else self.shifts[index]
        return replace(self, angles_deg=self.angles_deg[index], shifts=shifts)

    def kernel_table(self, xp):
        """The projector kernels' per-angle table (cos, sin, centre, ...) as an ``xp`` array."""
        theta = self.angles_rad
        return xp.asarray(projector.geometry_table(np.cos(theta), np.sin(theta), self.column_centres()))


def check_series(data, what: str = "projections") -> None:
    """Raise InputError unless ``data`` is a non-empty, finite 3-D real array."""
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 3:
        raise InputError(f"{what} must be a 3-D array (n_angles, n_rows, n_cols), got shape {shape}")
    if min(shape) == 0:
        raise InputError(f"{what} is empty: shape {shape}")
    xp = backend.xp_of(data)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{what} must be a real numeric array, got dtype {data.dtype}")
    if not bool(xp.isfinite(data).all()):
        raise InputError(f"{what} contains NaN or Inf; expected finite values")


def unpack_series(series, angles_deg):
    """Checked ``(data, angles)`` of a TiltSeries (``.data``, ``.angles_deg``) or of a data array
    given with ``angles_deg``: the angles from exactly one of the two, one per projection, as a
    float64 host array in degrees."""
    if hasattr(series, "data") and hasattr(series, "angles_deg"):
        if angles_deg is not None:
            raise GeometryError("angles_deg given twice: the series already carries .angles_deg")
        data, angles_deg = series.data, series.angles_deg
    elif angles_deg is None:
        raise GeometryError("an array series needs angles_deg= (degrees, one per projection)")
    else:
        data = series
    check_series(data, "tilt series")
    angles = np.asarray(backend.to_host(angles_deg), dtype=np.float64).ravel()
    if angles.size != data.shape[0]:
        raise GeometryError(f"{angles.size} angles given for {data.shape[0]} projections; expected one angle per projection")
    return data, angles


def _ndimage(xp):
    if xp is np:
        from scipy import ndimage
    else:
        from cupyx.scipy import ndimage
    return ndimage


def _affine_stack(data, matrices, offsets, order, mode):
    xp = backend.xp_of(data)
    ndi = _ndimage(xp)
    src = xp.asarray(data, dtype=xp.float32)
    out = xp.empty(src.shape, xp.float32)
    for k in range(src.shape[0]):  # one resampling per projection (not per pixel)
        ndi.affine_transform(src[k], xp.asarray(matrices[k]), offset=tuple(offsets[k]), output=out[k],
                             order=order, mode=mode, cval=0.0)
    return out


def _rotation(tilt_axis_deg: float) -> np.ndarray:
    a = np.deg2rad(tilt_axis_deg)
    return np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


def align_projections(data, shifts=None, tilt_axis_deg: float = 0.0, order: int = 1):
    """Resample raw projections onto the aligned frame: ``aligned(p) = raw(R(a) @ p + s)``.

    data : (n_angles, n_rows, n_cols) NumPy or CuPy array; returned as float32 on the same device
    shifts : (n_angles, 2) ``(dy, dx)`` pixels per projection, or None
    tilt_axis_deg : tilt-axis angle ``a`` in degrees; ``p = (y, x)`` is measured from the image
        centre ``((n_rows-1)/2, (n_cols-1)/2)``
    order : spline order of the interpolation (1 linear, 3 cubic); samples outside the raw
        image take the nearest edge value
    """
    check_series(data)
    n = data.shape[0]
    s = np.zeros((n, 2)) if shifts is None else np.asarray(backend.to_host(shifts), dtype=np.float64)
    if s.shape != (n, 2) or not np.isfinite(s).all():
        raise GeometryError(f"shifts must be finite with shape ({n}, 2) as (dy, dx) pixels, got {s.shape}")
    rot = _rotation(tilt_axis_deg)
    c = (np.array(data.shape[1:]) - 1) / 2.0
    offsets = c - rot @ c + s  # input index = R @ output index + offset
    return _affine_stack(data, [rot] * n, offsets, order, "nearest")


def unalign_projections(data, shifts=None, tilt_axis_deg: float = 0.0, order: int = 1):
    """Inverse of ``align_projections``: ``raw(q) = aligned(R(a).T @ (q - s))``; zero outside."""
    n = data.shape[0]
    s = np.zeros((n, 2)) if shifts is None else np.asarray(backend.to_host(shifts), dtype=np.float64)
    rot_t = _rotation(tilt_axis_deg).T
    c = (np.array(data.shape[1:]) - 1) / 2.0
    offsets = c - (rot_t @ (c[:, None] + s.T)).T
    return _affine_stack(data, [rot_t] * n, offsets, order, "constant")


def resample_projections(data, matrices, offsets, order: int = 1, mode: str = "nearest"):
    """Per-projection affine resampling: ``out[k](p) = data[k](matrices[k] @ p + offsets[k])``.

    data : (n_angles, n_rows, n_cols) NumPy or CuPy array; returned as float32 on the same device
    matrices : (n_angles, 2, 2) in (row, col) index order; offsets : (n_angles, 2) pixels
    order : spline order (1 linear, 3 cubic); mode : scipy.ndimage edge mode ("nearest" as in
        ``align_projections``, "constant" for zero outside)
    """
    check_series(data)
    n = data.shape[0]
    m = np.asarray(matrices, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.float64)
    if m.shape != (n, 2, 2) or o.shape != (n, 2) or not (np.isfinite(m).all() and np.isfinite(o).all()):
        raise GeometryError(f"matrices must be finite ({n}, 2, 2) and offsets ({n}, 2), got {m.shape} and {o.shape}")
    return _affine_stack(data, list(m), list(o), order, mode)
