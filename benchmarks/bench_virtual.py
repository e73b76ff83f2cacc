"""Virtual-detector benchmark: tomostrain virtual ADF and centre of mass vs LiberTEM.

On the same synthetic nano-beam cubes (scan 64x64 and 128x128, detector 128² and 256²;
``--quick``: 16x16 scan, 64² detector) time ``virtual_adf`` and ``center_of_mass`` against
LiberTEM's ring and COM analyses on its inline executor (``Context.make_with('inline')``,
in-memory dataset), record frames/s and the tomostrain/LiberTEM ratios, and cross-check the ADF
images (relative difference, must be < 1e-4). Ring radii are integers + 0.5 about an integer
centre so that both libraries' edge rules (``<`` vs ``<=``) select the same pixels.

    python -m benchmarks.bench_virtual [--quick] [--backend cpu|gpu] [--out DIR] [--sizes 64x128,128x256]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks._common import machine, tiled_nanobeam, timeit, write_json
from tomostrain.gpu_core import backend as _backend
from tomostrain.strain.virtual import center_of_mass, virtual_adf

FULL = ((64, 128), (64, 256), (128, 128), (128, 256))
QUICK = ((16, 64),)


def _libertem(data, cy, cx, ri, ro, repeat):
    try:
        from libertem.api import Context
    except ImportError:
        return None
    ctx = Context.make_with("inline")
    ds = ctx.load("memory", data=data)
    ring = ctx.create_ring_analysis(ds, cx=cx, cy=cy, ri=ri, ro=ro)
    com = ctx.create_com_analysis(ds, cx=cx, cy=cy)
    t_adf, res = timeit(lambda: ctx.run(ring), repeat)
    t_com, _ = timeit(lambda: ctx.run(com), repeat)
    return {"adf_s": t_adf, "com_s": t_com, "adf": np.asarray(res.intensity.raw_data)}


def _case(scan: int, det: int, where: str, repeat: int) -> dict:
    data, _ = tiled_nanobeam((scan, scan), det, seed=1)
    frames = scan * scan
    cy = cx = det // 2
    ri, ro = 0.2 * det + 0.5, 0.45 * det + 0.5
    ri, ro = float(int(ri)) + 0.5, float(int(ro)) + 0.5
    arr = _backend.to_device(data, where)
    sync = None
    if where == "gpu":
        import cupy

        sync = cupy.cuda.get_current_stream().synchronize
    t_adf, adf = timeit(lambda: virtual_adf(arr, ri, ro, (cy, cx)), repeat, sync)
    t_com, _ = timeit(lambda: center_of_mass(arr), repeat, sync)
    row = {
        "scan": [scan, scan], "detector": [det, det], "ring_px": [ri, ro], "backend": where,
        "tomostrain": {"adf_s": t_adf, "com_s": t_com,
                       "adf_frames_per_s": frames / t_adf, "com_frames_per_s": frames / t_com},
    }
    peer = _libertem(data, cy, cx, ri, ro, repeat)
    if peer is not None:
        ours = _backend.to_host(adf)
        rel = float(np.abs(ours - peer["adf"]).max() / np.abs(peer["adf"]).max())
        row["libertem"] = {"adf_s": peer["adf_s"], "com_s": peer["com_s"],
                           "adf_frames_per_s": frames / peer["adf_s"], "com_frames_per_s": frames / peer["com_s"]}
        row["ratio_tomostrain_over_libertem"] = {"adf": peer["adf_s"] / t_adf, "com": peer["com_s"] / t_com}
        row["adf_max_rel_diff"] = rel
        row["adf_agrees"] = rel < 1e-4
    return row


def run(out_dir, quick: bool = False, backend: str = "cpu", sizes=None) -> Path:
    """Run the suite and write ``out_dir/bench_virtual.json``; returns its path."""
    where = _backend.resolve(backend)
    cases = QUICK if quick else (sizes or FULL)
    repeat = 1 if quick else 3
    rows = [_case(scan, det, where, repeat) for scan, det in cases]
    payload = {"benchmark": "virtual", "machine": machine(where), "quick": quick, "results": rows}
    return write_json(out_dir, "bench_virtual", payload)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny cube")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--sizes", default=None, help="comma list of SCANxDETECTOR, e.g. 64x128,128x256")
    args = ap.parse_args(argv)
    sizes = None
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    path = run(args.out, quick=args.quick, backend=args.backend, sizes=sizes)
    print(path.read_text())


if __name__ == "__main__":
    main()
