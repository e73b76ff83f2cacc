"""Kinetics benchmark: frames per second of the front tracking (registration + depth profiles +
front fits) on a synthetic 1024^2 movie (``--quick``: 256^2), with the front RMSE against the
truth. No peer: no public package tracks reaction fronts below an original outline.

    python -m benchmarks.bench_kinetics [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, machine, write_json
from tomostrain.analysis.kinetics import fit_track, track_front
from tomostrain.synthetic.movie import reaction_movie


def run(out_dir, quick: bool = False, backend: str = "cpu") -> Path:
    size, frames = (256, 16) if quick else (1024, 12)
    rows = []
    # drift 0: the configuration of the earlier rows (comparable); drift 20 px: what a stage does
    for drift, registers in ((0.0, (False, True)), (20.0, (True,))):
        movie, truth = reaction_movie((size, size), frames, outline="disc", n=0.5, drift_px=drift, ni_dots=200, seed=41,
                                      final_depth_px=80 * size // 1024, frame_interval_s=2.0)
        for register in registers:
            t0 = time.perf_counter()
            track = track_front(movie, truth.time_s, truth.pixel_size_nm, vacuum="bright", register=register,
                                backend=backend)
            seconds = time.perf_counter() - t0
            moved = truth.front_nm > 2
            fit = fit_track(track)
            rows.append({"frame": [size, size], "frames": frames, "drift_px": drift, "register": register,
                         "backend": backend, "seconds": seconds, "frames_per_s": frames / seconds,
                         "front_rmse_nm": float(np.sqrt(np.mean((track.front_nm[moved] - truth.front_nm[moved]) ** 2))),
                         "shift_err_px": float(np.abs(track.shifts_px - truth.shifts_px).max()),
                         "fit": {"k": fit.k, "k_true": truth.k, "n": fit.n, "n_true": truth.n, "t0_s": fit.t0_s,
                                 "t0_true": truth.t0_s}})
    return write_json(out_dir, "bench_kinetics", {"suite": "kinetics", "machine": machine(backend), "rows": rows})


if __name__ == "__main__":
    command_line(run, __doc__)
