"""Every reader, fed damaged files, raises a tomostrain error or returns data: never a foreign
exception (h5py, mrcfile, tifffile, numpy, the OS). Hypothesis draws byte flips, truncations,
insertions and header overwrites of a tiny valid file of each format.

The harness is a table: ``READERS`` holds ``(name, make, read)``; ``make(folder)`` writes the
valid file(s) and returns the path to damage, ``read(path)`` reads it the way the pipeline does
(including the lazy data of a 4D cube). A new reader is one line in the table.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomostrain import io
from tomostrain.errors import TomostrainError
from tomostrain.io.tiltseries import read_angle_file

EXAMPLES = 500
_rng = np.random.default_rng(0)
_TILT = (np.abs(_rng.normal(5.0, 1.0, (3, 4, 5))) + 0.5).astype(np.float32)
_ANGLES = np.array([-30.0, 0.0, 30.0])
_CUBE = (np.abs(_rng.normal(3.0, 1.0, (2, 3, 4, 4))) + 0.5).astype(np.float32)


def _series():
    return io.TiltSeries(_TILT, _ANGLES, pixel_size_nm=0.5)


def make_dxchange(d):
    io.write_tilt_series(_series(), d / "t.h5")
    return d / "t.h5"


def make_mrc(d):
    io.write_tilt_series(_series(), d / "t.mrc")  # writes t.rawtlt beside it
    return d / "t.mrc"


def make_rawtlt(d):
    make_mrc(d)
    return d / "t.rawtlt"


def make_tiff(d):
    io.write_tilt_series(_series(), d / "t.tif")
    return d / "t.tif"


def make_npy(d):
    np.save(d / "c.npy", _CUBE)
    return d / "c.npy"


def make_raw(d):
    _CUBE.tofile(d / "c.raw")
    return d / "c.raw"


def make_h5_4d(d):
    with h5py.File(d / "c.h5", "w") as h5:  # gzip chunks: damage shows only when the data are read
        ds = h5.create_dataset("/scan/data", data=_CUBE, chunks=(1, 3, 4, 4), compression="gzip")
        ds.attrs["q_pixel_size"] = 0.02
    return d / "c.h5"


def make_emd(d):
    with h5py.File(d / "c.emd", "w") as h5:  # the emdfile / py4DSTEM 0.14 layout
        grp = h5.create_group("root/datacube")
        grp.attrs["python_class"] = "DataCube"
        grp["data"] = _CUBE
        cal = h5.create_group("root/metadatabundle/calibration")
        cal.attrs["python_class"] = "Calibration"
        cal["Q_pixel_size"], cal["Q_pixel_units"] = 0.02, "A^-1"
        cal["R_pixel_size"], cal["R_pixel_units"] = 1.0, "nm"
    return d / "c.emd"


def make_probe_npy(d):
    np.save(d / "p.npy", _CUBE[0, 0])
    return d / "p.npy"


def make_probe_tif(d):
    import tifffile

    tifffile.imwrite(d / "p.tif", _CUBE[0, 0])
    return d / "p.tif"


def make_probe_h5(d):
    with h5py.File(d / "p.h5", "w") as h5:
        h5["probe"] = _CUBE[0, 0]
    return d / "p.h5"


def make_mib(d):
    import _stem_files as sf

    return sf.write_mib(d / "c.mib", (_CUBE.reshape(6, 4, 4) * 100).astype(np.uint16))


def make_blockfile(d):
    from rsciio.blockfile import file_writer

    axes = [{"name": n, "size": k, "scale": 1.0, "offset": 0.0, "units": u, "navigate": nav}
            for n, k, u, nav in [("y", 2, "nm", True), ("x", 3, "nm", True), ("dy", 4, "cm", False),
                                 ("dx", 4, "cm", False)]]
    file_writer(str(d / "c.blo"), {"data": (_CUBE * 20).astype(np.uint8), "axes": axes, "metadata": {},
                                   "original_metadata": {}, "attributes": {"_lazy": False}}, show_progressbar=False)
    return d / "c.blo"


def make_dm4(d):
    import _stem_files as sf

    return sf.write_dm4(d / "c.dm4", _CUBE)


def make_velox(d):
    import _stem_files as sf

    return sf.write_velox(d / "c.emd", _CUBE)


def make_dm3_tilt(d):
    import shutil

    from _data import real_file

    return Path(shutil.copy(real_file("etspy/DM_Series_Test/BF_001.dm3"), d / "t.dm3"))


def make_mdoc(d):
    make_mrc(d)
    (d / "t.mrc.mdoc").write_text("PixelSpacing = 5.0\nImageFile = t.mrc\n\n" + "".join(
        f"[ZValue = {i}]\nTiltAngle = {a}\n\n" for i, a in enumerate(_ANGLES)))
    (d / "t.rawtlt").unlink()
    return d / "t.mrc.mdoc"


def make_movie(d):
    io.write_movie(d / "m.h5", _TILT, time_s=np.arange(3.0), pixel_size_nm=0.5)
    return d / "m.h5"


def make_spectrum_image(d):
    io.write_spectrum_image(d / "s.h5", _CUBE.reshape(2, 3, 16), np.linspace(840.0, 870.0, 16))
    return d / "s.h5"


def make_xray(d):
    flats = np.full((2, 4, 5), 10.0, np.float32)
    io.write_xray_scan(io.XrayScan(_TILT, _ANGLES, flats, np.zeros((1, 4, 5), np.float32)), d / "x.h5")
    return d / "x.h5"


def _cube(path, **kw):
    cube = io.read_datacube(path, **kw)
    try:
        cube.rows(0, cube.shape[0])  # the lazy data, as the pipeline reads them
    finally:
        if "file" in cube.meta:
            cube.meta["file"].close()


#: (name, make the valid file -> the path to damage, read it)
READERS = [
    ("dxchange-hdf5", make_dxchange, io.read_tilt_series),
    ("mrc", make_mrc, io.read_tilt_series),
    ("mrc-rawtlt", make_rawtlt, lambda p: io.read_tilt_series(p.with_suffix(".mrc"))),
    ("tiff", make_tiff, io.read_tilt_series),
    ("npy-4d", make_npy, _cube),
    ("raw-4d", make_raw, lambda p: _cube(p, shape=_CUBE.shape, dtype="<f4")),
    ("hdf5-4d", make_h5_4d, _cube),
    ("py4dstem-emd", make_emd, _cube),
    ("probe-image", make_probe_h5, io.read_image),
]
#: the microscope formats (io.stem_formats, io.microscope, io.mdoc, io.movie), 500 cases each too
READERS += [
    ("merlin-mib", make_mib, lambda p: _cube(p, scan_shape=(2, 3))),
    ("blockfile", make_blockfile, _cube),
    ("dm4-4d", make_dm4, _cube),
    ("velox-emd-4d", make_velox, _cube),
    ("mrc-mdoc", make_mdoc, lambda p: io.read_tilt_series(p.parent / "t.mrc")),
    ("movie-hdf5", make_movie, io.read_movie),
    ("spectrum-image-hdf5", make_spectrum_image, io.read_spectrum_image),
    ("xray-dxchange", make_xray, io.read_xray_scan),
    ("dm3-tilt", make_dm3_tilt, io.read_tilt_series),  # a real Gatan file (shared/data)
]
#: more readers, fuzzed with fewer cases (the same code paths as above, other containers)
MORE_READERS = [
    ("angle-file", make_rawtlt, read_angle_file),
    ("probe-npy", make_probe_npy, io.read_image),
    ("probe-tiff", make_probe_tif, io.read_image),
]


@st.composite
def damage(draw, size: int):
    """A list of (kind, position, bytes) edits; positions favour the first 512 bytes (headers)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "overwrite", "zero"]))
        near = draw(st.booleans())
        pos = draw(st.integers(0, max(0, min(size, 512) - 1) if near else max(0, size - 1)))
        edits.append((kind, pos, draw(st.binary(min_size=1, max_size=8))))
    return edits


