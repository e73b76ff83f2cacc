"""Small, faithful 4D-STEM files in the microscope layouts, for reader tests.

Merlin MIB and its .hdr follow the Quantum Detectors layout (a 384-byte ASCII header per frame, then
big-endian pixels; raw R64 payloads come from LiberTEM's own encoders); the blockfile is written by
RosettaSciIO's writer; EMPAD (XML + 130x128 float32 frames), Dectris Arina (master with external
links to bitshuffle-LZ4 data files), Velox EMD (``/Version``, ``Data/Image/<id>/Data`` (ky, kx, n)
with per-frame JSON ``Metadata``) and Gatan DM4 (tag tree + data) are written with h5py/numpy to
the layouts RosettaSciIO/LiberTEM/py4DSTEM read.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

MIB_TYPES = {np.dtype("u1"): "U08", np.dtype("u2"): "U16", np.dtype("u4"): "U32"}


def mib_header(seq: int, ky: int, kx: int, pixel_type: str, depth: int, when: str, exposure_ns: int = 1_000_000,
               quad: bool = False) -> bytes:
    """One Merlin frame header (ASCII, comma-separated, padded with spaces to 384 bytes, or 768 for a
    2x2 quad whose header repeats the thresholds and DACs of each of its 4 chips)."""
    head_size, chips = (768, 4) if quad else (384, 1)
    fields = ["MQ1", f"{seq:06d}", f"{head_size:05d}", f"{chips:02d}", f"{kx:04d}", f"{ky:04d}", pixel_type,
              "  2x2G" if quad else "   1x1", "0F" if quad else "01", when.replace("T", " ")[:26], "0.001000",
              "0", "0", "0"]
    fields += ["1.500000E+1"] + ["0.000000E+0"] * 7 + (["3RX"] + ["000"] * 28) * chips
    fields += ["MQ1A", when + "Z", f"{exposure_ns}ns", str(depth), ""]
    text = ",".join(fields).encode()
    assert len(text) <= head_size
    return text + b" " * (head_size - len(text))


def write_mib(path: Path, frames: np.ndarray, *, depth: int | None = None, raw: bool = False, times=None,
              hdr: dict | None = None, quad: bool = False) -> Path:
    """Write ``frames`` (n, ky, kx) as a Merlin .mib (processed U08/U16/U32, or raw R64 when ``raw``).

    The file stores each frame bottom row first (readers reverse ky), so ``frames`` are flipped
    on writing. ``times``: per-frame ISO timestamps (default 1 ms apart); ``hdr``: .hdr entries.
    """
    frames = np.asarray(frames)
    n, ky, kx = frames.shape
    stored = frames[:, ::-1, :]
    if raw:
        from libertem.io.dataset import mib as lt

        depth = depth or 12
        pixel_type = "R64"
        enc = {1: (lt.encode_r1, kx // 8), 6: (lt.encode_r6, kx), 12: (lt.encode_r12, 2 * kx)}[depth]
    else:
        pixel_type = MIB_TYPES[frames.dtype]
        depth = depth or {"U08": 6, "U16": 12, "U32": 24}[pixel_type]
    if times is None:
        times = [str(np.datetime64("2024-05-01T10:00:00.000000000") + np.timedelta64(i, "ms")) for i in range(n)]
    with open(path, "wb") as f:
        for i in range(n):
            f.write(mib_header(i + 1, ky, kx, pixel_type, depth, times[i], quad=quad))
            if raw:
                out = np.zeros((ky, enc[1]), np.uint8)
                enc[0](np.ascontiguousarray(stored[i]), out)
                f.write(out.tobytes())
            else:
                f.write(stored[i].astype(frames.dtype.newbyteorder(">")).tobytes())
    if hdr is not None:
        lines = ["HDR:"] + [f"{k}:\t{v}" for k, v in hdr.items()] + ["End\t"]
        path.with_suffix(".hdr").write_text("\n".join(lines) + "\n")
    return path


def write_empad(folder: Path, data: np.ndarray, *, fov_m=4.0e-7, voltage=300000.0, angle_rad=4.0e-4,
                name="acquisition_1") -> Path:
    """EMPAD XML + raw: ``data`` (sy, sx, 128, 128) float32, each frame followed by 2 metadata rows."""
    sy, sx, h, w = data.shape
    raw_name = f"scan_x{sx}_y{sy}.raw"
    frames = np.zeros((sy * sx, h + 2, w), "<f4")
    frames[:, :h] = data.reshape(-1, h, w)
    frames[:, h:] = 1e9  # the detector's per-frame metadata rows: must not appear in the data
    (folder / raw_name).write_bytes(frames.tobytes())
    xml = (
        f'<root name="{name}"><timestamp timestamp="1559820600.16" isoformat="2019-06-06T13:30:00.164675"/>'
        f"<type>scan</type><pix_x>{sx}</pix_x><pix_y>{sy}</pix_y><raw_file filename=\"{raw_name}\"/>"
        f"<exposure_time>1</exposure_time><iom_measurements><optics.get_cameralength>0.7225</optics.get_cameralength>"
        f"<source.get_voltage>{voltage}</source.get_voltage>"
        f"<optics.get_full_scan_field_of_view>[{fov_m}, {fov_m}]</optics.get_full_scan_field_of_view>"
        f"<calibrated_diffraction_angle>{angle_rad}</calibrated_diffraction_angle>"
        f"<calibrated_pixelsize>1.8e-10</calibrated_pixelsize></iom_measurements></root>"
    )
    path = folder / f"{name}.xml"
    path.write_text(xml)
    return path


def write_arina(folder: Path, data: np.ndarray, *, per_file: int = 4, nimages=None, ntrigger=None,
                wavelength_A=0.025079, pixel_m=100e-6, distance_m=0.2, name="scan_00") -> Path:
    """Dectris master + data files: frames (n, ky, kx) in chunks of one frame, bitshuffle-LZ4."""
    import h5py
    import hdf5plugin

    sy, sx, ky, kx = data.shape
    frames = data.reshape(-1, ky, kx)
    master = folder / f"{name}_master.h5"
    with h5py.File(master, "w") as m:
        m.create_group("entry/data")
        for k, start in enumerate(range(0, len(frames), per_file), 1):
            data_name = f"{name}_data_{k:06d}.h5"
            with h5py.File(folder / data_name, "w") as d:
                ds = d.create_dataset("entry/data/data", data=frames[start:start + per_file], chunks=(1, ky, kx),
                                      **hdf5plugin.Bitshuffle(cname="lz4"))
                ds.attrs["image_nr_low"], ds.attrs["image_nr_high"] = start + 1, start + len(ds)
            m["entry/data"][f"data_{k:06d}"] = h5py.ExternalLink(data_name, "/entry/data/data")
        det = m.create_group("entry/instrument/detector")
        det["x_pixel_size"], det["y_pixel_size"], det["detector_distance"] = pixel_m, pixel_m, distance_m
        det["count_time"] = 1e-3
        spec = det.create_group("detectorSpecific")
        spec["nimages"] = nimages if nimages is not None else sx
        spec["ntrigger"] = ntrigger if ntrigger is not None else sy
        m["entry/instrument/beam/incident_wavelength"] = wavelength_A
    return master


def write_velox(path: Path, data: np.ndarray, *, scan_size=True, voltage="200000", convergence="0.0015",
                q_per_m="1.0e9", scan_step_m="2.5e-9") -> Path:
    """Velox EMD: ``Version`` JSON, ``Data/Image/<id>/Data`` (ky, kx, n) and per-frame JSON Metadata."""
    import h5py

    sy, sx, ky, kx = data.shape
    md = {"Optics": {"AccelerationVoltage": voltage, "BeamConvergence": convergence, "CameraLength": "0.091"},
          "BinaryResult": {"PixelSize": {"width": q_per_m, "height": q_per_m}, "PixelUnitX": "1/m",
                           "PixelUnitY": "1/m", "DetectorIndex": "0"},
          "Scan": {"PixelSize": {"width": scan_step_m, "height": scan_step_m}, "DwellTime": "0.001"},
          "Detectors": {"Detector-0": {"DetectorName": "Ceta", "DetectorType": "ImagingDetector",
                                       "ExposureTime": "0.001"}},
          "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}}}
    if scan_size:
        md["Scan"]["ScanSize"] = {"width": str(sx), "height": str(sy)}
    blob = np.frombuffer(json.dumps(md).encode(), np.uint8)
    with h5py.File(path, "w") as h5:
        h5["Version"] = np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        grp = h5.create_group("Data/Image/6fdbde41eecc4375b45cd86bd2be17c0")
        grp.create_dataset("Data", data=np.moveaxis(data.reshape(-1, ky, kx), 0, 2), chunks=(ky, kx, 1))
        grp["Metadata"] = np.repeat(blob[:, None], sy * sx, axis=1)
    return path


# ----------------------------------------------------------------------------- Gatan DM4
_DM_TYPES = {np.dtype("<i2"): 1, np.dtype("<f4"): 2, np.dtype("u1"): 6, np.dtype("<i4"): 7, np.dtype("<u2"): 10,
             np.dtype("<u4"): 11, np.dtype("<f8"): 12}  # DM ImageData.DataType codes
_DM_ENC = {np.dtype("<i2"): 2, np.dtype("<i4"): 3, np.dtype("<u2"): 4, np.dtype("<u4"): 5, np.dtype("<f4"): 6,
           np.dtype("<f8"): 7, np.dtype("u1"): 10}  # DM tag element encodings


def _dm_value(value) -> bytes:
    """A DM4 data-tag body (``%%%%``, info and the value) for a number, string or numpy array."""
    if isinstance(value, np.ndarray):
        enc = _DM_ENC[value.dtype]
        info = [20, enc, value.size]
        payload = value.tobytes()
    elif isinstance(value, str):
        info = [20, 4, len(value)]  # string as an array of u2 (UTF-16)
        payload = value.encode("utf-16-le")
    elif isinstance(value, float):
        info, payload = [7], struct.pack("<d", value)
    else:
        info, payload = [3], struct.pack("<i", int(value))
    head = b"%%%%" + struct.pack(">Q", len(info)) + b"".join(struct.pack(">Q", i) for i in info)
    return head + payload


def _dm_group(items) -> bytes:
    """A DM4 tag group: sorted, open, count, then each (name, value-or-list-or-dict) tag."""
    items = list(items.items()) if isinstance(items, dict) else [("", v) for v in items]
    out = struct.pack(">BBQ", 0, 0, len(items))
    for name, value in items:
        key = name.encode("latin-1")
        if isinstance(value, (dict, list)):
            body = _dm_group(value)
            out += struct.pack(">BH", 20, len(key)) + key + struct.pack(">Q", len(body)) + body
        else:
            body = _dm_value(value)
            out += struct.pack(">BH", 21, len(key)) + key + struct.pack(">Q", len(body)) + body
    return out


def write_dm4(path: Path, data: np.ndarray, *, scan_step_nm=1.5, q_per_nm=0.2, voltage=300000.0,
              q_units="1/nm") -> Path:
    """A DM4 file with one 4D image ``data`` (sy, sx, ky, kx): DM dimensions (kx, ky, sx, sy)."""
    sy, sx, ky, kx = data.shape
    data = np.ascontiguousarray(data)
    dt = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
    cal = [{"Origin": 0.0, "Scale": float(q_per_nm), "Units": q_units}] * 2
    cal += [{"Origin": 0.0, "Scale": float(scan_step_nm), "Units": "nm"}] * 2
    image = {
        "ImageData": {
            "Calibrations": {"Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": "Counts"}, "Dimension": cal,
                             "DisplayCalibratedUnits": 1},
            "Data": data.astype(dt).ravel(),
            "DataType": _DM_TYPES[np.dtype(dt)],
            "Dimensions": [kx, ky, sx, sy],
            "PixelDepth": dt.itemsize,
        },
        "ImageTags": {"Microscope Info": {"Voltage": float(voltage), "STEM Camera Length": 91.0}},
        "Name": "4D scan",
    }
    root = _dm_group({"ImageList": [image]})
    with open(path, "wb") as f:
        f.write(struct.pack(">IQI", 4, len(root), 1) + root + b"\x00" * 8)
    return path
