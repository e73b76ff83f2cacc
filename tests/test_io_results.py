"""Result files: round trip of the DESIGN.md §4 layout, provenance, atomic write/append, errors."""
import datetime as dt
import json
import os

import h5py
import numpy as np
import pytest

import tomostrain
from tomostrain.errors import FileFormatError, InputError
from tomostrain.io import append_results, read_results, write_results
from tomostrain.io.results import COMPRESS_BYTES


@pytest.fixture
def provenance():
    return {
        "command": "tomostrain tomo in.h5 -o out.h5 --method sirt",
        "parameters": {"method": "sirt", "iterations": 50, "center": None},
        "backend": "cpu",
        "device": "CPU (x86_64, 2 cores)",
        "started": dt.datetime(2025, 1, 2, 3, 4, 5),
        "finished": "2025-01-02T03:05:00",
        "step_seconds": {"read": 0.5, "reconstruct": np.float64(12.25)},
    }


@pytest.fixture
def tree(rng):
    return {
        "tomo": {
            "alignment": {
                "shifts": rng.normal(size=(5, 2)),
                "@attrs": {"center": 15.5, "tilt_axis_deg": -2.0},
            },
            "volume": rng.random((4, 6, 6)).astype(np.float32),
            "labels": rng.integers(0, 4, (4, 6, 6)).astype(np.uint8),
            "quantify": {
                "@attrs": {"fractions": {"NiO": 0.6, "Na2O": 0.3}, "n_particles": 3, "ok": True},
                "depth_profile": np.linspace(0, 1, 7),
            },
        },
        "stem/strain/exx": np.full((3, 4), 0.01, np.float32),  # a key may name a deeper path
        "stem": {"phase": {"labels": np.zeros((3, 4), np.uint8), "@attrs": {"names": ["NiO", "Ni"]}}},
        "note": "synthetic",
        "n": 7,
    }


