"""4D-STEM I/O: .npy, raw, HDF5 and py4DSTEM EMD read back lazily with calibration; clear errors."""
import h5py
import numpy as np
import pytest

from tomostrain.errors import FileFormatError, InputError
from tomostrain.io import read_datacube, write_datacube
from tomostrain.strain.datacube import DataCube


@pytest.fixture
def cube_data():
    data = np.arange(3 * 4 * 5 * 6, dtype=np.uint16).reshape(3, 4, 5, 6)
    return data  # value = ((sy*4 + sx)*5 + ky)*6 + kx pins the axis order


def _close(cube):
    if "file" in cube.meta:
        cube.meta["file"].close()


def test_npy_is_memory_mapped_read_only(tmp_path, cube_data):
    np.save(tmp_path / "c.npy", cube_data)
    cube = read_datacube(tmp_path / "c.npy")
    assert isinstance(cube.data, np.memmap) and not cube.data.flags.writeable
    assert cube.shape == (3, 4, 5, 6) and cube.data[2, 1, 3, 4] == ((2 * 4 + 1) * 5 + 3) * 6 + 4
    np.testing.assert_array_equal(cube.rows(1, 3), cube_data[1:3].astype(np.float32))


@pytest.mark.parametrize("dtype", ["<u2", ">f4"])
def test_raw_with_header_offset(tmp_path, cube_data, dtype):
    path = tmp_path / "c.raw"
    path.write_bytes(b"H" * 64 + cube_data.astype(dtype).tobytes())
    cube = read_datacube(path, shape=(3, 4, 5, 6), dtype=dtype, offset=64)
    np.testing.assert_array_equal(np.asarray(cube.data), cube_data)
    assert cube.meta["format"] == "raw"


def test_raw_size_errors(tmp_path, cube_data):
    path = tmp_path / "c.bin"
    path.write_bytes(cube_data.tobytes()[:-2])
    with pytest.raises(FileFormatError, match=r"truncated: 718 bytes.*needs 720 bytes"):
        read_datacube(path, shape=(3, 4, 5, 6), dtype="<u2")
    path.write_bytes(cube_data.tobytes())
    with pytest.raises(FileFormatError, match=r"larger than expected: 720 bytes.*needs 360"):
        read_datacube(path, shape=(3, 4, 5, 3), dtype="<u2")
    with pytest.raises(InputError, match=r"needs shape=.*and dtype="):
        read_datacube(path)
    with pytest.raises(FileFormatError, match=r"shape= must be 4D"):
        read_datacube(path, shape=(12, 5, 6), dtype="<u2")
    with pytest.raises(InputError, match="real numbers"):
        read_datacube(path, shape=(3, 4, 5, 6), dtype="c8")
    (tmp_path / "e.dat").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        read_datacube(tmp_path / "e.dat", shape=(1, 1, 1, 1), dtype="u1")


def test_hdf5_single_4d_dataset_is_found_and_stays_lazy(tmp_path, cube_data):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as h5:
        h5["meta/image"] = np.zeros((4, 4))
        ds = h5.create_dataset("scan/frames", data=cube_data)
        ds.attrs.update(q_pixel_size=0.0125, scan_step_nm=2.5)
        h5["scan"].attrs.update(energy_kev=200.0, convergence_mrad=1.5, q_pixel_size=9.0)
    before = path.read_bytes()
    cube = read_datacube(path)
    try:
        assert isinstance(cube.data, h5py.Dataset) and cube.meta["dataset"] == "/scan/frames"
        assert cube.q_pixel_size == 0.0125  # dataset attrs win over the group's
        assert cube.scan_step_nm == 2.5
        assert cube.meta["energy_kev"] == 200.0 and cube.meta["convergence_mrad"] == 1.5
        np.testing.assert_array_equal(cube.rows(0, 3), cube_data.astype(np.float32))
    finally:
        _close(cube)
    assert path.read_bytes() == before


def test_hdf5_dataset_choice_errors(tmp_path, cube_data):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as h5:
        h5["a"] = cube_data
        h5["b/c"] = cube_data[:1]
        h5["flat"] = np.zeros((3, 4))
    with pytest.raises(FileFormatError, match=r"several 4D datasets \(/a \(3, 4, 5, 6\), /b/c"):
        read_datacube(path)
    cube = read_datacube(path, dataset="/b/c")
    assert cube.shape == (1, 4, 5, 6)
    _close(cube)
    with pytest.raises(FileFormatError, match=r"no dataset '/nope'.*/flat"):
        read_datacube(path, dataset="/nope")
    with pytest.raises(FileFormatError, match=r"flat must be 4D .*got shape \(3, 4\)"):
        read_datacube(path, dataset="/flat")
    none = tmp_path / "none.h5"
    with h5py.File(none, "w") as h5:
        h5["img"] = np.zeros((2, 2, 2))
    with pytest.raises(FileFormatError, match=r"no 4D dataset \(datasets present: /img \(2, 2, 2\)\)"):
        read_datacube(none)
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as h5:
        h5["d"] = cube_data
        h5["d"].attrs["q_pixel_size"] = -1.0
    with pytest.raises(FileFormatError, match="q_pixel_size=-1.0 must be a positive"):
        read_datacube(bad)


