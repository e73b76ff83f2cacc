"""A 4D-STEM scan in three passes over the cube, each a chunked step of ``distributed``.

1. ``MeanAndTotal``: the summed pattern (a reduction) and every pattern's total intensity (a map),
   with the value check of ``io.check_datacube`` (NaN/Inf, all zero, negated) on the same read
   (``first_pass``). The central disk (centre, radius) of the mean pattern follows.
2. ``OriginsAndVacuum``: per-position centroids of the central disk (a map; the origin plane is
   fitted to them), the intensity inside the disk and with it each position's scattering score
   ``(total - inside) / inside``, and the ``k`` least-scattering patterns themselves, kept as the
   pass goes (``distributed.Lowest``): the probe template is their aligned mean.
3. ``DisksAndMaps``: Bragg disks (``disks.DiskFinder``), virtual BF and ADF about each position's
   fitted origin and the radial profiles for the phase map, from the same chunk read.

Memory: one chunk of scan rows plus scan-sized results (and ``k`` patterns in pass 2). The
results equal those of the separate whole-scan functions (``calibrate.probe_template("auto")``,
``calibrate.fit_origin``, ``virtual.virtual_bf/adf``, ``phases.phase_map``,
``disks.find_bragg_disks``) up to float rounding of reordered sums. Steps pickle if the cube does
(a DataCube whose rows are read on the worker).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..distributed import ChunkedStep, InlineExecutor, Lowest, collect
from ..errors import CalibrationError
from ..gpu_core import backend as _backend
from ..gpu_core.kernels.virtual_detector import radial_sums
from . import calibrate
from .disks import BraggPeaks, DiskFinder, disk_geometry, peaks_from_parts
from .phases import PhaseMap, classify_profiles, profile_range
from .virtual import annular_sums, annulus_box

#: working set per detector pixel of one pattern, bytes (chunk + temporaries), per pass
PASS_BYTES = {1: 16, 2: 24, 3: 64}
#: most patterns in one chunk on the CPU (cache-sized chunks; the GPU takes what its budget allows)
CPU_MAX_PATTERNS = 256


#: the CPU kernels of the three passes, in the order they are first called, with the one
#: signature each is called with (every array C-contiguous)
CPU_KERNELS = (
    ("virtual_detector", "disk_centroids_cpu",
     "(float32[:, :, ::1], float64[:, ::1], float64[::1], float64, int64[::1], float64[:, ::1])"),
    ("virtual_detector", "radial_sums_cpu",
     "(float32[:, :, ::1], float64[:, ::1], int64[::1], float64[:, ::1], float64[::1], float64, float64[:, ::1],"
     " float64[:, ::1])"),
    ("disk_peaks", "white_tophat_cpu", "(float32[:, :, ::1], int64, float32[:, :, ::1])"),
    ("disk_peaks", "disk_peaks_cpu",
     "(float32[:, :, ::1], float32[:, :, ::1], float32[::1], int64, float64, int64, int64, float64, float64,"
     " float64[::1], float64[::1], float64, float32[:, :, ::1], int32[::1], int32[::1])"),
)


def prepare_cpu(wait: bool = False):
    """Load the passes' CPU kernels from Numba's cache (compile them where it is empty) and import
    scipy.fft, in a background thread: a CPU run then does this while pass 1 reads the cube
    (NumPy, which releases the GIL) instead of before pass 2. Returns the thread (joined with
    ``wait``). A failure here is left for the kernel's own call to raise."""
    import threading

    def work():
        try:
            import importlib

            import scipy.fft  # noqa: F401  (the correlation's FFTs)

            for module, name, signature in CPU_KERNELS:
                kernel = getattr(importlib.import_module(f"..gpu_core.kernels.{module}", __package__), name)
                if not kernel.signatures:
                    kernel.compile(signature)
        except Exception:  # noqa: BLE001 - the real call raises it, with its context
            pass

    thread = threading.Thread(target=work, name="tomostrain-kernels", daemon=True)
    thread.start()
    if wait:
        thread.join()
    return thread


def _xp(backend: str):
    if backend == "gpu":
        import cupy

        return cupy
    return np


class _ScanPass(ChunkedStep):
    """A pass over the scan rows of ``cube`` on ``backend``."""

    number = 0

    def __init__(self, cube, backend: str):
        self.cube, self.backend = cube, backend
        sy, sx, ky, kx = cube.shape
        self.n_items = sy
        self.bytes_per_item = sx * ky * kx * PASS_BYTES[self.number]

    def rows(self, rows: slice):
        return self.cube.rows(rows.start, rows.stop, _xp(self.backend))


