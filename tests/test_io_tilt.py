"""Tilt-series I/O: round trips on every format, flat/dark correction and -log, angle files, errors."""
import os

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from tomostrain.errors import FileFormatError, GeometryError, InputError
from tomostrain.io import TiltSeries, read_tilt_series, write_tilt_series
from tomostrain.io.tiltseries import FLOOR


@pytest.fixture
def series(rng):
    data = rng.random((5, 6, 7)).astype(np.float32)
    data[2, 3, 4] = 17.25  # a distinctive value at a known place: axis order is pinned
    return TiltSeries(data, np.array([-60.0, -30.5, 0.0, 30.25, 60.0]), pixel_size_nm=0.8)


def _fingerprint(*paths):
    return [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]


# ------------------------------------------------------------------------------ TiltSeries


def test_tiltseries_casts_and_validates_without_touching_input():
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    before = raw.copy()
    ts = TiltSeries(raw, [1, 2])
    assert ts.data.dtype == np.float32 and ts.angles_deg.dtype == np.float64
    assert ts.shape == (2, 3, 4) and ts.data[1, 2, 3] == 23.0
    np.testing.assert_array_equal(raw, before)


@pytest.mark.parametrize(
    "data, angles, error, match",
    [
        (np.zeros((3, 4)), [0, 1, 2], InputError, r"3D .*shape \(3, 4\)"),
        (np.zeros((0, 4, 4)), [], InputError, "empty"),
        (np.zeros((2, 3, 3), complex), [0, 1], InputError, "real numbers.*complex"),
        (np.zeros((3, 4, 4)), [0, 1], GeometryError, "2 tilt angles for 3 projections"),
        (np.zeros((2, 4, 4)), np.zeros((2, 1)), GeometryError, "1D"),
        (np.zeros((2, 4, 4)), [0, np.inf], InputError, r"tilt angles contain 1 NaN/Inf.*\(1,\)"),
    ],
)
def test_tiltseries_rejects_bad_input(data, angles, error, match):
    with pytest.raises(error, match=match):
        TiltSeries(data, angles)


