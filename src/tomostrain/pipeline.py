"""Jobs: read -> process -> write, from the CLI or a TOML job file.

Each job runs named steps with a progress display, records provenance (version, command,
parameters, backend, device, start/finish, per-step seconds) and checkpoints after every step to
``OUT.h5.partial``: a job that is stopped resumes at the first step not yet done, provided its
parameters are unchanged. The result file is written atomically (DESIGN.md §4, §5).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, io, safety, validation
from .errors import CalibrationError, InputError
from .gpu_core import backend as be
from .io.store import without_slabs


def info() -> dict:
    """Version, backend, device and versions of key dependencies."""
    import importlib

    where = be.resolve("auto")
    out = {"tomostrain": __version__, "backend": where, "device": be.device_name(where)}
    if where == "gpu":
        out["gpu memory free"] = f"{be.free_memory_bytes('gpu') / 2**30:.1f} GiB"
    for mod in ("numpy", "scipy", "numba", "numba.cuda", "cupy", "h5py", "finufft", "dask"):
        try:
            m = importlib.import_module(mod)
            out[mod] = getattr(m, "__version__", None) or getattr(importlib.import_module(mod.split(".")[0]), "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional dependency is reported, not fatal
            out[mod] = "not installed"
    return out


class Job:
    """Steps, progress, provenance and per-step checkpoints of one job writing ``out``."""

    def __init__(self, out: Path, command: str, parameters: dict, backend: str, console=None, inputs=()):
        self.out = Path(out)
        # before any work: never write over an input; one writer per output (safety.py)
        self.inputs = safety.job_inputs(parameters)  # what the checkpoint key holds
        safety.check_output(self.out, self.inputs + safety.job_inputs({}, inputs))  # + the job file
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.backend = be.resolve(backend)
        self.parameters = parameters
        self.lock = safety.lock_output(self.out)
        self.key = self._checkpoint_key()
        self.provenance = {
            "command": command,
            "parameters": parameters,
            "backend": self.backend,
            "device": be.device_name(self.backend),
            "started": _now(),
            "step_seconds": {},
            "inputs": self.key["inputs"],
        }
        self.results: dict = {}
        self._done: set[str] = set()
        self._console = console
        self.executor = None  # a distributed executor (``--cluster``); None runs chunks in this process
        self._store = None    # io.store.ChunkStore of the big arrays, made on first use
        self._resume()

    def _checkpoint_key(self) -> dict:
        """The parameters plus every input's identity (size, mtime, sampled content hash)."""
        return safety.checkpoint_key(json.loads(json.dumps(self.parameters, default=str)), self.inputs)

    def _resume(self) -> None:
        if not self.partial.exists():
            return
        try:
            old = io.read_results(self.partial)
            attrs = old.get("provenance", {}).get("@attrs", {})
            stored = {"parameters": json.loads(attrs.get("parameters", "null")),
                      "inputs": json.loads(attrs.get("inputs", "{}"))}
            why = safety.key_difference(stored, self.key)
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not used
            why = "it cannot be read"
        if why:
            self.partial.unlink()
            self._print(f"discarding checkpoint {self.partial.name}: {why}; starting afresh")
            return
        self.results = {k: v for k, v in old.items() if k != "provenance"}
        _decode_json_attrs(self.results, json.loads(attrs.get("json_attrs", "[]")))
        self._done = set(json.loads(attrs.get("steps_done", "[]")))
        self.provenance["step_seconds"] = json.loads(attrs.get("step_seconds", "{}"))
        self._print(f"resuming from {self.partial.name}: {', '.join(sorted(self._done))} already done")

    def done(self, name: str) -> bool:
        return name in self._done

    @contextmanager
    def step(self, name: str):
        """Time a step, show it, and checkpoint the results when it completes."""
        self._print(f"[bold]{name}[/bold] ...")
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.provenance["step_seconds"][name] = round(seconds, 3)
        self._done.add(name)
        self._print(f"  {name} done in {seconds:.1f} s")
        prov = self._provenance(finished=False)
        prov["json_attrs"] = _json_attr_paths(self.results)
        io.write_results(self.partial, without_slabs(self.results), prov)

    def finish(self) -> Path:
        """Write the complete result file atomically, drop the checkpoint, release the lock."""
        if self._store is not None:  # the big arrays are already in the store: it becomes the result
            self._store.finish(self.out, self.results, self._provenance(finished=True))
            self._store = None
        else:
            io.write_results(self.out, self.results, self._provenance(finished=True))
        self.partial.unlink(missing_ok=True)
        self.lock.release()
        return self.out

    def array(self, name: str, shape, dtype=np.float32):
        """A big result array written chunk by chunk into the job's chunk store (``io.store``),
        resumable per chunk: reopened with its progress on a rerun with the same parameters."""
        if self._store is None:
            from .io.store import ChunkStore, store_path

            key = getattr(self, "key", None) or json.dumps(self.parameters, sort_keys=True, default=str)
            self._store = ChunkStore(store_path(self.out), key, say=self._print)
        return self._store.array(name, shape, dtype)

    def progress(self, label: str):
        """A per-chunk progress callback ``(done, total)``: a rich progress bar on stderr."""
        state = {}

        def update(done: int, total: int) -> None:
            if "bar" not in state:
                from rich.progress import Progress

                state["bar"] = Progress(console=self._console, transient=True)
                state["bar"].start()
                state["task"] = state["bar"].add_task(f"  {label}", total=total)
            state["bar"].update(state["task"], completed=done)
            if done >= total:
                state["bar"].stop()

        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return update

    def _provenance(self, finished: bool) -> dict:
        prov = dict(self.provenance)
        prov["steps_done"] = sorted(self._done)
        prov["finished"] = _now() if finished else ""
        prov["executor"] = self.executor.describe() if self.executor is not None else "inline"
        return prov

    def _print(self, text: str) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        self._console.print(text)


def _json_attr_paths(tree: dict, prefix: str = "") -> list[str]:
    """``group/path@attr`` of every attribute io.write_results stores as a JSON string (lists,
    dicts, None, arrays), so a resumed checkpoint gives them back with their types."""
    out = []
    for key, value in tree.items():
        if key == "@attrs":
            out += [f"{prefix}@{k}" for k, v in value.items()
                    if not isinstance(v, (bool, int, float, str, np.bool_, np.integer, np.floating))]
        elif isinstance(value, dict):
            out += _json_attr_paths(value, f"{prefix}{key}/")
    return out


def _decode_json_attrs(tree: dict, paths: list[str]) -> None:
    for path in paths:
        group, _, name = path.rpartition("@")
        node = tree
        for part in filter(None, group.split("/")):
            node = node.get(part, {})
        attrs = node.get("@attrs", {})
        if isinstance(attrs.get(name), str):
            attrs[name] = json.loads(attrs[name])


def _nonnegative_used(method, nonnegative):
    """The non-negativity the iterative ``method`` runs with: the value given, else the solver's own
    default (``reconstruction.iterative.NONNEGATIVE_DEFAULT``); None for the other methods."""
    if nonnegative is not None or method not in validation.NONNEGATIVE_METHODS:
        return nonnegative
    from .reconstruction.iterative import NONNEGATIVE_DEFAULT

    return NONNEGATIVE_DEFAULT[method]


