"""Real 4D-STEM files (../shared/data/4dstem, see its README): shape, dtype, calibration, laziness,
agreement with RosettaSciIO / h5py, and clear one-line errors on truncated or corrupted copies."""
import pickle
import shutil

import h5py
import numpy as np
import pytest
from _data import real_file

from tomostrain import cli
from tomostrain.errors import FileFormatError
from tomostrain.io import read_datacube
from tomostrain.io.stem_formats import FrameSource
from tomostrain.strain import optics


def _close(cube):
    cube.meta["file"].close()


def _one_line_error(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_blockfile_test1_shape_calibration_and_rsciio_agree():
    path = real_file("4dstem/test1.blo")
    cube = read_datacube(path)
    assert isinstance(cube.data, FrameSource) and cube.meta["format"] == "blockfile"
    assert cube.shape == (3, 2, 144, 144) and cube.data.dtype == np.uint8
    assert cube.scan_step_nm == pytest.approx(12.8) and cube.meta["energy_kev"] == pytest.approx(200.0)
    # q from the header: 100/SDP cm per screen pixel over the 200 mm camera length, at 200 kV
    angle = (100.0 / 6226) * 1e-2 / 0.2
    assert cube.q_pixel_size == pytest.approx(angle / 0.025079, rel=1e-4)
    assert cube.meta["camera_length_m"] == pytest.approx(0.2)
    from rsciio.blockfile import file_reader

    peer = file_reader(str(path))[0]["data"]
    np.testing.assert_array_equal(np.asarray(cube.data), peer)
    np.testing.assert_array_equal(cube.rows(1, 3), peer[1:3].astype(np.float32))
    again = pickle.loads(pickle.dumps(cube.data))  # what travels to a worker: path and layout only
    assert len(pickle.dumps(cube.data)) < 2000
    np.testing.assert_array_equal(again[2], peer[2])
    assert (peer.max(), peer.min()) == (255, 0)


def test_merlin_single_frame_12bit_big_endian():
    path = real_file("4dstem/test.mib")
    cube = read_datacube(path)
    assert cube.shape == (1, 1, 256, 256) and cube.data.dtype == np.uint16
    assert cube.meta["counter_depth"] == 12 and cube.meta["pixel_type"] == "U16"
    assert cube.meta["scan_shape_source"] == "single frame" and cube.q_pixel_size is None
    raw = np.frombuffer(path.read_bytes()[384:], ">u2").reshape(256, 256)  # the bytes as stored
    frame = np.asarray(cube.data)[0, 0]
    np.testing.assert_array_equal(frame, raw[::-1])  # detector rows reversed, as RosettaSciIO does
    assert frame.max() == 717 < 4096
    from rsciio.quantumdetector import file_reader

    np.testing.assert_array_equal(frame, file_reader(str(path))[0]["data"].squeeze())


def test_merlin_nine_frames_need_a_scan_shape():
    path = real_file("4dstem/test_multi.mib")
    with pytest.raises(FileFormatError, match=r"holds 9 frames.*no \.hdr.*--scan-shape") as err:
        read_datacube(path)
    _one_line_error(err, path)
    cube = read_datacube(path, scan_shape=(3, 3))
    assert cube.shape == (3, 3, 256, 256) and cube.data.dtype == np.uint8 and cube.meta["counter_depth"] == 6
    data = np.asarray(cube.data)
    assert data.max() <= 63
    from rsciio.quantumdetector import file_reader

    np.testing.assert_array_equal(data.reshape(9, 256, 256), file_reader(str(path))[0]["data"])
    assert read_datacube(path, scan_shape=(1, 9)).shape == (1, 9, 256, 256)
    with pytest.raises(FileFormatError, match=r"holds 9 frames but scan_shape 2x4 needs 8"):
        read_datacube(path, scan_shape=(2, 4))


def test_fpd_hdf5_squeezes_the_singleton_and_stays_lazy():
    path = real_file("4dstem/fpd_file_test.hdf5")
    cube = read_datacube(path)
    try:
        assert cube.meta["format"] == "fpd" and cube.shape == (2, 2, 256, 256)
        assert cube.data.dtype == np.uint16  # >u2 on disk, native in memory
        assert cube.q_pixel_size is None and cube.scan_step_nm is None  # the file has pixel units only
        with h5py.File(path) as h5:
            stored = h5["fpd_expt/fpd_data/data"][()]
        np.testing.assert_array_equal(np.asarray(cube.data), stored[:, :, 0])
        np.testing.assert_array_equal(cube.data[1, 0], stored[1, 0, 0])
        state = pickle.loads(pickle.dumps(cube.data))
        assert state._handle is None
        np.testing.assert_array_equal(state[0:1], stored[0:1, :, 0])
    finally:
        _close(cube)


@pytest.mark.parametrize("name", ["test1.blo", "test.mib", "test_multi.mib", "fpd_file_test.hdf5"])
@pytest.mark.parametrize("cut", [0.5, -1, 100])
def test_truncated_copies_give_one_line_errors(tmp_path, name, cut):
    src = real_file(f"4dstem/{name}")
    blob = src.read_bytes()
    end = int(len(blob) * cut) if isinstance(cut, float) else (len(blob) + cut if cut < 0 else cut)
    bad = tmp_path / name
    bad.write_bytes(blob[:end])
    kw = {"scan_shape": (3, 3)} if name == "test_multi.mib" else {}
    with pytest.raises(FileFormatError) as err:
        cube = read_datacube(bad, **kw)
        try:
            np.asarray(cube.data)
        finally:
            _close(cube)
    _one_line_error(err, bad)


def test_corrupted_frame_headers_are_caught_on_the_lazy_read(tmp_path):
    blob = bytearray(real_file("4dstem/test1.blo").read_bytes())
    record = 6 + 144 * 144
    blob[4112 + 2 * record] ^= 0xFF  # frame 2's 0xAA55 marker (scan row 1)
    bad = tmp_path / "bad.blo"
    bad.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError, match=r"frame 2 does not start with"):
        read_datacube(bad)  # the default check streams through the cube once
    cube = read_datacube(bad, check=False)  # the first and last rows are fine: the lazy open succeeds
    cube.rows(0, 1)
    with pytest.raises(FileFormatError, match=r"frame 2 does not start with") as err:
        cube.rows(1, 2)
    _one_line_error(err, bad)
    blob = bytearray(real_file("4dstem/test_multi.mib").read_bytes())
    blob[3 * (384 + 256 * 256): 3 * (384 + 256 * 256) + 3] = b"XXX"
    bad = tmp_path / "bad.mib"
    bad.write_bytes(bytes(blob))
    cube = read_datacube(bad, scan_shape=(3, 3), check=False)
    with pytest.raises(FileFormatError, match=r"frame 3 does not start with b'MQ1,'"):
        cube.rows(1, 2)


