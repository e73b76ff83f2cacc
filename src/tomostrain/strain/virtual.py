"""Virtual detectors (bright field, annular dark field, any mask), centre of mass and iCOM/DPC.

``cube`` is a :class:`DataCube` or a 4D array ``(scan_y, scan_x, ky, kx)``. Work runs over
chunks of scan rows that fit ``backend.memory_budget``, as one matrix product of the patterns with
the detector masks per chunk, on the device the data live on, or on ``backend=``
("cpu" | "gpu" | "auto") when given; results are returned on that device.

Detector coordinates are pixel indices ``(ky, kx)``; radii are pixels. ``origin`` is the
diffraction origin ``(qy0, qx0)``: one pair for the whole scan, or ``(sy, sx, 2)`` per position.
When it is None, ``cube.origin`` is used if the cube has one, else the detector centre
``((ky - 1) / 2, (kx - 1) / 2)``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from .datacube import DataCube


def as_cube(cube) -> DataCube:
    """A DataCube for ``cube`` (a DataCube is returned as is; a 4D array is wrapped)."""
    return cube if isinstance(cube, DataCube) else DataCube(cube)


def array_module(cube: DataCube, backend: str | None = None):
    """numpy or cupy: the device of ``cube.data``, or the resolved ``backend`` when given."""
    if backend is None:
        return _backend.xp_of(cube.data)
    if _backend.resolve(backend) == "gpu":
        import cupy

        return cupy
    return np


def annular_masks(detector_shape, edges, origin=None, xp=np):
    """Binary annuli ``inner <= r < outer`` (pixels) about ``origin`` (default detector centre).

    edges : sequence of ``(inner, outer)`` pairs; ``inner = 0`` gives a disk ``r < outer``
    Returns (M, ky, kx) float32 on ``xp``.
    """
    ky, kx = detector_shape
    edges = np.asarray(edges, np.float64).reshape(-1, 2)
    if (edges[:, 0] < 0).any() or (edges[:, 1] <= edges[:, 0]).any():
        raise InputError(f"annulus edges must satisfy 0 <= inner < outer, got {edges.tolist()}")
    oy, ox = ((ky - 1) / 2.0, (kx - 1) / 2.0) if origin is None else (float(origin[0]), float(origin[1]))
    iy, ix = xp.indices((ky, kx), dtype=xp.float64)
    r = xp.hypot(iy - oy, ix - ox)
    inner, outer = xp.asarray(edges[:, 0])[:, None, None], xp.asarray(edges[:, 1])[:, None, None]
    return ((r >= inner) & (r < outer)).astype(xp.float32)


def detector_box(lo, hi, detector_shape, xp=np):
    """The detector pixels ``lo <= (y, x) < hi`` (clipped to the detector): ``((ys, xs), iy, ix)``
    with the row and column slices and float32 index grids of the box in detector coordinates."""
    ky, kx = detector_shape
    y0, x0 = max(0, int(lo[0])), max(0, int(lo[1]))
    y1, x1 = max(y0, min(ky, int(hi[0]))), max(x0, min(kx, int(hi[1])))
    iy, ix = xp.indices((y1 - y0, x1 - x0), dtype=xp.float32)
    return (slice(y0, y1), slice(x0, x1)), iy + y0, ix + x0


def virtual_image(cube, mask, *, backend: str | None = None):
    """``sum(pattern * mask)`` per probe position.

    mask : (ky, kx) or (M, ky, kx) weights
    Returns (sy, sx) or (sy, sx, M) float64.
    """
    cube = as_cube(cube)
    xp = array_module(cube, backend)
    m = xp.asarray(mask, dtype=xp.float32)
    single = m.ndim == 2
    if m.shape[-2:] != cube.detector_shape or m.ndim not in (2, 3):
        raise InputError(f"mask must be (ky, kx) or (M, ky, kx) with (ky, kx) = {cube.detector_shape}, got {m.shape}")
    sums, _, _ = _reduce(cube, m.reshape(-1, *cube.detector_shape), xp, moments=False)
    return sums[..., 0] if single else sums


def virtual_bf(cube, radius: float, origin=None, *, backend: str | None = None):
    """Virtual bright field: intensity within ``radius`` pixels of the origin, (sy, sx) float64."""
    return _annular(cube, 0.0, radius, origin, backend)


def virtual_adf(cube, inner: float, outer: float, origin=None, *, backend: str | None = None):
    """Virtual annular dark field: intensity in ``inner <= r < outer`` pixels, (sy, sx) float64."""
    return _annular(cube, inner, outer, origin, backend)


def center_of_mass(cube, origin=None, *, backend: str | None = None):
    """Intensity-weighted centre of mass per position, (sy, sx, 2) float64 ``(cy, cx)`` pixels.

    Relative to ``origin`` (a pair or (sy, sx, 2)); with ``origin=None`` relative to
    ``cube.origin`` when the cube has one, else absolute detector pixel coordinates. NaN for an
    empty pattern.
    """
    cube = as_cube(cube)
    xp = array_module(cube, backend)
    _, com, _ = _reduce(cube, None, xp)
    o = origin if origin is not None else cube.origin
    if o is None:
        return com
    return com - _origin_field(o, cube.scan_shape, xp)


def total_intensity(cube, *, backend: str | None = None):
    """Summed intensity of every pattern, (sy, sx) float64."""
    cube = as_cube(cube)
    ones = np.ones((1, *cube.detector_shape), np.float32)
    return _reduce(cube, array_module(cube, backend).asarray(ones), array_module(cube, backend),
                   moments=False)[0][..., 0]


def dpc_icom(com_y, com_x, rotation_deg: float = 0.0):
    """Integrated centre of mass: the potential whose gradient is the COM field.

    The field is first turned by ``rotation_deg`` (the diffraction-to-scan rotation; positive
    turns +y towards +x), then integrated in Fourier space after even/odd mirror extension, so no
    periodicity is assumed. Returns (sy, sx) with zero mean, in units of COM units times scan steps
    (``d phi / dy = com_y``, ``d phi / dx = com_x``).
    """
    xp = _backend.xp_of(com_y)
    gy, gx = xp.asarray(com_y, dtype=xp.float64), xp.asarray(com_x, dtype=xp.float64)
    if gy.ndim != 2 or gy.shape != gx.shape:
        raise InputError(f"com_y and com_x must be equal 2D maps, got {gy.shape} and {gx.shape}")
    if not (bool(xp.isfinite(gy).all()) and bool(xp.isfinite(gx).all())):
        raise InputError("com_y/com_x contain NaN or Inf (empty patterns?); fill them before integrating")
    t = np.radians(rotation_deg)
    gy, gx = np.cos(t) * gy - np.sin(t) * gx, np.sin(t) * gy + np.cos(t) * gx
    sy, sx = gy.shape
    # phi extended evenly in y and x: d/dy is odd in y, d/dx is odd in x
    ey = xp.concatenate([xp.concatenate([gy, gy[:, ::-1]], 1), -xp.concatenate([gy[::-1], gy[::-1, ::-1]], 1)], 0)
    ex = xp.concatenate([xp.concatenate([gx, -gx[:, ::-1]], 1), xp.concatenate([gx[::-1], -gx[::-1, ::-1]], 1)], 0)
    ky = 2 * np.pi * xp.fft.fftfreq(2 * sy)[:, None]
    kx = 2 * np.pi * xp.fft.fftfreq(2 * sx)[None, :]
    k2 = ky * ky + kx * kx
    k2[0, 0] = 1.0
    spec = (ky * xp.fft.fft2(ey) + kx * xp.fft.fft2(ex)) / (1j * k2)
    spec[0, 0] = 0.0
    phi = xp.fft.ifft2(spec).real[:sy, :sx]
    return phi - phi.mean()


def _annular(cube, inner, outer, origin, backend):
    cube = as_cube(cube)
    xp = array_module(cube, backend)
    o = origin if origin is not None else cube.origin
    if o is None or np.ndim(o) == 1:
        mask = annular_masks(cube.detector_shape, [(inner, outer)], o, xp)
        return _reduce(cube, mask, xp, moments=False)[0][..., 0]
    annular_masks(cube.detector_shape, [(inner, outer)])  # validates the edges
    field = _origin_field(o, cube.scan_shape, xp)
    box = annulus_box(field, outer, cube.detector_shape, xp)
    out = xp.empty(cube.scan_shape, xp.float64)
    for sl, chunk in cube.iter_rows(_budget(xp), xp):
        out[sl] = annular_sums(chunk, field[sl], inner, outer, box, xp)
    _check_finite(out, "virtual image")
    return out


def annulus_box(field, outer: float, detector_shape, xp=np):
    """The detector box (``detector_box`` form) that some position's annulus of radius ``outer``
    about the origin field ``(sy, sx, 2)`` reaches: only that crop of each pattern is read."""
    lo = np.floor(_backend.to_host(field.reshape(-1, 2).min(0)) - outer)
    hi = np.ceil(_backend.to_host(field.reshape(-1, 2).max(0)) + outer) + 1
    return detector_box(lo, hi, detector_shape, xp)


def annular_sums(chunk, field_rows, inner: float, outer: float, box, xp=np):
    """Intensity in ``inner <= r < outer`` px about each position's own origin, for a chunk of scan
    rows ``(rows, sx, ky, kx)`` with its origins ``(rows, sx, 2)``: (rows, sx) float64. Only the
    detector ``box`` (``annulus_box``) is read; one pass of the ``radial_sums`` kernel (float64 radii)."""
    from ..gpu_core.kernels.virtual_detector import radial_sums

    rows, sx, ky, kx = chunk.shape
    (ys, xs), _, _ = box
    sums, _ = radial_sums(chunk.reshape(rows * sx, ky, kx), field_rows.reshape(rows * sx, 2), [(inner, outer)],
                          (ys.start, ys.stop, xs.start, xs.stop))
    return sums.reshape(rows, sx)


def _reduce(cube: DataCube, masks, xp, moments: bool = True):
    """Masked sums (sy, sx, M) and, with ``moments``, centre of mass (sy, sx, 2) and total
    (sy, sx), over chunks of scan rows.

    One float32 matrix product per chunk, ``frames (n, P) @ W (P, M [+3])``, with W the masks and
    the moment images ``iy - cy``, ``ix - cx``, 1 (centred so float32 accumulation loses < 1e-5 px):
    BLAS on the CPU, cuBLAS on the GPU. Measured faster than the ``virtual_detector`` kernel's CPU
    twin on dense patterns (benchmarks/bench_virtual.py).
    """
    sy, sx = cube.scan_shape
    ky, kx = cube.detector_shape
    cy, cx = (ky - 1) / 2.0, (kx - 1) / 2.0
    rows_w = [] if masks is None else [masks.reshape(-1, ky * kx)]
    if moments:
        iy, ix = xp.indices((ky, kx), dtype=xp.float32)
        rows_w += [(iy - cy).reshape(1, -1), (ix - cx).reshape(1, -1), xp.ones((1, ky * kx), xp.float32)]
    W = xp.ascontiguousarray(xp.concatenate(rows_w, 0).T, dtype=xp.float32)
    out = xp.empty((sy, sx, W.shape[1]), xp.float64)
    for sl, chunk in cube.iter_rows(_budget(xp), xp):
        rows = sl.stop - sl.start
        out[sl] = (chunk.reshape(rows * sx, ky * kx) @ W).reshape(rows, sx, -1)
    _check_finite(out, "data")
    n_masks = W.shape[1] - (3 if moments else 0)
    if not moments:
        return out, None, None
    total = out[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        com = out[..., n_masks : n_masks + 2] / xp.where(total > 0, total, xp.nan)[..., None]
    com += xp.asarray([cy, cx])
    return out[..., :n_masks], com, total


def _budget(xp) -> int:
    return _backend.memory_budget("cpu" if xp is np else "gpu")


def _origin_field(origin, scan_shape, xp):
    o = xp.asarray(origin, dtype=xp.float64)
    if o.shape == (2,):
        return xp.broadcast_to(o, (*scan_shape, 2))
    if o.shape != (*scan_shape, 2):
        raise InputError(f"origin must be (qy0, qx0) or (scan_y, scan_x, 2) = {(*scan_shape, 2)}, got {o.shape}")
    return o


def _check_finite(values, what):
    bad = ~_backend.xp_of(values).isfinite(values)
    if bool(bad.any()):
        where = np.argwhere(_backend.to_host(bad))[:3].tolist()
        raise InputError(f"{what} contain NaN or Inf (probe positions {where} ...); clean the data first")
