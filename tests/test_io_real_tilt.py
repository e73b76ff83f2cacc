"""Real tilt-series files (../shared/data/etspy, the ETSpy 1.3.0 wheel): shape, dtype, angles,
calibration and detector offset; lazy reads; damaged copies give one-line tomostrain errors; the
vacuum-level estimate on generated series; a bounded hypothesis fuzz of the MRC/mdoc/angle readers."""
import pickle
import shutil
import warnings

import mrcfile
import numpy as np
import pytest
from _data import real_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomostrain import cli
from tomostrain.errors import FileFormatError, GeometryError, TomostrainError
from tomostrain.io import TiltSeries, open_tilt_series, read_tilt_series, write_tilt_series
from tomostrain.io.mdoc import read_angle_file, read_mdoc
from tomostrain.io.offset import vacuum_level

HAADF_ANGLES = np.arange(-76.0, 76.5, 2.0)


def _raw_mrc(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as mrc:
            return np.array(mrc.data)


# ------------------------------------------------------------------------------ HAADF.mrc (FEI)


def test_haadf_mrc_without_map_id_reads_with_angles_calibration_and_offset():
    path = real_file("etspy/HAADF.mrc")
    ts = read_tilt_series(path)
    assert ts.shape == (77, 256, 256) and ts.data.dtype == np.float32
    assert ts.meta["dtype"] == "int16" and any("Map ID" in w for w in ts.meta["mrc_warnings"])
    np.testing.assert_allclose(ts.angles_deg, HAADF_ANGLES)
    assert ts.pixel_size_nm == pytest.approx(3.36, rel=1e-6)
    assert ts.meta["extended_header"] == "FEI legacy" and ts.meta["ht_kv"] == pytest.approx(300.0)
    assert "angles_warning" not in ts.meta  # the .rawtlt and the FEI header agree
    # the vacuum level (detector offset) is found near the bottom of the int16 range and removed
    raw = _raw_mrc(path).astype(np.float64)
    offset = ts.meta["detector_offset"]
    assert raw.min() == -31908 and -31900 < offset < -31870
    np.testing.assert_allclose(ts.data, raw - offset, atol=1e-3)
    vacuum = ts.data[ts.data < np.percentile(ts.data, 40)]
    assert abs(np.median(vacuum)) < 10 and ts.meta["vacuum_noise"] < 20
    assert "subtracted" in ts.meta["detector_offset_method"]


def test_haadf_angles_from_the_fei_header_alone_and_precedence(tmp_path):
    copy = tmp_path / "HAADF.mrc"
    shutil.copyfile(real_file("etspy/HAADF.mrc"), copy)  # no .rawtlt beside it
    ts = read_tilt_series(copy, offset=None)
    np.testing.assert_allclose(ts.angles_deg, HAADF_ANGLES, atol=1e-4)
    assert "FEI legacy extended header" in ts.meta["angles_source"]
    assert ts.meta["detector_offset"] == 0.0 and ts.data.min() == -31908.0
    (tmp_path / "HAADF.rawtlt").write_text("".join(f"{a + 0.5}\n" for a in HAADF_ANGLES))
    with pytest.warns(UserWarning, match="differs from .*HAADF.rawtlt by up to 0.5 deg"):
        ts = read_tilt_series(copy)
    np.testing.assert_allclose(ts.angles_deg, HAADF_ANGLES + 0.5)  # the sibling file wins
    assert "extended header" in ts.meta["angles_warning"]
    explicit = np.linspace(-70, 70, 77)
    with pytest.warns(UserWarning):
        assert np.array_equal(read_tilt_series(copy, angles=explicit).angles_deg, explicit)
    with pytest.raises(GeometryError, match="76 tilt angles .*argument.* 77 projections"):
        read_tilt_series(copy, angles=explicit[:-1])


def test_lazy_source_pickles_and_reads_row_blocks_like_the_full_read():
    src = open_tilt_series(real_file("etspy/HAADF.mrc"))
    assert src.shape == (77, 256, 256)
    again = pickle.loads(pickle.dumps(src))
    full = again.to_series()
    block = again.read(rows=slice(100, 117))
    assert block.dtype == np.float32 and block.shape == (77, 17, 256)
    np.testing.assert_array_equal(block, full.data[:, 100:117])
    assert again.meta["detector_offset"] == full.meta["detector_offset"] == src.offset


def test_haadf_ali_is_the_same_series():
    ali = real_file("etspy/HAADF.ali")
    mrc = real_file("etspy/HAADF.mrc")
    a, m = read_tilt_series(ali), read_tilt_series(mrc)
    np.testing.assert_array_equal(a.data, m.data)
    np.testing.assert_array_equal(a.angles_deg, m.angles_deg)


def test_haadf_aligned_hspy_from_etspy():
    ts = read_tilt_series(real_file("etspy/HAADF_Aligned.hspy"), offset=None)
    assert ts.shape == (77, 256, 256) and ts.meta["dtype"] == "float32"
    np.testing.assert_allclose(ts.angles_deg, HAADF_ANGLES)
    assert ts.pixel_size_nm == pytest.approx(3.36, rel=1e-6)
    assert ts.meta["etspy_tiltaxis"] == pytest.approx(-2.793, abs=1e-3)


def test_catalyst_hspy_lazy_rows_only():
    src = open_tilt_series(real_file("etspy/Catalyst3DModel_TiltSeries180.hspy"))
    assert src.shape == (90, 600, 600) and src.pixel_size_nm == pytest.approx(1.0)
    np.testing.assert_allclose(src.angles_deg, np.arange(0.0, 180.0, 2.0))
    block = src.read(rows=slice(290, 294))
    assert block.shape == (90, 4, 600) and block.max() > 0 and src.meta["detector_offset"] == 0.0


# ------------------------------------------------------------------------------ SerialEM


def test_serialem_multitilt_frames_summed_with_mdoc_angle_and_pixel_size():
    path = real_file("etspy/SerialEM_MultiTilt_Test/test_000.mrc")
    ts = read_tilt_series(path)
    assert ts.shape == (1, 1024, 1024) and ts.meta["frames_summed"] == [2]
    np.testing.assert_allclose(ts.angles_deg, [-0.000488])
    assert ts.pixel_size_nm == pytest.approx(0.788) and ts.meta["ht_kv"] == pytest.approx(300)
    assert ts.meta["mdoc"].endswith("test_000.mdoc")
    raw = _raw_mrc(path).astype(np.float64)
    np.testing.assert_allclose(ts.data[0], raw.sum(0) - 2 * ts.meta["detector_offset"])
    # one angle per frame keeps the frames apart
    with pytest.warns(UserWarning, match="gives 1 angles, argument 2"):
        apart = read_tilt_series(path, angles=[0.0, 0.0], offset=None)
    assert apart.shape == (2, 1024, 1024) and apart.data[1, 5, 7] == raw[1, 5, 7]


def test_serialem_multiframe_folder_gives_0_5_minus5_in_file_order():
    folder = real_file("etspy/SerialEM_Multiframe_Test/test_000.mrc").parent
    src = open_tilt_series(folder)
    assert src.shape == (3, 1024, 1024) and src.meta["frames_summed"] == [2, 2, 2]
    np.testing.assert_allclose(src.angles_deg, [-0.000488, 5.00054, -5.00152], atol=1e-5)
    np.testing.assert_allclose(src.angles_deg, [0, 5, -5], atol=0.01)
    assert src.pixel_size_nm == pytest.approx(0.788)
    one = read_tilt_series(folder / "test_001.mrc")  # both test_001.mdoc and .mrc.mdoc exist
    assert one.meta["mdoc"].endswith("test_001.mrc.mdoc")
    np.testing.assert_array_equal(src.read(rows=slice(0, 3))[1], one.data[0, :3])


# ------------------------------------------------------------------------------ Gatan DM


def test_dm_series_folder_angles_from_stage_alpha():
    folder = real_file("etspy/DM_Series_Test/BF_001.dm3").parent
    ts = read_tilt_series(folder)
    assert ts.shape == (3, 128, 128) and ts.meta["order"] == "file names in natural order"
    np.testing.assert_allclose(ts.angles_deg, [-72.003, -69.0036, -66.0042], atol=1e-3)
    assert ts.pixel_size_nm == pytest.approx(19.1087, rel=1e-4)
    assert "Stage Alpha" in ts.meta["angles_source"] and not ts.data.any()  # pixels are blanked
    files = [folder / "BF_003.dm3", folder / "BF_001.dm3"]
    np.testing.assert_allclose(open_tilt_series(files).angles_deg, [-66.0042, -72.003], atol=1e-3)


def test_haadf_dm3_stack_angles_calibration_and_uint16_offset():
    ts = read_tilt_series(real_file("etspy/HAADF.dm3"))
    # a different needle series from HAADF.mrc (91 tilts of 64 x 64, -90..+90)
    assert ts.shape == (91, 64, 64) and ts.meta["dtype"] == "uint16"
    np.testing.assert_allclose(ts.angles_deg, np.arange(-90.0, 90.5, 2.0))
    assert ts.pixel_size_nm == pytest.approx(17.9949, rel=1e-4)
    assert 505 < ts.meta["detector_offset"] < 530  # uint16 data starting near 513


# ------------------------------------------------------------------------------ damaged copies


def _one_line_error(path, capsys, tmp_path, **kw):
    with pytest.raises(FileFormatError) as info:
        read_tilt_series(path, **kw)
    assert "\n" not in str(info.value) and path.stem in str(info.value)
    code = cli.main(["tomo", str(path), "-o", str(tmp_path / "out.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("tomostrain: error:")
    return str(info.value)


@pytest.mark.parametrize("name", ["etspy/HAADF.mrc", "etspy/DM_Series_Test/BF_001.dm3",
                                  "etspy/HAADF_Aligned.hspy",
                                  "etspy/SerialEM_MultiTilt_Test/test_000.mrc"])
def test_truncated_copies_give_one_line_errors(tmp_path, capsys, name):
    src = real_file(name)
    blob = src.read_bytes()
    for cut in (len(blob) // 2, 700):
        bad = tmp_path / f"cut{cut}{src.suffix}"
        bad.write_bytes(blob[:cut])
        _one_line_error(bad, capsys, tmp_path)


def test_corrupted_headers_and_metadata_give_one_line_errors(tmp_path, capsys):
    blob = bytearray(real_file("etspy/HAADF.mrc").read_bytes())
    bad = tmp_path / "badmode.mrc"
    blob[12:16] = (77).to_bytes(4, "little")  # mode 77
    bad.write_bytes(bytes(blob))
    assert "mode 77" in _one_line_error(bad, capsys, tmp_path)
    blob[12:16] = (1).to_bytes(4, "little")
    blob[8:12] = (500).to_bytes(4, "little")  # nz = 500: more data announced than present
    bad = tmp_path / "bignz.mrc"
    bad.write_bytes(bytes(blob))
    assert "truncated" in _one_line_error(bad, capsys, tmp_path)

    mdoc_dir = tmp_path / "serialem"
    mdoc_dir.mkdir()
    stack = real_file("etspy/SerialEM_MultiTilt_Test/test_000.mrc")
    shutil.copyfile(stack, mdoc_dir / "test_000.mrc")
    text = stack.with_suffix(".mdoc").read_text()
    (mdoc_dir / "test_000.mdoc").write_text(text.replace("TiltAngle = -0.000488", "TiltAngle = abc", 1))
    assert "TiltAngle must be a number" in _one_line_error(mdoc_dir / "test_000.mrc", capsys, tmp_path)
    (mdoc_dir / "test_000.mdoc").write_text(text.split("[ZValue = 1]")[0])
    assert "1 frames" in _one_line_error(mdoc_dir / "test_000.mrc", capsys, tmp_path)
    (mdoc_dir / "test_000.mdoc").write_bytes(b"\x00\x01\x02" * 50)
    assert "binary" in _one_line_error(mdoc_dir / "test_000.mrc", capsys, tmp_path)

    dm = bytearray(real_file("etspy/DM_Series_Test/BF_002.dm3").read_bytes())
    dm[0:24] = b"\xff" * 24
    (tmp_path / "bad.dm3").write_bytes(bytes(dm))
    assert "DM" in _one_line_error(tmp_path / "bad.dm3", capsys, tmp_path)


@pytest.mark.parametrize("name, span", [("etspy/HAADF_Aligned.hspy", 20000),
                                        ("etspy/DM_Series_Test/BF_001.dm3", 4000)])
def test_randomly_corrupted_copies_raise_only_tomostrain_errors(tmp_path, name, span):
    blob = real_file(name).read_bytes()
    rng = np.random.default_rng(7)
    for k in range(12):  # h5py/rsciio raise OSError, RuntimeError, KeyError, ... on these
        damaged = np.frombuffer(blob, np.uint8).copy()
        damaged[rng.integers(0, span, 16)] = rng.integers(0, 256, 16)
        path = tmp_path / f"c{k}{real_file(name).suffix}"
        path.write_bytes(damaged.tobytes())
        try:
            read_tilt_series(path, offset=None)
        except TomostrainError as exc:
            assert "\n" not in str(exc)


def test_missing_angles_name_the_option(tmp_path, capsys):
    stack = tmp_path / "plain.mrc"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(np.zeros((3, 8, 8), np.int16))
    message = _one_line_error(stack, capsys, tmp_path)
    assert "--angles" in message and "plain.rawtlt" in message


# ------------------------------------------------------------------------------ formats made here


def test_fei1_extended_header_gives_angles_pixel_size_and_ht(tmp_path):
    from mrcfile.dtypes import get_ext_header_dtype

    dtype = get_ext_header_dtype(b"FEI1")
    ext = np.zeros(3, dtype=dtype)
    ext["Metadata size"], ext["Metadata version"] = dtype.itemsize, 1
    ext["Alpha tilt"], ext["Pixel size X"], ext["HT"] = [-30.0, 0.0, 30.5], 2.5e-10, 200e3
    path = tmp_path / "epu.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8))
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
    ts = read_tilt_series(path)
    np.testing.assert_allclose(ts.angles_deg, [-30.0, 0.0, 30.5])
    assert ts.pixel_size_nm == pytest.approx(0.25) and ts.meta["ht_kv"] == pytest.approx(200)


def test_velox_emd_frames_with_alpha_tilt(tmp_path):
    import json

    import h5py

    path = tmp_path / "tilt.emd"
    data = np.random.default_rng(0).integers(0, 1000, (6, 5, 3)).astype(np.uint16)  # (y, x, frames)
    alphas = np.radians([-40.0, 0.0, 40.0])
    with h5py.File(path, "w") as h5:
        g = h5.create_group("Data/Image/abc123")
        g["Data"] = data
        blobs = [json.dumps({"Stage": {"AlphaTilt": str(a)}, "BinaryResult": {"Detector": "HAADF",
                 "PixelSize": {"width": "1.5e-9"}}, "Optics": {"AccelerationVoltage": "300000"}}).encode()
                 for a in alphas]
        meta = np.zeros((max(map(len, blobs)) + 8, 3), np.uint8)
        for k, b in enumerate(blobs):
            meta[: len(b), k] = np.frombuffer(b, np.uint8)
        g["Metadata"] = meta
    ts = read_tilt_series(path, offset=None)
    assert ts.shape == (3, 6, 5)
    np.testing.assert_array_equal(ts.data[2], data[:, :, 2])
    np.testing.assert_allclose(ts.angles_deg, [-40.0, 0.0, 40.0])
    assert ts.pixel_size_nm == pytest.approx(1.5) and ts.meta["detector"] == "HAADF"


# ------------------------------------------------------------------------------ vacuum level


@pytest.mark.parametrize("vacuum, noise, offset, seed", [
    (0.05, 3.0, -31900.0, 0), (0.2, 20.0, 513.0, 1), (0.5, 40.0, 2000.5, 2), (0.8, 10.0, -100.0, 3),
    (0.3, 60.0, 0.0, 4), (0.1, 5.0, 513.0, 5)])
def test_vacuum_level_on_generated_series(vacuum, noise, offset, seed):
    rng = np.random.default_rng(seed)
    n = 64
    yy, xx = np.mgrid[:n, :n]
    series = np.zeros((10, n, n))
    for k in range(10):  # a bright blob that fills 1 - vacuum of the field, moving with k
        radius = np.sqrt((1 - vacuum) * n * n / np.pi)
        blob = np.hypot(yy - n / 2 - k, xx - n / 2 + k) < radius
        series[k] = np.where(blob, 800 + 400 * np.sin(xx / 7.0) ** 2, 0.0)
    data = series + offset + rng.normal(0, noise, series.shape)
    found = vacuum_level(data)
    if offset == 0.0:
        assert found["level"] == 0.0 and not found["applied"]
    else:
        assert found["applied"] and abs(found["level"] - offset) < max(0.1 * noise, 0.5)


def test_offset_free_series_read_back_unchanged(tmp_path):
    from tomostrain import synthetic

    vol = np.zeros((24, 48, 48), np.float32)
    vol[:, 14:34, 16:30] = 1.0
    data, _ = synthetic.tilt_series(vol, np.linspace(-60, 60, 9), dose=300.0, seed=3)
    write_tilt_series(TiltSeries(data, np.linspace(-60, 60, 9)), tmp_path / "s.h5")
    ts = read_tilt_series(tmp_path / "s.h5")
    assert ts.meta["detector_offset"] == 0.0
    np.testing.assert_array_equal(ts.data, data)
    uniform = np.random.default_rng(0).random((4, 40, 40))  # no vacuum at all: nothing subtracted
    assert vacuum_level(uniform)["level"] == 0.0


def test_offset_option_none_and_value(tmp_path):
    path = tmp_path / "o.h5"
    write_tilt_series(TiltSeries(np.full((2, 40, 40), 600.0), [0, 1]), path)
    assert read_tilt_series(path).meta["detector_offset"] == 600.0  # constant: all vacuum
    assert read_tilt_series(path, offset=None).data.max() == 600.0
    assert read_tilt_series(path, offset=100).data.max() == 500.0
    assert read_tilt_series(path, offset="none").meta["detector_offset_method"].startswith("none")


# ------------------------------------------------------------------------------ fuzz


def _small_mrc(path):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5))
        mrc.voxel_size = 2.0


FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1023 + 240), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.integers(0, 1300)))
def test_fuzz_mrc_reader_raises_only_tomostrain_errors(tmp_path, edits, cut):
    path = tmp_path / "f.mrc"
    _small_mrc(path)
    blob = bytearray(path.read_bytes())
    for pos, value in edits:
        if pos < len(blob):
            blob[pos] = value
    path.write_bytes(bytes(blob[:cut] if cut is not None else blob))
    try:
        read_tilt_series(path, angles=[0, 1, 2, 3])
    except TomostrainError:
        pass