def test_bad_files(tmp_path, cube_data):
    with pytest.raises(FileFormatError, match="not found"):
        read_datacube(tmp_path / "absent.npy")
    (tmp_path / "junk.h5").write_bytes(b"\x00not hdf5" * 50)
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        read_datacube(tmp_path / "junk.h5")
    np.save(tmp_path / "three.npy", cube_data[0])
    with pytest.raises(FileFormatError, match=r"must be 4D .*got shape \(4, 5, 6\)"):
        read_datacube(tmp_path / "three.npy")
    np.save(tmp_path / "cut.npy", cube_data)
    blob = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(blob[:-100])
    with pytest.raises(FileFormatError, match="truncated"):
        read_datacube(tmp_path / "cut.npy")
    write_datacube(cube_data, tmp_path / "w.h5")
    blob = (tmp_path / "w.h5").read_bytes()
    (tmp_path / "w.h5").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        read_datacube(tmp_path / "w.h5")
    with pytest.raises(FileFormatError, match="unknown 4D-STEM format '.mib'"):
        read_datacube(tmp_path / "x.mib")
    with pytest.raises(InputError, match="raw binary files only"):
        read_datacube(tmp_path / "w.npy", shape=(1, 1, 1, 1))


def test_write_datacube_round_trip_with_calibration(tmp_path, cube_data):
    cube = DataCube(cube_data, scan_step_nm=1.5, q_pixel_size=0.02, meta={"energy_kev": 300.0})
    path = tmp_path / "out.h5"
    write_datacube(cube, path, convergence_mrad=2.0, q_pixel_size=0.025)
    with h5py.File(path) as h5:
        ds = h5["/datacube/data"]
        assert ds.dtype == np.uint16 and dict(ds.attrs) == {
            "q_pixel_size": 0.025, "scan_step_nm": 1.5, "energy_kev": 300.0, "convergence_mrad": 2.0
        }
    back = read_datacube(path)
    try:
        np.testing.assert_array_equal(back.data[()], cube_data)
        assert (back.q_pixel_size, back.scan_step_nm) == (0.025, 1.5)
        assert (back.meta["energy_kev"], back.meta["convergence_mrad"]) == (300.0, 2.0)
    finally:
        _close(back)
    with pytest.raises(InputError, match=r"unknown calibration \['pixel'\]"):
        write_datacube(cube_data, tmp_path / "x.h5", pixel=1.0)
    with pytest.raises(FileFormatError, match="writes HDF5"):
        write_datacube(cube_data, tmp_path / "x.npy")
    with pytest.raises(InputError, match="4D"):
        write_datacube(cube_data[0], tmp_path / "x.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


@pytest.mark.peer
def test_emd_written_by_py4dstem(tmp_path):
    py4DSTEM = pytest.importorskip("py4DSTEM")
    data = np.random.default_rng(5).random((3, 4, 8, 9)).astype(np.float32)
    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_Q_pixel_size(0.05)
    dc.calibration.set_Q_pixel_units("A^-1")
    dc.calibration.set_R_pixel_size(12.0)
    dc.calibration.set_R_pixel_units("A")  # 12 Å = 1.2 nm
    dc.calibration.set_convergence_semiangle_mrad(1.7)
    path = tmp_path / "scan.emd"
    py4DSTEM.save(str(path), dc, mode="o")
    cube = read_datacube(path)
    try:
        assert cube.meta["format"] == "emd" and cube.meta["dataset"].endswith("/data")
        np.testing.assert_array_equal(cube.data[()], data)  # (Rx, Ry, Qx, Qy) kept as stored
        assert cube.q_pixel_size == pytest.approx(0.05)
        assert cube.scan_step_nm == pytest.approx(1.2)
        assert cube.meta["convergence_mrad"] == pytest.approx(1.7)
        assert cube.meta["emd_calibration"]["R_pixel_units"] == "A"
    finally:
        _close(cube)


def test_emd_uncalibrated_pixels_give_none(tmp_path):
    path = tmp_path / "plain.emd"
    with h5py.File(path, "w") as h5:  # emdfile layout, calibration still in pixels
        grp = h5.create_group("root/datacube")
        grp.attrs["python_class"] = "DataCube"
        grp["data"] = np.ones((2, 2, 3, 3), np.float32)
        h5.create_group("root/other")["data"] = np.ones((1, 1, 1, 1))  # not a DataCube
        cal = h5.create_group("root/metadatabundle/calibration")
        cal.attrs["python_class"] = "Calibration"
        cal["Q_pixel_size"], cal["Q_pixel_units"] = 1.0, "pixels"
        cal["R_pixel_size"], cal["R_pixel_units"] = 1.0, "pixels"
    cube = read_datacube(path)
    try:
        assert cube.meta["dataset"] == "/root/datacube/data"
        assert cube.q_pixel_size is None and cube.scan_step_nm is None
    finally:
        _close(cube)
