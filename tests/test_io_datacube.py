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
    with pytest.raises(FileFormatError, match="unknown 4D-STEM format '.xyz'"):
        read_datacube(tmp_path / "x.xyz")
    with pytest.raises(FileFormatError, match="Merlin MIB file not found"):
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


# ----------------------------------------------------------------------------- microscope formats
# Small files in the published layouts (tests/_stem_files.py); values pin the axis order.
import pickle  # noqa: E402

import _stem_files as sf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tomostrain.errors import TomostrainError  # noqa: E402
from tomostrain.io.stem_formats import FrameSource  # noqa: E402
from tomostrain.strain import optics  # noqa: E402


def _pinned(shape, dtype, seed=0, top=None):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    hi = top if top is not None else (info.max if info else 1.0)
    data = rng.integers(0, hi, shape, endpoint=True) if info else rng.random(shape)
    return data.astype(dtype)


def test_optics_wavelength_and_camera_length():
    assert optics.electron_wavelength_A(200.0) == pytest.approx(0.025079, rel=1e-4)
    assert optics.electron_wavelength_A(300.0) == pytest.approx(0.019687, rel=1e-4)
    # 55 µm pixel at 100 mm camera length, 300 kV: 5.5e-4 rad / 0.019687 Å
    assert optics.q_pixel_size_from_camera(55e-6, 0.1, 300.0) == pytest.approx(5.5e-4 / 0.019687, rel=1e-4)


@pytest.mark.parametrize("dtype,depth", [(np.uint8, 1), (np.uint8, 6), (np.uint16, 12), (np.uint32, 24)])
def test_mib_with_hdr_each_counter_depth(tmp_path, dtype, depth):
    frames = _pinned((6, 16, 12), dtype, seed=depth, top=2**depth - 1)
    frames[0, 0, 0] = 2**depth - 1  # the largest count survives big-endian decoding
    hdr = {"Frames in Acquisition (Number)": 6, "Frames per Trigger (Number)": 3, "Counter Depth (number)": depth}
    path = sf.write_mib(tmp_path / "scan.mib", frames, depth=depth, hdr=hdr)
    for given_path in (path, path.with_suffix(".hdr")):
        cube = read_datacube(given_path)
        assert cube.shape == (2, 3, 16, 12) and cube.data.dtype == np.dtype(dtype)
        assert cube.meta["scan_shape_source"].startswith("its .hdr") and cube.meta["counter_depth"] == depth
        np.testing.assert_array_equal(np.asarray(cube.data), frames.reshape(2, 3, 16, 12))
    assert cube.data[0, 0, 0, 0] == 2**depth - 1
    from rsciio.quantumdetector import file_reader  # the peer takes the same scan shape from the .hdr

    np.testing.assert_array_equal(file_reader(str(path))[0]["data"], frames.reshape(2, 3, 16, 12))
    with pytest.raises(FileFormatError, match=r"holds 6 frames but its \.hdr .* gives a 3x3 scan.*--scan-shape"):
        sf.write_mib(tmp_path / "short.mib", frames, depth=depth,
                     hdr={"Frames in Acquisition (Number)": 9, "Frames per Trigger (Number)": 3})
        read_datacube(tmp_path / "short.mib")


def test_mib_quad_768_byte_headers(tmp_path):
    frames = _pinned((4, 32, 32), np.uint16, seed=11, top=4095)  # an assembled 2x2 quad frame
    path = sf.write_mib(tmp_path / "quad.mib", frames, quad=True)
    assert path.stat().st_size == 4 * (768 + 32 * 32 * 2)
    cube = read_datacube(path, scan_shape=(2, 2))
    assert cube.meta["n_chips"] == 4
    np.testing.assert_array_equal(np.asarray(cube.data), frames.reshape(2, 2, 32, 32))
    from rsciio.quantumdetector import file_reader

    np.testing.assert_array_equal(file_reader(str(path), navigation_shape=(2, 2))[0]["data"], frames.reshape(2, 2, 32, 32))


@pytest.mark.parametrize("depth", [1, 6, 12])
def test_mib_raw_r64_decoded_like_libertem_encodes(tmp_path, depth):
    frames = _pinned((4, 64, 64), np.uint16 if depth == 12 else np.uint8, seed=depth, top=2**depth - 1)
    path = sf.write_mib(tmp_path / "raw.mib", frames, depth=depth, raw=True)
    cube = read_datacube(path, scan_shape=(2, 2))
    assert cube.meta["pixel_type"] == "R64"
    np.testing.assert_array_equal(np.asarray(cube.data), frames.reshape(2, 2, 64, 64))


