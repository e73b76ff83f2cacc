"""Bragg disk detection and strain mapping: tomostrain vs py4DSTEM on the same synthetic cubes.

    python -m benchmarks.bench_disks [--quick] [--backend cpu|gpu] [--out DIR]

CPU: patterns/s of ``find_bragg_disks`` (edge fit and parabolic) and of py4DSTEM 0.14.16
``find_Bragg_disks`` (cross-correlation, multicorr x16; timed on a subset of positions, reported per
pattern), their ratio, disks found per pattern by each on the same positions, and end-to-end strain
map seconds (probe, origin, disks, lattice, strain). GPU: data resident on the device, detection +
lattice fit for 256^2 and 576^2 patterns, plus end-to-end from an HDF5 file.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import TILE, machine, tiled_nanobeam, timeit, write_json
from tomostrain.strain import calibrate
from tomostrain.strain.datacube import DataCube
from tomostrain.strain.disks import find_bragg_disks
from tomostrain.strain.lattice import choose_lattice_vectors, fit_lattice
from tomostrain.strain.strainmap import strain_map

PEER_PATTERNS = 256


def _strain(data, probe=None, **kw):
    """End-to-end strain map of a scan (lattice vectors and reference from the 8 x 8 positions at
    the centre of the first simulation tile, inside the particle)."""
    probe = calibrate.probe_template(data) if probe is None else probe
    origin = calibrate.fit_origin(data)
    peaks = find_bragg_disks(data, probe, **kw)
    sy, sx = data.shape[:2]
    ref = _reference(sy, sx)
    core = np.zeros((sy, sx), bool)
    core[ref] = True
    g1, g2 = choose_lattice_vectors(peaks, origin, mask=core)
    fit = fit_lattice(peaks, origin, g1, g2)
    return strain_map(fit, reference=ref), peaks


def _reference(sy: int, sx: int) -> tuple[slice, slice]:
    """8 x 8 positions at the centre of the first simulation tile (inside the NiO particle)."""
    cy, cx = min(sy, TILE) // 2, min(sx, TILE) // 2
    return slice(cy - 4, cy + 4), slice(cx - 4, cx + 4)


def _middle_rows(data, n):
    """The ``n`` positions (whole scan rows, at least one) across the middle of the first
    simulation tile, i.e. through the particle."""
    sy, sx = data.shape[:2]
    rows = max(1, n // sx)
    cy = min(sy, TILE) // 2
    return data[cy - rows // 2: cy - rows // 2 + rows]


def _py4dstem_rate(data, probe, n):
    """py4DSTEM disk detection on ``n`` middle positions: (patterns/s, disks per pattern)."""
    try:
        import py4DSTEM
    except ImportError:
        return None, None
    subset = _middle_rows(data, n)
    rows, sx = subset.shape[:2]
    kernel = np.fft.ifftshift(probe)
    options = dict(template=kernel, corrPower=1.0, sigma=2, subpixel="multicorr", upsample_factor=16,
                   minPeakSpacing=2 * 5.0 * data.shape[2] / 128, edgeBoundary=5, minRelativeIntensity=0.005,
                   maxNumPeaks=70)
    py4DSTEM.DataCube(data=np.ascontiguousarray(data[:1, :2])).find_Bragg_disks(**options)   # warm-up
    sub = py4DSTEM.DataCube(data=np.ascontiguousarray(subset))
    t0 = time.perf_counter()
    bv = sub.find_Bragg_disks(**options)
    seconds = time.perf_counter() - t0
    counts = [bv._v_uncal[i, j].data.shape[0] for i in range(rows) for j in range(sx)]
    return rows * sx / seconds, float(np.mean(counts))


def run_cpu(quick: bool) -> dict:
    cases = [((16, 16), 128)] if quick else [((64, 64), 128), ((128, 128), 128), ((64, 64), 256)]
    return {"cases": [cpu_case(scan, det, quick) for scan, det in cases]}


def cpu_case(scan, det, quick: bool = False) -> dict:
    """One CPU comparison on a ``scan`` of ``det`` x ``det`` patterns."""
    data, truth = tiled_nanobeam(scan, det, disk_radius=5.0 * det / 128)
    probe = calibrate.probe_template(data)
    n = scan[0] * scan[1]
    row = {"scan": scan, "detector": det, "patterns": n}
    for sub in ("edge", "parabolic"):
        sec, peaks = timeit(lambda: find_bragg_disks(data, probe, subpixel=sub), repeat=1 if not quick else 2)
        row[f"tomostrain_{sub}_s"] = sec
        row[f"tomostrain_{sub}_patterns_per_s"] = n / sec
        row[f"tomostrain_{sub}_disks_per_pattern"] = float(peaks.counts().mean())
    n_peer = min(n, PEER_PATTERNS if not quick else 64)
    rate, disks = _py4dstem_rate(data, probe, n_peer)
    row["py4dstem_patterns_timed"] = n_peer
    row["py4dstem_patterns_per_s"] = rate
    row["py4dstem_disks_per_pattern_subset"] = disks
    sub_counts = find_bragg_disks(_middle_rows(data, n_peer), probe).counts()
    row["tomostrain_disks_per_pattern_subset"] = float(sub_counts.mean())
    if rate:
        row["speedup_edge_vs_py4dstem"] = row["tomostrain_edge_patterns_per_s"] / rate
        row["speedup_parabolic_vs_py4dstem"] = row["tomostrain_parabolic_patterns_per_s"] / rate
    t0 = time.perf_counter()
    sm, _ = _strain(data)
    row["tomostrain_end_to_end_strain_s"] = time.perf_counter() - t0
    row["strain_positions_fit"] = int(sm.mask.sum())
    return row


def run_gpu(quick: bool) -> dict:
    import cupy

    sync = cupy.cuda.Device().synchronize
    cases = [((16, 16), 256)] if quick else [((64, 64), 256), ((32, 32), 576)]
    results = []
    for scan, det in cases:
        data, truth = tiled_nanobeam(scan, det, disk_radius=5.0 * det / 128)
        n = scan[0] * scan[1]
        gpu = cupy.asarray(data)
        probe = calibrate.probe_template(gpu)
        origin = calibrate.fit_origin(gpu)
        row = {"scan": scan, "detector": det, "patterns": n}
        for sub in ("edge", "parabolic"):
            def detect_and_fit():
                peaks = find_bragg_disks(gpu, probe, subpixel=sub)
                g1, g2 = choose_lattice_vectors(peaks, origin)
                return fit_lattice(peaks, origin, g1, g2), peaks

            sec, (fit, peaks) = timeit(detect_and_fit, repeat=3, sync=sync)
            det_sec, _ = timeit(lambda: find_bragg_disks(gpu, probe, subpixel=sub), repeat=3, sync=sync)
            row[f"{sub}_detect_patterns_per_s"] = n / det_sec
            row[f"{sub}_detect_fit_patterns_per_s"] = n / sec
            row[f"{sub}_disks_per_pattern"] = float(peaks.counts().mean())
        row["target_patterns_per_s"] = 100_000 if det <= 256 else 20_000
        with tempfile.TemporaryDirectory() as tmp:
            import h5py

            path = os.path.join(tmp, "scan.h5")
            with h5py.File(path, "w") as f:
                f.create_dataset("data", data=data, chunks=(1, scan[1], det, det))
            t0 = time.perf_counter()
            with h5py.File(path, "r") as f:
                cube = DataCube(f["data"])
                peaks = find_bragg_disks(cube, probe, backend="gpu")
                g1, g2 = choose_lattice_vectors(peaks, origin)
                sm = strain_map(fit_lattice(peaks, origin, g1, g2), reference=_reference(*scan))
                sync()
            row["end_to_end_from_hdf5_s"] = time.perf_counter() - t0
            row["end_to_end_positions_fit"] = int(sm.mask.sum())
        results.append(row)
        del gpu, data
        cupy.get_default_memory_pool().free_all_blocks()
    return {"cases": results}


def run(out_dir, quick: bool = False, backend: str = "cpu") -> Path:
    """Run the suite on ``backend`` and write ``bench_disks.json`` into ``out_dir``."""
    payload = {"suite": "disks", "backend": backend, "quick": quick, "machine": machine(backend)}
    payload.update(run_gpu(quick) if backend == "gpu" else run_cpu(quick))
    return write_json(out_dir, "bench_disks", payload)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    print(run(Path(args.out) / args.backend, quick=args.quick, backend=args.backend))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