def _paths(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_round_trip_values_attrs_and_provenance(tmp_path, tree, provenance):
    path = tmp_path / "results.h5"
    write_results(path, tree, provenance)
    back = read_results(path)
    np.testing.assert_array_equal(back["tomo"]["alignment"]["shifts"], tree["tomo"]["alignment"]["shifts"])
    np.testing.assert_array_equal(back["tomo"]["volume"], tree["tomo"]["volume"])
    assert back["tomo"]["labels"].dtype == np.uint8 and back["tomo"]["volume"].dtype == np.float32
    assert back["tomo"]["alignment"]["@attrs"] == {"center": 15.5, "tilt_axis_deg": -2.0}
    q = back["tomo"]["quantify"]["@attrs"]
    assert json.loads(q["fractions"]) == {"NiO": 0.6, "Na2O": 0.3}
    assert q["n_particles"] == 3 and bool(q["ok"]) is True
    np.testing.assert_array_equal(back["stem"]["strain"]["exx"], 0.01 * np.ones((3, 4), np.float32))
    assert json.loads(back["stem"]["phase"]["@attrs"]["names"]) == ["NiO", "Ni"]
    assert back["note"] == "synthetic" and back["n"] == 7

    prov = back["provenance"]["@attrs"]
    assert prov["version"] == tomostrain.__version__
    assert prov["command"] == provenance["command"]
    assert json.loads(prov["parameters"]) == {"method": "sirt", "iterations": 50, "center": None}
    assert prov["backend"] == "cpu" and prov["device"].startswith("CPU")
    assert prov["started"] == "2025-01-02T03:04:05" and prov["finished"] == "2025-01-02T03:05:00"
    assert json.loads(prov["step_seconds"]) == {"read": 0.5, "reconstruct": 12.25}
    assert _paths(tmp_path) == ["results.h5"]


def test_large_arrays_are_gzip_chunked_small_ones_are_not(tmp_path, provenance):
    big = np.zeros(COMPRESS_BYTES // 4 + 1, np.float32)
    write_results(tmp_path / "r.h5", {"big": big, "small": np.zeros(10)}, provenance)
    with h5py.File(tmp_path / "r.h5") as h5:
        assert h5["big"].compression == "gzip" and h5["big"].compression_opts == 4
        assert h5["big"].chunks is not None
        assert h5["small"].compression is None
    assert os.path.getsize(tmp_path / "r.h5") < big.nbytes / 10


class _Boom:
    """An array-like that fails while being converted: a crash in the middle of a write."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("simulated crash mid-write")


def test_failed_write_leaves_no_file_and_keeps_an_old_one(tmp_path, tree, provenance):
    path = tmp_path / "results.h5"
    broken = {"tomo": tree["tomo"], "zzz": _Boom()}  # written after tomo's arrays
    with pytest.raises(RuntimeError, match="mid-write"):
        write_results(path, broken, provenance)
    assert _paths(tmp_path) == []
    write_results(path, {"old": np.arange(3)}, provenance)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="mid-write"):
        write_results(path, broken, provenance)
    assert path.read_bytes() == before and _paths(tmp_path) == ["results.h5"]
    with pytest.raises(RuntimeError, match="mid-write"):
        append_results(path, {"stem": {"x": np.ones(2)}, "zzz": _Boom()})
    assert path.read_bytes() == before and _paths(tmp_path) == ["results.h5"]


def test_append_adds_and_replaces_sections_and_merges_steps(tmp_path, tree, provenance):
    path = tmp_path / "results.h5"
    write_results(path, {"tomo": tree["tomo"]}, provenance)
    append_results(
        path,
        {"stem": {"virtual": {"bf": np.ones((3, 4))}}, "@attrs": {"title": "run 1"}},
        {"step_seconds": {"strain": 3.0}, "finished": "2025-01-02T03:09:00"},
    )
    back = read_results(path)
    np.testing.assert_array_equal(back["tomo"]["volume"], tree["tomo"]["volume"])
    np.testing.assert_array_equal(back["stem"]["virtual"]["bf"], np.ones((3, 4)))
    assert back["@attrs"] == {"title": "run 1"}
    prov = back["provenance"]["@attrs"]
    assert json.loads(prov["step_seconds"]) == {"read": 0.5, "reconstruct": 12.25, "strain": 3.0}
    assert prov["finished"] == "2025-01-02T03:09:00" and prov["backend"] == "cpu"
    append_results(path, {"tomo": {"volume": np.zeros((2, 2, 2), np.float32)}})  # re-run replaces
    back = read_results(path)
    assert list(back["tomo"]) == ["@attrs", "volume"] and back["tomo"]["volume"].shape == (2, 2, 2)
    assert "stem" in back and _paths(tmp_path) == ["results.h5"]


def test_errors(tmp_path, tree, provenance):
    path = tmp_path / "r.h5"
    missing = {k: v for k, v in provenance.items() if k != "device"}
    with pytest.raises(InputError, match=r"provenance lacks \['device'\]"):
        write_results(path, tree, missing)
    with pytest.raises(InputError, match="cannot store /tomo/bad: ndarray of dtype object"):
        write_results(path, {"tomo": {"bad": np.array([object()])}}, provenance)
    with pytest.raises(InputError, match="unknown special key '@meta'"):
        write_results(path, {"@meta": {}}, provenance)
    with pytest.raises(InputError, match="must not hold 'provenance'"):
        write_results(path, {"provenance": {}}, provenance)
    with pytest.raises(InputError, match="/a/b is given twice"):
        write_results(path, {"a/b": np.ones(1), "a": {"b": np.ones(1)}}, provenance)
    with pytest.raises(InputError, match="'parameters' cannot be stored as JSON"):
        write_results(path, tree, {**provenance, "parameters": {"f": object()}})
    assert _paths(tmp_path) == []
    with pytest.raises(FileFormatError, match="not found"):
        append_results(path, tree)
    with h5py.File(path, "w") as h5:
        h5["x"] = 1
    with pytest.raises(FileFormatError, match="not a tomostrain result file"):
        append_results(path, tree)
    path.write_bytes(b"plain text")
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        read_results(path)


@pytest.mark.gpu
def test_cupy_arrays_are_written_from_the_device(tmp_path, provenance):
    import cupy

    write_results(tmp_path / "g.h5", {"v": cupy.arange(6, dtype=cupy.float32)}, provenance)
    np.testing.assert_array_equal(read_results(tmp_path / "g.h5")["v"], np.arange(6, dtype=np.float32))