@safety.entry_point
def tomo(input, output, *, method="fbp", iterations=None, center=None, segment=0, angles=None,
         voxel_size_nm=None, align=False, tilt_axis_deg=None, backend="auto", command="",
         job: Job | None = None, offset="auto", xf=None, rings=None, zingers=None, paganin=None,
         beam_background=None, center_method="vo", cluster=None, classes=None,
         nonnegative=None) -> Path | None:
    """Reconstruct a tilt series file, folder of one-file-per-tilt images (or TiltSeries),
    optionally aligned first (``align``: tilt axis searched over all directions, ``tilt_axis_deg``
    a prior (None: the file's, if any), drift, centre; ``OUT.xf``/``OUT.tlt`` are written beside
    the result for IMOD) or with an IMOD/AreTomo/ETSpy ``.xf`` alignment (``xf``), and segmented +
    quantified; write ``output``. ``offset``: the detector offset rule of ``io.read_tilt_series``
    ("auto", None or a number).

    With ``job`` given, the steps are added to that job and nothing is written here.
    ``classes``: number of phases (vacuum included) whose grey levels DART estimates
    (``method="dart"``; default 3). ``nonnegative``: clip the volume at 0 in every iteration of
    sirt, os_sart, cgls (at the end) or tv; None = the solver's default
    (``reconstruction.iterative.NONNEGATIVE_DEFAULT``: unconstrained SIRT, OS-SART and CGLS, as
    ASTRA, TomoPy and ETSpy run them; constrained TV). The value used is recorded in the
    provenance parameters and as the ``/tomo`` attribute ``nonnegative``.

    X-ray data (DXchange with flats): ``rings`` (a ``preprocess.RING_METHODS`` name),
    ``zingers`` (threshold), ``paganin`` (dict ``energy_kev, distance_m, delta_beta`` and
    optionally ``pixel_size_m``, default the file's pixel size), ``beam_background`` (columns)
    run ``reconstruction.preprocess.preprocess_xray`` on the raw counts (``_xray_series``);
    ``center="auto"`` finds the rotation axis (``center_method`` "vo" or "phase") on any data.

    ``cluster``: a ``--cluster`` value (``distributed.open_cluster``) whose executor runs the slice
    chunks. The volume is written chunk by chunk into the result file as it is reconstructed (a
    resumable chunk store, ``io.store``): a rerun after a kill recomputes only missing chunks.
    """
    from .reconstruction import align as find_alignment
    from .reconstruction import reconstruct

    angle_file = isinstance(angles, (str, Path))
    validation.check("tomo", {"input": "<TiltSeries>" if hasattr(input, "angles_deg") else input, "method": method,
                              "iterations": iterations, "center": center, "segment": segment,
                              "angles": angles if angle_file else None, "voxel_size_nm": voxel_size_nm,
                              "align": align, "tilt_axis_deg": tilt_axis_deg, "offset": offset,
                              "xf": None if xf is None else str(xf), "rings": rings, "zingers": zingers,
                              "paganin": paganin, "beam_background": beam_background,
                              "center_method": center_method, "classes": classes, "nonnegative": nonnegative})
    nonnegative = _nonnegative_used(method, nonnegative)
    params = {"tomo": {"input": str(input), "method": method, "iterations": iterations, "center": center,
                       "segment": segment, "voxel_size_nm": voxel_size_nm, "align": bool(align),
                       "tilt_axis_deg": tilt_axis_deg}}
    if offset != "auto":
        params["tomo"]["offset"] = offset
    if xf is not None:
        params["tomo"]["xf"] = str(xf)
    if angles is not None:  # the angle file (or values) is part of what a checkpoint depends on
        params["tomo"]["angles"] = str(angles) if angle_file else np.asarray(angles, np.float64).tolist()
    xray = {"rings": rings, "zingers": zingers, "paganin": paganin, "beam_background": beam_background}
    if any(v is not None for v in xray.values()) or center == "auto":
        params["tomo"].update(xray, center_method=center_method)
    if classes is not None:
        params["tomo"]["classes"] = classes
    if nonnegative is not None:
        params["tomo"]["nonnegative"] = bool(nonnegative)
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    if align and own:  # OUT.xf / OUT.tlt are written too: never over an input (an .ali's .tlt)
        for side in (job.out.with_suffix(".xf"), job.out.with_suffix(".tlt")):
            safety.check_output(side, job.inputs)
    if own and cluster is not None:
        from .distributed import open_cluster

        with open_cluster(cluster) as job.executor:
            tomo(input, None, method=method, iterations=iterations, center=center, segment=segment, angles=angles,
                 voxel_size_nm=voxel_size_nm, align=align, tilt_axis_deg=tilt_axis_deg, job=job, offset=offset,
                 xf=xf, center_method=center_method, classes=classes, nonnegative=nonnegative, **xray)
        volume_shape = tuple(job.results["tomo"]["volume"].shape)  # (n_rows, n_cols, n_cols)
        path = job.finish()
        if align:
            found = job.results["tomo"]["alignment"]
            _write_imod_alignment(job.out, found, (len(found["angles_deg"]),) + volume_shape[:2])
        return path
    if any(v is not None for v in xray.values()):
        series, center = _xray_series(input, center, center_method, voxel_size_nm, **xray)
    elif hasattr(input, "angles_deg"):
        series = input
    elif align or xf is not None or center == "auto":
        series = io.read_tilt_series(Path(input), angles=angles, offset=offset)
    else:  # read lazily, row chunks per worker (DESIGN.md §2)
        series = io.open_tilt_series(Path(input), angles=angles, offset=offset)
    if center == "auto":
        from .reconstruction.preprocess import find_center

        center = find_center(series.data, series.angles_deg, center_method)
    voxel = voxel_size_nm or series.pixel_size_nm or 1.0
    # a lazy source is reconstructed in slice chunks into the result file: one slice in memory
    _tomo_preflight(series.shape, method, None if isinstance(series, io.TiltSeries) else job.out)
    # a nominal tilt axis without --align is applied as known geometry, not ignored
    geometry = {"center": center} if align or not tilt_axis_deg else {"center": center, "tilt_axis_deg": tilt_axis_deg}
    if xf is not None:
        series, geometry = _xf_alignment(job, series, xf, center)
    if align:
        if not job.done("align"):
            with job.step("align"):
                found = find_alignment(series, tilt_axis_deg=tilt_axis_deg, backend=job.backend)
                job.results.setdefault("tomo", {})["alignment"] = {
                    "shifts": found.shifts, "angles_deg": np.asarray(series.angles_deg, np.float64),
                    "@attrs": {"center": found.center, "tilt_axis_deg": found.tilt_axis_deg}}
                if found.residuals_px is not None:
                    job.results["tomo"]["alignment"]["residuals"] = np.asarray(found.residuals_px, np.float64)
                    job.results["tomo"]["alignment"]["image_nrmse"] = np.asarray(found.image_nrmse, np.float64)
        found = job.results["tomo"]["alignment"]
        geometry = {"shifts": np.asarray(found["shifts"]), "center": float(found["@attrs"]["center"]),
                    "tilt_axis_deg": float(found["@attrs"]["tilt_axis_deg"])}
    n_cols = series.shape[2]
    volume = job.array("tomo/volume", (series.shape[1], n_cols, n_cols), np.float32)
    if not job.done("reconstruct") or not volume.complete():
        with job.step("reconstruct"):
            kw = {} if iterations is None else {"iterations": iterations}
            if classes is not None:
                kw["n_classes"] = int(classes)
            if nonnegative is not None:
                kw["nonnegative"] = bool(nonnegative)
            reconstruct(series, method=method, backend=job.backend, executor=job.executor, out=volume,
                        progress=job.progress("reconstruct"), **geometry, **kw)
            job.results.setdefault("tomo", {})["@attrs"] = {"method": method, "voxel_size_nm": voxel}
            if nonnegative is not None:
                job.results["tomo"]["@attrs"]["nonnegative"] = bool(nonnegative)
            if center is not None and not align:
                job.results["tomo"]["@attrs"]["center"] = float(center)
            if any(v is not None for v in xray.values()):
                job.results["tomo"]["@attrs"]["xray_preprocessing"] = {k: v for k, v in xray.items() if v is not None}
    job.results.setdefault("tomo", {})["volume"] = volume
    if segment:
        _segment_and_quantify(job, segment, voxel)
    if not own:
        return None
    path = job.finish()
    if align:
        _write_imod_alignment(job.out, job.results["tomo"]["alignment"], series.shape)
    return path