def test_mib_without_hdr_scan_shape_from_line_flyback(tmp_path):
    t0 = np.datetime64("2024-05-01T10:00:00.000000000")
    # 3 lines of 4 positions: 1 ms dwell, a 5 ms flyback before each new line
    times = [str(t0 + np.timedelta64(i * 1000 + (i // 4) * 5000, "us")) for i in range(12)]
    frames = _pinned((12, 8, 8), np.uint16, seed=3, top=4095)
    cube = read_datacube(sf.write_mib(tmp_path / "fly.mib", frames, times=times))
    assert cube.shape == (3, 4, 8, 8) and cube.meta["scan_shape_source"] == "the frame timestamps (line flyback)"
    np.testing.assert_array_equal(np.asarray(cube.data), frames.reshape(3, 4, 8, 8))
    even = sf.write_mib(tmp_path / "even.mib", frames)  # evenly spaced: no line structure
    with pytest.raises(FileFormatError, match=r"12 frames .*no line flyback.*--scan-shape SY,SX"):
        read_datacube(even)
    assert read_datacube(even, scan_shape=(2, 6)).shape == (2, 6, 8, 8)
    blob = even.read_bytes()
    even.write_bytes(blob[:-10])
    with pytest.raises(FileFormatError, match=r"truncated: .* 11 whole Merlin frames"):
        read_datacube(even, scan_shape=(2, 6))


def test_blockfile_written_by_rsciio(tmp_path):
    from rsciio.blockfile import file_writer

    data = _pinned((3, 4, 16, 16), np.uint8, seed=4)
    axes = [{"name": n, "size": k, "scale": sc, "offset": 0.0, "units": u, "navigate": nav}
            for n, k, sc, u, nav in [("y", 3, 2.5, "nm", True), ("x", 4, 2.5, "nm", True),
                                     ("dy", 16, 0.02, "cm", False), ("dx", 16, 0.02, "cm", False)]]
    signal = {"data": data, "axes": axes, "metadata": {"General": {}, "Signal": {}},
              "original_metadata": {"blockfile_header": {"Beam_energy": 300000, "Camera_length": 1500, "Note": ""}},
              "attributes": {"_lazy": False}}
    path = tmp_path / "w.blo"
    file_writer(str(path), signal, show_progressbar=False)
    cube = read_datacube(path)
    np.testing.assert_array_equal(np.asarray(cube.data), data)
    assert cube.scan_step_nm == pytest.approx(2.5) and cube.meta["energy_kev"] == pytest.approx(300.0)
    # 0.02 cm per pixel at a 150 mm camera length, 300 kV
    assert cube.q_pixel_size == pytest.approx(optics.q_pixel_size_from_camera(2e-4, 0.15, 300.0), rel=1e-3)
    blob = path.read_bytes()
    path.write_bytes(blob[:-7])
    with pytest.raises(FileFormatError, match=r"truncated: .* its 3x4 scan of 16x16 patterns needs"):
        read_datacube(path)


def test_dm4_4d(tmp_path):
    data = _pinned((3, 2, 8, 6), np.uint16, seed=5)
    path = sf.write_dm4(tmp_path / "scan.dm4", data, scan_step_nm=1.5, q_per_nm=0.2, voltage=300000.0)
    cube = read_datacube(path)
    assert cube.meta["format"] == "dm" and cube.data.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(cube.data), data)
    assert cube.scan_step_nm == pytest.approx(1.5) and cube.q_pixel_size == pytest.approx(0.02)
    assert cube.meta["energy_kev"] == pytest.approx(300.0)
    from rsciio.digitalmicrograph import file_reader  # the peer reads the same file and calibration

    peer = file_reader(str(path))[0]
    np.testing.assert_array_equal(peer["data"], data)
    assert [(a["scale"], a["units"]) for a in peer["axes"]] == [(1.5, "nm")] * 2 + [(0.2, "1/nm")] * 2
    mrad = read_datacube(sf.write_dm4(tmp_path / "mrad.dm4", data, q_per_nm=0.5, q_units="mrad"))
    assert mrad.q_pixel_size == pytest.approx(0.5e-3 / optics.electron_wavelength_A(300.0))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 40])
    with pytest.raises(FileFormatError, match=r"scan.dm4"):
        read_datacube(path)
    flat = sf.write_dm4(tmp_path / "img.dm4", data[:1, :1])  # a 4D file with one position still reads
    assert read_datacube(flat).shape == (1, 1, 8, 6)


def test_velox_emd_frames_last(tmp_path):
    data = _pinned((3, 4, 8, 6), np.float32, seed=6)
    cube = read_datacube(sf.write_velox(tmp_path / "v.emd", data))
    try:
        assert cube.meta["format"] == "velox" and cube.shape == (3, 4, 8, 6)
        np.testing.assert_array_equal(np.asarray(cube.data), data)
        np.testing.assert_array_equal(cube.data[1:3, 2], data[1:3, 2])
        assert cube.q_pixel_size == pytest.approx(0.1) and cube.scan_step_nm == pytest.approx(2.5)
        assert cube.meta["energy_kev"] == pytest.approx(200.0) and cube.meta["convergence_mrad"] == pytest.approx(1.5)
    finally:
        cube.meta["file"].close()
    from rsciio.emd import file_reader  # the peer reads the same file as a stack of 12 frames

    peer = file_reader(str(tmp_path / "v.emd"))[0]
    np.testing.assert_array_equal(peer["data"], data.reshape(12, 8, 6))
    assert peer["axes"][2]["scale"] == pytest.approx(1.0) and peer["axes"][2]["units"] == "1 / nm"
    bare = sf.write_velox(tmp_path / "bare.emd", data, scan_size=False)
    with pytest.raises(FileFormatError, match=r"12 frames .*Scan.ScanSize.*--scan-shape"):
        read_datacube(bare)
    assert read_datacube(bare, scan_shape=(3, 4)).shape == (3, 4, 8, 6)


def test_arina_master_external_links_bitshuffle(tmp_path):
    data = _pinned((3, 4, 16, 16), np.uint16, seed=7)
    master = sf.write_arina(tmp_path, data, per_file=5)  # 3 data files: 5 + 5 + 2 frames
    cube = read_datacube(master)
    try:
        assert cube.meta["scan_shape_source"].startswith("its metadata") and cube.shape == (3, 4, 16, 16)
        np.testing.assert_array_equal(np.asarray(cube.data), data)
        np.testing.assert_array_equal(cube.rows(1, 2), data[1:2].astype(np.float32))  # spans two data files
        assert cube.meta["energy_kev"] == pytest.approx(200.0, abs=0.05)
        assert cube.q_pixel_size == pytest.approx(5e-4 / 0.025079, rel=1e-4)
        blob = pickle.dumps(cube.data)
        assert len(blob) < 4000 and pickle.loads(blob)._handle is None
    finally:
        cube.meta["file"].close()
    from rsciio.arina import file_reader

    peer = file_reader(str(master), navigation_shape=(3, 4))[0]["data"]
    np.testing.assert_array_equal(peer, data)
    one = sf.write_arina(tmp_path, data, nimages=1, ntrigger=12, name="pix")  # pixel trigger: no line length
    with pytest.raises(FileFormatError, match=r"12 frames .*ntrigger x nimages.*--scan-shape"):
        read_datacube(one)
    (tmp_path / "pix_data_000002.h5").unlink()
    with pytest.raises(FileFormatError, match=r"pix_master.h5"):
        read_datacube(one, scan_shape=(3, 4))


def test_empad_xml_and_raw(tmp_path):
    data = _pinned((3, 2, 128, 128), np.float32, seed=8)
    xml = sf.write_empad(tmp_path, data, fov_m=4e-7, voltage=300000.0, angle_rad=4e-4)
    for path in (xml, tmp_path / "scan_x2_y3.raw"):
        cube = read_datacube(path)
        assert cube.shape == (3, 2, 128, 128) and cube.data.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(cube.data), data)  # the 2 metadata rows are gone
    assert cube.meta["energy_kev"] == pytest.approx(300.0)
    assert cube.q_pixel_size == pytest.approx(4e-4 / optics.electron_wavelength_A(300.0))
    # a square field of view over a 3x2 scan: steps of 133.3 nm (y) and 200 nm (x), no single step
    assert cube.scan_step_nm is None and cube.meta["scan_step_nm_yx"] == pytest.approx((400 / 3, 200.0))
    from rsciio.empad import file_reader

    peer = file_reader(str(xml))[0]
    np.testing.assert_array_equal(peer["data"], data)
    assert [a["scale"] for a in peer["axes"][:2]] == pytest.approx([133.33333, 200.0])
    square = read_datacube(sf.write_empad(tmp_path, data[:2], fov_m=4e-7, name="sq"))
    assert square.scan_step_nm == pytest.approx(200.0)
    raw = tmp_path / "scan_x2_y3.raw"
    raw.write_bytes(raw.read_bytes()[:-4])
    with pytest.raises(FileFormatError, match=r"truncated: .* 5 whole EMPAD frames"):
        read_datacube(xml)


