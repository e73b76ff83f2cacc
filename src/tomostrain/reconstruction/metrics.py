"""Quality of a reconstruction against the data it came from.

``reprojection_nrmse`` is the reprojection self-consistency ETSpy reports: with ``b`` the series
minus its vacuum level, ``A`` the alignment (DESIGN.md §3, ``aligned(p) = raw(R(a) @ p + s)``),
``v`` the reconstructed volume and ``P`` the matched projector at the same angles and centre,

    NRMSE = ||P(v) - A(b)|| / ||A(b)||,

both norms summed over all tilts, rows and columns.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from .geometry import align_projections, unpack_series
from .projectors import project


def reprojection_nrmse(series, alignment, volume, angles_deg=None, *, vacuum=0.0) -> float:
    """Reprojection NRMSE (module docstring) of ``volume`` against ``series``.

    series : a TiltSeries or its (n_angles, n_rows, n_cols) data (then ``angles_deg=``), in the
        units the volume was reconstructed from
    alignment : an ``Alignment`` (``.shifts``, ``.center``, ``.tilt_axis_deg``), or None for the
        raw series with the axis on the centre column
    volume : (n_rows, n_cols, n_cols) ``[y, z, x]`` reconstruction of ``A(b)``
    vacuum : the vacuum level still in ``series`` (scalar or one per projection), subtracted
        first; 0 when the reader removed it already (``io.read_tilt_series`` does)

    Returns the dimensionless NRMSE (0 = the volume reproduces the aligned data exactly).
    """
    data, angles = unpack_series(series, angles_deg)
    xp = _backend.xp_of(data)
    b = xp.asarray(data, dtype=xp.float32) - xp.asarray(np.reshape(vacuum, (-1, 1, 1)), dtype=xp.float32) \
        if np.ndim(vacuum) else xp.asarray(data, dtype=xp.float32) - np.float32(vacuum)
    n, ny, nx = b.shape
    if tuple(volume.shape) != (ny, nx, nx):
        raise InputError(f"volume must have shape {(ny, nx, nx)} (n_rows, n_cols, n_cols) for this series, "
                         f"got {tuple(volume.shape)}")
    if alignment is None:
        aligned, center = b, None
    else:
        aligned = align_projections(b, alignment.shifts, alignment.tilt_axis_deg, order=3)
        center = alignment.center
    reproj = project(_backend.to_device(volume, "gpu" if _backend.is_gpu_array(b) else "cpu"), angles,
                     center=center)
    num = float(xp.sqrt(xp.sum((reproj - aligned).astype(xp.float64) ** 2)))
    den = float(xp.sqrt(xp.sum(aligned.astype(xp.float64) ** 2)))
    if den == 0.0:
        raise InputError("the aligned series is all zero: NRMSE is undefined")
    return num / den