def _apply(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, blob in edits:
        pos = min(pos, max(0, len(b) - 1))
        if kind == "flip" and b:
            b[pos] ^= blob[0] or 0xFF
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = blob
        elif kind == "overwrite":
            b[pos:pos + len(blob)] = blob
        elif kind == "zero":
            b[pos:pos + 4 * len(blob)] = bytes(min(4 * len(blob), len(b) - pos))
    return bytes(b)


@pytest.mark.parametrize("name, make, read, examples", [(*r, EXAMPLES) for r in READERS] +
                         [(*r, EXAMPLES // 5) for r in MORE_READERS], ids=[r[0] for r in READERS + MORE_READERS])
def test_damaged_files_raise_only_tomostrain_errors(tmp_path, name, make, read, examples):
    target = make(tmp_path)
    read(target)  # the undamaged file reads
    original = target.read_bytes()
    outcomes = {"read": 0, "refused": 0}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(damage(len(original)))
    def fuzz(edits):
        target.write_bytes(_apply(original, edits))
        try:
            read(target)
        except TomostrainError as exc:  # anything else escapes and fails the test
            message = str(exc)
            assert message and "\n" not in message, message  # one line, as the CLI prints it
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1

    fuzz()
    # the cases ran, and the damage was real: some damaged files were refused with a clear error
    assert sum(outcomes.values()) >= examples // 2, outcomes
    assert outcomes["refused"] > 0, outcomes