def test_frame_source_indexing_and_pickle(tmp_path):
    data = _pinned((4, 3, 5, 6), np.uint16, seed=9)
    cube = read_datacube(sf.write_dm4(tmp_path / "i.dm4", data))
    src = cube.data
    assert isinstance(src, FrameSource) and src.ndim == 4 and len(src) == 4
    np.testing.assert_array_equal(src[-1], data[-1])
    np.testing.assert_array_equal(src[::2, 1, 2:4], data[::2, 1, 2:4])
    np.testing.assert_array_equal(src[..., 0], data[..., 0])
    assert src[3:1].shape == (0, 3, 5, 6)
    with pytest.raises(IndexError):
        src[4]
    with pytest.raises(InputError, match="int or a slice"):
        src[[0, 1]]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(src))[1:3], data[1:3])
    out = tmp_path / "copy.h5"
    write_datacube(cube, out)  # row by row through the lazy source
    back = read_datacube(out)
    np.testing.assert_array_equal(back.data[()], data)
    _close(back)


_FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _read_all(path, **kw):
    try:
        cube = read_datacube(path, **kw)
        try:
            np.asarray(cube.data)
        finally:
            cube.meta["file"].close()
    except TomostrainError:
        pass


@pytest.fixture(scope="module")
def fuzz_seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    mib = sf.write_mib(folder / "seed.mib", _pinned((4, 8, 8), np.uint16, top=4095))
    blo = folder / "seed.blo"
    from rsciio.blockfile import file_writer

    axes = [{"name": n, "size": k, "scale": 1.0, "offset": 0.0, "units": u, "navigate": nav}
            for n, k, u, nav in [("y", 2, "nm", True), ("x", 2, "nm", True), ("dy", 8, "cm", False),
                                 ("dx", 8, "cm", False)]]
    file_writer(str(blo), {"data": _pinned((2, 2, 8, 8), np.uint8), "axes": axes, "metadata": {},
                           "original_metadata": {}, "attributes": {"_lazy": False}}, show_progressbar=False)
    return {"mib": mib.read_bytes(), "blo": blo.read_bytes()}


