"""Bragg disk detection: batched FFT correlation with the probe, then the ``disk_peaks`` kernel.

Each chunk of patterns ``(n, ky, kx)`` is correlated with the probe kernel in one batched real FFT
(``scipy.fft`` with all cores on the CPU, cuFFT through CuPy on the GPU); the
``gpu_core.kernels.disk_peaks`` kernel then finds the local maxima (threshold, minimum spacing,
border) and refines each one. The default refinement (``subpixel="edge"``) fits each disk's edge
with a free linear intensity gradient inside the disk, so disks whose inside is brighter on one side
(thickness, tilt) are located where their edge is, not biased towards their bright side as a plain
correlation peak is.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from ..gpu_core import chunks
from ..gpu_core.kernels import disk_peaks as _kernel
from .datacube import DataCube

SUBPIXEL = {"parabolic": _kernel.PARABOLIC, "com": _kernel.COM, "edge": _kernel.EDGE}
_BYTES_PER_PIXEL = 28          # pattern, its spectrum, correlation and FFT work space (float32)
_MAX_CHUNK_PATTERNS = 2048


@dataclass
class BraggPeaks:
    """Bragg peaks of a scan, ragged per probe position (CSR layout).

    The peaks of flat position ``p = iy * scan_x + ix`` are ``qy[o[p]:o[p+1]]`` (and ``qx``,
    ``intensity``) with ``o = offsets``, strongest first. ``qy, qx`` are detector pixels (raw: not
    origin-corrected, not ellipse-corrected); ``intensity`` is the correlation value at the peak
    above its local background (``_above_local_background``).
    Arrays live on the device the detection ran on.
    """

    qy: object
    qx: object
    intensity: object
    offsets: object
    scan_shape: tuple[int, int]

    def counts(self):
        """(scan_y, scan_x) number of peaks per probe position."""
        return (self.offsets[1:] - self.offsets[:-1]).reshape(self.scan_shape)

    def positions(self):
        """Flat probe-position index of every peak (same length as ``qy``)."""
        xp = _backend.xp_of(self.offsets)
        return xp.searchsorted(self.offsets, xp.arange(self.qy.shape[0]), side="right") - 1

    def for_position(self, iy: int, ix: int):
        """``(qy, qx, intensity)`` arrays of the peaks at probe position ``(iy, ix)``."""
        sy, sx = self.scan_shape
        if not (0 <= iy < sy and 0 <= ix < sx):
            raise InputError(f"probe position ({iy}, {ix}) is outside the scan {self.scan_shape}")
        p = iy * sx + ix
        a, b = int(self.offsets[p]), int(self.offsets[p + 1])
        return self.qy[a:b], self.qx[a:b], self.intensity[a:b]

    def __len__(self) -> int:
        return int(self.qy.shape[0])


def disk_geometry(template) -> tuple[float, float, float, float]:
    """``(cy, cx, radius, width)`` of a probe image, in pixels.

    Centre: centre of mass of the part above 10 % of the maximum. Radius: of the disk with the
    area above 50 %. Width: edge width of the logistic step ``1 / (1 + exp((r - R) / width))``
    with the same area between the 25 % and 75 % levels.
    """
    t = np.asarray(_backend.to_host(template), dtype=np.float64)
    t = t / t.max()
    w = np.where(t > 0.1, t, 0.0)
    iy, ix = np.indices(t.shape)
    cy, cx = (w * iy).sum() / w.sum(), (w * ix).sum() / w.sum()
    radius = math.sqrt((t > 0.5).sum() / math.pi)
    width = ((t > 0.25).sum() - (t > 0.75).sum()) / (4 * math.pi * max(radius, 0.5) * math.log(3))
    return float(cy), float(cx), radius, max(width, 0.3)


def probe_kernel_ft(template, detector_shape, xp=np):
    """Conjugate rfft2 of the probe image moved so that its centre sits at pixel (0, 0).

    The move is exact (a Fourier phase ramp), so a correlation peak falls on a disk's centre.
    """
    ky, kx = detector_shape
    cy, cx, _, _ = disk_geometry(template)
    t = np.asarray(_backend.to_host(template), dtype=np.float64)
    canvas = np.zeros((ky, kx))
    canvas[: t.shape[0], : t.shape[1]] = t / t.sum()
    fy = np.fft.fftfreq(ky)[:, None]
    fx = np.fft.rfftfreq(kx)[None, :]
    ft = np.fft.rfft2(canvas) * np.exp(2j * np.pi * (fy * cy + fx * cx))
    return xp.asarray(np.conj(ft).astype(np.complex64))


def correlate(frames, kernel_ft, corr_power: float = 1.0):
    """Correlation maps ``(n, ky, kx)`` float32 of patterns ``(n, ky, kx)`` with a probe kernel.

    ``corr_power`` 1 = cross-correlation, 0 = phase correlation, between = hybrid
    (``|P K*|**corr_power`` with the phase of ``P K*``).
    """
    fft, kw = _fft_of(frames)
    shape = frames.shape[-2:]
    m = fft.rfft2(frames, **kw)
    m *= kernel_ft                    # in place: the spectra are this function's own
    if corr_power != 1.0:
        xp = _backend.xp_of(m)
        mag = xp.abs(m)
        m *= xp.where(mag > 0, mag, 1) ** (corr_power - 1.0)
    return fft.irfft2(m, s=shape, overwrite_x=True, **kw).astype(np.float32, copy=False)


def find_bragg_disks(
    cube,
    template,
    *,
    corr_power: float = 1.0,
    min_spacing: float | None = None,
    min_abs_intensity: float = 0.0,
    min_rel_intensity: float = 0.005,
    edge_boundary: int | None = None,
    max_peaks: int = 70,
    subpixel: str = "edge",
    backend: str | None = None,
    budget_bytes: int | None = None,
) -> BraggPeaks:
    """Find the Bragg disks of every pattern of a 4D-STEM scan.

    Parameters
    ----------
    cube : DataCube or (scan_y, scan_x, ky, kx) array (NumPy, CuPy, memmap or h5py dataset)
    template : (ty, tx) probe image (vacuum disk), ty <= ky, tx <= kx, anywhere in its frame
    corr_power : 1 cross-correlation, 0 phase correlation, between = hybrid
    min_spacing : minimum distance between peaks (pixels); default twice the disk radius
    min_abs_intensity, min_rel_intensity : a peak needs a correlation of at least
        ``max(min_abs_intensity, min_rel_intensity * strongest peak of its pattern)``
    edge_boundary : no peak closer than this to the detector border (pixels); default the radius
    max_peaks : most peaks kept per pattern, strongest first (<= 256)
    subpixel : ``"edge"`` (disk edge fit with free intensity gradient, robust), ``"parabolic"``
        or ``"com"`` (of the correlation peak, fast)
    backend : None = where the data lives; ``"cpu" | "gpu" | "auto"`` moves chunks there
    budget_bytes : memory for one chunk (default: ``gpu_core.backend.memory_budget``)

    Returns
    -------
    BraggPeaks, positions in detector pixels, on the device the work ran on.
    """
    data = cube.data if isinstance(cube, DataCube) else cube
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"find_bragg_disks needs a 4D scan (scan_y, scan_x, ky, kx), got shape {shape}")
    sy, sx, ky, kx = shape
    where = ("gpu" if _backend.is_gpu_array(data) else "cpu") if backend is None else _backend.resolve(backend)
    finder = DiskFinder(template, (ky, kx), corr_power=corr_power, min_spacing=min_spacing,
                        min_abs_intensity=min_abs_intensity, min_rel_intensity=min_rel_intensity,
                        edge_boundary=edge_boundary, max_peaks=max_peaks, subpixel=subpixel, backend=where)
    xp = finder.xp
    budget = _backend.memory_budget(where) if budget_bytes is None else int(budget_bytes)
    row_bytes = sx * ky * kx * _BYTES_PER_PIXEL
    max_rows = max(1, _MAX_CHUNK_PATTERNS // sx)

    def process(rows: slice):
        block = data[rows]
        block = xp.asarray(_backend.to_host(block) if xp is np else block, dtype=xp.float32)
        return finder.find(block.reshape(-1, ky, kx), rows)

    size = min(max_rows, chunks.chunk_size(row_bytes, budget, sy))
    parts = chunks.run_chunked(process, sy, row_bytes, size * row_bytes)
    return peaks_from_parts(parts, (sy, sx))


def peaks_from_parts(parts, scan_shape) -> BraggPeaks:
    """BraggPeaks from ``DiskFinder.find`` results of consecutive chunks, in scan order."""
    xp = _backend.xp_of(parts[0][0])
    flat = xp.concatenate([p[0] for p in parts])
    counts = xp.concatenate([p[1] for p in parts]).astype(xp.int64)
    offsets = xp.concatenate([xp.zeros(1, xp.int64), xp.cumsum(counts)])
    return BraggPeaks(flat[:, 0].copy(), flat[:, 1].copy(), flat[:, 2].copy(), offsets, tuple(scan_shape))


class DiskFinder:
    """The per-chunk work of ``find_bragg_disks`` with its settings fixed (same arguments):
    ``find(frames) -> (peaks (n_found, 3) [qy, qx, intensity], counts (n_frames,))`` for a
    chunk of patterns ``(n, ky, kx)`` on ``backend``; what a pass over the scan calls per chunk."""

    def __init__(self, template, detector_shape, *, corr_power=1.0, min_spacing=None, min_abs_intensity=0.0,
                 min_rel_intensity=0.005, edge_boundary=None, max_peaks=70, subpixel="edge", backend="cpu"):
        ky, kx = detector_shape
        if subpixel not in SUBPIXEL:
            raise InputError(f"subpixel must be one of {sorted(SUBPIXEL)}, got {subpixel!r}")
        if not 0.0 <= corr_power <= 1.0:
            raise InputError(f"corr_power must be in [0, 1] (1 = cross-, 0 = phase correlation), got {corr_power}")
        if not 1 <= max_peaks <= _kernel.MAX_PEAKS:
            raise InputError(f"max_peaks must be in [1, {_kernel.MAX_PEAKS}], got {max_peaks}")
        tmpl = _check_template(template, (ky, kx))
        cy, cx, radius, width = disk_geometry(tmpl)
        self.spacing = 2.0 * radius if min_spacing is None else float(min_spacing)
        self.edge = max(1, int(math.ceil(radius)) if edge_boundary is None else int(edge_boundary))
        if self.spacing < 0 or 2 * self.edge >= min(ky, kx):
            raise InputError(f"min_spacing must be >= 0 and edge_boundary < half the detector, got "
                             f"{self.spacing}, {self.edge} for a {ky}x{kx} detector")
        self.backend = backend
        self.kernel_ft = probe_kernel_ft(tmpl, (ky, kx), self.xp)
        self.mode = SUBPIXEL[subpixel]
        self.profile = _kernel.disk_profile(tmpl, cy, cx, radius, width) if self.mode == _kernel.EDGE else None
        self.radius, self.width = radius, width
        self.corr_power, self.max_peaks = corr_power, max_peaks
        self.min_abs, self.min_rel = min_abs_intensity, min_rel_intensity

    @property
    def xp(self):
        if self.backend == "gpu":
            import cupy

            return cupy
        return np

    def find(self, frames, rows: slice | None = None):
        xp = self.xp
        frames = xp.ascontiguousarray(xp.asarray(frames, dtype=xp.float32))
        if not bool(xp.isfinite(frames).all()):
            where = f" in scan rows {rows.start}:{rows.stop}" if rows is not None else ""
            raise InputError(f"the scan contains NaN or Inf{where}")
        corr = xp.ascontiguousarray(correlate(frames, self.kernel_ft, self.corr_power))
        corr = _above_local_background(corr, self.radius, xp)
        thr = xp.maximum(corr.reshape(corr.shape[0], -1).max(axis=1) * self.min_rel,
                         self.min_abs).astype(xp.float32)
        edge_mode = self.mode == _kernel.EDGE
        peaks, counts, n_cand = _kernel.disk_peaks(
            corr, frames if edge_mode else corr, thr, edge=self.edge, min_spacing=self.spacing,
            max_peaks=self.max_peaks, mode=self.mode, radius=self.radius, width=self.width, profile=self.profile)
        if int(n_cand.max()) > _kernel.MAX_CAND:
            warnings.warn(f"more than {_kernel.MAX_CAND} candidate maxima in a pattern: some peaks may be "
                          "missed; raise min_rel_intensity or min_abs_intensity", RuntimeWarning, stacklevel=3)
        keep = xp.arange(self.max_peaks)[None, :] < counts[:, None]
        return peaks[keep], counts


def _above_local_background(corr, radius, xp):
    """Correlation maps minus their local background: a grey opening (minimum then maximum filter)
    with a square of side ``2 ceil(2 radius) + 1``, wider than a disk's correlation peak, so what
    remains is each peak's height above the level around it (a white top-hat). A diffuse background
    or the halo of the direct beam then neither hides a weak spot on its slope nor lifts noise
    maxima to the level of real disks; on a dark background the maps are unchanged."""
    half = int(math.ceil(2.0 * radius))
    if xp is np:  # the Numba twin of the same opening (van Herk), bit for bit equal, ~10x faster
        out = np.empty_like(corr)
        _kernel.white_tophat_cpu(np.ascontiguousarray(corr, dtype=np.float32), half, out)
        return out
    from cupyx.scipy import ndimage

    size = (1, 2 * half + 1, 2 * half + 1)
    opened = ndimage.maximum_filter(ndimage.minimum_filter(corr, size=size, mode="nearest"), size=size, mode="nearest")
    return corr - opened


def _check_template(template, detector_shape):
    t = _backend.to_host(template)
    if t.ndim != 2 or t.shape[0] > detector_shape[0] or t.shape[1] > detector_shape[1]:
        raise InputError(f"template must be a 2D probe image no larger than the detector {detector_shape}, "
                         f"got shape {t.shape}")
    t = np.asarray(t, dtype=np.float64)
    if not np.isfinite(t).all() or not t.max() > 0:
        raise InputError("template must be finite with a positive maximum (a vacuum probe image)")
    return t


def _fft_of(arr):
    """FFT module and keyword arguments for ``arr``'s device (all cores on the CPU)."""
    if _backend.is_gpu_array(arr):
        import cupyx.scipy.fft as fft

        return fft, {}
    import scipy.fft as fft

    return fft, {"workers": os.cpu_count() or 1}
