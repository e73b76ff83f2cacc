"""Shared pieces of the benchmark suites: machine description, timing, JSON output."""
from __future__ import annotations

import importlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from tomostrain import __version__
from tomostrain.gpu_core import backend


def machine(which: str = "cpu") -> dict:
    """Host, device and library versions, recorded in every benchmark JSON."""
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
        "device": backend.device_name(which),
        "python": platform.python_version(),
        "tomostrain": __version__,
    }
    for mod in ("numpy", "scipy", "numba", "finufft", "cupy", "astra", "py4DSTEM", "libertem", "tomopy"):
        info[mod] = version_of(mod)
    return info


TILE = 64  # scans larger than this tile a TILE x TILE simulation (same per-pattern work, bounded memory)


def tiled_nanobeam(scan, det: int, seed: int = 0, **kw):
    """Synthetic nano-beam scan ``scan`` = (sy, sx) of det x det patterns, and its truth.

    Scans beyond ``TILE`` positions per side repeat a TILE x TILE simulation, so a 128 x 128 x
    256^2 cube costs one 64 x 64 simulation and 4.3 GB of float32, not a full simulation's memory.
    The particle sits at the centre of each tile.
    """
    from tomostrain.synthetic import nanobeam_4dstem

    base = tuple(min(s, TILE) for s in scan)
    data, truth = nanobeam_4dstem(base, (det, det), seed=seed, **kw)
    reps = (-(-scan[0] // base[0]), -(-scan[1] // base[1]))
    if reps != (1, 1):
        data = np.tile(data, reps + (1, 1))[: scan[0], : scan[1]]
        truth = {**truth, "labels": np.tile(truth["labels"], reps)[: scan[0], : scan[1]]}
    return data, truth


def version_of(module: str) -> str | None:
    """The module's version string, or None when it does not import."""
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
        return None


def timeit(fn, repeat: int = 3, sync=None) -> tuple[float, object]:
    """Best wall time (s) of ``fn()`` over ``repeat`` runs after one warm-up, and its last result.

    ``sync`` is called after each run (e.g. a CUDA stream synchronise) before the clock stops.
    """
    result = fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best, result


def write_json(out_dir: str | Path, name: str, payload: dict) -> Path:
    """Write ``payload`` to ``out_dir/name.json`` (atomically) and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def command_line(run, doc: str, **extra) -> None:
    """``python -m benchmarks.bench_X [--quick] [--out DIR] [--KEY VALUE ...]``: parse the
    common options (and ``extra`` ones: name -> default, strings) and print ``run``'s JSON path."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/cpu")
    for name, default in extra.items():
        p.add_argument(f"--{name}", default=default)
    args = vars(p.parse_args())
    print(run(args.pop("out"), **args))

