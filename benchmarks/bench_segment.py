"""Segmentation + quantification benchmark: tomostrain's envelope-first ``segment_phases`` and
``quantify`` beside scikit-image/scipy's equivalents on the same volume.

The volume: a family particle (``synthetic.particles``, 85 % vacuum, 40 Ni particles) blurred by
a Gaussian of 1 voxel (a reconstruction's resolution) with Gaussian noise of 5 % of the core
density. tomostrain: ``segment_phases(volume, 4)`` then ``quantify(labels, particle_labels=...)``.
Peer (the plain pipeline the issue compares with): ``skimage.filters.threshold_multiotsu``
(4 classes) + ``scipy.ndimage.label`` + ``distance_transform_edt`` + ``skimage.segmentation.watershed``
of the densest class. Both timed in the same run (best of ``repeat``); quality as Dice per phase
against the phantom's labels. CPU: N = 256 (``--quick``: 96); 512^3 is left out on machines with
fewer than 8 cores or 32 GiB (its phantom alone takes minutes and ~10 GiB there).

    python -m benchmarks.bench_segment [--quick] [--backend cpu|gpu] [--out DIR] [--sizes 256,512]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, timeit, write_json
from tomostrain.gpu_core import backend as _backend


def _volume(n: int, seed: int = 7):
    from scipy import ndimage

    from tomostrain.synthetic.particles import ParticleSpec, family_particle

    spec = ParticleSpec(shape=(n, n, n), seed=seed, vacuum_fraction=0.85, kind="grain", n_bodies=2,
                        shell_thickness=0.04 * n, n_ni=40, ni_radius=(0.008 * n + 1, 0.014 * n + 1.5))
    density, labels, truth = family_particle(spec)
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(density, 1.0) + rng.normal(0, 0.05, density.shape).astype(np.float32)
    return vol.astype(np.float32), labels, truth


def _dice(a, b) -> float:
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def _ours(vol):
    from tomostrain.analysis import quantify
    from tomostrain.gpu_core.phases import segment_phases

    seg = segment_phases(vol, 4)
    q = quantify(seg.labels, particle_labels=seg.particles)
    return seg, q


def _peer(vol):
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_multiotsu
    from skimage.segmentation import watershed

    thr = threshold_multiotsu(vol, classes=4)
    labels = np.digitize(vol, thr).astype(np.uint8)
    ni = labels == 3
    comps, _ = ndimage.label(ni)
    dist = ndimage.distance_transform_edt(ni)
    peaks = peak_local_max(dist, min_distance=2, labels=comps, exclude_border=False)
    markers = np.zeros(vol.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-dist, markers, mask=ni)
    body = (labels == 1) | (labels == 2)
    ndimage.distance_transform_edt(body)  # the depth map quantify needs
    return labels, int(split.max())


def _case(n: int, where: str, repeat: int) -> dict:
    t0 = time.perf_counter()
    vol, truth_labels, truth = _volume(n)
    build_s = time.perf_counter() - t0
    dev = _backend.to_device(vol, where)
    sync = None
    if where == "gpu":
        import cupy

        sync = cupy.cuda.Device().synchronize
    t_ours, (seg, q) = timeit(lambda: _ours(dev), repeat=repeat, sync=sync)
    t_peer, (peer_labels, peer_count) = timeit(lambda: _peer(vol), repeat=repeat)
    ours_labels = _backend.to_host(seg.labels)
    return {
        "n": n, "voxels": n**3, "phantom_build_s": build_s,
        "tomostrain": {"seconds": t_ours, "voxels_per_s": n**3 / t_ours,
                       "dice": {k: _dice(ours_labels == i, truth_labels == i) for i, k in ((1, "shell"), (2, "core"), (3, "particles"))},
                       "ni_count": int(seg.n_particles)},
        "skimage_multiotsu_label_edt_watershed": {
            "seconds": t_peer, "voxels_per_s": n**3 / t_peer,
            "dice": {k: _dice(peer_labels == i, truth_labels == i) for i, k in ((1, "shell"), (2, "core"), (3, "particles"))},
            "ni_count": peer_count},
        "ni_count_truth": int(truth.n_particles),
        "ratio_tomostrain_over_peer_speed": t_peer / t_ours,
    }


def run(out_dir, quick: bool = False, backend: str = "cpu", sizes=None) -> Path:
    """Run the suite and write ``out_dir/bench_segment.json``; returns its path."""
    where = _backend.resolve(backend)
    big_machine = (os.cpu_count() or 1) >= 8
    if sizes is None:
        sizes = [96] if quick else ([256, 512] if big_machine or where == "gpu" else [256])
    notes = [] if 512 in sizes or quick else ["512^3 skipped: fewer than 8 CPU cores (phantom + both pipelines take too long)"]
    rows = [_case(n, where, 1 if quick or n >= 256 else 3) for n in sizes]
    payload = {"benchmark": "segment", "machine": machine(where), "quick": quick, "notes": notes, "results": rows}
    return write_json(out_dir, "bench_segment", payload)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 96^3 volume")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--sizes", default=None, help="comma list of N, e.g. 256,512")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    path = run(Path(args.out) / args.backend if args.out == "bench_results" else args.out, quick=args.quick,
               backend=args.backend, sizes=sizes)
    print(path.read_text())


if __name__ == "__main__":
    main()
