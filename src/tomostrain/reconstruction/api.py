"""``reconstruct``: one entry point for every reconstruction method, in slice chunks.

Where it runs and where the result lives: ``backend`` ("auto" | "cpu" | "gpu") picks the device
that computes; the volume is returned on the side of the input data (NumPy in, NumPy out; CuPy
in, CuPy out), so a series bigger than GPU memory can stream through the GPU from host memory.

Order of work: validate; resample the projections once onto the aligned frame when there are
row shifts or a tilt-axis angle (on the input's device; column shifts are folded exactly into
the projector instead, except for FBP/gridrec which take one centre); estimate the
data-dependent defaults once from the whole series (TV weight, DART levels) so every chunk uses
the same; then reconstruct independent slice chunks sized by ``gpu_core.chunks`` and the memory
budget. On the GPU with host data, each chunk is uploaded from a pinned buffer on a second
stream while the previous chunk computes (double buffering), and results come back through a
pinned buffer.

Scale-out (``distributed/``): the per-chunk work is ``SliceReconstruction``, a picklable map step
(``process(rows) -> volume slab``) that reads its rows itself, from an array or from a lazy tilt
source (``.read(rows=slice)``, e.g. ``io.open_tilt_series``), so a worker only ever holds one
chunk. Given an ``executor`` (inline, threads, Dask), a lazy source, or an ``out=`` sink,
``reconstruct`` runs that step through ``distributed.map_into``: each slab is written into
``out`` (an array, an HDF5 dataset, or a resumable store that skips chunks already done) as it
arrives, so the whole volume need never be in memory.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..gpu_core import backend as _backend
from ..gpu_core import chunks
from .geometry import TiltGeometry, align_projections, unpack_series

METHODS = ("fbp", "gridrec", "sirt", "cgls", "os_sart", "tv", "dart")
DEFAULT_ITERATIONS = {"sirt": 100, "cgls": 30, "os_sart": 10, "tv": 200, "dart": 20}
# working set per slice, in float32 volume slices and sinograms (inputs, outputs, temporaries)
_WORK = {"fbp": (2, 4), "gridrec": (26, 10), "sirt": (4, 4), "cgls": (5, 4), "os_sart": (4, 4),
         "tv": (8, 5), "dart": (7, 5)}


def reconstruct(series, method="fbp", angles_deg=None, center=None, shifts=None, tilt_axis_deg=0.0,
                iterations=None, backend="auto", chunk_budget=None, executor=None, out=None, progress=None,
                **options):
    """Reconstruct a tilt series into a volume ``(n_rows, n_x, n_x)`` float32 ``[y, z, x]``.

    series : an object with ``.data`` (n_angles, n_rows, n_cols) and ``.angles_deg`` (a
        TiltSeries), or the data array itself with ``angles_deg=`` given
    method : one of ``METHODS``
    center, shifts, tilt_axis_deg : the alignment (DESIGN.md §3): rotation-axis column,
        per-projection ``(dy, dx)`` pixels, tilt-axis angle in degrees
    iterations : for the iterative methods; default ``DEFAULT_ITERATIONS[method]``
    backend : "auto" | "cpu" | "gpu", where to compute; the result lives where ``series`` does
    chunk_budget : bytes one chunk of slices may use; default ``gpu_core.backend.memory_budget``
        (with an executor: each worker's own budget)
    executor : a ``distributed`` executor (inline, threads, Dask) that runs the slice chunks;
        default: this process
    out : sink for the volume: an array or HDF5 dataset ``(n_rows, n_x, n_x)`` float32, or a
        resumable store (``write(rows, slab)``, ``done(rows)``); returned when given
    progress : ``progress(slices_done, n_rows)`` after every chunk (executor / sink path)
    options : passed to the method (``n_x``; fbp/gridrec: ``filter``, ``padding``,
        ``weighting``; iterative: ``nonnegative``, ``support`` (no ``x0`` here),
        ``weight`` (tv), ``levels``/``n_classes`` (dart), ...)
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    source = series if _is_lazy(series) else None
    if source is not None:
        if angles_deg is not None:
            raise InputError("angles_deg given twice: the tilt source already carries .angles_deg")
        data, angles = source, np.asarray(source.angles_deg, np.float64)
    else:
        data, angles = unpack_series(series, angles_deg)
    n_angles, n_rows, n_cols = data.shape
    geo = TiltGeometry(angles, n_rows, n_cols, center=center, shifts=shifts, tilt_axis_deg=tilt_axis_deg)
    if "x0" in options:
        raise InputError("reconstruct does not take x0; call the method (e.g. sirt) directly")
    where = _backend.resolve(backend)
    fourier = method in ("fbp", "gridrec")
    if source is not None and (geo.needs_resampling or (fourier and geo.shifts is not None)):
        data, source = source.to_series().data, None  # resampling mixes rows: the series is read whole
    if geo.needs_resampling or (fourier and geo.shifts is not None):
        # cubic: linear interpolation smooths the data unevenly (by the fractional shift), which
        # moves the grey-level histogram enough to shift multi-Otsu phase thresholds
        data = align_projections(data, geo.shifts, geo.tilt_axis_deg, order=3)
        geo = geo.aligned()
    n_x = int(options.pop("n_x", n_cols))
    if method in DEFAULT_ITERATIONS:
        options["iterations"] = DEFAULT_ITERATIONS[method] if iterations is None else int(iterations)
    elif iterations is not None:
        raise InputError(f"method {method!r} is not iterative: iterations={iterations} makes no sense")
    _global_defaults(method, data, geo, n_x, options, where)

    vol_slices, sino_slices = _WORK[method]
    per_slice = 4 * (vol_slices * n_x * n_x + sino_slices * n_angles * n_cols)
    if executor is not None or source is not None or out is not None:
        from ..distributed import InlineExecutor, map_into

        step = SliceReconstruction(data if source is None else source, method, geo, n_x, dict(options), where,
                                   per_slice)
        executor = executor or InlineExecutor()
        if out is None:
            out = np.empty((n_rows, n_x, n_x), np.float32)
        _check_sink(out, (n_rows, n_x, n_x))
        plan = executor.plan(step, where, chunk_budget)
        return map_into(executor, step, out, plan=plan, progress=progress)
    budget = _backend.memory_budget(where) if chunk_budget is None else int(chunk_budget)
    run = _solver(method, geo, n_x, options)
    input_on_gpu = _backend.is_gpu_array(data)
    if where == "gpu" and not input_on_gpu:
        return _stream_through_gpu(data, run, n_rows, n_x, per_slice, budget)
    if where == "cpu" and input_on_gpu:
        data = _backend.to_host(data)
    xp = _backend.xp_of(data)
    out = xp.empty((n_rows, n_x, n_x), xp.float32)

    def process(sl):
        out[sl] = run(xp.ascontiguousarray(data[:, sl], dtype=xp.float32), sl)

    chunks.run_chunked(process, n_rows, per_slice, budget)
    return _to_gpu(out) if input_on_gpu else out


class SliceReconstruction:
    """The map step of ``reconstruct``: ``process(rows)`` reads detector rows ``rows`` of the
    series (an array, NumPy or CuPy, or a lazy source with ``.read(rows=slice)``), reconstructs
    them with one method and fixed options on ``backend`` and returns the volume slab
    ``(rows, n_x, n_x)`` float32 on the host. Picklable (a lazy source is opened on the worker)."""

    kind = "map"
    minimum = 1

    def __init__(self, source, method, geometry, n_x, options, backend, bytes_per_slice):
        self.source, self.method, self.geometry, self.n_x = source, method, geometry, int(n_x)
        self.options, self.backend, self.bytes_per_item = options, backend, int(bytes_per_slice)
        self.n_items = geometry.n_rows

    def process(self, rows: slice):
        if _is_lazy(self.source):
            chunk = self.source.read(rows=rows)
        else:
            chunk = self.source[:, rows]
        chunk = _backend.to_device(chunk, self.backend, dtype=np.float32)
        xp = _backend.xp_of(chunk)
        vol = _solver(self.method, self.geometry, self.n_x, self.options)(xp.ascontiguousarray(chunk), rows)
        return np.asarray(_backend.to_host(vol), dtype=np.float32)


def _is_lazy(series) -> bool:
    """A lazy tilt source (``io.open_tilt_series``): rows are read on demand, never ``.data``."""
    return hasattr(series, "read") and hasattr(series, "angles_deg") and not hasattr(series, "data")


def _check_sink(out, shape) -> None:
    got = tuple(getattr(out, "shape", ()))
    if got != tuple(shape):
        raise InputError(f"out= must have the volume's shape {tuple(shape)} (n_rows, n_x, n_x), got {got}")


def _to_gpu(array):
    import cupy

    return cupy.asarray(array)


def _chunk_geometry(geo: TiltGeometry, sl: slice) -> TiltGeometry:
    return TiltGeometry(geo.angles_deg, sl.stop - sl.start, geo.n_cols, center=geo.center, shifts=geo.shifts)


def _solver(method, geo, n_x, options):
    """``run(chunk_data, slice) -> chunk volume`` for one method with fixed options."""
    if method in ("fbp", "gridrec"):
        from .fbp import fbp, gridrec

        func = fbp if method == "fbp" else gridrec
        return lambda chunk, sl: func(chunk, geo.angles_deg, center=geo.center, n_x=n_x, **options)
    from .dart import dart
    from .iterative import cgls, os_sart, sirt, tv

    func = {"sirt": sirt, "cgls": cgls, "os_sart": os_sart, "tv": tv, "dart": dart}[method]
    support = options.get("support")

    def run(chunk, sl):
        opts = options
        if support is not None and getattr(support, "ndim", 2) == 3:  # a per-slice support: the chunk's slices
            opts = {**options, "support": support[sl]}
        return func(chunk, geometry=_chunk_geometry(geo, sl), n_x=n_x, **opts)

    return run


DART_LEVEL_ROWS = 64  # at most this many rows estimate DART's grey levels


def _global_defaults(method, data, geo, n_x, options, where):
    """Fix the data-dependent defaults once for the whole series, so that chunks agree."""
    xp = np if where == "cpu" else _backend._cupy()
    if method == "tv" and options.get("weight") is None:
        from .iterative import Operator, default_tv_weight

        op = Operator(_chunk_geometry(geo, slice(0, 1)), n_x, xp)
        data_max = _abs_max(data)
        options["weight"] = default_tv_weight(data_max, op, op.norm())
    if method == "dart" and options.get("levels") is None:
        from .dart import phase_levels, start_volume
        from .iterative import Operator

        n_rows = data.shape[1]
        step = max(1, -(-n_rows // DART_LEVEL_ROWS))   # rows every `step`: the whole particle in 3D
        sample = np.arange(0, n_rows, step)
        if _is_lazy(data):
            part = np.concatenate([data.read(rows=slice(int(r), int(r) + 1)) for r in sample], axis=1)
        else:
            part = _backend.to_host(data[:, sample])
        part = _backend.to_device(part, where)
        sample_geo = TiltGeometry(geo.angles_deg, len(sample), geo.n_cols, center=geo.center, shifts=geo.shifts)
        if options.get("start", "sirt") == "tv" and options.get("tv_weight") is None:
            from .iterative import default_tv_weight

            op1 = Operator(_chunk_geometry(geo, slice(0, 1)), n_x, xp)
            options["tv_weight"] = default_tv_weight(_abs_max(data), op1, op1.norm())
        start = start_volume(part, Operator(sample_geo, n_x, xp), options.get("start", "sirt"),
                             options.get("initial_iterations", 50), weight=options.get("tv_weight"))
        options["levels"] = phase_levels(start, options.pop("n_classes", 3), part, Operator(sample_geo, n_x, xp))


def _abs_max(data) -> float:
    """max |data| of an array, or of a lazy source read in row chunks (a reduction)."""
    if not _is_lazy(data):
        return float(_backend.xp_of(data).abs(data).max())
    n_angles, n_rows, n_cols = data.shape
    plan = chunks.plan(n_rows, 4 * n_angles * n_cols, 256 << 20)
    return max(float(np.abs(data.read(rows=sl)).max()) for sl in plan)


def _stream_through_gpu(data, run, n_rows, n_x, per_slice, budget):
    """Host series -> GPU chunks -> host volume, uploads overlapping compute (double buffering)."""
    import cupy
    import cupyx

    out = np.empty((n_rows, n_x, n_x), np.float32)
    copy_stream = cupy.cuda.Stream(non_blocking=True)
    pending = {}  # (start, stop) -> (device array, ready event) of a prefetched chunk

    def upload(sl):
        pinned = cupyx.empty_pinned(data[:, sl].shape, np.float32)
        pinned[...] = data[:, sl]
        dev = cupy.empty(pinned.shape, cupy.float32)
        dev.set(pinned, stream=copy_stream)
        event = copy_stream.record()
        pending[(sl.start, sl.stop)] = (dev, event, pinned)  # pinned kept alive until the copy ends

    def process(sl):
        key = (sl.start, sl.stop)
        if key not in pending:
            copy_stream.synchronize()  # a retry with smaller chunks: let prefetches land, then drop them
            pending.clear()
            upload(sl)
        dev, event, _ = pending.pop(key)
        cupy.cuda.get_current_stream().wait_event(event)
        nxt = slice(sl.stop, min(n_rows, sl.stop + (sl.stop - sl.start)))
        if nxt.start < n_rows:
            upload(nxt)  # overlaps the compute below
        vol = run(dev, sl)
        host = cupyx.empty_pinned(vol.shape, np.float32)
        vol.get(out=host)
        out[sl] = host

    chunks.run_chunked(process, n_rows, per_slice, budget)
    return out
