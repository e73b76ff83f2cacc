"""Chunk-level checkpoint: the chunk store (io.store) and a tomo job SIGKILLed half-way that
resumes, recomputing only the missing chunks, to the same volume."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tomostrain import io, pipeline
from tomostrain.io.store import ChunkStore, store_path

ANGLES = np.arange(-70.0, 70.1, 5.0)


def test_store_flags_rows_resumes_and_discards_on_a_new_key(tmp_path):
    out = tmp_path / "r.h5"
    messages = []
    store = ChunkStore(store_path(out), "key-1", say=messages.append)
    slab = store.array("tomo/volume", (6, 4, 4))
    slab.write(slice(0, 2), np.ones((2, 4, 4)))
    slab.write(slice(4, 6), 2 * np.ones((2, 4, 4)))
    store.close()
    again = ChunkStore(store_path(out), "key-1", say=messages.append).array("tomo/volume", (6, 4, 4))
    assert [again.done(s) for s in (slice(0, 2), slice(2, 4), slice(4, 6), slice(1, 3))] == [True, False, True, False]
    assert "resuming tomo/volume: 4 of 6 done" in messages[-1]
    again._store.close()
    fresh = ChunkStore(store_path(out), "key-2", say=messages.append)
    assert "discarding" in messages[-1] and fresh.array("tomo/volume", (6, 4, 4)).n_done() == 0
    slab = fresh.array("tomo/volume", (6, 4, 4))
    with pytest.raises(Exception, match="incomplete"):
        fresh.finish(out, {"tomo": {"volume": slab}}, {})
    slab.write(slice(0, 6), np.arange(96.0).reshape(6, 4, 4))
    prov = {k: "" for k in io.results.REQUIRED_PROVENANCE}
    prov.update(parameters={}, step_seconds={})
    fresh.finish(out, {"tomo": {"volume": slab, "@attrs": {"method": "x"}}}, prov)
    assert not store_path(out).exists()
    res = io.read_results(out)
    np.testing.assert_array_equal(res["tomo"]["volume"], np.arange(96.0).reshape(6, 4, 4))
    assert "_progress" not in res and res["tomo"]["@attrs"]["method"] == "x"
    with h5py.File(out) as f:
        assert f["tomo/volume"].compression is None and f["tomo/volume"].chunks == (1, 4, 4)


def _series_file(tmp_path, rows=12, n=32):
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_sinogram

    data = np.stack([ellipse_sinogram(SHEPP_LOGAN * [1, *[0.46 * n * (0.7 + 0.02 * r)] * 4, 1], ANGLES, n)
                     for r in range(rows)], 1)
    path = tmp_path / "series.h5"
    io.write_tilt_series(io.TiltSeries(data.astype(np.float32), ANGLES), path)
    return path


def test_a_killed_tomo_job_resumes_only_the_missing_chunks(tmp_path):
    path = _series_file(tmp_path)
    out = tmp_path / "vol.h5"
    argv = ["tomo", str(path), "-o", str(out), "--method", "sirt", "--iterations", "60", "--backend", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TOMOSTRAIN_MEMORY_BUDGET": "40000"}  # 1 slice a chunk
    proc = subprocess.Popen([sys.executable, "-m", "tomostrain.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store, done = store_path(out), 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    with h5py.File(store, "r", locking=False) as f:
                        done = int(f["_progress/tomo/volume"][()].sum()) if "_progress/tomo/volume" in f else 0
                except OSError:
                    done = 0
            if done >= 4:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert 4 <= done < 12 and not out.exists() and store.exists()      # killed half-way, nothing at OUT

    messages = []
    calls = []
    import tomostrain.reconstruction.api as api

    real = api.SliceReconstruction.process
    api.SliceReconstruction.process = lambda self, rows: calls.append(rows) or real(self, rows)
    try:
        os.environ["TOMOSTRAIN_MEMORY_BUDGET"] = "40000"
        job = pipeline.Job(out, "rerun", {"tomo": {"input": str(path), "method": "sirt", "iterations": 60,
                                                     "center": None, "segment": 0, "voxel_size_nm": None,
                                                     "align": False, "tilt_axis_deg": None,
                                                     "nonnegative": False}}, "cpu")
        job._print = messages.append
        pipeline.tomo(path, None, method="sirt", iterations=60, backend="cpu", job=job)
        job.finish()
    finally:
        api.SliceReconstruction.process = real
        os.environ.pop("TOMOSTRAIN_MEMORY_BUDGET")
    assert len(calls) <= 12 - done + 1 and any("resuming tomo/volume" in m for m in messages)
    resumed = io.read_results(out)["tomo"]["volume"]
    full = pipeline.tomo(path, tmp_path / "full.h5", method="sirt", iterations=60, backend="cpu")
    np.testing.assert_array_equal(resumed, io.read_results(full)["tomo"]["volume"])

    # changed parameters: the old chunk checkpoint is discarded with a message
    ChunkStore(store_path(out), "old", say=print).array("tomo/volume", resumed.shape)._store.close()
    messages.clear()
    job = pipeline.Job(out, "again", {"tomo": {"iterations": 3}}, "cpu")
    job._print = messages.append
    pipeline.tomo(path, None, method="sirt", iterations=3, backend="cpu", job=job)
    assert any("discarding the chunk checkpoint" in m for m in messages)
    job.finish()
    assert json.loads(io.read_results(out)["provenance"]["@attrs"]["parameters"]) == {"tomo": {"iterations": 3}}
