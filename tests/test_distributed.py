"""The executor seam: a chunked step gives the same result inline, on threads and on Dask
(a LocalCluster; an external scheduler with two workers, one of them SIGKILLed mid-job)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tomostrain.distributed import ChunkedStep, InlineExecutor, ThreadExecutor, gather, reduce
from tomostrain.errors import InputError
from tomostrain.reconstruction import reconstruct
from tomostrain.synthetic import SHEPP_LOGAN, ellipse_sinogram

ANGLES = np.arange(-70.0, 70.1, 4.0)   # a limited +-70 degree series
N = 40


def _series(rows=10, seed=0):
    """Sinograms of Shepp-Logan variants (one per row) with a little noise: (n_angles, rows, N)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rows):
        ell = SHEPP_LOGAN.copy()
        ell[:, 1:5] *= 0.46 * N * (0.8 + 0.02 * r)     # the phantom in pixels, a little bigger per row
        out.append(ellipse_sinogram(ell, ANGLES, N))
    data = np.stack(out, 1).astype(np.float32)
    return data + rng.normal(0, 0.01 * data.max(), data.shape).astype(np.float32)


def _budget(slices):
    return 4 * (4 * N * N + 4 * ANGLES.size * N) * slices


class Squares(ChunkedStep):
    """A reduce step: sum of squares of each row chunk (a global pre-step's first phase)."""

    kind = "reduce"

    def __init__(self, values):
        self.values, self.n_items, self.bytes_per_item = values, len(values), 8

    def process(self, items):
        return float((self.values[items] ** 2).sum()), np.bincount(self.values[items].astype(int), minlength=5)


def test_reduce_and_gather_are_independent_of_the_executor():
    values = np.random.default_rng(2).integers(0, 5, 101).astype(float)
    plan = [slice(i, min(i + 7, 101)) for i in range(0, 101, 7)]
    total, hist = reduce(InlineExecutor(), Squares(values), plan=plan)
    assert total == float((values ** 2).sum()) and hist.tolist() == np.bincount(values.astype(int)).tolist()
    with ThreadExecutor(3) as ex:
        t_total, t_hist = reduce(ex, Squares(values), plan=plan)
    assert t_total == total and t_hist.tolist() == hist.tolist()


def test_sirt_inline_threads_and_sink_equal_the_plain_call():
    data = _series()
    ref = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=8, backend="cpu")
    inline = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=8, backend="cpu", executor=InlineExecutor(),
                         chunk_budget=_budget(3))
    with ThreadExecutor(2) as ex:
        threads = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=8, backend="cpu", executor=ex,
                              chunk_budget=_budget(2))
    np.testing.assert_array_equal(inline, ref)
    np.testing.assert_array_equal(threads, ref)
    with pytest.raises(InputError, match="shape"):
        reconstruct(data, "fbp", angles_deg=ANGLES, out=np.empty((3, N, N), np.float32))


class _FlakyRows(ChunkedStep):
    """A map step whose chunks fail with a GPU out-of-memory error above 2 items."""

    def __init__(self):
        self.n_items, self.bytes_per_item = 9, 1

    def process(self, items):
        if items.stop - items.start > 2:
            raise type("OutOfMemoryError", (Exception,), {})("out of memory")
        return np.arange(items.start, items.stop)[:, None] * np.ones((1, 3))


def test_an_out_of_memory_chunk_is_split_on_the_worker():
    out = gather(InlineExecutor(), _FlakyRows(), plan=[slice(0, 5), slice(5, 9)])
    np.testing.assert_array_equal(out[:, 0], np.arange(9))