def test_corrupted_fpd_chunk_is_a_clear_error(tmp_path):
    src = real_file("4dstem/fpd_file_test.hdf5")
    bad = tmp_path / "bad.hdf5"
    shutil.copy(src, bad)
    with h5py.File(bad) as h5:
        info = h5["fpd_expt/fpd_data/data"].id.get_chunk_info(5)  # a gzip chunk of scan row 0
    blob = bytearray(bad.read_bytes())
    blob[info.byte_offset: info.byte_offset + info.size] = bytes(info.size)
    bad.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError, match=r"bad.hdf5"):
        read_datacube(bad)  # the default check streams through the cube once
    cube = read_datacube(bad, check=False)
    try:
        with pytest.raises(FileFormatError, match=r"fpd scan rows 0:1 of .*bad.hdf5") as err:
            cube.rows(0, 1)
        _one_line_error(err, bad)
    finally:
        _close(cube)


def test_cli_stem_on_real_files(tmp_path, capsys):
    """fpd: end to end with a given q; test1.blo: calibration, virtual images and a lattice at every
    position of the 3x2 spot-pattern scan; test_multi.mib needs --scan-shape."""
    out = tmp_path / "fpd.h5"
    code = cli.main(["stem", str(real_file("4dstem/fpd_file_test.hdf5")), "-o", str(out), "--backend", "cpu",
                     "--q-pixel-size", "0.01"])
    assert code == 0
    with h5py.File(out) as h5:
        bf, adf = h5["stem/virtual/bf"][()], h5["stem/virtual/adf"][()]
        assert bf.shape == adf.shape == (2, 2) and (bf > 0).all() and (adf > 0).all()
        assert h5["stem/calibration"].attrs["q_pixel_size"] == 0.01
        assert h5["stem/strain/exx"].shape == (2, 2)
    capsys.readouterr()
    out = tmp_path / "blo.h5"
    assert cli.main(["stem", str(real_file("4dstem/test1.blo")), "-o", str(out), "--backend", "cpu"]) == 0
    with h5py.File(out) as h5:  # zone-axis spot patterns: the lattice is found at every position
        assert h5["stem/virtual/bf"].shape == (3, 2)
        assert np.isfinite(h5["stem/lattice/g1"][()]).all() and np.isfinite(h5["stem/lattice/g2"][()]).all()
        cal = h5["stem/calibration"].attrs
        assert cal["energy_kev"] == 200.0 and cal["q_pixel_size"] == pytest.approx(optics.q_pixel_size_from_camera(
            (100.0 / 6226) * 1e-2, 0.2, 200.0))
    capsys.readouterr()
    code = cli.main(["stem", str(real_file("4dstem/test_multi.mib")), "-o", str(tmp_path / "m.h5"), "--backend", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tomostrain: error:") and "--scan-shape" in err[0]