@pytest.mark.parametrize("kind", ["mib", "blo"])
def test_fuzz_mib_and_blockfile_raise_only_tomostrain_errors(tmp_path, fuzz_seeds, kind):
    seed = fuzz_seeds[kind]
    header = 384 if kind == "mib" else 0x1000 + 64

    @_FUZZ
    @given(edits=st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=8),
           head_edits=st.lists(st.tuples(st.integers(0, header - 1), st.sampled_from(b",0123456789MQURx ")),
                               max_size=6),
           cut=st.one_of(st.none(), st.integers(0, len(seed))),
           scan=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))))
    def check(edits, head_edits, cut, scan):
        blob = bytearray(seed)
        for i, v in edits + head_edits:
            blob[i] = v
        path = tmp_path / f"f.{'mib' if kind == 'mib' else 'blo'}"
        path.write_bytes(bytes(blob[:cut]) if cut is not None else bytes(blob))
        _read_all(path, scan_shape=scan)

    check()


def test_a_scan_bigger_than_ram_reads_row_by_row(tmp_path):
    """A 1024x1024 EMPAD scan is 68 GB (a sparse file here): opening it and reading rows touches
    only those rows."""
    xml = sf.write_empad(tmp_path, np.zeros((1, 1, 128, 128), np.float32))
    text = xml.read_text().replace("<pix_x>1</pix_x><pix_y>1</pix_y>", "<pix_x>1024</pix_x><pix_y>1024</pix_y>")
    xml.write_text(text.replace("scan_x1_y1.raw", "big.raw"))
    frame = np.zeros((130, 128), "<f4")
    frame[:128] = 7.0
    with open(tmp_path / "big.raw", "wb") as f:
        f.truncate(1024 * 1024 * frame.nbytes)
        f.seek(600 * 1024 * frame.nbytes + 5 * frame.nbytes)  # scan position (600, 5)
        f.write(frame.tobytes())
    if (tmp_path / "big.raw").stat().st_blocks * 512 > 2**30:
        pytest.skip("this filesystem has no sparse files")
    cube = read_datacube(xml)
    assert cube.shape == (1024, 1024, 128, 128) and cube.data.size * 4 > 64e9
    rows = cube.rows(600, 601)
    assert rows.shape == (1, 1024, 128, 128) and rows[0, 5].min() == 7.0 and rows[0, 4].max() == 0.0
    assert len(pickle.dumps(cube)) < 10000  # the whole cube travels as path + layout