def _xf_alignment(job: Job, series, xf_path, center):
    """(series, geometry) for an IMOD .xf: a common rotation + shifts becomes tomostrain's
    alignment (recorded in /tomo/alignment); general transforms are applied to the projections."""
    from .errors import GeometryError
    from .reconstruction import xf as xfm

    transforms = io.imod.read_xf(xf_path)
    if transforms.shape[0] != series.shape[0]:
        raise GeometryError(f"{xf_path} holds {transforms.shape[0]} transforms for {series.shape[0]} projections")
    try:
        shifts, axis = xfm.xf_to_alignment(transforms)
    except GeometryError:
        data = xfm.apply_xf(series.data, transforms)
        return io.TiltSeries(data, series.angles_deg, series.pixel_size_nm, dict(series.meta)), {"center": center}
    c = (series.shape[2] - 1) / 2.0 if center is None else float(center)
    job.results.setdefault("tomo", {})["alignment"] = {
        "shifts": shifts, "angles_deg": np.asarray(series.angles_deg, np.float64),
        "@attrs": {"center": c, "tilt_axis_deg": axis, "source": str(xf_path)}}
    return series, {"shifts": shifts, "center": c, "tilt_axis_deg": axis}


def _write_imod_alignment(out: Path, alignment: dict, shape) -> None:
    """``OUT.xf`` and ``OUT.tlt`` beside the result: the found alignment for IMOD/AreTomo/ETSpy."""
    from .reconstruction import xf as xfm

    attrs = alignment["@attrs"]
    transforms = xfm.alignment_to_xf(np.asarray(alignment["shifts"]), float(attrs["tilt_axis_deg"]),
                                     shape=shape[1:], center=float(attrs["center"]))
    io.imod.write_xf(out.with_suffix(".xf"), transforms)
    io.imod.write_tlt(out.with_suffix(".tlt"), np.asarray(alignment["angles_deg"]))


#: float32 volume-sized arrays a reconstruction holds at once (estimate for the memory preflight)
VOLUME_COPIES = {"fbp": 2, "gridrec": 3}
ITERATIVE_VOLUME_COPIES = 5


def _tomo_preflight(shape, method: str, out: Path | None = None) -> None:
    """Refuse at once what cannot fit: the whole reconstruction in memory, or (``out`` given: a
    lazy source reconstructed slice chunk by slice chunk into the result file) one slice in memory
    and the volume on the output's disk."""
    n, rows, cols = shape
    copies = VOLUME_COPIES.get(method, ITERATIVE_VOLUME_COPIES)
    hint = "crop or bin the projections (fewer rows or columns), or run it on a bigger machine"
    what = f"reconstructing a {rows}x{cols}x{cols} volume with {method}"
    if out is None:
        safety.preflight(4 * (copies * rows * cols * cols + 3 * n * rows * cols), what, hint)
        return
    safety.preflight(4 * (copies * cols * cols + 3 * n * cols), what + " (one slice at a time)", hint)
    safety.preflight_disk(4 * rows * cols * cols, out.parent, what, hint)


def _xray_series(input, center, center_method, voxel_size_nm, rings=None, zingers=None, paganin=None,
                 beam_background=None):
    """Raw DXchange X-ray scan -> preprocessed ``-log`` TiltSeries and the (found) centre."""
    from .reconstruction.preprocess import XrayOptions, preprocess_xray

    if hasattr(input, "angles_deg"):
        raise InputError("X-ray preprocessing (rings, zingers, paganin, beam_background) needs the raw file, "
                         "not a TiltSeries")
    scan = io.xray.read_xray_scan(Path(input))
    px_nm = voxel_size_nm or scan.pixel_size_nm
    if paganin is not None:
        paganin = dict(paganin)
        if "pixel_size_m" not in paganin:
            if px_nm is None:
                raise InputError("Paganin needs the pixel size: the file has no pixel_size_nm; give --voxel-size (nm)")
            paganin["pixel_size_m"] = px_nm * 1e-9
        missing = {"energy_kev", "distance_m", "delta_beta"} - set(paganin)
        if missing:
            raise InputError(f"Paganin needs {sorted(missing)} (energy keV, distance m, delta/beta)")
    opt = XrayOptions(zingers=zingers, beam_background=beam_background, rings=rings, paganin=paganin,
                      center=center, center_method=center_method)
    att, angles, found = preprocess_xray(scan.data, scan.angles_deg, scan.flats, scan.darks, scan.flats_after, opt)
    meta = dict(scan.meta, log_taken=True, flat_corrected=scan.flats is not None)
    return io.TiltSeries(att, angles, px_nm, meta), found