_MDOC_LINES = st.sampled_from(["PixelSpacing = 7.88", "Voltage = 300", "[ZValue = 0]", "[ZValue = 1]",
                               "[ZValue = 1]", "[ZValue = -3]", "[ZValue = x]", "TiltAngle = 5.0",
                               "TiltAngle = nan", "TiltAngle =", "TiltAngle = 1e400", "[T = SerialEM]",
                               "garbage", "= =", "PixelSpacing = -1", "[ZValue = 2.5]", ""])


@FUZZ
@given(lines=st.lists(_MDOC_LINES, max_size=14), noise=st.binary(max_size=20))
def test_fuzz_mdoc_and_angle_files(tmp_path, lines, noise):
    text = "\n".join(lines).encode() + noise
    for reader, name in ((read_mdoc, "f.mdoc"), (read_angle_file, "f.rawtlt")):
        path = tmp_path / name
        path.write_bytes(text)
        try:
            out = reader(path)
        except TomostrainError:
            continue
        angles = out.angles_deg if hasattr(out, "angles_deg") else out
        assert angles.ndim == 1 and angles.size >= 1


def test_hdf5_theta_is_never_summed_and_explicit_angles_win_over_a_bad_theta(tmp_path):
    import h5py

    path = tmp_path / "rep.h5"
    with h5py.File(path, "w") as h5:
        h5["/exchange/data"] = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
        h5["/exchange/theta"] = [0.0, 0.0, 10.0]  # a repeated angle is two projections, not frames
    ts = read_tilt_series(path)
    assert ts.shape == (3, 4, 4) and "frames_summed" not in ts.meta
    with h5py.File(path, "a") as h5:
        del h5["/exchange/theta"]
        h5["/exchange/theta"] = [0.0, 1.0]
    with pytest.raises(GeometryError, match="2 tilt angles \\(file\\) for 3 projections"):
        read_tilt_series(path)
    with pytest.warns(UserWarning, match="file gives 2 angles"):
        np.testing.assert_array_equal(read_tilt_series(path, angles=[1, 2, 3]).angles_deg, [1, 2, 3])