def test_tiltseries_reports_nan_count_and_first_index():
    data = np.ones((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"2 NaN/Inf value\(s\); first at index \(1, 2, 3\)"):
        TiltSeries(data, [0, 1, 2])


def test_tiltseries_rejects_bad_pixel_size():
    with pytest.raises(InputError, match="pixel_size_nm"):
        TiltSeries(np.ones((1, 2, 2)), [0], pixel_size_nm=-1)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", ["s.h5", "s.hdf5", "s.mrc", "s.st", "s.tif", "s.tiff"])
def test_round_trip(tmp_path, series, name):
    path = tmp_path / name
    write_tilt_series(series, path)
    back = read_tilt_series(path)
    np.testing.assert_array_equal(back.data, series.data)
    assert back.data.dtype == np.float32 and back.data[2, 3, 4] == 17.25
    np.testing.assert_array_equal(back.angles_deg, series.angles_deg)
    assert back.pixel_size_nm == pytest.approx(0.8, rel=1e-6)
    assert back.meta["log_taken"] is False
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_writers_use_the_documented_layouts(tmp_path, series):
    write_tilt_series(series, tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as h5:
        assert h5["/exchange/data"].shape == (5, 6, 7)
        assert h5["/exchange/data"].attrs["pixel_size_nm"] == pytest.approx(0.8)
        np.testing.assert_array_equal(h5["/exchange/theta"][()], series.angles_deg)
    write_tilt_series(series, tmp_path / "s.mrc")
    with mrcfile.open(tmp_path / "s.mrc") as mrc:
        assert mrc.data.shape == (5, 6, 7) and mrc.data[2, 3, 4] == 17.25
        assert float(mrc.voxel_size.x) == pytest.approx(8.0)  # Å
    lines = (tmp_path / "s.rawtlt").read_text().split()
    assert [float(v) for v in lines] == list(series.angles_deg)


def test_reading_never_modifies_the_input(tmp_path, series):
    for name in ("s.h5", "s.mrc", "s.tif"):
        write_tilt_series(series, tmp_path / name)
    files = [tmp_path / n for n in ("s.h5", "s.mrc", "s.tif", "s.rawtlt")]
    before = _fingerprint(*files)
    for name in ("s.h5", "s.mrc", "s.tif"):
        read_tilt_series(tmp_path / name, log=True)
    assert _fingerprint(*files) == before


# ------------------------------------------------------------------------------ DXchange


def _dxchange(path, data, theta, white=None, dark=None, theta_units=None):
    with h5py.File(path, "w") as h5:
        h5["/exchange/data"] = data
        h5["/exchange/theta"] = theta
        if theta_units:
            h5["/exchange/theta"].attrs["units"] = theta_units
        if white is not None:
            h5["/exchange/data_white"] = white
        if dark is not None:
            h5["/exchange/data_dark"] = dark


def test_flat_dark_correction_and_log_by_hand(tmp_path):
    data = np.array([[[30, 55, 3]], [[100, 5, 40]]], np.uint16)  # 2 angles, 1 row, 3 cols
    white = np.array([[[110, 60, 50]], [[90, 60, 50]]], np.uint16)  # mean 100, 60, 50
    dark = np.array([[[10, 5, 10]], [[10, 5, 10]]], np.uint16)  # mean 10, 5, 10
    path = tmp_path / "x.h5"
    _dxchange(path, data, [0.0, 90.0], white, dark)
    # (data - dark) / (white - dark); 3 - 10 < 0 and 5 - 5 = 0 are clipped to FLOOR
    expected = np.array([[[20 / 90, 50 / 55, FLOOR]], [[90 / 90, FLOOR, 30 / 40]]])
    lin = read_tilt_series(path, log=False)
    np.testing.assert_allclose(lin.data, expected, rtol=1e-6)
    assert lin.meta["flat_corrected"] is True and lin.meta["log_taken"] is False
    auto = read_tilt_series(path)  # white field present -> X-ray transmission -> -log
    np.testing.assert_allclose(auto.data, -np.log(expected), rtol=1e-5)
    assert auto.meta["log_taken"] is True
    assert auto.data[1, 0, 0] == 0.0 and np.isfinite(auto.data).all()


def test_white_without_dark_and_electron_data_without_fields(tmp_path):
    path = tmp_path / "w.h5"
    _dxchange(path, np.full((1, 1, 2), 50.0), [0.0], white=np.full((3, 1, 2), 200.0))
    np.testing.assert_allclose(read_tilt_series(path, log=False).data, 0.25)
    haadf = tmp_path / "haadf.h5"
    _dxchange(haadf, np.full((2, 2, 2), 7.0), [0.0, 1.0])
    ts = read_tilt_series(haadf)  # no flat field: electron data stay linear
    assert ts.meta["log_taken"] is False and ts.meta["flat_corrected"] is False
    np.testing.assert_allclose(ts.data, 7.0)
    np.testing.assert_allclose(read_tilt_series(haadf, log=True).data, -np.log(7.0), rtol=1e-6)
    assert ts.pixel_size_nm is None


def test_theta_in_radians_is_converted_and_custom_dataset(tmp_path):
    path = tmp_path / "r.h5"
    _dxchange(path, np.ones((2, 2, 2)), np.radians([-45.0, 30.0]), theta_units="rad")
    np.testing.assert_allclose(read_tilt_series(path).angles_deg, [-45.0, 30.0])
    with h5py.File(path, "a") as h5:
        h5["/other/proj"] = np.full((2, 2, 2), 3.0)
    np.testing.assert_allclose(read_tilt_series(path, dataset="/other/proj").data, 3.0)


def test_dxchange_errors(tmp_path):
    path = tmp_path / "x.h5"
    _dxchange(path, np.ones((3, 4, 4)), [0.0, 1.0])
    with pytest.raises(GeometryError, match="2 tilt angles.*3 projections"):
        read_tilt_series(path)
    with pytest.raises(FileFormatError, match=r"no dataset '/exchange/nope'.*/exchange/data"):
        read_tilt_series(path, dataset="/exchange/nope", angles=[0, 1, 2])
    bad = tmp_path / "nan.h5"
    data = np.ones((2, 3, 3))
    data[1, 0, 2] = np.nan
    _dxchange(bad, data, [0.0, 1.0])
    with pytest.raises(FileFormatError, match=r"nan.h5.*1 NaN/Inf.*\(1, 0, 2\)"):
        read_tilt_series(bad)
    flat = tmp_path / "flat.h5"
    _dxchange(flat, np.ones((2, 3, 3)), [0.0, 1.0], white=np.ones((2, 3, 4)))
    with pytest.raises(FileFormatError, match="data_white must be"):
        read_tilt_series(flat)
    two_d = tmp_path / "twod.h5"
    _dxchange(two_d, np.ones((3, 3)), [0.0, 1.0, 2.0])
    with pytest.raises(FileFormatError, match="must be 3D"):
        read_tilt_series(two_d)
    no_theta = tmp_path / "notheta.h5"
    with h5py.File(no_theta, "w") as h5:
        h5["/exchange/data"] = np.ones((2, 2, 2))
    with pytest.raises(FileFormatError, match=r"no tilt angles.*notheta.rawtlt.*angles="):
        read_tilt_series(no_theta)
    np.testing.assert_array_equal(read_tilt_series(no_theta, angles=[5, 6]).angles_deg, [5, 6])


def test_missing_empty_non_hdf5_and_truncated_files(tmp_path, series):
    with pytest.raises(FileFormatError, match="not found"):
        read_tilt_series(tmp_path / "absent.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        read_tilt_series(tmp_path / "empty.h5")
    (tmp_path / "text.h5").write_bytes(b"this is not an HDF5 file at all\n" * 8)
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        read_tilt_series(tmp_path / "text.h5")
    with pytest.raises(FileFormatError, match="unknown tilt-series format '.xyz'"):
        read_tilt_series(tmp_path / "a.xyz")
    for name in ("t.h5", "t.mrc", "t.tif"):
        full = tmp_path / name
        write_tilt_series(series, full)
        blob = full.read_bytes()
        full.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(FileFormatError, match="truncated"):
            read_tilt_series(full)


# ------------------------------------------------------------------------------ angle files


def test_angle_file_choice_and_override(tmp_path, series):
    stack = tmp_path / "s.mrc"
    write_tilt_series(series, stack)  # writes s.rawtlt
    (tmp_path / "s.tlt").write_text("\n".join(str(a + 1) for a in series.angles_deg) + "\n\n")
    np.testing.assert_array_equal(read_tilt_series(stack).angles_deg, series.angles_deg)
    ali = tmp_path / "s.ali"
    ali.write_bytes(stack.read_bytes())  # an aligned stack: its refined angles are in .tlt
    np.testing.assert_array_equal(read_tilt_series(ali).angles_deg, series.angles_deg + 1)
    (tmp_path / "s.rawtlt").unlink()
    np.testing.assert_array_equal(read_tilt_series(stack).angles_deg, series.angles_deg + 1)
    custom = tmp_path / "angles.txt"
    custom.write_text("1\n2\n3\n4\n5\n")
    assert list(read_tilt_series(stack, angles=custom).angles_deg) == [1, 2, 3, 4, 5]
    assert list(read_tilt_series(stack, angles=np.arange(5)).angles_deg) == [0, 1, 2, 3, 4]


def test_tiff_without_resolution_and_angle_errors(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4))
    with pytest.raises(FileFormatError, match=r"plain.rawtlt, .*plain.tlt.*angles="):
        read_tilt_series(path)
    ts = read_tilt_series(path, angles=[-10, 10])
    assert ts.pixel_size_nm is None and ts.data[1, 2, 3] == 23.0
    with pytest.raises(GeometryError, match="3 tilt angles .*argument.* 2 projections"):
        read_tilt_series(path, angles=[1, 2, 3])
    (tmp_path / "plain.rawtlt").write_text("0\n1\n2\n")
    with pytest.raises(GeometryError, match=r"3 tilt angles .*plain.rawtlt"):
        read_tilt_series(path)
    (tmp_path / "plain.rawtlt").write_text("0\nten\n")
    with pytest.raises(FileFormatError, match="line 2: expected one angle"):
        read_tilt_series(path)
    (tmp_path / "plain.rawtlt").write_text("\n\n")
    with pytest.raises(FileFormatError, match="holds no angles"):
        read_tilt_series(path)
    (tmp_path / "plain.rawtlt").write_text("0\nnan\n")
    with pytest.raises(FileFormatError, match="tilt angles contain 1 NaN"):
        read_tilt_series(path)


def test_failed_write_leaves_no_partial_file(tmp_path, series, monkeypatch):
    import tomostrain.io.tiltseries as mod

    (tmp_path / "s.mrc").write_bytes(b"old")

    def boom(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "_write_mrc", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_tilt_series(series, tmp_path / "s.mrc")
    assert sorted(os.listdir(tmp_path)) == ["s.mrc"]
    assert (tmp_path / "s.mrc").read_bytes() == b"old"


@pytest.mark.gpu
def test_cupy_series_round_trip(tmp_path, series):
    import cupy

    gpu = TiltSeries(cupy.asarray(series.data), series.angles_deg, 0.8)
    assert isinstance(gpu.data, cupy.ndarray)
    write_tilt_series(gpu, tmp_path / "g.h5")
    np.testing.assert_array_equal(read_tilt_series(tmp_path / "g.h5").data, series.data)