@safety.entry_point
def xanes(input, output, *, references, center="auto", rings=None, zingers=0.5, beam_background=None,
          method="cgls", iterations=12, fit="joint", center_method="vo", backend="auto", command="",
          job: Job | None = None) -> Path | None:
    """TXM-XANES tomography (or 2-D XANES mapping when the scan has a single angle) of a raw
    DXchange file (or a list of per-energy files) to per-voxel fractions of the reference
    spectra (CSV paths, named by stem); writes ``/xanes`` (DESIGN.md §4).

    Every energy is preprocessed (zingers, flat/dark, beam normalisation from ``beam_background``
    columns each side, default ``max(2, n_cols // 16)``, optional rings), one centre is found on
    the energy-summed attenuation (``center="auto"``; Vo's search refined by the CGLS residual)
    or taken as given, and ``fit`` chooses "joint" (the default: per-ray inverse-variance
    spectral unmixing, the density by CGLS with ``iterations``, the fractions fitted to all
    energies' projections at once on the simplex with a TV prior; ``method`` is not used),
    "projection" (NNLS per projection pixel, then one ``method`` reconstruction per reference)
    or "volume" (a reconstruction per energy, NNLS per voxel)."""
    from .reconstruction.preprocess import XrayOptions, flat_dark_correct, normalize_beam
    from .spectral.xanes import xanes_map_2d, xanes_tomography

    if isinstance(references, str):
        references = [r for r in references.split(",") if r]
    validation.check("xanes", {"input": [str(p) for p in input] if isinstance(input, (list, tuple)) else input,
                               "references": [str(r) for r in references], "center": center, "rings": rings,
                               "zingers": zingers, "beam_background": beam_background, "method": method,
                               "iterations": iterations, "fit": fit, "center_method": center_method})
    params = {"xanes": {"input": [str(p) for p in input] if isinstance(input, (list, tuple)) else str(input),
                        "references": [str(r) for r in references], "center": center, "rings": rings,
                        "zingers": zingers, "beam_background": beam_background, "method": method,
                        "iterations": iterations, "fit": fit, "center_method": center_method}}
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    refs = io.xray.read_reference_spectra([Path(r) for r in references])
    scan = io.xray.read_xanes(input if isinstance(input, (list, tuple)) else Path(input))
    n_cols = scan.data.shape[-1]
    bg = max(2, n_cols // 16) if beam_background is None else beam_background
    if not job.done("xanes"):
        with job.step("xanes"):
            data = be.to_device(scan.data, job.backend)
            if scan.data.shape[1] == 1:  # 2-D mapping: no rotation
                frames = []
                for k in range(data.shape[0]):
                    f = scan.flats[k] if scan.flats is not None and scan.flats.ndim == 4 else scan.flats
                    t = data[k] if f is None else flat_dark_correct(data[k], be.to_device(f, job.backend), scan.darks)
                    frames.append(normalize_beam(t, bg)[0])
                order = np.argsort(scan.energies_eV)
                stack = be.xp_of(data).stack([frames[k] for k in order])
                result, c = xanes_map_2d(stack, scan.energies_eV[order], refs), None
                selected = _xanes_selected_2d(stack, result)
            else:
                kw = {} if method in ("fbp", "gridrec") else {"iterations": iterations}
                opt = XrayOptions(zingers=zingers, beam_background=bg, rings=rings, center=center,
                                  center_method=center_method)
                result, c, _ = xanes_tomography(data, scan.angles_deg, scan.energies_eV, refs, scan.flats, scan.darks,
                                                opt, method=method, fit=fit, backend_name=job.backend, **kw)
                selected = _xanes_selected(data, scan, result, c, opt, job.backend)
            tree = {"fractions": {n: be.to_host(result.fractions[n]) for n in result.names},
                    "amounts": {n: be.to_host(result.amounts[n]) for n in result.names},
                    "density": be.to_host(result.density), "edge_energy_eV": be.to_host(result.edge_energy_eV),
                    "residual": be.to_host(result.residual),
                    "references": {"energy_eV": result.energies_eV, "mu": np.asarray(result.matrix).T,
                                   "@attrs": {"names": list(result.names)}},
                    "@attrs": {"center": float("nan") if c is None else float(c),
                               "energies_eV": [float(e) for e in result.energies_eV],
                               "references": list(result.names), "fit": fit, "method": method,
                               "mode": "2d" if scan.data.shape[1] == 1 else "tomography"}}
            if selected is not None:
                tree["selected"] = selected
            job.results["xanes"] = tree
    return job.finish() if own else None


def _xanes_selected(data, scan, result, center, opt, backend):
    """Measured spectra (FBP of one slice per energy) and fitted spectra at a few voxels."""
    from .reconstruction import reconstruct
    from .reconstruction.preprocess import XrayOptions, preprocess_xray
    from .spectral.xanes import select_voxels

    index, labels = select_voxels(result)
    if not len(index):
        return None
    row = int(index[0, 0])
    order = np.argsort(scan.energies_eV)
    one = XrayOptions(**{**opt.__dict__, "center": None})
    measured = []
    for k in order:
        f = None if scan.flats is None else (scan.flats[k] if scan.flats.ndim == 4 else scan.flats)
        att, angles, _ = preprocess_xray(data[k][:, row:row + 1], scan.angles_deg,
                                         None if f is None else f[:, row:row + 1],
                                         None if scan.darks is None else scan.darks[:, row:row + 1], options=one)
        vol = be.to_host(reconstruct(att, method="fbp", angles_deg=angles, center=center, backend=backend))
        measured.append(vol[0][index[:, 1], index[:, 2]])
    amounts = np.stack([be.to_host(result.amounts[n])[tuple(index.T)] for n in result.names])
    fitted = (np.asarray(result.matrix) @ amounts).T
    return {"index": index, "measured_fbp": np.stack(measured, 1), "fitted": fitted,
            "@attrs": {"labels": labels, "index_axes": "y, z, x"}}


def _xanes_selected_2d(stack, result):
    from .spectral.xanes import select_voxels

    xp = be.xp_of(stack)
    index, labels = select_voxels(type(result)(**{**result.__dict__,
                                                  "density": result.density[None],
                                                  "fractions": {k: v[None] for k, v in result.fractions.items()}}),
                                  row=0)
    if not len(index):
        return None
    meas = -xp.log(xp.maximum(stack, xp.float32(1e-6)))
    measured = be.to_host(meas[:, index[:, 1], index[:, 2]]).T
    amounts = np.stack([be.to_host(result.amounts[n])[index[:, 1], index[:, 2]] for n in result.names])
    return {"index": index[:, 1:], "measured_fbp": measured, "fitted": (np.asarray(result.matrix) @ amounts).T,
            "@attrs": {"labels": labels, "index_axes": "y, x"}}




def _segment_and_quantify(job: Job, classes: int, voxel_size_nm: float) -> None:
    from .analysis import quantify
    from .gpu_core.phases import segment_phases

    if classes < 2:
        raise InputError(f"--segment needs at least 2 classes (vacuum + one phase), got {classes}")
    tomo_results = job.results["tomo"]
    if not job.done("segment"):
        with job.step("segment"):
            volume = be.to_device(np.asarray(tomo_results["volume"]), job.backend)
            if not float(volume.max()) > 0:
                raise InputError("cannot segment: the reconstructed volume has no positive density; is the "
                                 "tilt series empty, inverted or bright-field? HAADF projections must be "
                                 "brighter where there is material")
            # envelope first (vacuum/solid), then the classes inside; 4 classes: Ni by a blob detector
            seg = segment_phases(volume, classes)
            tomo_results["labels"] = be.to_host(seg.labels).astype(np.uint8)
            tomo_results["particle_labels"] = be.to_host(seg.particles).astype(np.int32)
            attrs = tomo_results.setdefault("@attrs", {})
            attrs["thresholds"] = [float(t) for t in seg.thresholds]
            attrs["levels"] = [float(v) for v in seg.levels]
    if not job.done("quantify") and classes == 4:
        with job.step("quantify"):
            q = quantify(tomo_results["labels"], voxel_size_nm=voxel_size_nm,
                         particle_labels=tomo_results.get("particle_labels"))
            tomo_results["quantify"] = _quantify_tree(q)


def _quantify_tree(q: dict) -> dict:
    """quantify()'s dict -> HDF5 tree: tables as datasets, scalars as JSON attrs."""
    tree, attrs = {}, {}
    for key, value in q.items():
        if isinstance(value, dict) and value and all(np.ndim(v) == 1 for v in value.values()):
            tree[key] = {k: np.asarray(v) for k, v in value.items()}
        elif isinstance(value, np.ndarray) and value.ndim >= 1:
            tree[key] = value
        else:
            attrs[key] = value
    tree["@attrs"] = attrs
    return tree


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@safety.entry_point
def stem(input, output, *, phases=("NiO", "Ni", "Na2O"), reference=None, probe=None, q_pixel_size=None,
         energy_kev=None, convergence_mrad=None, shape=None, dtype=None, backend="auto", command="",
         job: Job | None = None, scan_shape=None, cluster=None) -> Path | None:
    """Calibrate a 4D-STEM scan, find Bragg disks, fit the lattice, map strain and phases.

    ``reference`` (y0, y1, x0, x1) is the unstrained region (default: every position of the main
    phase, i.e. the most frequent non-vacuum phase); ``probe`` a vacuum region (y0, y1, x0, x1), a
    probe image file (.npy/.tif) or None for the positions that scatter least. The q pixel size
    (1/Å) comes from the file's metadata unless given. With ``job`` given, the steps are added to
    that job and nothing is written here. ``scan_shape`` (scan_y, scan_x) is for microscope files
    that do not record it (a Merlin .mib without .hdr, Dectris data, ...).
    """
    from .strain.disks import BraggPeaks, disk_geometry
    from .strain.lattice import choose_lattice_vectors, fit_lattice
    from .strain.passes import ScanCalibration, calibrate_scan, first_pass, prepare_cpu, scan_maps
    from .strain.phases import resolve_phases
    from .strain.strainmap import strain_map

    if isinstance(phases, str):  # "NiO,Ni,Na2O" from a job file
        phases = [p.strip() for p in phases.split(",") if p.strip()]
    if reference is not None and len(reference) != 4:
        raise InputError(f"reference must be (y0, y1, x0, x1), got {reference!r}")
    validation.check("stem", {"input": input, "phases": list(phases), "reference": reference, "probe": probe,
                              "q_pixel_size": q_pixel_size, "energy_kev": energy_kev,
                              "convergence_mrad": convergence_mrad, "shape": shape, "dtype": dtype,
                              "scan_shape": scan_shape})
    if isinstance(probe, (str, Path)) and not Path(probe).is_file():
        raise InputError(f"probe image {probe} not found (--probe takes y0:y1,x0:x1 or an image file)")
    params = {"stem": {"input": str(input), "phases": list(phases), "reference": reference,
                       "probe": str(probe) if probe is not None else None, "q_pixel_size": q_pixel_size,
                       "energy_kev": energy_kev, "convergence_mrad": convergence_mrad,
                       "scan_shape": list(scan_shape) if scan_shape is not None else None}}
    if shape is not None or dtype is not None:  # the raw layout is part of what a checkpoint depends on
        params["stem"].update(shape=None if shape is None else [int(v) for v in shape],
                              dtype=None if dtype is None else str(dtype))
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    if own and cluster is not None:
        from .distributed import open_cluster

        with open_cluster(cluster) as job.executor:
            stem(input, None, phases=phases, reference=reference, probe=probe, q_pixel_size=q_pixel_size,
                 energy_kev=energy_kev, convergence_mrad=convergence_mrad, shape=shape, dtype=dtype, job=job,
                 scan_shape=scan_shape)
        return job.finish()
    resolve_phases(list(phases))  # unknown names fail before any work
    warm = local = None
    if job.backend != "gpu" and job.executor is None:
        # CPU, in this process: the kernels load while pass 1 reads, and two chunks run at once, so one
        # chunk's NumPy work (reads, casts, sums: one core) overlaps the other's parallel kernels
        from .distributed import ThreadExecutor

        warm, local = prepare_cpu(), ThreadExecutor(min(2, os.cpu_count() or 1))
        job.executor = local
    cube = opened = io.read_datacube(Path(input), shape=shape, dtype=dtype, scan_shape=scan_shape, check=False)
    if getattr(job.executor, "client", None) is not None and cube.meta.get("dataset"):
        import dataclasses

        from .io.lazy import H5Rows  # workers open the file themselves: the chunks pickle

        cube = dataclasses.replace(cube, data=H5Rows(cube.meta["source"], cube.meta["dataset"]),
                                   meta={k: v for k, v in cube.meta.items() if k != "file"})
    try:
        _stem_preflight(cube)
        first = None  # finite, not all zero, not negated: streamed, before any step
        if job.done("calibrate"):
            io.check_datacube(cube)
        else:  # the same check on pass 1's reads (mean pattern + totals): one pass less
            first = first_pass(cube, executor=job.executor, backend=job.backend, progress=job.progress("check"))
        q_pixel_size = q_pixel_size or cube.q_pixel_size
        if not q_pixel_size:
            raise CalibrationError(f"{input}: no q_pixel_size in the file's metadata; give --q-pixel-size (1/Å)")
        sy, sx = cube.scan_shape
        ref_mask = None
        if reference is not None:
            y0, y1, x0, x1 = reference
            if not (0 <= y0 < y1 <= sy and 0 <= x0 < x1 <= sx):
                raise CalibrationError(f"reference region {y0}:{y1},{x0}:{x1} is outside the {sy}x{sx} scan")
            ref_mask = np.zeros((sy, sx), bool)
            ref_mask[y0:y1, x0:x1] = True
        st = job.results.setdefault("stem", {})
        b = job.backend
        # three passes over the cube (strain.passes): 1 mean pattern + totals, 2 origins + vacuum
        # patterns (probe), 3 disks + BF/ADF + radial profiles (phase map), each chunked on job.executor
        if not job.done("calibrate"):
            with job.step("calibrate"):
                given = None if probe is None else _probe_template(cube, probe, b)
                sc = calibrate_scan(cube, probe=given, executor=job.executor, backend=b,
                                    progress=job.progress("calibrate"), first=first)
                kernel = sc.probe
                radius = disk_geometry(kernel)[2]
                _check_disk(radius, cube.detector_shape, input)
                st["calibration"] = {"origin": sc.origin.astype(np.float32), "probe": be.to_host(kernel),
                                     "total_intensity": sc.total,
                                     "@attrs": {"q_pixel_size": q_pixel_size, "disk_radius_px": radius,
                                                "energy_kev": energy_kev or cube.meta.get("energy_kev"),
                                                "convergence_mrad": convergence_mrad or cube.meta.get("convergence_mrad")}}
        cal = st["calibration"]
        origin, kernel, radius = cal["origin"], cal["probe"], float(cal["@attrs"]["disk_radius_px"])
        if not job.done("scan"):
            with job.step("scan"):
                sc = ScanCalibration(None, np.asarray(cal["total_intensity"]), None, np.asarray(origin, np.float64),
                                     radius, np.asarray(kernel), None)
                maps = scan_maps(cube, sc, list(phases), q_pixel_size, executor=job.executor, backend=b,
                                 progress=job.progress("disks, virtual images, profiles"))
                pm = maps.phase
                st["virtual"] = {"bf": maps.bf, "adf": maps.adf}
                st["phase"] = {"labels": be.to_host(pm.labels).astype(np.uint8),
                               "confidence": be.to_host(pm.confidence).astype(np.float32), "@attrs": {"names": list(pm.names)}}
                st["peaks"] = {k: be.to_host(getattr(maps.peaks, k)) for k in ("qy", "qx", "intensity", "offsets")}
        labels = st["phase"]["labels"]
        counts = np.bincount(labels.ravel(), minlength=2)[1:]
        if counts.sum() == 0:
            raise CalibrationError(f"{input}: no position shows Bragg scattering of {', '.join(phases)}")
        main = labels == 1 + int(np.argmax(counts))
        fit_region = ref_mask if ref_mask is not None else main
        if not job.done("lattice"):
            with job.step("lattice"):
                pk = st["peaks"]
                peaks = BraggPeaks(pk["qy"], pk["qx"], pk["intensity"], pk["offsets"], cube.scan_shape)
                g1, g2 = choose_lattice_vectors(peaks, origin, mask=main)
                ellipse = _fit_ellipse(peaks, origin, g1, g2, fit_region) if cube.ellipse is None else cube.ellipse
                fit = fit_lattice(peaks, origin, g1, g2, ellipse=ellipse, q_pixel_size=q_pixel_size)
                st["lattice"] = {"g1": be.to_host(fit.g1), "g2": be.to_host(fit.g2),
                                 "n_peaks": be.to_host(fit.n_peaks), "residual": be.to_host(fit.residual),
                                 "@attrs": {"main_phase": st["phase"]["@attrs"]["names"][1 + int(np.argmax(counts))],
                                            "n_disks": int(len(peaks.qy))}}
                cal["@attrs"]["ellipse"] = [float(v) for v in ellipse]
        if not job.done("strain"):
            with job.step("strain"):
                lat = st["lattice"]
                valid = main & (lat["n_peaks"] >= 4)
                sm = strain_map(lat["g1"], lat["g2"], reference=fit_region & valid, mask=valid)
                st["strain"] = {k: be.to_host(getattr(sm, k)) for k in ("exx", "eyy", "exy", "theta")}
                st["strain"]["mask"] = be.to_host(sm.mask).astype(np.uint8)
                st["strain"]["@attrs"] = {"reference": "region" if ref_mask is not None else "main phase",
                                          "G_ref_per_A": be.to_host(sm.G_ref).tolist()}
    finally:
        _close(opened)
        if local is not None:
            warm.join()
            local.close()
            if not own:            # a job file's later sections run as they would have
                job.executor = None
    return job.finish() if own else None


#: bytes a stem job keeps per probe position (origin, Bragg peaks, lattice, strain, phase maps)
STEM_BYTES_PER_POSITION = 1024


def _stem_preflight(cube) -> None:
    sy, sx, ky, kx = cube.shape
    need = STEM_BYTES_PER_POSITION * sy * sx + 4 * 4 * sx * ky * kx  # results + one scan row of work
    safety.preflight(need, f"a {sy}x{sx} scan of {ky}x{kx} patterns",
                     "split the scan into parts (crop scan rows), bin the patterns, or run it on a bigger machine")


def _probe_template(cube, probe, backend):
    """Probe kernel from a region, an image file, or the least-scattering positions."""
    from .strain import calibrate

    if isinstance(probe, (str, Path)):
        image = io.read_image(Path(probe))
        return calibrate.probe_template(image, backend=backend)
    return calibrate.probe_template(cube, region=probe if probe is not None else "auto", backend=backend)


def _fit_ellipse(peaks, origin, g1, g2, region):
    """Elliptical distortion from the {g1, g2} and {g1 ± g2} spots of the region's positions.

    Assumes g1 and g2 are symmetry-equivalent (a cubic [001] zone: {200} and {220} rings); where
    the fitted g1, g2 are not a square net (``calibrate.square_lattice_ellipse``), (1, 0).
    """
    from .strain import calibrate
    from .strain.lattice import fit_lattice

    fit = fit_lattice(peaks, origin, g1, g2)
    ellipse = calibrate.square_lattice_ellipse(be.to_host(fit.g1)[region], be.to_host(fit.g2)[region])
    return (1.0, 0.0) if ellipse is None else ellipse  # not a square net: no ellipse is measured


def _check_disk(radius, detector_shape, source) -> None:
    """The probe's central disk must be measurable and leave room for the dark-field ring."""
    half = min(detector_shape) / 2
    if not np.isfinite(radius) or radius <= 0:
        raise CalibrationError(f"{source}: no central (bright-field) disk could be measured in the probe "
                               "template; give --probe with a vacuum region or a probe image")
    if 2.5 * radius >= half:
        raise CalibrationError(
            f"{source}: the central disk of the probe (radius {radius:.1f} px) is too large for the "
            f"{detector_shape[0]}x{detector_shape[1]} detector: no room for a dark-field ring (needs "
            f"radius < {half / 2.5:.1f} px); are the patterns uniform, or is --probe not a vacuum region?")


def _close(cube) -> None:
    handle = cube.meta.get("file")
    if handle is not None and hasattr(handle, "close"):
        handle.close()


@safety.entry_point
def kinetics(input, output, *, pixel_size_nm=None, frame_interval_s=None, vacuum="auto", backend="auto",
             command="", job: Job | None = None, cluster=None) -> Path | None:
    """Reaction-front kinetics of an in situ movie (file or ``io.Movie``): register, track the
    front below the first frame's outline, fit x = k (t - t0)^n; write ``/kinetics``.

    ``pixel_size_nm`` and ``frame_interval_s`` override the file's metadata (and are required
    when it has none). With ``job`` given, the steps are added to that job and nothing is written.
    """
    from .analysis.kinetics import fit_track, track_front

    validation.check("kinetics", {"input": "<movie>" if hasattr(input, "data") else input,
                                  "pixel_size_nm": pixel_size_nm, "frame_interval_s": frame_interval_s,
                                  "vacuum": vacuum})
    params = {"kinetics": {"input": str(input) if not hasattr(input, "data") else "<movie>",
                           "pixel_size_nm": pixel_size_nm, "frame_interval_s": frame_interval_s, "vacuum": vacuum}}
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    if own and cluster is not None:  # the per-frame profiles run on the cluster (same result)
        from .distributed import open_cluster

        with open_cluster(cluster) as job.executor:
            kinetics(input, None, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s, vacuum=vacuum,
                     job=job)
        return job.finish()
    movie = input if hasattr(input, "data") else io.read_movie(Path(input))
    px = pixel_size_nm or movie.pixel_size_nm
    if not px:
        raise CalibrationError(f"{input}: no pixel_size_nm in the file; give --pixel-size (nm)")
    times = movie.time_s
    if frame_interval_s or times is None:
        interval = frame_interval_s or movie.frame_interval_s
        if not interval:
            raise CalibrationError(f"{input}: no /time_s or frame_interval_s in the file; give --frame-interval (s)")
        times = np.arange(movie.data.shape[0]) * float(interval)
    if not job.done("front"):
        with job.step("front"):
            track = track_front(movie.data, times, px, vacuum=vacuum, backend=job.backend, executor=job.executor)
            fit = fit_track(track)
            preview = np.unique(np.linspace(0, len(times) - 1, 4).round().astype(int))
            job.results["kinetics"] = {
                "time_s": np.asarray(times, np.float64), "front_nm": track.front_nm.astype(np.float64),
                "front_width_nm": (track.width_px * px).astype(np.float64),
                "velocity_nm_s": fit.velocity_nm_s, "shifts_px": track.shifts_px, "used_in_fit": fit.used.astype(np.uint8),
                "depth_px": track.depth_px.astype(np.float32),
                "preview": {"frames": np.asarray(movie.data[preview], np.float32), "index": preview},
                "fit": {"@attrs": {"k": fit.k, "n": fit.n, "t0_s": fit.t0_s, "k_err": fit.k_err, "n_err": fit.n_err,
                                   "t0_err": fit.t0_err, "rmse_nm": fit.rmse_nm, "n_points": fit.n_points}},
                "@attrs": {"pixel_size_nm": float(px), "vacuum": track.vacuum, "contrast_ratio": track.rho,
                           "k_units": "nm/s^n"}}
    return job.finish() if own else None


@safety.entry_point
def eels(input, output, *, edge="Ni-L23", references=None, valence_from="ratio", low_loss=None, denoise="pca",
         deconvolve=False, backend="auto", command="", job: Job | None = None) -> Path | None:
    """EELS white-line maps of a spectrum image (file or ``io.SpectrumImage``): L3/L2, L3 onset and
    peak, valence (``references`` = [(value, valence), (value, valence)] of ``valence_from``
    "ratio" or "onset") and t/lambda when a low-loss spectrum image is in the file or given. With
    a low loss the energies are referenced to each position's zero loss; ``deconvolve`` also
    removes plural scattering (Fourier-ratio) before the white lines are measured."""
    from .spectral import log_ratio_thickness, valence_map, white_line_maps

    validation.check("eels", {"input": "<spectrum image>" if hasattr(input, "data") else input, "edge": str(edge),
                              "references": None if references is None else [list(map(float, r)) for r in references],
                              "valence_from": valence_from, "low_loss": None if low_loss is None else str(low_loss),
                              "denoise": denoise, "deconvolve": deconvolve})
    params = {"eels": {"input": str(input) if not hasattr(input, "data") else "<spectrum image>", "edge": str(edge),
                       "references": references, "valence_from": valence_from,
                       "low_loss": None if low_loss is None else str(low_loss), "denoise": denoise,
                       "deconvolve": deconvolve}}
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    si = input if hasattr(input, "data") else io.read_spectrum_image(Path(input))
    if not job.done("white_lines"):
        with job.step("white_lines"):
            data = be.to_device(si.data, job.backend)
            low, low_e = si.low_loss, si.low_loss_energy_eV
            if low_loss is not None:
                ll = io.read_spectrum_image(Path(low_loss))
                low, low_e = ll.data, ll.energy_eV
            if low is not None and low.shape[:-1] != si.data.shape[:-1]:
                raise InputError(f"the low-loss scan {low.shape[:-1]} differs from the core-loss scan {si.data.shape[:-1]}")
            # a separate low loss (dual EELS) references the energies to the zero loss and removes
            # plural scattering (Fourier-ratio); an SI spanning 0 eV gives only the thickness
            maps = white_line_maps(data, si.energy_eV, edge, denoise=denoise, deconvolve=deconvolve,
                                   low_loss=None if low is None else be.to_device(low, job.backend),
                                   low_loss_energy_eV=low_e)
            out = {"l3_l2": maps.l3_l2.astype(np.float32), "l3_onset_eV": maps.l3_onset_eV.astype(np.float32),
                   "l3_peak_eV": maps.l3_peak_eV.astype(np.float32),
                   "background_r": maps.background_r.astype(np.float32),
                   "@attrs": {"edge": maps.edge.name, "l3_eV": maps.edge.l3_eV,
                              "l2_eV": maps.edge.l2_eV if maps.edge.l2_eV is not None else float("nan"),
                              "denoise": str(denoise), "deconvolve": bool(deconvolve and low is not None),
                              "energy_reference": "zero_loss" if low is not None else "nominal"}}
            if maps.l2_peak_eV is not None:
                out["l2_peak_eV"] = maps.l2_peak_eV.astype(np.float32)
            if references is not None:
                values = maps.l3_l2 if valence_from == "ratio" else maps.l3_onset_eV
                out["valence"] = valence_map(values, references).astype(np.float32)
                out["@attrs"]["references"] = [list(map(float, r)) for r in references]
                out["@attrs"]["valence_from"] = valence_from
            if maps.thickness is not None and maps.thickness_source == "low_loss":
                out["thickness"] = np.asarray(maps.thickness, np.float32)
                out["@attrs"]["thickness_source"] = "low_loss"
            elif si.energy_eV[0] <= 0.0 <= si.energy_eV[-1]:
                out["thickness"] = log_ratio_thickness(data, si.energy_eV).astype(np.float32)
                out["@attrs"]["thickness_source"] = "low_loss"
            elif maps.thickness is not None:      # no low loss: t/lambda of the core-loss plural fit
                out["thickness"] = np.asarray(maps.thickness, np.float32)
                out["@attrs"]["thickness_source"] = "core_loss"
            if maps.plasmon_eV is not None:
                out["@attrs"]["plasmon_eV"] = float(maps.plasmon_eV)
                out["@attrs"]["plasmon_fwhm_eV"] = float(maps.plasmon_fwhm_eV)
            job.results["eels"] = out
    return job.finish() if own else None


@safety.entry_point
def run_job(path, command: str = "", cluster=None) -> Path:
    """Run a TOML job file: ``[job] output, backend`` plus ``[tomo]`` and/or ``[stem]`` sections,
    and optionally ``[cluster]`` (``address = "local:4" | "tcp://HOST:PORT" | "slurm" | "cuda"``
    plus, for slurm, ``queue, cores, memory, walltime, job_extra_directives, jobs``; see
    ``distributed.dask_executor.parse``). ``cluster`` (``--cluster``) overrides that section.

    Relative paths are taken from the job file's folder. Example::

        [job]
        output = "particle3.h5"
        backend = "auto"
        [tomo]
        input = "particle3_tilt.h5"
        align = true
        tilt_axis_deg = -3.0
        method = "sirt"
        iterations = 100
        segment = 4
        # classes = 4   (method = "dart": number of phases whose grey levels DART estimates)
        [stem]
        input = "particle3_scan.h5"
        phases = ["NiO", "Ni", "Na2O"]
        reference = [0, 8, 0, 8]
        [cluster]
        address = "slurm"
        queue = "gpu"
        cores = 8
        memory = "64GB"
        walltime = "02:00:00"
        job_extra_directives = ["--gres=gpu:1"]
        jobs = 4
    """
    path = Path(path)
    spec = validation.read_job_file(path)  # every section, key, type and range, before any work
    base = path.parent
    settings = spec.get("job", {})
    sections = {k: dict(spec[k]) for k in validation.WORK_SECTIONS if k in spec}
    tomo_section = sections.get("tomo")
    if tomo_section:   # the value used goes into /provenance (and the checkpoint key)
        used = _nonnegative_used(tomo_section.get("method", validation.TomoOptions.model_fields["method"].default),
                                 tomo_section.get("nonnegative"))
        if used is not None:
            tomo_section["nonnegative"] = used
    for name, section in sections.items():
        for key in validation.path_fields(name):  # relative paths are taken from the job file's folder
            value = section.get(key)
            if isinstance(value, str):
                section[key] = base / value
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                section[key] = [base / v for v in value]
    job = Job(base / settings["output"], command or f"tomostrain run {path}", json.loads(json.dumps(sections, default=str)),
              settings.get("backend", "auto"), inputs=[path])
    from .distributed import open_cluster

    with open_cluster(cluster if cluster is not None else spec.get("cluster")) as job.executor:
        if "tomo" in sections:
            tomo(output=None, job=job, **sections["tomo"])
        if "stem" in sections:
            s = sections["stem"]
            if "reference" in s:
                s["reference"] = tuple(s["reference"])
            stem(output=None, job=job, **s)
        if "xanes" in sections:
            xanes(output=None, job=job, **sections["xanes"])
        if "kinetics" in sections:
            kinetics(output=None, job=job, **sections["kinetics"])
        if "eels" in sections:
            eels(output=None, job=job, **sections["eels"])
    return job.finish()


# the microscope drifts (random walk, px per image), the rotation axis is off the detector centre
# and the tilt axis is turned in the image: the demo aligns from a nominal axis of 0 degrees
DEMO_TILT = dict(shape=(64, 128, 128), angles=(-70.0, 70.0, 2.0), dose=2000.0, pixel_size_nm=0.8,
                 drift_px=0.8, center_offset_px=2.5, tilt_axis_deg=4.0)
DEMO_SCAN = dict(scan_shape=(48, 48), detector_shape=(128, 128))
# a small in situ movie: diffusion-limited front, stage drift, swelling, fading, Ni dots
DEMO_MOVIE = dict(shape=(64, 64), n_frames=40, n=0.5, frame_interval_s=1.0, drift_px=6.0, outline="disc", seed=7)


@safety.entry_point
def demo(output="demo_out", backend: str = "auto", command: str = "tomostrain demo") -> Path:
    """The whole story on synthetic sodiated NiO, with a scorecard against the ground truth.

    Writes into ``output``: the tilt series as DXchange HDF5 and as MRC + .rawtlt, the 4D-STEM
    scan as HDF5, a small TXM-XANES scan (``txm_xanes.h5``, ``Ni.csv``, ``NiO.csv``),
    ``results.h5`` (all pipelines, run from those files) and ``report.html``.
    """
    from . import synthetic
    from .report import write_report

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    density, _labels, truth = synthetic.sodiated_particle(DEMO_TILT["shape"], seed=0)
    lo, hi, step = DEMO_TILT["angles"]
    angles = np.arange(lo, hi + step / 2, step)
    shifts = np.cumsum(np.random.default_rng(3).normal(0.0, DEMO_TILT["drift_px"], (angles.size, 2)), 0)
    data, tilt_truth = synthetic.tilt_series(density, angles, dose=DEMO_TILT["dose"], seed=1, shifts=shifts - shifts.mean(0),
                                             center_offset=DEMO_TILT["center_offset_px"],
                                             tilt_axis_deg=DEMO_TILT["tilt_axis_deg"])
    series = io.TiltSeries(data, angles, pixel_size_nm=DEMO_TILT["pixel_size_nm"],
                           meta={"source": "tomostrain.synthetic.sodiated_particle(seed=0)"})
    io.write_tilt_series(series, out / "tilt_series.h5")
    io.write_tilt_series(series, out / "tilt_series.mrc")

    cube, stem_truth = synthetic.nanobeam_4dstem(**DEMO_SCAN, seed=0)
    io.write_datacube(cube, out / "scan.h5", q_pixel_size=stem_truth["q_pixel_size"], scan_step_nm=2.0)

    movie, movie_truth = synthetic.reaction_movie(**DEMO_MOVIE)
    io.write_movie(out / "movie.h5", movie, time_s=movie_truth.time_s, pixel_size_nm=movie_truth.pixel_size_nm)

    job = Job(out / "results.h5", command, {"demo": {"tilt": DEMO_TILT, "scan": DEMO_SCAN, "movie": DEMO_MOVIE}}, backend)
    tomo(out / "tilt_series.h5", None, method="tv", segment=4, align=True, tilt_axis_deg=0.0, job=job)
    stem(out / "scan.h5", None, job=job)
    xanes_truth = _demo_xanes_files(out)
    xanes(out / "txm_xanes.h5", None, references=[out / "Ni.csv", out / "NiO.csv"], method="fbp", job=job)
    kinetics(out / "movie.h5", None, job=job)
    path = job.finish()
    results = io.read_results(path)
    write_report(results, out / "report.html", title="tomostrain demo: sodiated NiO (synthetic)")
    _print_scorecard(results, truth, tilt_truth, stem_truth, job, movie_truth)
    _print_xanes_scorecard(results, xanes_truth, job)
    return path


DEMO_XANES = dict(n=48, n_rows=2, seed=0, center_offset=2.5)


def _demo_xanes_files(out: Path):
    """A small simulated TXM-XANES scan (raw DXchange) and its two reference CSVs."""
    from .io.xray import XrayScan, write_xray_scan
    from .synthetic.txm import txm_xanes_series, write_reference_csv

    sim = txm_xanes_series(**DEMO_XANES, angles_deg=np.arange(0, 180.1, 3.0))
    write_xray_scan(XrayScan(sim.data, sim.angles_deg, sim.flats, sim.darks, energies_eV=sim.energies_eV),
                    out / "txm_xanes.h5")
    for name, mu in sim.references.items():
        write_reference_csv(out / f"{name}.csv", sim.energies_eV, mu)
    return sim


def _print_xanes_scorecard(results: dict, sim, job: Job) -> None:
    from rich.table import Table

    x = results.get("xanes")
    if not x:
        return
    table = Table(title="demo XANES scorecard: measured vs ground truth")
    for col in ("quantity", "measured", "truth"):
        table.add_column(col)
    table.add_row("rotation axis (px)", f"{float(x['@attrs']['center']):.2f}", f"{sim.center:.2f}")
    f, m = x["fractions"]["Ni"], sim.particle
    table.add_row("Ni fraction RMSE in the particle (FBP)", f"{np.sqrt(np.mean((f[m] - sim.fraction_ni[m]) ** 2)):.3f}", "0")
    table.add_row("mean Ni fraction in the metal particles", f"{f[sim.metal_particles].mean():.2f}", "1.00")
    job._print(table)


def _print_scorecard(results: dict, truth, tilt_truth: dict, stem_truth: dict, job: Job, movie_truth=None) -> None:
    """Measured numbers next to the synthetic ground truth."""
    from rich.table import Table

    from .reconstruction.alignment import shift_errors

    table = Table(title="demo scorecard: measured vs ground truth")
    for col in ("quantity", "measured", "truth"):
        table.add_column(col)
    found = results["tomo"].get("alignment")
    if found is not None:
        a = float(found["@attrs"]["tilt_axis_deg"])
        table.add_row("tilt axis (°)", f"{a:.2f}", f"{tilt_truth['tilt_axis_deg']:.2f}")
        across, along = shift_errors(found["shifts"], tilt_truth["shifts"], tilt_truth["angles_deg"], a)
        table.add_row("drift error across / along the axis (px)", f"{across:.2f} / {along:.2f}", "0")
    q = results["tomo"].get("quantify", {}).get("@attrs", {})
    fractions = _json(q.get("fractions", "{}"))
    names = {"shell": "Na2O-rich shell", "core": "NiO core", "particles": "Ni particles"}
    for key, name in names.items():
        if key in fractions:
            table.add_row(f"volume fraction, {name}", f"{fractions[key]:.3f}", f"{truth.fractions.get(key, float('nan')):.3f}")
    thick = _json(q.get("shell_thickness_nm", "{}"))
    if "mean" in thick:
        table.add_row("mean shell thickness (nm)", f"{thick['mean']:.2f}",
                      f"{truth.shell_thickness['mean'] * DEMO_TILT['pixel_size_nm']:.2f}")
    particles = _json(q.get("particles", "{}"))
    if "count" in particles:
        table.add_row("Ni particles", str(particles["count"]), str(truth.n_particles))
    strain = results.get("stem", {}).get("strain", {})
    if "exx" in strain:
        inside = (stem_truth["labels"] == stem_truth["label_names"].index("NiO")) & np.asarray(strain["mask"], bool)
        for key in ("exx", "eyy", "exy"):
            err = np.sqrt(np.mean((strain[key][inside] - stem_truth[key][inside]) ** 2))
            table.add_row(f"{key} RMSE in NiO (%)", f"{100 * err:.3f}", "0")
        err = np.sqrt(np.mean((strain["theta"][inside] - stem_truth["theta"][inside]) ** 2))
        table.add_row("rotation RMSE in NiO (°)", f"{err:.3f}", "0")
    kin = results.get("kinetics", {})
    if movie_truth is not None and "front_nm" in kin:
        fit = kin["fit"]["@attrs"]
        table.add_row("kinetics: k (nm/s^n)", f"{float(fit['k']):.3f} ± {float(fit['k_err']):.3f}", f"{movie_truth.k:.3f}")
        table.add_row("kinetics: n", f"{float(fit['n']):.3f} ± {float(fit['n_err']):.3f}", f"{movie_truth.n:.3f}")
        table.add_row("kinetics: t0 (s)", f"{float(fit['t0_s']):.2f} ± {float(fit['t0_err']):.2f}", f"{movie_truth.t0_s:.2f}")
        moved = movie_truth.front_nm > 2
        err = np.sqrt(np.nanmean((kin["front_nm"][moved] - movie_truth.front_nm[moved]) ** 2))
        table.add_row("kinetics: front depth RMSE (nm)", f"{err:.2f}", "0")
    job._print(table)


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
