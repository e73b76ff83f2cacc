"""4D-STEM in three passes: the pipeline reads every scan row exactly three times, and the passes
give what the separate whole-scan functions give (which are tested against ground truth)."""
import os

import numpy as np
import pytest

from tomostrain import io, pipeline
from tomostrain.distributed import ThreadExecutor
from tomostrain.strain import calibrate, passes
from tomostrain.strain.datacube import DataCube
from tomostrain.strain.disks import disk_geometry, find_bragg_disks
from tomostrain.strain.phases import phase_map
from tomostrain.strain.virtual import virtual_adf, virtual_bf
from tomostrain.synthetic.nanobeam import nanobeam_4dstem


class CountingRows:
    """A 4D array that counts the scan rows read through it."""

    def __init__(self, data):
        self.data, self.rows_read = data, 0
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, index):
        block = self.data[index]
        self.rows_read += block.shape[0] if isinstance(index, slice) else 1
        return block


@pytest.fixture(scope="module")
def scan():
    return nanobeam_4dstem((20, 18), (80, 80), seed=3)


def test_passes_equal_the_separate_functions(scan):
    data, truth = scan
    counting = CountingRows(data)
    cube = DataCube(counting)
    with ThreadExecutor(2) as ex:
        cal = passes.calibrate_scan(cube, executor=ex, budget=3 * 18 * 80 * 80 * 64)
        maps = passes.scan_maps(cube, cal, ["NiO", "Ni", "Na2O"], truth["q_pixel_size"], executor=ex)
    assert counting.rows_read == 3 * 20                                   # three passes
    probe, origin = calibrate.probe_template(data), calibrate.fit_origin(data)
    np.testing.assert_allclose(cal.probe, probe, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cal.origin, origin, atol=1e-9)
    r = disk_geometry(probe)[2]
    np.testing.assert_allclose(maps.bf, virtual_bf(data, 1.2 * r, origin), rtol=1e-9)
    np.testing.assert_allclose(maps.adf, virtual_adf(data, 2.5 * r, 40, origin), rtol=1e-9)
    pm = phase_map(data, ["NiO", "Ni", "Na2O"], truth["q_pixel_size"], origin=origin, disk_radius=r)
    assert (maps.phase.labels == pm.labels).mean() > 0.99
    peaks = find_bragg_disks(data, probe)
    np.testing.assert_array_equal(maps.peaks.offsets, peaks.offsets)
    np.testing.assert_allclose(maps.peaks.qy, peaks.qy, atol=1e-4)


def test_the_stem_pipeline_reads_the_cube_three_times(scan, tmp_path, monkeypatch):
    data, truth = scan
    path = tmp_path / "scan.h5"
    io.write_datacube(data, path, q_pixel_size=truth["q_pixel_size"])
    counters = []
    real = io.read_datacube

    def counted(*a, **k):
        cube = real(*a, **k)
        counters.append(CountingRows(cube.data))
        cube.data = counters[-1]
        return cube

    monkeypatch.setattr(io, "read_datacube", counted)
    out = pipeline.stem(path, tmp_path / "out.h5", backend="cpu")
    # three passes; the value check (NaN/Inf, all zero, negated) is made on pass 1's reads
    assert counters[0].rows_read == 3 * data.shape[0]
    res = io.read_results(out)["stem"]
    origin = res["calibration"]["origin"].astype(np.float64)
    r = float(res["calibration"]["@attrs"]["disk_radius_px"])
    np.testing.assert_allclose(res["virtual"]["bf"], virtual_bf(data, 1.2 * r, origin), rtol=1e-9)
    assert np.abs(origin - truth["origin"]).max() < 0.3 and res["strain"]["mask"].any()


def test_the_stem_pipeline_on_a_local_dask_cluster_equals_inline(scan, tmp_path):
    from tomostrain.distributed import open_cluster

    data, truth = scan
    path = tmp_path / "scan.h5"
    io.write_datacube(data, path, q_pixel_size=truth["q_pixel_size"])
    inline = io.read_results(pipeline.stem(path, tmp_path / "inline.h5", backend="cpu"))["stem"]
    with open_cluster("local:2") as ex:
        job = pipeline.Job(tmp_path / "dask.h5", "test", {"stem": {}}, "cpu")
        job.executor = ex
        pipeline.stem(path, None, backend="cpu", job=job)
        dask = io.read_results(job.finish())["stem"]
    for group, key in (("virtual", "bf"), ("virtual", "adf"), ("phase", "labels"), ("calibration", "origin"),
                       ("peaks", "qy"), ("lattice", "g1"), ("strain", "exx")):
        np.testing.assert_array_equal(dask[group][key], inline[group][key])


def test_the_cpu_stem_job_runs_two_chunks_at_once_and_equals_inline(scan, tmp_path):
    """A CPU stem job without --cluster runs its chunks on ThreadExecutor(2) (one chunk's NumPy
    work overlapping the other's kernels); the results are bit-identical to one chunk at a time."""
    import h5py

    from tomostrain.distributed import InlineExecutor

    data, truth = scan
    path = tmp_path / "scan.h5"
    io.write_datacube(data, path, q_pixel_size=truth["q_pixel_size"])
    out = pipeline.stem(path, tmp_path / "threads.h5", backend="cpu")
    with h5py.File(out) as f:
        assert f["provenance"].attrs["executor"] == f"threads:{min(2, os.cpu_count() or 1)}"
    threads = io.read_results(out)["stem"]
    job = pipeline.Job(tmp_path / "inline.h5", "test", {"stem": {}}, "cpu")
    job.executor = InlineExecutor()
    pipeline.stem(path, None, backend="cpu", job=job)
    inline = io.read_results(job.finish())["stem"]
    for group, key in (("virtual", "bf"), ("virtual", "adf"), ("phase", "labels"), ("calibration", "origin"),
                       ("calibration", "probe"), ("peaks", "qy"), ("peaks", "qx"), ("peaks", "offsets"),
                       ("lattice", "g1"), ("strain", "exx")):
        np.testing.assert_array_equal(threads[group][key], inline[group][key])


def test_the_lowest_patterns_merge_equals_distributed_lowest():
    """Pass 2's merge (gathers the k kept patterns only) gives distributed.Lowest's result: ties
    by index, an empty partial, k beyond the candidates."""
    from tomostrain.distributed import Lowest
    from tomostrain.strain.passes import _LowestPatterns

    rng = np.random.default_rng(0)
    parts = [(rng.random(n), np.arange(n) + 100 * j, rng.random((n, 3, 2))) for j, n in enumerate([5, 0, 7, 3])]
    parts[2][0][:2] = parts[0][0][0]
    for k in (1, 4, 15, 40):
        want, got = Lowest(k)(parts), _LowestPatterns(k)(parts)
        assert len(got[0]) == min(k, 15)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
