"""Tomography benchmark: tomostrain fbp / gridrec / sirt side by side with ASTRA (and TomoPy).

CPU (default): for N = 256, 512, 1024 (``--quick``: N = 128, 8 slices) and two tilt schemes
(N angles over 180 degrees; 141 angles over ±70 degrees), reconstruct a stack of Shepp-Logan
slices from exact (analytic, pixel-integrated) sinograms with every method, and record seconds,
slices/s, voxel-updates/s (voxels x angles per second), RMSE and SSIM against the phantom, and
the speed ratios tomostrain / peer measured in the same run. Peers run on a subset of the
slices (they are slice-by-slice 2-D codes); the ratios compare slices per second.

GPU (``--backend gpu``): gridrec 1024^3 from 1024 projections resident on the device, 2048^3
from 2048 projections read in chunks of rows from an HDF5 file on local disk (written first;
skipped when disk or memory is short), fbp 1024^3, and SIRT per iteration 512^3 from 361
projections.

    python -m benchmarks.bench_tomo [--quick] [--backend cpu|gpu] [--out DIR] [--sizes 256,512]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, timeit, version_of, write_json
from tomostrain.gpu_core import backend as _backend
from tomostrain.reconstruction.fbp import fbp, gridrec
from tomostrain.synthetic import SHEPP_LOGAN, ellipse_image, ellipse_sinogram

VARIANTS = 4           # distinct phantom slices, tiled over the stack
SIRT_ITERATIONS = 5


# ---------------------------------------------------------------------------------------------
# data: exact sinograms of ellipses (DESIGN.md §3 geometry) and the rasterised phantom
# ---------------------------------------------------------------------------------------------
def _ellipses(n: int, variant: int) -> np.ndarray:
    e = SHEPP_LOGAN.copy()
    e[:, 1:5] *= 0.46 * n * (1 - 0.03 * variant)
    e[:, 5] += 7.0 * variant
    return e


def make_case(n: int, angles_deg, n_slices: int):
    """(phantom (n_slices, n, n), series (n_angles, n_slices, n)) float32 on the host."""
    variants = [_ellipses(n, v) for v in range(VARIANTS)]
    sinos = [ellipse_sinogram(e, angles_deg, n).astype(np.float32) for e in variants]
    images = [ellipse_image(e, n, supersample=2).astype(np.float32) for e in variants]
    pick = [s % VARIANTS for s in range(n_slices)]
    return np.stack([images[k] for k in pick]), np.stack([sinos[k] for k in pick], axis=1)


def quality(rec, truth) -> dict:
    """RMSE inside the reconstruction circle and mean SSIM over slices (skimage)."""
    from skimage.metrics import structural_similarity

    rec = _backend.to_host(rec)
    n = truth.shape[-1]
    c = (n - 1) / 2
    z, x = np.ogrid[:n, :n]
    mask = (z - c) ** 2 + (x - c) ** 2 <= (n / 2 - 2) ** 2
    diff = (rec - truth)[:, mask]
    ssim = np.mean([structural_similarity(r, t, data_range=1.0) for r, t in zip(rec, truth)])
    return {"rmse": float(np.sqrt(np.mean(diff.astype(np.float64) ** 2))), "ssim": float(ssim)}


def _entry(seconds, n_slices, n, n_angles, iterations=1, **extra) -> dict:
    per = seconds / iterations
    return {"seconds": seconds, "seconds_per_iteration": per if iterations > 1 else None,
            "slices": n_slices, "slices_per_s": n_slices / per,
            "voxel_updates_per_s": n_slices * n * n * n_angles / per, **extra}


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------
def _astra(series, angles_deg, n, algorithm, iterations=1):
    """ASTRA CPU 2-D algorithm ('FBP' Ram-Lak or 'SIRT') slice by slice, linear projector."""
    import astra

    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, series.shape[2], -np.radians(angles_deg))
    pid = astra.create_projector("linear", proj_geom, vol_geom)
    out = np.empty((series.shape[1], n, n), np.float32)
    for y in range(series.shape[1]):
        sid = astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(series[:, y]))
        rid = astra.data2d.create("-vol", vol_geom, 0)
        cfg = astra.astra_dict(algorithm)
        cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid)
        if algorithm == "FBP":
            cfg["option"] = {"FilterType": "Ram-Lak"}
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg, iterations)
        out[y] = astra.data2d.get(rid)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    return out


def _tomopy(series, angles_deg, algorithm, iterations=1):
    import tomopy

    kwargs = {"num_iter": iterations} if algorithm == "sirt" else {}
    return tomopy.recon(series, np.radians(angles_deg), algorithm=algorithm, **kwargs)


def _sirt():
    try:
        from tomostrain.reconstruction.iterative import sirt
    except ImportError:
        return None
    return sirt


# ---------------------------------------------------------------------------------------------
# CPU comparison
# ---------------------------------------------------------------------------------------------
def _cpu_case(n, angles, n_slices, peer_slices, repeat) -> dict:
    truth, series = make_case(n, angles, n_slices)
    n_angles = angles.size
    res = {"n": n, "n_angles": n_angles, "angles": f"{angles.min():g}..{angles.max():g} deg",
           "slices": n_slices, "peer_slices": peer_slices, "methods": {}}
    m = res["methods"]
    for name, fn in (("tomostrain_fbp", fbp), ("tomostrain_gridrec", gridrec)):
        sec, rec = timeit(lambda fn=fn: fn(series, angles), repeat=repeat)
        m[name] = _entry(sec, n_slices, n, n_angles, **quality(rec, truth))
    sirt = _sirt()
    if sirt is None:
        m["tomostrain_sirt"] = "missing"
    else:
        sec, rec = timeit(lambda: sirt(series, angles, iterations=SIRT_ITERATIONS), repeat=1)
        m["tomostrain_sirt"] = _entry(sec, n_slices, n, n_angles, SIRT_ITERATIONS,
                                      **quality(rec, truth))
    sub, sub_truth = series[:, :peer_slices], truth[:peer_slices]
    if version_of("astra"):
        sec, rec = timeit(lambda: _astra(sub, angles, n, "FBP"), repeat=repeat)
        m["astra_fbp"] = _entry(sec, peer_slices, n, n_angles, **quality(rec, sub_truth))
        sec, rec = timeit(lambda: _astra(sub, angles, n, "SIRT", SIRT_ITERATIONS), repeat=1)
        m["astra_sirt"] = _entry(sec, peer_slices, n, n_angles, SIRT_ITERATIONS,
                                 **quality(rec, sub_truth))
    else:
        m["astra"] = "missing"
    if version_of("tomopy"):
        sec, rec = timeit(lambda: _tomopy(sub, angles, "gridrec"), repeat=repeat)
        m["tomopy_gridrec"] = _entry(sec, peer_slices, n, n_angles, **quality(rec, sub_truth))
        sec, rec = timeit(lambda: _tomopy(sub, angles, "sirt", SIRT_ITERATIONS), repeat=1)
        m["tomopy_sirt"] = _entry(sec, peer_slices, n, n_angles, SIRT_ITERATIONS,
                                  **quality(rec, sub_truth))
    else:
        m["tomopy"] = "missing"
    res["ratios"] = _ratios(m)
    return res


def _ratios(m) -> dict:
    """tomostrain speed / peer speed (slices per second), > 1 means tomostrain is faster."""
    pairs = [("gridrec_vs_astra_fbp", "tomostrain_gridrec", "astra_fbp"),
             ("fbp_vs_astra_fbp", "tomostrain_fbp", "astra_fbp"),
             ("sirt_vs_astra_sirt_per_iteration", "tomostrain_sirt", "astra_sirt"),
             ("gridrec_vs_tomopy_gridrec", "tomostrain_gridrec", "tomopy_gridrec"),
             ("sirt_vs_tomopy_sirt_per_iteration", "tomostrain_sirt", "tomopy_sirt")]
    out = {}
    for key, ours, peer in pairs:
        if isinstance(m.get(ours), dict) and isinstance(m.get(peer), dict):
            out[key] = m[ours]["slices_per_s"] / m[peer]["slices_per_s"]
            out[key.split("_vs_")[0] + "_rmse_over_" + peer] = m[ours]["rmse"] / m[peer]["rmse"]
    return out


def run_cpu(sizes, quick) -> list:
    cases = []
    for n in sizes:
        n_slices = 8 if quick else 32
        peer_slices = n_slices if n <= 256 else 4
        repeat = 2 if n <= 256 else 1
        for angles in (np.arange(n) * 180.0 / n, np.arange(-70.0, 71.0)):
            cases.append(_cpu_case(n, angles, n_slices, peer_slices, repeat))
    return cases


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def run_gpu(quick) -> list:
    import cupy as cp

    sync = cp.cuda.Device().synchronize
    n_big = 256 if quick else 1024
    cases = []
    angles = np.arange(n_big) * 180.0 / n_big
    truth, series = make_case(n_big, angles, n_big)
    dev = cp.asarray(series)
    for name, fn in (("tomostrain_gridrec", gridrec), ("tomostrain_fbp", fbp)):
        sec, rec = timeit(lambda fn=fn: fn(dev, angles), repeat=2, sync=sync)
        cases.append({"case": f"{name} {n_big}^3 resident", **_entry(sec, n_big, n_big, n_big),
                      **quality(rec[:8], truth[:8])})
        del rec
    del dev, series, truth
    cp.get_default_memory_pool().free_all_blocks()
    cases.append(_gpu_from_hdf5(512 if quick else 2048, sync))
    n_sirt = 128 if quick else 512
    sirt = _sirt()
    if sirt is None:
        cases.append({"case": "tomostrain_sirt", "status": "missing"})
    else:
        angles = np.linspace(0.0, 180.0, 361)
        truth, series = make_case(n_sirt, angles, n_sirt)
        dev = cp.asarray(series)
        sec, rec = timeit(lambda: sirt(dev, angles, iterations=SIRT_ITERATIONS), repeat=1, sync=sync)
        cases.append({"case": f"tomostrain_sirt {n_sirt}^3 from {angles.size} projections",
                      **_entry(sec, n_sirt, n_sirt, angles.size, SIRT_ITERATIONS), **quality(rec[:8], truth[:8])})
    return cases


def _gpu_from_hdf5(n, sync) -> dict:
    """gridrec n^3 from n projections, read in chunks of rows from HDF5 on local disk."""
    import cupy as cp
    import h5py

    case = {"case": f"tomostrain_gridrec {n}^3 from {n} projections, chunked from HDF5"}
    nbytes = n**3 * 4
    workdir = Path(tempfile.mkdtemp(prefix="bench_tomo_"))
    try:
        if shutil.disk_usage(workdir).free < 1.2 * nbytes or _backend.free_memory_bytes("cpu") < 2.5 * nbytes:
            case["status"] = "skipped: not enough disk or host memory"
            return case
        angles = np.arange(n) * 180.0 / n
        truth, sinos = make_case(n, angles, VARIANTS)
        path = workdir / "series.h5"
        rows = 16
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", (n, n, n), np.float32, chunks=(n, rows, n))
            for r in range(0, n, rows):
                ds[:, r:r + rows] = sinos[:, [k % VARIANTS for k in range(r, r + rows)]]
        case["write_seconds"] = time.perf_counter() - t0
        out = np.empty((n, n, n), np.float32)
        step = 64
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            ds = f["data"]
            for r in range(0, n, step):
                out[r:r + step] = cp.asnumpy(gridrec(cp.asarray(ds[:, r:r + step]), angles))
        sync()
        sec = time.perf_counter() - t0
        case.update(_entry(sec, n, n, n), **quality(out[:VARIANTS], truth))
        return case
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
def run(out_dir, quick: bool = False, backend: str = "cpu", sizes=None) -> Path:
    """Run the benchmark and write ``out_dir/bench_tomo.json``; returns its path."""
    which = _backend.resolve(backend)
    sizes = sizes or ([128] if quick else [256, 512, 1024])
    payload = {"benchmark": "tomo", "machine": machine(which), "backend": which, "quick": quick,
               "sirt_iterations": SIRT_ITERATIONS,
               "note": "peers run on peer_slices slices; ratios = tomostrain / peer slices per second"}
    payload["cases"] = run_gpu(quick) if which == "gpu" else run_cpu(sizes, quick)
    return write_json(out_dir, "bench_tomo", payload)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 128, 8 slices (smoke test)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--sizes", default=None, help="comma-separated N for the CPU run, e.g. 256,512")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(run(args.out, quick=args.quick, backend=args.backend, sizes=sizes))


if __name__ == "__main__":
    main()
