"""Jobs: read -> process -> write, from the CLI or a TOML job file.

Each job runs named steps with a progress display, records provenance (version, command,
parameters, backend, device, start/finish, per-step seconds) and checkpoints after every step to
``OUT.h5.partial``: a job that is stopped resumes at the first step not yet done, provided its
parameters are unchanged. The result file is written atomically (DESIGN.md §4, §5).
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, io
from .errors import CalibrationError, InputError
from .gpu_core import backend as be


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

    def __init__(self, out: Path, command: str, parameters: dict, backend: str, console=None):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.backend = be.resolve(backend)
        self.parameters = parameters
        self.provenance = {
            "command": command,
            "parameters": parameters,
            "backend": self.backend,
            "device": be.device_name(self.backend),
            "started": _now(),
            "step_seconds": {},
        }
        self.results: dict = {}
        self._done: set[str] = set()
        self._console = console
        self._resume()

    def _resume(self) -> None:
        if not self.partial.exists():
            return
        try:
            old = io.read_results(self.partial)
            attrs = old.get("provenance", {}).get("@attrs", {})
            same = json.loads(attrs.get("parameters", "null")) == json.loads(json.dumps(self.parameters, default=str))
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not used
            same = False
        if not same:
            self.partial.unlink()
            return
        self.results = {k: v for k, v in old.items() if k != "provenance"}
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
        io.write_results(self.partial, self.results, self._provenance(finished=False))

    def finish(self) -> Path:
        """Write the complete result file atomically and drop the checkpoint."""
        io.write_results(self.out, self.results, self._provenance(finished=True))
        self.partial.unlink(missing_ok=True)
        return self.out

    def _provenance(self, finished: bool) -> dict:
        prov = dict(self.provenance)
        prov["steps_done"] = sorted(self._done)
        prov["finished"] = _now() if finished else ""
        return prov

    def _print(self, text: str) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        self._console.print(text)


def tomo(input, output, *, method="fbp", iterations=None, center=None, segment=0, angles=None,
         voxel_size_nm=None, align=False, tilt_axis_deg=None, backend="auto", command="",
         job: Job | None = None, offset="auto", xf=None) -> Path | None:
    """Reconstruct a tilt series file, folder of one-file-per-tilt images (or TiltSeries),
    optionally aligned first (``align``: tilt axis searched over all directions, ``tilt_axis_deg``
    a prior (None: the file's, if any), drift, centre; ``OUT.xf``/``OUT.tlt`` are written beside
    the result for IMOD) or with an IMOD/AreTomo/ETSpy ``.xf`` alignment (``xf``), and segmented +
    quantified; write ``output``. ``offset``: the detector offset rule of ``io.read_tilt_series``
    ("auto", None or a number).

    With ``job`` given, the steps are added to that job and nothing is written here.
    """
    from .reconstruction import align as find_alignment
    from .reconstruction import reconstruct

    params = {"tomo": {"input": str(input), "method": method, "iterations": iterations, "center": center,
                       "segment": segment, "voxel_size_nm": voxel_size_nm, "align": bool(align),
                       "tilt_axis_deg": tilt_axis_deg}}
    if offset != "auto":
        params["tomo"]["offset"] = offset
    if xf is not None:
        params["tomo"]["xf"] = str(xf)
    if align and center is not None:
        raise InputError("give either align (which finds the centre) or center, not both")
    if align and xf is not None:
        raise InputError("give either align or an .xf alignment file, not both")
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    series = input if hasattr(input, "angles_deg") else io.read_tilt_series(Path(input), angles=angles,
                                                                               offset=offset)
    voxel = voxel_size_nm or series.pixel_size_nm or 1.0
    geometry = {"center": center}
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
    if not job.done("reconstruct"):
        with job.step("reconstruct"):
            kw = {} if iterations is None else {"iterations": iterations}
            volume = reconstruct(series, method=method, backend=job.backend, **geometry, **kw)
            job.results.setdefault("tomo", {})["volume"] = be.to_host(volume).astype(np.float32)
            job.results["tomo"]["@attrs"] = {"method": method, "voxel_size_nm": voxel}
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


TV_WEIGHT = 0.08  # TV denoising weight before segmentation, as a fraction of the 99.5th percentile


def _segment_and_quantify(job: Job, classes: int, voxel_size_nm: float) -> None:
    from .analysis import quantify
    from .gpu_core.filters import tv_denoise
    from .gpu_core.segment import multi_otsu

    if classes < 2:
        raise InputError(f"--segment needs at least 2 classes (vacuum + one phase), got {classes}")
    tomo_results = job.results["tomo"]
    if not job.done("segment"):
        with job.step("segment"):
            volume = be.to_device(tomo_results["volume"], job.backend)
            xp = be.xp_of(volume)
            # TV keeps phase edges while flattening noise; vacuum dominates the histogram, so a
            # Gaussian blur would smear the few-voxel shell into it. Weight relative to the bright end.
            weight = TV_WEIGHT * float(xp.percentile(volume, 99.5))
            thresholds, labels = multi_otsu(tv_denoise(volume, weight), classes)
            tomo_results["labels"] = be.to_host(labels).astype(np.uint8)
            tomo_results.setdefault("@attrs", {})["thresholds"] = [float(t) for t in be.to_host(thresholds)]
    if not job.done("quantify") and classes == 4:
        with job.step("quantify"):
            q = quantify(tomo_results["labels"], voxel_size_nm=voxel_size_nm)
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


def stem(input, output, *, phases=("NiO", "Ni", "Na2O"), reference=None, probe=None, q_pixel_size=None,
         energy_kev=None, convergence_mrad=None, shape=None, dtype=None, backend="auto", command="",
         job: Job | None = None) -> Path | None:
    """Calibrate a 4D-STEM scan, find Bragg disks, fit the lattice, map strain and phases.

    ``reference`` (y0, y1, x0, x1) is the unstrained region (default: every position of the main
    phase, i.e. the most frequent non-vacuum phase); ``probe`` a vacuum region (y0, y1, x0, x1), a
    probe image file (.npy/.tif) or None for the positions that scatter least. The q pixel size
    (1/Å) comes from the file's metadata unless given. With ``job`` given, the steps are added to
    that job and nothing is written here.
    """
    from .strain import calibrate
    from .strain.disks import disk_geometry, find_bragg_disks
    from .strain.lattice import choose_lattice_vectors, fit_lattice
    from .strain.phases import phase_map, resolve_phases
    from .strain.strainmap import strain_map
    from .strain.virtual import virtual_adf, virtual_bf

    if isinstance(phases, str):  # "NiO,Ni,Na2O" from a job file
        phases = [p.strip() for p in phases.split(",") if p.strip()]
    if reference is not None and len(reference) != 4:
        raise InputError(f"reference must be (y0, y1, x0, x1), got {reference!r}")
    params = {"stem": {"input": str(input), "phases": list(phases), "reference": reference,
                       "probe": str(probe) if probe is not None else None, "q_pixel_size": q_pixel_size,
                       "energy_kev": energy_kev, "convergence_mrad": convergence_mrad}}
    own = job is None
    job = job or Job(Path(output), command, params, backend)
    resolve_phases(list(phases))  # unknown names fail before any work
    cube = io.read_datacube(Path(input), shape=shape, dtype=dtype)
    try:
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
        if not job.done("calibrate"):
            with job.step("calibrate"):
                kernel = _probe_template(cube, probe, b)
                origin = calibrate.fit_origin(cube, backend=b)
                radius = disk_geometry(kernel)[2]
                st["calibration"] = {"origin": be.to_host(origin).astype(np.float32), "probe": be.to_host(kernel),
                                     "@attrs": {"q_pixel_size": q_pixel_size, "disk_radius_px": radius,
                                                "energy_kev": energy_kev or cube.meta.get("energy_kev"),
                                                "convergence_mrad": convergence_mrad or cube.meta.get("convergence_mrad")}}
        cal = st["calibration"]
        origin, kernel, radius = cal["origin"], cal["probe"], float(cal["@attrs"]["disk_radius_px"])
        if not job.done("virtual"):
            with job.step("virtual"):
                st["virtual"] = {"bf": be.to_host(virtual_bf(cube, radius * 1.2, origin, backend=b)),
                                 "adf": be.to_host(virtual_adf(cube, radius * 2.5, min(cube.detector_shape) / 2, origin, backend=b))}
        if not job.done("phase"):
            with job.step("phase"):
                pm = phase_map(cube, list(phases), q_pixel_size, origin=origin, disk_radius=radius, backend=b)
                st["phase"] = {"labels": be.to_host(pm.labels).astype(np.uint8),
                               "confidence": be.to_host(pm.confidence).astype(np.float32), "@attrs": {"names": list(pm.names)}}
        labels = st["phase"]["labels"]
        counts = np.bincount(labels.ravel(), minlength=2)[1:]
        if counts.sum() == 0:
            raise CalibrationError(f"{input}: no position shows Bragg scattering of {', '.join(phases)}")
        main = labels == 1 + int(np.argmax(counts))
        fit_region = ref_mask if ref_mask is not None else main
        if not job.done("lattice"):
            with job.step("lattice"):
                peaks = find_bragg_disks(cube, kernel, backend=b)
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
        _close(cube)
    return job.finish() if own else None


def _probe_template(cube, probe, backend):
    """Probe kernel from a region, an image file, or the least-scattering positions."""
    from .strain import calibrate

    if isinstance(probe, (str, Path)):
        image = io.read_image(Path(probe))
        return calibrate.probe_template(image, backend=backend)
    return calibrate.probe_template(cube, region=probe if probe is not None else "auto", backend=backend)


def _fit_ellipse(peaks, origin, g1, g2, region):
    """Elliptical distortion from the {g1, g2} and {g1 ± g2} spots of the region's positions.

    Assumes g1 and g2 are symmetry-equivalent (a cubic [001] zone: {200} and {220} rings).
    """
    from .strain import calibrate
    from .strain.lattice import fit_lattice

    fit = fit_lattice(peaks, origin, g1, g2)
    u, v = be.to_host(fit.g1)[region], be.to_host(fit.g2)[region]
    pts = np.concatenate([u, v, u + v, u - v])
    rings = np.repeat([0, 0, 1, 1], len(u))
    ok = np.isfinite(pts).all(1)
    return calibrate.fit_ellipse(pts[ok], rings[ok])


def _close(cube) -> None:
    handle = cube.meta.get("file")
    if handle is not None and hasattr(handle, "close"):
        handle.close()


def run_job(path, command: str = "") -> Path:
    """Run a TOML job file: ``[job] output, backend`` plus ``[tomo]`` and/or ``[stem]`` sections.

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
        [stem]
        input = "particle3_scan.h5"
        phases = ["NiO", "Ni", "Na2O"]
        reference = [0, 8, 0, 8]
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"job file {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"job file {path} is not valid TOML: {exc}") from None
    unknown = set(spec) - {"job", "tomo", "stem"}
    if unknown or not ({"tomo", "stem"} & set(spec)):
        raise InputError(f"job file {path} needs [job] and [tomo] and/or [stem] sections; unknown: {sorted(unknown)}")
    base = path.parent
    settings = spec.get("job", {})
    if "output" not in settings:
        raise InputError(f"job file {path}: [job] output = 'RESULT.h5' is required")
    sections = {k: dict(spec[k]) for k in ("tomo", "stem") if k in spec}
    for name, section in sections.items():
        if "input" not in section:
            raise InputError(f"job file {path}: [{name}] input = 'FILE' is required")
        section["input"] = base / section["input"]
    job = Job(base / settings["output"], command or f"tomostrain run {path}", json.loads(json.dumps(sections, default=str)),
              settings.get("backend", "auto"))
    if "tomo" in sections:
        tomo(output=None, job=job, **sections["tomo"])
    if "stem" in sections:
        s = sections["stem"]
        if "reference" in s:
            s["reference"] = tuple(s["reference"])
        stem(output=None, job=job, **s)
    return job.finish()


# the microscope drifts (random walk, px per image), the rotation axis is off the detector centre
# and the tilt axis is turned in the image: the demo aligns from a nominal axis of 0 degrees
DEMO_TILT = dict(shape=(64, 128, 128), angles=(-70.0, 70.0, 2.0), dose=2000.0, pixel_size_nm=0.8,
                 drift_px=0.8, center_offset_px=2.5, tilt_axis_deg=4.0)
DEMO_SCAN = dict(scan_shape=(48, 48), detector_shape=(128, 128))


def demo(output="demo_out", backend: str = "auto", command: str = "tomostrain demo") -> Path:
    """The whole story on synthetic sodiated NiO, with a scorecard against the ground truth.

    Writes into ``output``: the tilt series as DXchange HDF5 and as MRC + .rawtlt, the 4D-STEM
    scan as HDF5, ``results.h5`` (both pipelines, run from those files) and ``report.html``.
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

    job = Job(out / "results.h5", command, {"demo": {"tilt": DEMO_TILT, "scan": DEMO_SCAN}}, backend)
    tomo(out / "tilt_series.h5", None, method="tv", segment=4, align=True, tilt_axis_deg=0.0, job=job)
    stem(out / "scan.h5", None, job=job)
    path = job.finish()
    results = io.read_results(path)
    write_report(results, out / "report.html", title="tomostrain demo: sodiated NiO (synthetic)")
    _print_scorecard(results, truth, tilt_truth, stem_truth, job)
    return path


def _print_scorecard(results: dict, truth, tilt_truth: dict, stem_truth: dict, job: Job) -> None:
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
    job._print(table)


def _json(value):
    return json.loads(value) if isinstance(value, str) else value