def test_serialem_extended_header_angle_without_mdoc(tmp_path):
    copy = tmp_path / "lone.mrc"
    shutil.copyfile(real_file("etspy/SerialEM_Multiframe_Test/test_002.mrc"), copy)
    ts = read_tilt_series(copy)  # no mdoc: the SERI header's tilt x 100, frames still summed
    np.testing.assert_array_equal(ts.angles_deg, [-5.0])
    assert "SerialEM/IMOD extended header" in ts.meta["angles_source"] and ts.meta["frames_summed"] == [2]
    with_mdoc = open_tilt_series(real_file("etspy/SerialEM_Multiframe_Test/test_002.mrc"))
    assert with_mdoc.meta["angles_source"].endswith("mdoc (TiltAngle)") and "angles_warning" not in with_mdoc.meta


@pytest.mark.parametrize("name", ["x.h5", "x.mrc", "x.tif"])
def test_row_blocks_equal_the_full_read_with_flat_dark_and_log(tmp_path, name):
    import h5py

    rng = np.random.default_rng(8)
    data = rng.integers(200, 4000, (5, 12, 9)).astype(np.uint16)
    path = tmp_path / name
    if name.endswith(".h5"):
        with h5py.File(path, "w") as h5:
            h5["/exchange/data"] = data
            h5["/exchange/theta"] = np.linspace(0, 180, 5)
            h5["/exchange/data_white"] = rng.integers(4000, 5000, (3, 12, 9)).astype(np.uint16)
            h5["/exchange/data_dark"] = rng.integers(50, 100, (2, 12, 9)).astype(np.uint16)
    else:
        write_tilt_series(TiltSeries(data, np.linspace(-60, 60, 5)), path)
    src = pickle.loads(pickle.dumps(open_tilt_series(path, offset=150.0 if not name.endswith(".h5") else "auto")))
    full = src.to_series().data
    blocks = np.concatenate([src.read(rows=slice(r, r + 5)) for r in range(0, 12, 5)], axis=1)
    np.testing.assert_array_equal(blocks, full)
    np.testing.assert_array_equal(src.read(rows=slice(1, 12, 3)), full[:, 1:12:3])
    if name.endswith(".h5"):
        assert src.meta["log_taken"] and src.meta["detector_offset"] == 0.0
    else:
        np.testing.assert_array_equal(full, data - 150.0)


@pytest.mark.gpu
def test_apply_xf_on_the_gpu_equals_the_cpu():
    import cupy

    from tomostrain.reconstruction.xf import alignment_to_xf, apply_xf

    rng = np.random.default_rng(9)
    data = rng.random((4, 16, 20)).astype(np.float32)
    xf = alignment_to_xf(rng.normal(0, 2, (4, 2)), 12.0)
    np.testing.assert_allclose(cupy.asnumpy(apply_xf(cupy.asarray(data), xf)), apply_xf(data, xf), atol=1e-5)