class MeanAndTotal(_ScanPass):
    """Pass 1: ``(summed pattern (ky, kx), total intensity (rows, sx))``, float64 host arrays, and
    per scan row ``io.datacube.value_summary``'s four arrays (NaN/Inf count, first one, largest
    and smallest finite value): the value check of ``io.check_datacube`` on the same read."""

    number = 1
    kind = ("reduce", "map", "map", "map", "map", "map")

    def process(self, rows):
        from ..io.datacube import value_summary

        chunk = self.rows(rows)
        xp = _backend.xp_of(chunk)
        summary = value_summary(chunk, rows.start)
        if summary[0].any():
            chunk = xp.where(xp.isfinite(chunk), chunk, 0)
        return (_backend.to_host(chunk.sum((0, 1), dtype=xp.float64)),
                _backend.to_host(chunk.sum((2, 3), dtype=xp.float64)), *summary)


class OriginsAndVacuum(_ScanPass):
    """Pass 2: ``(centroids (rows, sx, 2), score (rows, sx), (score, flat index, pattern) of the
    k lowest scores)``, host arrays."""

    number = 2

    def __init__(self, cube, backend, c0, radius, total, k):
        super().__init__(cube, backend)
        self.c0, self.radius, self.total, self.k = np.asarray(_backend.to_host(c0)), float(radius), total, int(k)
        self.kind = ("map", "map", _LowestPatterns(self.k))

    def process(self, rows):
        chunk = self.rows(rows)
        xp = _backend.xp_of(chunk)
        sy, sx, ky, kx = self.cube.shape
        box = calibrate.origin_box(xp.asarray(self.c0), self.radius, (ky, kx), xp)
        centre = calibrate.disk_centroids(chunk, xp.asarray(self.c0), self.radius, box, xp)
        if not bool(xp.isfinite(centre).all()):
            raise CalibrationError("no central disk found in some patterns (empty or saturated); "
                                   "pass a probe region or image")
        r_in = self.radius + 2.0
        inside = annular_sums(chunk, centre, 0.0, r_in, annulus_box(centre, r_in, (ky, kx), xp), xp)
        inside = _backend.to_host(inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = (self.total[rows] - inside) / inside
        score[~np.isfinite(score)] = np.inf
        flat = score.ravel()
        pick = np.argsort(flat, kind="stable")[: self.k]
        patterns = _backend.to_host(chunk.reshape(-1, ky, kx)[xp.asarray(pick)])
        return (_backend.to_host(centre), score,
                (flat[pick], rows.start * sx + pick, np.asarray(patterns, np.float32)))


class _LowestPatterns(Lowest):
    """``distributed.Lowest`` that gathers only the ``k`` kept patterns from the partials (each
    chunk brings up to ``k`` of them) instead of concatenating them all first: same result."""

    def __call__(self, parts: list):
        score = np.concatenate([p[0] for p in parts])
        index = np.concatenate([p[1] for p in parts])
        keep = np.lexsort((index, score))[: self.k]
        ends = np.cumsum([len(p[0]) for p in parts])
        part = np.searchsorted(ends, keep, side="right")
        start = np.concatenate([[0], ends[:-1]])
        payload = np.stack([parts[j][2][i - start[j]] for j, i in zip(part, keep)]) if len(keep) else \
            parts[0][2][:0]
        return score[keep], index[keep], payload


class DisksAndMaps(_ScanPass):
    """Pass 3: ``(bf, adf (rows, sx), profiles (rows, sx, nbins), peaks (n, 3), counts (rows*sx,))``."""

    number = 3
    kind = ("map", "map", "map", "map", "map")

    def __init__(self, cube, backend, finder: DiskFinder, origin, bf_radius, adf_edges, r_min, nbins, ellipse):
        super().__init__(cube, backend)
        self.finder, self.origin = finder, np.asarray(_backend.to_host(origin))
        self.bf_radius, self.adf_edges = float(bf_radius), tuple(float(v) for v in adf_edges)
        self.r_min, self.nbins, self.ellipse = float(r_min), int(nbins), ellipse

    def process(self, rows):
        chunk = self.rows(rows)
        xp = _backend.xp_of(chunk)
        det = self.cube.detector_shape
        field = xp.asarray(self.origin)
        o = field[rows]
        # BF, ADF and the radial profiles in one pass over the pixels (the radial_sums kernel); the
        # ADF's box holds the BF disk too, so the sums equal annular_sums' and profile_rows'
        inner, outer = self.adf_edges
        (ys, xs), _, _ = annulus_box(field, max(outer, self.bf_radius), det, xp)
        n = chunk.shape[0] * chunk.shape[1]
        sums, prof = radial_sums(chunk.reshape(n, *det), o.reshape(n, 2), [(0.0, self.bf_radius), (inner, outer)],
                                 (ys.start, ys.stop, xs.start, xs.stop), ellipse=self.ellipse, r_min=self.r_min,
                                 nbins=self.nbins)
        shape = chunk.shape[:2]
        bf, adf, prof = sums[:, 0].reshape(shape), sums[:, 1].reshape(shape), prof.reshape(*shape, self.nbins)
        peaks, counts = self.finder.find(chunk.reshape(-1, *det), rows)
        return tuple(_backend.to_host(a) for a in (bf, adf, prof, peaks, counts))


@dataclass
class ScanCalibration:
    """What passes 1 and 2 find: mean pattern (ky, kx), total intensity (sy, sx), measured and
    fitted origins (sy, sx, 2) px, central disk radius (px), probe template (ky, kx), the
    positions the template came from (flat indices)."""

    mean: np.ndarray
    total: np.ndarray
    measured_origin: np.ndarray
    origin: np.ndarray
    radius: float
    probe: np.ndarray
    vacuum_positions: np.ndarray


@dataclass
class ScanMaps:
    """What pass 3 finds: virtual images, phase map and Bragg peaks."""

    bf: np.ndarray
    adf: np.ndarray
    phase: PhaseMap
    peaks: BraggPeaks


def _plan(executor, step, backend, budget):
    plan = executor.plan(step, backend, budget)
    if backend != "gpu":
        sx = step.cube.scan_shape[1]
        most = max(1, CPU_MAX_PATTERNS // sx)
        plan = [slice(s, min(s + most, sl.stop)) for sl in plan for s in range(sl.start, sl.stop, most)]
    return plan


def first_pass(cube, *, executor=None, backend: str = "cpu", budget: int | None = None, progress=None):
    """Pass 1: ``(summed pattern (ky, kx), total intensity (sy, sx))``, after refusing what
    ``io.check_datacube`` refuses (NaN/Inf, all zero, no positive value; a read failure is a
    FileFormatError), judged on the same reads: the stem pipeline's check and pass 1 in one."""
    from ..io.datacube import check_values, read_errors

    executor = executor or InlineExecutor()
    step1 = MeanAndTotal(cube, backend)
    with read_errors(cube):
        summed, total, *summary = collect(executor, step1, plan=_plan(executor, step1, backend, budget),
                                          progress=progress)
    check_values(cube, *summary)
    return summed, total


def calibrate_scan(cube, *, probe=None, fraction: float = 0.05, executor=None, backend: str = "cpu",
                   budget: int | None = None, progress=None, first=None) -> ScanCalibration:
    """Passes 1 and 2. ``probe``: None (the ``fraction`` of least-scattering positions, as
    ``probe_template("auto")``), or a ready probe template (ky, kx) used as it is (pass 2 still
    measures the origins). ``first``: pass 1's ``(summed, total)`` when ``first_pass`` already ran."""
    executor = executor or InlineExecutor()
    sy, sx = cube.scan_shape
    summed, total = first if first is not None else first_pass(cube, executor=executor, backend=backend,
                                                               budget=budget, progress=progress)
    mean = summed / (sy * sx)
    c0, radius = calibrate.central_disk(mean)
    k = max(1, int(round(fraction * sy * sx)))
    step2 = OriginsAndVacuum(cube, backend, c0, radius, total, k)
    measured, _score, (_s, chosen, patterns) = collect(executor, step2, plan=_plan(executor, step2, backend, budget),
                                                       progress=progress)
    origin = _backend.to_host(calibrate.fit_origin(measured))
    if probe is None:
        order = np.argsort(chosen)
        template = calibrate.probe_template(patterns[order].astype(np.float64))
    else:
        template = probe
    return ScanCalibration(mean, total, measured, origin, float(radius), _backend.to_host(template), np.sort(chosen))


def scan_maps(cube, calibration: ScanCalibration, phases, q_pixel_size: float, *, ellipse=None, executor=None,
              backend: str = "cpu", budget: int | None = None, progress=None, **disk_options) -> ScanMaps:
    """Pass 3: disks with the calibration's probe, BF (r < 1.2 R), ADF (2.5 R <= r < half the
    detector) about the fitted origin, radial profiles and the phase map (R: the probe's disk
    radius), as the pipeline takes them."""
    executor = executor or InlineExecutor()
    det = cube.detector_shape
    radius = disk_geometry(calibration.probe)[2]
    finder = DiskFinder(calibration.probe, det, backend=backend, **disk_options)
    r_min, r_max = profile_range(det, radius)
    nbins = int(np.ceil(r_max - r_min))
    step = DisksAndMaps(cube, backend, finder, calibration.origin, 1.2 * radius, (2.5 * radius, min(det) / 2),
                        r_min, nbins, ellipse)
    bf, adf, prof, peaks, counts = collect(executor, step, plan=_plan(executor, step, backend, budget),
                                           progress=progress)
    sy, sx = cube.scan_shape
    total = calibration.total
    scattered = prof.sum(-1) / np.where(total > 0, total, 1.0)
    phase = classify_profiles(prof, scattered, phases, q_pixel_size, radius, r_min, r_max)
    peaks = peaks_from_parts([(peaks, counts)], (sy, sx))
    return ScanMaps(bf, adf, phase, peaks)
