"""Real-data benchmark: align + SIRT-50 of the ETSpy needle series (HAADF.mrc), end to end.

tomostrain runs as a user runs it, file in and result file out::

    tomostrain tomo HAADF.mrc -o out.h5 --align --method sirt --iterations 50 --backend cpu

(no tilt-axis hint: angles from the file, detector offset removed by the reader). Beside it, ASTRA
CPU SIRT-50 (the reconstruction ETSpy's CPU path runs) reconstructs the same aligned sinograms,
two slices in parallel as ETSpy runs them (a pool of 2 processes, one 2-D SIRT per slice), with
what ETSpy's ``recon.run`` gives ASTRA by default: the "strip" projector and no MinConstraint
(``constrain=False``), i.e. unconstrained, as tomostrain's default SIRT. Projector and constraint
are recorded in the JSON. ASTRA runs on ``peer_slices`` slices spread over
the volume and its time is scaled to all 256 slices (slices are independent, so that is what the
full run costs); the ratio is ASTRA's SIRT alone over tomostrain's whole job, alignment included.
Both NRMSEs (``reconstruction.reprojection_nrmse``) are given on the peer's slices, and
tomostrain's also on the whole volume. ETSpy's own figure for the whole job on 2 cores (about 590
s, from issue 9) is recorded for reference.

    python -m benchmarks.bench_real_align [--quick] [--out DIR] [--keep RESULT.h5]
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, machine, version_of, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TOMOSTRAIN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "etspy" / "HAADF.mrc"
ITERATIONS = 50
ETSPY_REPORTED_S = 590.0   # ETSpy align + ASTRA CPU SIRT-50, 2 cores (issue 9)
PEER_PROJECTOR = "strip"   # ETSpy recon.run: astra.create_projector("strip", ...) on the CPU
PEER_MIN_CONSTRAINT = None  # ETSpy recon.run(constrain=False): no MinConstraint (unconstrained SIRT)


def _astra_slice(args):
    """ASTRA CPU SIRT of one sinogram (n_angles, n_cols), DESIGN.md §3 geometry."""
    import astra

    sino, angles_deg, iterations = args
    n = sino.shape[1]
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n, -np.radians(angles_deg))
    pid = astra.create_projector(PEER_PROJECTOR, proj_geom, vol_geom)
    sid = astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(sino, np.float32))
    rid = astra.data2d.create("-vol", vol_geom, 0)
    cfg = astra.astra_dict("SIRT")
    options = {} if PEER_MIN_CONSTRAINT is None else {"MinConstraint": float(PEER_MIN_CONSTRAINT)}
    cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid, option=options)
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg, iterations)
    out = astra.data2d.get(rid).astype(np.float32)
    astra.algorithm.delete(alg)
    astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    return out


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _nrmse(aligned, volume, angles, center):
    from tomostrain.reconstruction import project

    reproj = project(volume, angles, center=center)
    return float(np.linalg.norm(reproj - aligned) / np.linalg.norm(aligned))


def run(out_dir, quick: bool = False, backend: str = "cpu", keep: str | None = None) -> Path:
    from tomostrain import io
    from tomostrain.reconstruction import Alignment, reprojection_nrmse

    if not DATA.exists():
        return write_json(out_dir, "bench_real_align", {"benchmark": "real_align", "skipped": f"{DATA} not found"})
    peer_slices = 8 if quick else 32
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.h5"
        cmd = [sys.executable, "-m", "tomostrain.cli", "tomo", str(DATA), "-o", str(out), "--align",
               "--method", "sirt", "--iterations", str(ITERATIONS), "--backend", "cpu"]
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run(cmd, check=True, env=env)
        ours_s, ours_cpu = time.perf_counter() - t0, _children_cpu() - c0
        results = io.read_results(out)
        if keep:                                           # the result file, e.g. for the README figure
            import shutil

            shutil.copyfile(out, keep)
    tomo = results["tomo"]
    found = tomo["alignment"]
    attrs = found["@attrs"]
    alignment = Alignment(shifts=np.asarray(found["shifts"]), center=float(attrs["center"]),
                          tilt_axis_deg=float(attrs["tilt_axis_deg"]))
    volume = np.asarray(tomo["volume"])
    series = io.read_tilt_series(DATA)
    angles = np.asarray(found["angles_deg"])
    ours_nrmse = reprojection_nrmse(series, alignment, volume)
    params = results.get("provenance", {}).get("@attrs", {}).get("parameters", "{}")
    nonnegative = (json.loads(params) if isinstance(params, str) else params).get("tomo", {}).get("nonnegative")
    steps = {k: v for k, v in results.get("provenance", {}).get("@attrs", {}).items() if "second" in k or "step" in k}

    aligned = alignment.apply(series)                      # the same aligned sinograms for ASTRA
    rows = np.unique(np.linspace(0, aligned.shape[1] - 1, peer_slices).round().astype(int))
    t0, c0 = time.perf_counter(), _children_cpu()
    with ProcessPoolExecutor(max_workers=2) as pool:
        astra_vol = np.stack(list(pool.map(_astra_slice, [(aligned[:, y], angles, ITERATIONS) for y in rows])))
    scale = aligned.shape[1] / len(rows)
    astra_s, astra_cpu = (time.perf_counter() - t0) * scale, (_children_cpu() - c0) * scale
    sub = np.ascontiguousarray(aligned[:, rows])
    payload = {
        "benchmark": "real_align", "machine": machine("cpu"), "data": str(DATA.name),
        "shape": list(series.shape), "iterations": ITERATIONS, "command": " ".join(["tomostrain", *cmd[3:]]),
        "note": "wall seconds depend on what else runs on the machine; cpu_seconds (user + system of the "
                "processes) / 2 is the wall time the same work takes on 2 idle cores",
        "tomostrain": {"seconds": ours_s, "cpu_seconds": ours_cpu, "nrmse": ours_nrmse, "nrmse_on_peer_slices":
                       _nrmse(sub, np.ascontiguousarray(volume[rows]), angles, alignment.center),
                       "tilt_axis_deg": alignment.tilt_axis_deg, "nonnegative": nonnegative,
                       "provenance_steps": steps},
        "astra_cpu_sirt_2_processes": {"seconds_scaled_to_all_slices": astra_s,
                                       "cpu_seconds_scaled_to_all_slices": astra_cpu, "slices_run": int(len(rows)),
                                       "nrmse_on_peer_slices": _nrmse(sub, astra_vol, angles, alignment.center),
                                       "projector": PEER_PROJECTOR, "min_constraint": PEER_MIN_CONSTRAINT,
                                       "version": version_of("astra")},
        "etspy_reported_seconds": ETSPY_REPORTED_S,
        "ratios": {"astra_sirt_over_tomostrain_job": astra_s / ours_s,
                   "astra_sirt_over_tomostrain_job_cpu": astra_cpu / ours_cpu,
                   "etspy_reported_over_tomostrain_job_cpu_on_2_cores": ETSPY_REPORTED_S / (ours_cpu / 2.0),
                   "etspy_reported_over_tomostrain_job": ETSPY_REPORTED_S / ours_s},
    }
    return write_json(out_dir, "bench_real_align", payload)


if __name__ == "__main__":
    command_line(run, __doc__, keep=None)
