"""Projector benchmark: tomostrain forward / back projection and SIRT per iteration next to ASTRA.

CPU (default): for N = 128, 256, 512 (``--quick``: N = 128) and two tilt schemes (N angles over
180 degrees; 141 angles over ±70 degrees), time on a stack of 32 slices (16 at N = 512) the matched projector
pair (``gpu_core.kernels.projector``: one forward, one back projection) and
``reconstruction.iterative.sirt`` per iteration (``iterations`` iterations, the total divided by
them: the one-off row/column weights are included), and ASTRA's 2-D CPU 'SIRT' with a 'linear'
projector per iteration, looped over slices. ASTRA's 2-D CPU algorithms run on one thread;
tomostrain on ``NUMBA_NUM_THREADS`` threads (recorded). Our runs and ASTRA's alternate,
``repeat`` times, and the best of each counts, so that load from other processes hits both.
``ratios``: ASTRA seconds per slice-iteration / tomostrain seconds per slice-iteration (> 1:
tomostrain faster).

GPU (``--backend gpu``): the same tomostrain timings on the device (ASTRA's CUDA algorithms are
not compared here).

    python -m benchmarks.bench_projector [--quick] [--backend cpu|gpu] [--out DIR] [--sizes 256]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, version_of, write_json
from tomostrain.gpu_core import backend as _backend
from tomostrain.gpu_core.kernels import projector
from tomostrain.reconstruction import TiltGeometry
from tomostrain.reconstruction.iterative import sirt


def make_series(n: int, angles_deg, n_slices: int, xp=np):
    """(n_angles, n_slices, n) float32 projections of a disk with an off-centre hole, per slice."""
    c = (n - 1) / 2
    z, x = np.ogrid[:n, :n]
    disk = ((z - c) ** 2 + (x - c) ** 2 <= (0.4 * n) ** 2).astype(np.float32)
    disk[(z - c - 0.1 * n) ** 2 + (x - c) ** 2 <= (0.1 * n) ** 2] = 0.5
    volume = xp.asarray(np.repeat(disk[None], n_slices, axis=0))
    geo = TiltGeometry(angles_deg, n_slices, n)
    return projector.forward(volume, geo.kernel_table(xp), n), volume, geo


def _astra_sirt(series, angles_deg, n: int, iterations: int) -> float:
    """Seconds of ASTRA CPU SIRT ('linear' projector), summed over the slices of ``series``."""
    import astra

    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, series.shape[2], -np.radians(angles_deg))
    pid = astra.create_projector("linear", proj_geom, vol_geom)
    seconds = 0.0
    for y in range(series.shape[1]):
        sid = astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(series[:, y]))
        rid = astra.data2d.create("-vol", vol_geom, 0)
        cfg = astra.astra_dict("SIRT")
        cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid)
        alg = astra.algorithm.create(cfg)
        t0 = time.perf_counter()
        astra.algorithm.run(alg, iterations)
        seconds += time.perf_counter() - t0
        astra.algorithm.delete(alg)
        astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    return seconds


def _seconds(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _case(n, angles, n_slices, peer_slices, iterations, repeat, which) -> dict:
    if which == "gpu":
        import cupy as xp

        sync = xp.cuda.Device().synchronize
    else:
        xp, sync = np, (lambda: None)
    series, volume, geo = make_series(n, angles, n_slices, xp)
    table = geo.kernel_table(xp)
    n_angles = angles.size
    res = {"n": n, "n_angles": n_angles, "angles": f"{angles.min():g}..{angles.max():g} deg",
           "slices": n_slices, "sirt_iterations": iterations}
    fwd = lambda: projector.forward(volume, table, n)  # noqa: E731
    back = lambda: projector.back(series, table, n)  # noqa: E731
    rec = lambda: sirt(series, angles, iterations=iterations)  # noqa: E731
    for fn in (fwd, back, rec):  # compile / warm up
        fn()
    sync()
    astra = which == "cpu" and version_of("astra") is not None
    host = _backend.to_host(series)[:, :peer_slices] if astra else None
    t = {"forward": [], "back": [], "sirt": [], "astra_sirt": []}
    for _ in range(repeat):  # alternate ours and the peer's, so that outside load hits both
        t["forward"].append(_seconds(fwd, sync))
        t["back"].append(_seconds(back, sync))
        t["sirt"].append(_seconds(rec, sync))
        if astra:
            t["astra_sirt"].append(_astra_sirt(host, angles, n, iterations))
    per = {"forward_s_per_slice": min(t["forward"]) / n_slices,
           "back_s_per_slice": min(t["back"]) / n_slices,
           "sirt_s_per_slice_iteration": min(t["sirt"]) / (n_slices * iterations)}
    res["tomostrain"] = per
    if astra:
        res["astra"] = {"sirt_s_per_slice_iteration": min(t["astra_sirt"]) / (peer_slices * iterations),
                        "slices": peer_slices, "threads": 1}
        res["ratios"] = {"astra_sirt_over_tomostrain_sirt_per_iteration":
                         res["astra"]["sirt_s_per_slice_iteration"] / per["sirt_s_per_slice_iteration"]}
    elif which == "cpu":
        res["astra"] = "missing"
    return res


def run(out_dir, quick: bool = False, backend: str = "cpu", sizes=None) -> Path:
    """Run the benchmark and write ``out_dir/bench_projector.json``; returns its path."""
    which = _backend.resolve(backend)
    sizes = sizes or ([128] if quick else [128, 256, 512])
    cases = []
    for n in sizes:
        n_slices = 4 if quick else (16 if n > 256 else 32)  # the CPU projectors share footprints across slices
        peer_slices = 2 if n <= 256 else 1
        iterations = 10 if n <= 256 else 4
        repeat = 2 if quick else 3
        for angles in (np.arange(n) * 180.0 / n, np.arange(-70.0, 71.0)):
            cases.append(_case(n, angles, n_slices, peer_slices, iterations, repeat, which))
    payload = {"benchmark": "projector", "machine": machine(which), "backend": which, "quick": quick,
               "note": "best of alternating repeats; ASTRA 2-D CPU SIRT is single-threaded; "
                       "ratios > 1: tomostrain faster per slice and iteration",
               "cases": cases}
    return write_json(out_dir, "bench_projector", payload)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 128, 4 slices (smoke test)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--sizes", default=None, help="comma-separated N, e.g. 256,512")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(run(args.out, quick=args.quick, backend=args.backend, sizes=sizes))


if __name__ == "__main__":
    main()