def test_tomo_cli_on_a_local_dask_cluster_equals_inline(tmp_path):
    """``tomostrain tomo --cluster local:2`` and a job file's [cluster] section give the inline volume."""
    import h5py

    from tomostrain import cli, io

    path = tmp_path / "series.h5"
    io.write_tilt_series(io.TiltSeries(_series(), ANGLES), path)
    common = [str(path), "--method", "sirt", "--iterations", "8", "--backend", "cpu"]
    assert cli.main(["tomo", *common, "-o", str(tmp_path / "inline.h5")]) == 0
    assert cli.main(["tomo", *common, "-o", str(tmp_path / "dask.h5"), "--cluster", "local:2"]) == 0
    job = tmp_path / "job.toml"
    job.write_text('[job]\noutput = "threads.h5"\nbackend = "cpu"\n[tomo]\ninput = "series.h5"\nmethod = "sirt"\n'
                   'iterations = 8\n[cluster]\naddress = "threads:2"\n')
    assert cli.main(["run", str(job)]) == 0
    volumes, executors = [], []
    for name in ("inline", "dask", "threads"):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            volumes.append(f["tomo/volume"][()])
            executors.append(f["provenance"].attrs["executor"])
    assert executors[0] == "inline" and executors[1].startswith("dask tcp://") and executors[2] == "threads:2"
    np.testing.assert_array_equal(volumes[1], volumes[0])
    np.testing.assert_array_equal(volumes[2], volumes[0])
    ref = reconstruct(_series(), "sirt", angles_deg=ANGLES, iterations=8, backend="cpu")
    np.testing.assert_array_equal(volumes[0], ref)


def _dask(*args, **kw):
    exe = Path(sys.executable).with_name("dask")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def test_sirt_on_an_external_scheduler_survives_a_killed_worker(tmp_path):
    """dask scheduler + two dask workers on 127.0.0.1; one worker is SIGKILLed after the first
    chunk arrives: its chunks run again on the other, and the volume equals the inline run."""
    from distributed import Client

    from tomostrain.distributed.dask_executor import DaskExecutor

    data = _series(rows=12)
    ref = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=30, backend="cpu")
    info = tmp_path / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                   "--scheduler-file", str(info))]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        workers = [_dask("worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                         "--dashboard-address", ":0", "--name", f"w{i}") for i in range(2)]
        procs += workers
        client = Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=60)
        killed = []

        def progress(done, total):
            if 0 < done < total and not killed:
                workers[0].send_signal(signal.SIGKILL)
                killed.append(done)

        with DaskExecutor(client) as ex:
            vol = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=30, backend="cpu", executor=ex,
                              chunk_budget=_budget(1), progress=progress)
        assert killed and workers[0].wait(timeout=10) == -signal.SIGKILL
        np.testing.assert_array_equal(vol, ref)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cluster_specs_and_the_slurm_job_script():
    from tomostrain.distributed.dask_executor import parse, slurm_cluster

    assert parse("local:3") == ("local", {"workers": 3})
    assert parse("tcp://10.0.0.1:8786") == ("scheduler", {"address": "tcp://10.0.0.1:8786"})
    assert parse(None) == ("inline", {})
    for bad in ("local:x", "local:0", "mpi"):
        with pytest.raises(InputError):
            parse(bad)
    kind, options = parse({"address": "slurm", "queue": "gpu", "cores": 8, "memory": "32GB", "walltime": "02:00:00",
                           "job_extra_directives": ["--gres=gpu:1"], "jobs": 2})
    assert kind == "slurm" and options["jobs"] == 2
    cluster = slurm_cluster(options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH -t 02:00:00" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --cpus-per-task=8" in script and "--nthreads 8" in script and "--memory-limit 29.80GiB" in script
    with pytest.raises(InputError, match="unknown"):
        slurm_cluster({"queue": "gpu", "partition": "x"})


@pytest.mark.gpu
def test_sirt_on_a_local_cuda_cluster_equals_inline():
    pytest.importorskip("dask_cuda")
    from tomostrain.distributed import open_cluster

    data = _series()
    ref = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=8, backend="gpu")
    with open_cluster("cuda") as ex:
        vol = reconstruct(data, "sirt", angles_deg=ANGLES, iterations=8, backend="gpu", executor=ex,
                          chunk_budget=_budget(2))
    np.testing.assert_allclose(vol, ref, atol=1e-5)
