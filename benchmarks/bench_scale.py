"""Scale-out benchmark: out-of-core gridrec, inline vs a Dask LocalCluster, killed-and-resumed vs
uninterrupted. Every run is ``tomostrain tomo`` in a subprocess under ``/usr/bin/time -v``
(wall seconds and peak RSS of the whole process tree's largest process).

- ``big``: gridrec of a 181 x N x N DXchange series (N = 1024: 0.76 GB in, a 4.3 GB float32
  volume out) with ``TOMOSTRAIN_MEMORY_BUDGET`` (default 600M): peak RSS against the volume size.
- ``cluster``: SIRT of a +-70 degree series inline and with ``--cluster local:2`` (same volume?).
- ``resume``: the same SIRT job SIGKILLed when half of its chunks are flagged done, then rerun:
  the rerun's seconds over an uninterrupted run's, and whether the volumes are identical.

    python -m benchmarks.bench_scale [--parts big,cluster,resume] [--n 1024] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks._common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _tomo(args, env, kill_when=None):
    """Run ``tomostrain tomo ARGS`` under /usr/bin/time -v -> (wall s, peak RSS bytes, returncode).
    ``kill_when()`` is polled; when it returns True the run is SIGKILLed."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tomostrain.cli", "tomo", *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_when is not None:
        while proc.poll() is None:
            if kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    err = proc.communicate()[1]
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    return wall, (int(rss.group(1)) * 1024 if rss else None), proc.returncode, err[-2000:]


def _write_series(path: Path, n_angles: int, n_rows: int, n_cols: int, angles=None):
    """A DXchange series of Shepp-Logan sinograms (8 variants tiled along the rows), row chunks."""
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_sinogram

    angles = np.linspace(-90, 90, n_angles, endpoint=False) if angles is None else angles
    variants = [ellipse_sinogram(SHEPP_LOGAN * [1, *[0.46 * n_cols * s] * 4, 1], angles, n_cols).astype(np.float32)
                for s in np.linspace(0.6, 0.9, 8)]
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("/exchange/data", (n_angles, n_rows, n_cols), np.float32, chunks=(n_angles, 1, n_cols))
        for r in range(n_rows):
            ds[:, r] = variants[r % 8]
        h5.create_dataset("/exchange/theta", data=angles).attrs["units"] = "degrees"
    return angles


def big(tmp: Path, n: int, budget: str) -> dict:
    series, out = tmp / "big.h5", tmp / "big_vol.h5"
    _write_series(series, 181, n, n)
    wall, rss, rc, err = _tomo([series, "-o", out, "--method", "gridrec", "--backend", "cpu"],
                               _env(TOMOSTRAIN_MEMORY_BUDGET=budget))
    result = {"shape_in": [181, n, n], "volume_bytes": 4 * n ** 3, "memory_budget": budget, "seconds": wall,
              "peak_rss_bytes": rss, "peak_rss_over_volume": rss / (4 * n ** 3) if rss else None, "returncode": rc}
    if rc == 0:
        with h5py.File(out) as f:
            ds = f["tomo/volume"]
            result.update(compression=ds.compression, chunks=list(ds.chunks or []),
                          file_bytes=out.stat().st_size, step_seconds=f["provenance"].attrs["step_seconds"],
                          slice_mean=float(ds[n // 2].mean()))
    else:
        result["stderr"] = err
    for p in (series, out):
        p.unlink(missing_ok=True)
    return result


def _volume(path):
    with h5py.File(path) as f:
        return f["tomo/volume"][()]


def cluster(tmp: Path, rows: int, n: int, iterations: int) -> dict:
    series = tmp / "sirt.h5"
    _write_series(series, 71, rows, n, angles=np.arange(-70.0, 70.1, 2.0))
    args = [series, "--method", "sirt", "--iterations", iterations, "--backend", "cpu"]
    t_in, rss_in, _, _ = _tomo([*args, "-o", tmp / "inline.h5"], _env())
    t_d, rss_d, rc, err = _tomo([*args, "-o", tmp / "dask.h5", "--cluster", "local:2"], _env())
    same = rc == 0 and bool(np.array_equal(_volume(tmp / "inline.h5"), _volume(tmp / "dask.h5")))
    return {"series": [71, rows, n], "iterations": iterations, "inline_seconds": t_in, "local2_seconds": t_d,
            "speedup_local2": t_in / t_d, "identical": same, "inline_peak_rss": rss_in,
            "note": "wall seconds include interpreter start and (local:2) cluster start-up; 2 shared cores"}


def resume(tmp: Path, rows: int, n: int, iterations: int) -> dict:
    from tomostrain.io.store import store_path

    series = tmp / "resume.h5"
    _write_series(series, 71, rows, n, angles=np.arange(-70.0, 70.1, 2.0))
    args = [series, "--method", "sirt", "--iterations", iterations, "--backend", "cpu"]
    per_slice = 4 * (4 * n * n + 4 * 71 * n)
    env = _env(TOMOSTRAIN_MEMORY_BUDGET=per_slice * max(1, rows // 16))   # 16 chunks
    t_full, _, _, _ = _tomo([*args, "-o", tmp / "full.h5"], env)
    out = tmp / "killed.h5"
    state = {"done": 0}

    def half_done():
        try:
            with h5py.File(store_path(out), "r", locking=False) as f:
                state["done"] = int(f["_progress/tomo/volume"][()].sum())
        except (OSError, KeyError):
            return False
        return state["done"] >= rows // 2

    t_killed, _, rc_killed, _ = _tomo([*args, "-o", out], env, kill_when=half_done)
    t_rerun, _, rc, _ = _tomo([*args, "-o", out], env)
    same = rc == 0 and bool(np.array_equal(_volume(out), _volume(tmp / "full.h5")))
    return {"series": [71, rows, n], "iterations": iterations, "uninterrupted_seconds": t_full,
            "killed_after_seconds": t_killed, "killed_returncode": rc_killed, "rows_done_when_killed": state["done"],
            "rerun_seconds": t_rerun, "rerun_over_uninterrupted": t_rerun / t_full, "identical": same}


def run(out_dir, quick: bool = False, backend: str = "cpu", parts=("big", "cluster", "resume"), n: int = 1024,
        budget: str = "600M") -> Path:
    previous = Path(out_dir) / "bench_scale.json"
    payload = json.loads(previous.read_text()) if previous.exists() else {}   # parts run separately add up
    payload["machine"] = machine("cpu")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TOMOSTRAIN_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        if "big" in parts:
            payload["big"] = big(tmp, 128 if quick else n, budget)
        if "cluster" in parts:
            payload["cluster"] = cluster(tmp, 16 if quick else 64, 64 if quick else 128, 10 if quick else 50)
        if "resume" in parts:
            payload["resume"] = resume(tmp, 16 if quick else 64, 64 if quick else 128, 10 if quick else 50)
    return write_json(out_dir, "bench_scale", payload)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="big,cluster,resume")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--budget", default="600M")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/cpu")
    a = p.parse_args()
    print(run(a.out, a.quick, parts=tuple(a.parts.split(",")), n=a.n, budget=a.budget))
