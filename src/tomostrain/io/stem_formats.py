"""Microscope 4D-STEM files -> lazy DataCube ``(scan_y, scan_x, ky, kx)`` (DESIGN.md §3).

Formats (``read_datacube`` picks one from the suffix and, for HDF5, the layout inside):

- Quantum Detectors Merlin ``.mib`` (with or without ``.hdr``): processed U08/U16/U32 frames
  (1/6-bit, 12-bit, 24-bit counters, big-endian) and single-chip raw ``R64`` 1/6/12-bit;
  header fields through RosettaSciIO (``rsciio.quantumdetector``). The detector rows are
  reversed, as RosettaSciIO does.
- NanoMegas blockfile ``.blo`` (header layout from ``rsciio.blockfile``).
- Gatan ``.dm3``/``.dm4`` with 4 dimensions (tags through ``rsciio.digitalmicrograph``).
- Velox ``.emd`` (``/Version`` format Velox) holding a frame stack ``(ky, kx, n)``.
- fpd HDF5 (``fpd_expt/fpd_data/data``, ``(sy, sx, 1, ky, kx)``: the singleton is squeezed).
- Dectris Arina/EIGER ``*_master.h5`` with external links to the data files (bitshuffle-LZ4 via
  hdf5plugin).
- EMPAD ``.xml`` + ``.raw`` (130x128 float32 frames: the 2 metadata rows are dropped).

Nothing is loaded at open: ``cube.data`` is a :class:`FrameSource`, a read-only array-like that
reads scan rows on demand (memory maps or per-row-block HDF5 reads). It holds only how to read
the file (path, format, layout), never an open handle that would travel: it pickles as that and
reopens its file in the process that reads. ``cube.meta['file']`` is the same source, so
``cube.meta['file'].close()`` drops a cached HDF5 handle. Any failure of a foreign library (or a
corrupt chunk met during a lazy read) becomes a :class:`~tomostrain.errors.FileFormatError`
naming the file and the cause.
"""
from __future__ import annotations

import contextlib
import json
import math
import operator
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4 for Dectris data)
import numpy as np

from ..errors import FileFormatError, InputError, TomostrainError
from ..strain import optics
from ..strain.datacube import DataCube
from . import _files

SUFFIX_FORMATS = {".mib": "mib", ".hdr": "mib", ".blo": "blockfile", ".dm3": "dm", ".dm4": "dm",
                  ".xml": "empad"}
OPTION = "scan_shape=(scan_y, scan_x) (CLI: --scan-shape SY,SX)"


# ----------------------------------------------------------------------------- errors
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def foreign(path, what: str):
    """Turn any non-tomostrain exception raised inside into a one-line FileFormatError."""
    try:
        yield
    except TomostrainError:
        raise
    except Exception as exc:  # a foreign reader's error: name the file and the cause
        raise FileFormatError(_one_line(f"cannot read {what} {path}: {type(exc).__name__}: {exc}")) from exc


# ----------------------------------------------------------------------------- lazy sources
class FrameSource:
    """Read-only lazy 4D array over a file, read by scan rows; picklable (no open handle travels).

    Supports ``len``, ``.shape``, ``.dtype``, ``.ndim``, ``np.asarray`` and indexing whose first
    item is an int or a slice of scan rows (the rest indexes the block read).
    """

    def __init__(self, path, shape, dtype, fmt: str):
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.format = fmt
        self._handle = None

    ndim = property(lambda self: 4)
    size = property(lambda self: math.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.shape} {self.dtype} of {self.path}>"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()

    def __array__(self, dtype=None, copy=None):
        block = self.rows(0, self.shape[0])
        return block if dtype is None else block.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if first is Ellipsis:
            first, rest = slice(None), key[1:] if Ellipsis in key[1:] else (Ellipsis,) + key[1:]
        sy = self.shape[0]
        if isinstance(first, slice):
            rest = (slice(None),) + rest if rest else rest
            start, stop, step = first.indices(sy)
            if step == 1:
                block = self.rows(start, max(start, stop))
            else:
                idx = list(range(start, stop, step))
                block = np.stack([self.rows(i, i + 1)[0] for i in idx]) if idx else self.rows(0, 0)
        else:
            try:
                i = operator.index(first)
            except TypeError:
                raise InputError(f"index the scan rows of {self.path} with an int or a slice, not {first!r}") from None
            if not -sy <= i < sy:
                raise IndexError(f"scan row {i} is outside 0..{sy - 1}")
            block = self.rows(i % sy, i % sy + 1)[0]
        return block[rest] if rest else block

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``start:stop`` as a native-byte-order array ``(stop-start, scan_x, ky, kx)``."""
        sy, sx, ky, kx = self.shape
        if not 0 <= start <= stop <= sy:
            raise IndexError(f"scan rows {start}:{stop} are outside 0..{sy}")
        if stop == start:
            return np.empty((0, sx, ky, kx), self.dtype)
        with foreign(self.path, f"{self.format} scan rows {start}:{stop} of"):
            block = self._read_rows(start, stop)
            return np.ascontiguousarray(block.reshape(stop - start, sx, ky, kx), dtype=self.dtype)

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


def _decode_r1(raw: np.ndarray) -> np.ndarray:
    """Merlin raw 1-bit: 64-pixel stripes whose 8 bytes are stored in reverse, bits LSB first."""
    b = raw.reshape(raw.shape[0], -1, 8)[..., ::-1]
    return np.unpackbits(b, axis=-1, bitorder="little").reshape(raw.shape[0], -1)


def _decode_reverse(raw: np.ndarray, group: int) -> np.ndarray:
    """Merlin raw 6/12-bit: pixels stored in reversed groups of 8 (6-bit) or 4 (12-bit)."""
    return raw.reshape(raw.shape[0], -1, group)[..., ::-1].reshape(raw.shape[0], -1)


_DECODERS = {"r1": _decode_r1, "r6": lambda r: _decode_reverse(r, 8), "r12": lambda r: _decode_reverse(r, 4)}


class MemmapFrames(FrameSource):
    """Fixed-size frame records in a flat file: ``offset`` bytes, then one record per probe position
    (``record`` has a ``data`` field, optionally a ``header`` of bytes that must start with ``magic``)."""

    def __init__(self, path, shape, dtype, fmt, *, offset: int, record: np.dtype, magic: bytes = b"",
                 decode: str | None = None, flip_ky: bool = False):
        super().__init__(path, shape, dtype, fmt)
        self.offset, self.record, self.magic = int(offset), np.dtype(record), bytes(magic)
        self.decode, self.flip_ky = decode, bool(flip_ky)

    def _read_rows(self, start, stop):
        sy, sx, ky, kx = self.shape
        first, n = start * sx, (stop - start) * sx
        mm = np.memmap(self.path, dtype=self.record, mode="r", offset=self.offset + first * self.record.itemsize,
                       shape=(n,))
        if self.magic:
            heads = mm["header"][:, : len(self.magic)]
            bad = np.flatnonzero((heads != np.frombuffer(self.magic, np.uint8)).any(axis=1))
            if bad.size:
                raise FileFormatError(
                    f"{self.path}: frame {first + int(bad[0])} does not start with {self.magic!r} "
                    f"(corrupt or misaligned {self.format} file)"
                )
        data = np.array(mm["data"]).reshape(n, -1)
        del mm
        if self.decode:
            data = _DECODERS[self.decode](data)
        data = data.reshape(n, ky, kx)
        return data[:, ::-1, :] if self.flip_ky else data


class H5Frames(FrameSource):
    """Frames in HDF5 datasets, read per row block. ``layout``: ``"rows"`` (one dataset
    ``(sy, sx, [1,] ky, kx)``), ``"frames"`` (``segments`` of ``(n, ky, kx)`` datasets, e.g. Arina's
    external links, in scan order) or ``"frames_last"`` (one ``(ky, kx, n)`` dataset, Velox)."""

    def __init__(self, path, shape, dtype, fmt, *, segments, layout: str):
        super().__init__(path, shape, dtype, fmt)
        self.segments = [(str(name), int(n)) for name, n in segments]
        self.layout = layout

    def _file(self) -> h5py.File:
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle

    def _read_rows(self, start, stop):
        h5 = self._file()
        sy, sx, ky, kx = self.shape
        if self.layout == "rows":
            return h5[self.segments[0][0]][start:stop]
        f0, f1 = start * sx, stop * sx
        parts, base = [], 0
        for name, n in self.segments:
            a, b = max(f0, base), min(f1, base + n)
            if a < b:
                ds = h5[name]
                if self.layout == "frames":
                    parts.append(ds[a - base:b - base])
                else:
                    parts.append(np.moveaxis(ds[:, :, a - base:b - base], 2, 0))
            base += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ----------------------------------------------------------------------------- dispatch
def detect(path: Path) -> str | None:
    """The microscope format of ``path`` (a key of READERS), or None for the generic readers."""
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if suffix == ".raw" and _empad_xml_for(path) is not None:
        return "empad"
    if suffix in (".emd", ".h5", ".hdf5", ".hdf") and path.is_file() and h5py.is_hdf5(path):
        with foreign(path, "HDF5 file"), h5py.File(path, "r") as h5:
            if suffix == ".emd" and "Version" in h5 and "Data" in h5:
                return "velox"
            if isinstance(h5.get("fpd_expt/fpd_data/data"), h5py.Dataset):
                return "fpd"
            entry = h5.get("entry/data", getlink=False) if "entry" in h5 else None
            if isinstance(entry, h5py.Group) and any(k.startswith("data_") for k in entry.keys()):
                return "arina"
    return None


def read(path: Path, fmt: str, *, scan_shape=None) -> DataCube:
    """Open ``path`` of format ``fmt`` (see :func:`detect`) as a lazy DataCube."""
    if scan_shape is not None:
        try:
            scan_shape = tuple(int(n) for n in scan_shape)
        except (TypeError, ValueError):
            raise InputError(f"scan_shape must be (scan_y, scan_x), got {scan_shape!r}") from None
        if len(scan_shape) != 2 or min(scan_shape) < 1:
            raise InputError(f"scan_shape must be two positive integers (scan_y, scan_x), got {scan_shape!r}")
    return READERS[fmt](Path(path), scan_shape)


def _scan_shape(path, n_frames: int, given, from_file, what_file: str, unknown: str | None = None):
    """Scan shape from the option (wins; must match the frame count) or the file, else a clear error."""
    if given is not None:
        if given[0] * given[1] != n_frames:
            raise FileFormatError(
                f"{path} holds {n_frames} frames but scan_shape {given[0]}x{given[1]} needs {given[0] * given[1]}"
            )
        return tuple(given), "option"
    if from_file is not None:
        if from_file[0] * from_file[1] != n_frames:
            state = "truncated (or an interrupted acquisition)" if n_frames < from_file[0] * from_file[1] else "longer"
            raise FileFormatError(
                f"{path} is {state}: it holds {n_frames} frames but {what_file} gives a "
                f"{from_file[0]}x{from_file[1]} scan; to read it anyway give {OPTION} with "
                f"scan_y x scan_x = {n_frames}"
            )
        return tuple(from_file), what_file
    if n_frames == 1:
        return (1, 1), "single frame"
    raise FileFormatError(
        f"{path} holds {n_frames} frames and the scan shape is unknown ({unknown or 'not in ' + what_file}); "
        f"give {OPTION}"
    )


def _cube(source: FrameSource, *, scan_step_nm=None, q_pixel_size=None, energy_kev=None, convergence_mrad=None,
          sources=None, **meta) -> DataCube:
    def ok(v):
        return v if v is not None and np.isfinite(v) and v > 0 else None

    info = {
        "source": source.path, "format": source.format, "file": source,
        "energy_kev": ok(energy_kev), "convergence_mrad": ok(convergence_mrad),
        "calibration_sources": {k: v for k, v in (sources or {}).items() if v},
        **meta,
    }
    return DataCube(source, scan_step_nm=ok(scan_step_nm), q_pixel_size=ok(q_pixel_size), meta=info)


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


# ----------------------------------------------------------------------------- Merlin MIB
_MIB_DTYPES = {"U08": "u1", "U16": ">u2", "U32": ">u4"}


def _read_mib(path: Path, scan_shape) -> DataCube:
    if path.suffix.lower() == ".hdr":
        path = path.with_suffix(".mib")
    path = _files.existing_file(path, "Merlin MIB file")
    with foreign(path, "Merlin MIB file"):
        from rsciio.quantumdetector._api import MIBProperties, parse_hdr_file

        with open(path, "rb") as f:
            start = f.read(768)
        if not start.startswith(b"MQ1,"):
            raise FileFormatError(f"{path} is not a Merlin MIB file (no 'MQ1,' frame header at the start)")
        prop = MIBProperties()
        prop.parse_file(str(path))
        if prop.head_size is None:
            raise FileFormatError(f"{path}: unsupported Merlin header size field {start[4:9]!r} (expected 00384/00768)")
        fields = [p.strip() for p in start[: prop.head_size].decode("latin-1").split(",")]
        while fields and not fields[-1].strip("\x00 "):
            fields.pop()
        pixel_type, n_chips = fields[6], int(fields[3])
        depth = int(fields[-1])
        ky, kx = (int(n) for n in prop.merlin_size)
        if ky < 1 or kx < 1:
            raise FileFormatError(f"{path}: Merlin header gives a {ky}x{kx} frame")
        decode = None
        if pixel_type in _MIB_DTYPES:
            data_dtype = np.dtype(_MIB_DTYPES[pixel_type])
            record = [("header", "u1", prop.head_size), ("data", data_dtype, (ky, kx))]
        elif pixel_type == "R64":
            if n_chips != 1 or depth not in (1, 6, 12):
                raise FileFormatError(
                    f"{path}: raw (R64) Merlin data with {n_chips} chips at {depth}-bit are not supported "
                    "(single-chip 1/6/12-bit are); save processed frames (U08/U16/U32) in Merlin"
                )
            data_dtype = np.dtype({1: "u1", 6: "u1", 12: ">u2"}[depth])
            count = ky * kx // 8 if depth == 1 else ky * kx
            record = [("header", "u1", prop.head_size), ("data", data_dtype, (count,))]
            decode = f"r{depth}"
        else:
            raise FileFormatError(f"{path}: unknown Merlin pixel type {pixel_type!r} (expected U08/U16/U32/R64)")
        record = np.dtype(record)
        size = path.stat().st_size
        n_frames, extra = divmod(size, record.itemsize)
        if extra or n_frames == 0:
            raise FileFormatError(
                f"{path} is truncated: {size} bytes is {n_frames} whole Merlin frames of {record.itemsize} bytes "
                f"plus {extra} bytes"
            )
        hdr_path = path.with_suffix(".hdr")
        hdr, from_hdr, what, unknown = None, None, "no .hdr beside it", None
        if hdr_path.is_file():
            hdr = parse_hdr_file(str(hdr_path))
            what = f"its .hdr ({hdr_path.name})"
            per_trigger = int(hdr.get("Frames per Trigger (Number)", "1") or 1)
            total = int(hdr.get("Frames in Acquisition (Number)", "0") or 0)
            if per_trigger > 1 and total > 0 and total % per_trigger == 0:
                from_hdr = (total // per_trigger, per_trigger)
        if scan_shape is None and from_hdr is None and n_frames > 1:
            from_hdr = _mib_lines_from_timestamps(path, record, n_frames)
            if from_hdr is not None:
                what = "the frame timestamps (line flyback)"
            elif hdr is not None:
                unknown = f"{what} has 1 frame per trigger, and the frame timestamps show no line flyback"
            else:
                unknown = "no .hdr beside it, and the frame timestamps show no line flyback"
    shape, shape_source = _scan_shape(path, n_frames, scan_shape, from_hdr, what, unknown)
    out_dtype = np.dtype(np.uint8 if decode in ("r1", "r6") else data_dtype.newbyteorder("="))
    source = MemmapFrames(path, shape + (ky, kx), out_dtype, "mib", offset=0, record=record, magic=b"MQ1,",
                          decode=decode, flip_ky=True)
    source.rows(shape[0] - 1, shape[0])  # the last row's headers: a misaligned file fails here
    return _cube(source, scan_shape_source=shape_source, counter_depth=depth, pixel_type=pixel_type,
                 n_chips=n_chips, exposure_ms=_finite(prop.exposure), detector_flip="ky reversed (as rsciio)",
                 hdr=hdr)


def _mib_lines_from_timestamps(path: Path, record: np.dtype, n_frames: int):
    """(lines, per_line) when the frame timestamps show a regular line flyback, else None."""
    from rsciio.quantumdetector._api import parse_timestamps

    mm = np.memmap(path, dtype=record, mode="r", shape=(min(n_frames, 10000),))
    headers = [bytes(h) for h in np.asarray(mm["header"])]
    del mm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = np.array([np.datetime64(t.rstrip("Z"), "ns") for t in parse_timestamps(headers, max_index=len(headers))])
    d = np.diff(times.astype(np.int64)).astype(float)
    if d.size < 2:
        return None
    typical = np.median(d)
    gaps = np.flatnonzero(d > 1.5 * typical + 1e3) + 1  # frame index after each flyback
    if gaps.size == 0:
        return None
    per_line = int(gaps[0])
    expected = np.arange(per_line, len(times), per_line)
    if per_line < 2 or n_frames % per_line or not np.array_equal(gaps, expected):
        return None
    return n_frames // per_line, per_line


# ----------------------------------------------------------------------------- blockfile
def _read_blockfile(path: Path, scan_shape) -> DataCube:
    path = _files.existing_file(path, "blockfile")
    with foreign(path, "blockfile"):
        from rsciio.blockfile._api import get_header_dtype_list, magics

        header_dtype = np.dtype(get_header_dtype_list("<"))
        if path.stat().st_size < header_dtype.itemsize:
            raise FileFormatError(f"{path} is truncated: {path.stat().st_size} bytes, shorter than a blockfile header")
        h = np.fromfile(path, dtype=header_dtype, count=1)[0]
        if bytes(h["ID"]) != b"IMGBLO" or int(h["MAGIC"]) not in magics:
            raise FileFormatError(f"{path} is not a NanoMegas blockfile (no IMGBLO header)")
        ny, nx, dp = int(h["NY"]), int(h["NX"]), int(h["DP_SZ"])
        offset = int(h["Data_offset_2"])
        if min(ny, nx, dp) < 1:
            raise FileFormatError(f"{path}: blockfile header gives an empty {ny}x{nx} scan of {dp}x{dp} patterns")
        record = np.dtype([("header", "u1", 6), ("data", "u1", (dp, dp))])
        need = offset + ny * nx * record.itemsize
        size = path.stat().st_size
        if size < need:
            raise FileFormatError(
                f"{path} is truncated: {size} bytes, but its {ny}x{nx} scan of {dp}x{dp} patterns needs {need} bytes"
            )
        sx_nm, sy_nm = float(h["SX"]), float(h["SY"])
        energy = float(h["Beam_energy"]) * 1e-3  # V -> keV
        camera_m = float(h["Camera_length"]) * 1e-4  # 10 x mm -> m
        sdp = float(h["SDP"])  # 100 x pixels per cm on the screen
        q = None
        if sdp > 0 and camera_m > 0 and energy > 0:
            q = optics.q_pixel_size_from_camera((100.0 / sdp) * 1e-2, camera_m, energy)
    shape, shape_source = _scan_shape(path, ny * nx, scan_shape, (ny, nx), "its header (NY, NX)")
    source = MemmapFrames(path, shape + (dp, dp), np.uint8, "blockfile", offset=offset, record=record,
                          magic=b"\xaa\x55")
    source.rows(0, 1), source.rows(shape[0] - 1, shape[0])  # first and last frame headers
    step = sx_nm if math.isclose(sx_nm, sy_nm, rel_tol=1e-6) else None
    return _cube(source, scan_step_nm=step, q_pixel_size=q, energy_kev=energy,
                 sources={"scan_step_nm": "header SX/SY (nm)" if step else None, "energy_kev": "header Beam_energy (V)",
                          "q_pixel_size": "header SDP (screen px/cm) / Camera_length at Beam_energy" if q else None},
                 scan_shape_source=shape_source, scan_step_nm_xy=(sy_nm, sx_nm), camera_length_m=camera_m,
                 scan_rotation_deg=float(h["Scan_rotation"]) * 1e-2, dp_rotation_deg=float(h["DP_rotation"]) * 1e-2)


# ----------------------------------------------------------------------------- fpd HDF5
_LENGTH_NM = {"nm": 1.0, "m": 1e9, "um": 1e3, "µm": 1e3, "a": 0.1, "å": 0.1, "pm": 1e-3}
_INV_LENGTH_PER_A = {"1/a": 1.0, "1/å": 1.0, "1/nm": 0.1, "1/m": 1e-10, "a^-1": 1.0, "nm^-1": 0.1, "m^-1": 1e-10}


def _axis_step(group: h5py.Group, name: str, units_table) -> float | None:
    """Spacing of an fpd/EMD-1 dim dataset in the table's unit, when its units are known."""
    ds = group.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] < 2 or ds.dtype.kind not in "if":
        return None
    units = ds.attrs.get("units", b"")
    units = (units.decode() if isinstance(units, bytes) else str(units)).strip().lower()
    if units not in units_table:
        return None
    values = np.asarray(ds[:2], float)
    return _finite(abs(values[1] - values[0]) * units_table[units])


def _read_fpd(path: Path, scan_shape) -> DataCube:
    h5 = _files.open_h5(path)
    try:
        with foreign(path, "fpd HDF5 file"):
            ds = h5["fpd_expt/fpd_data/data"]
            shape = ds.shape
            if len(shape) == 5 and shape[2] == 1:
                frame = (shape[3], shape[4])
            elif len(shape) == 4:
                frame = shape[2:]
            else:
                raise FileFormatError(
                    f"{path}:/fpd_expt/fpd_data/data has shape {shape}; expected (scan_y, scan_x, 1, ky, kx)"
                )
            if ds.dtype.kind not in "uif":
                raise FileFormatError(f"{path}:/fpd_expt/fpd_data/data has dtype {ds.dtype}, not numbers")
            grp = ds.parent
            step = _axis_step(grp, "dim1", _LENGTH_NM)
            q = _axis_step(grp, f"dim{len(shape) - 1}", _INV_LENGTH_PER_A)
            dtype = ds.dtype.newbyteorder("=")
    finally:
        h5.close()
    sy, sx = shape[:2]
    got, shape_source = _scan_shape(path, sy * sx, scan_shape, (sy, sx), "its fpd_data shape")
    if got != (sy, sx):
        raise FileFormatError(f"{path}: fpd data are stored as a {sy}x{sx} scan; scan_shape cannot change that")
    source = H5Frames(path, (sy, sx) + tuple(frame), dtype, "fpd", segments=[("fpd_expt/fpd_data/data", sy * sx)],
                      layout="rows")
    return _cube(source, scan_step_nm=step, q_pixel_size=q, scan_shape_source=shape_source,
                 sources={"scan_step_nm": "fpd_data/dim1" if step else None, "q_pixel_size": "fpd_data/dim4" if q else None},
                 dataset="/fpd_expt/fpd_data/data")


# ----------------------------------------------------------------------------- Dectris Arina / EIGER
def _h5_value(h5, name):
    obj = h5.get(name)
    if not isinstance(obj, h5py.Dataset):
        return None
    value = obj[()]
    value = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
    return value.decode() if isinstance(value, bytes) else value


def _read_arina(path: Path, scan_shape) -> DataCube:
    h5 = _files.open_h5(path)
    try:
        with foreign(path, "Dectris master file"):
            group = h5["entry/data"]
            names = sorted(k for k in group.keys() if k.startswith("data_"))
            segments, frame, dtype = [], None, None
            for name in names:
                try:
                    ds = group[name]
                except KeyError as exc:
                    link = group.get(name, getlink=True)
                    target = getattr(link, "filename", "?")
                    raise FileFormatError(f"{path}: data file {target} of link entry/data/{name} is missing") from exc
                if ds.ndim != 3 or (frame is not None and ds.shape[1:] != frame):
                    raise FileFormatError(f"{path}: entry/data/{name} has shape {ds.shape}; expected (n, ky, kx)")
                frame, dtype = ds.shape[1:], ds.dtype
                segments.append((f"entry/data/{name}", ds.shape[0]))
            if not segments:
                raise FileFormatError(f"{path}: no entry/data/data_* datasets")
            det = "entry/instrument/detector/"
            nimages = _h5_value(h5, det + "detectorSpecific/nimages")
            ntrigger = _h5_value(h5, det + "detectorSpecific/ntrigger")
            pixel_m = _finite(_h5_value(h5, det + "x_pixel_size"))
            distance_m = _finite(_h5_value(h5, det + "detector_distance"))
            wavelength = _finite(_h5_value(h5, "entry/instrument/beam/incident_wavelength"))
            count_time = _finite(_h5_value(h5, det + "count_time"))
            mask = h5.get(det + "detectorSpecific/pixel_mask")
            bad_pixels = np.asarray(mask[()]) != 0 if isinstance(mask, h5py.Dataset) and mask.ndim == 2 else None
    finally:
        h5.close()
    n = sum(k for _, k in segments)
    from_meta = None
    if nimages and ntrigger and int(nimages) > 1 and int(ntrigger) > 1 and int(nimages) * int(ntrigger) == n:
        from_meta = (int(ntrigger), int(nimages))  # one trigger per scan line, nimages frames per line
    shape, shape_source = _scan_shape(path, n, scan_shape, from_meta, "its metadata (ntrigger x nimages)")
    energy = _energy_from_wavelength(wavelength) if wavelength else None
    q = optics.q_pixel_size_from_camera(pixel_m, distance_m, energy) if pixel_m and distance_m and energy else None
    step, step_source = _arina_scan_step(path)
    source = H5Frames(path, shape + tuple(frame), dtype.newbyteorder("="), "arina", segments=segments, layout="frames")
    return _cube(source, scan_step_nm=step, q_pixel_size=q, energy_kev=energy, scan_shape_source=shape_source,
                 sources={"energy_kev": "beam/incident_wavelength (Å)" if energy else None,
                          "q_pixel_size": "detector x_pixel_size / detector_distance" if q else None,
                          "scan_step_nm": step_source},
                 count_time_s=count_time, camera_length_m=distance_m, detector_pixel_m=pixel_m,
                 bad_pixels=bad_pixels)  # Dectris pixel_mask != 0 (gaps, dead/hot pixels): not corrected here


def _energy_from_wavelength(wavelength_A: float) -> float | None:
    """Beam energy (keV) whose relativistic wavelength is ``wavelength_A`` (inverse of optics)."""
    from scipy.optimize import brentq

    def f(e):
        return optics.electron_wavelength_A(e) - wavelength_A

    if f(1.0) < 0 or f(1e4) > 0:
        return None
    return float(brentq(f, 1.0, 1e4, xtol=1e-9))


def _arina_scan_step(path: Path):
    """Scan step (nm) from the ``<name>.h5`` STEM metadata beside ``<name>_master.h5``, if present."""
    meta = path.with_name(path.name.replace("_master.h5", ".h5"))
    if meta == path or not meta.is_file() or not h5py.is_hdf5(meta):
        return None, None
    with foreign(meta, "Arina STEM metadata"), h5py.File(meta, "r") as h5:
        grp = h5.get("STEM Metadata")
        if grp is None or "Pixel Size" not in grp.attrs:
            return None, None
        return _finite(np.ravel(grp.attrs["Pixel Size"])[0]), f"{meta.name} STEM Metadata 'Pixel Size' (nm)"


# ----------------------------------------------------------------------------- Velox EMD
def _velox_metadata(group: h5py.Group) -> dict:
    ds = group.get("Metadata")
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 2:
        return {}
    return json.loads(np.asarray(ds[:, 0]).tobytes().decode("utf-8").rstrip("\x00"))


def _get(d: dict, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _read_velox(path: Path, scan_shape) -> DataCube:
    h5 = _files.open_h5(path)
    try:
        with foreign(path, "Velox EMD file"):
            version = json.loads(np.ravel(h5["Version"][()])[0].decode("utf-8"))
            if version.get("format") not in ("Velox", "DevelopersKit"):
                raise FileFormatError(f"{path} is an EMD file but not a Velox one (format {version.get('format')!r})")
            images = h5.get("Data/Image")
            stacks = []
            for key in (images.keys() if isinstance(images, h5py.Group) else []):
                ds = images[key].get("Data")
                if isinstance(ds, h5py.Dataset) and ds.ndim == 3 and ds.shape[2] > 1 and ds.dtype.kind in "uif":
                    stacks.append((key, ds.shape, ds.dtype))
            if len(stacks) != 1:
                found = ", ".join(f"{k} {s}" for k, s, _ in stacks) or "none"
                raise FileFormatError(f"{path}: expected one Velox frame stack (ky, kx, n) of a 4D scan; found {found}")
            key, (ky, kx, n), dtype = stacks[0]
            md = _velox_metadata(images[key])
    finally:
        h5.close()
    size = _get(md, "Scan", "ScanSize")
    from_meta = None
    if isinstance(size, dict) and _finite(size.get("height")) and _finite(size.get("width")):
        from_meta = (int(float(size["height"])), int(float(size["width"])))
    shape, shape_source = _scan_shape(path, n, scan_shape, from_meta, "its metadata (Scan.ScanSize)")
    volts = _finite(_get(md, "Optics", "AccelerationVoltage"))
    energy = volts * 1e-3 if volts else None
    conv = _finite(_get(md, "Optics", "BeamConvergence"))
    pixel = _get(md, "BinaryResult", "PixelSize") or {}
    unit = str(_get(md, "BinaryResult", "PixelUnitX") or "").strip().lower()
    q = _finite(pixel.get("width")) * _INV_LENGTH_PER_A[unit] if unit in _INV_LENGTH_PER_A and _finite(pixel.get("width")) else None
    scan_px = _get(md, "Scan", "PixelSize") or {}
    step = _finite(scan_px.get("width")) * 1e9 if isinstance(scan_px, dict) and _finite(scan_px.get("width")) else None
    source = H5Frames(path, shape + (ky, kx), dtype.newbyteorder("="), "velox",
                      segments=[(f"Data/Image/{key}/Data", n)], layout="frames_last")
    return _cube(source, scan_step_nm=step, q_pixel_size=q, energy_kev=energy,
                 convergence_mrad=conv * 1e3 if conv else None, scan_shape_source=shape_source,
                 sources={"energy_kev": "Optics.AccelerationVoltage (V)" if energy else None,
                          "convergence_mrad": "Optics.BeamConvergence (rad)" if conv else None,
                          "q_pixel_size": f"BinaryResult.PixelSize ({unit})" if q else None,
                          "scan_step_nm": "Scan.PixelSize (m)" if step else None},
                 dataset=f"/Data/Image/{key}/Data", camera_length_m=_finite(_get(md, "Optics", "CameraLength")))


# ----------------------------------------------------------------------------- EMPAD
def _empad_xml_for(raw: Path) -> Path | None:
    """The EMPAD .xml in ``raw``'s folder that names ``raw`` as its raw file, if any."""
    if not raw.parent.is_dir():
        return None
    for xml in sorted(raw.parent.glob("*.xml")):
        with contextlib.suppress(Exception):
            if xml.stat().st_size < 2**20 and f'filename="{raw.name}"' in xml.read_text(errors="ignore"):
                return xml
    return None


def _read_empad(path: Path, scan_shape) -> DataCube:
    if path.suffix.lower() == ".raw":
        path = _empad_xml_for(path)
    path = _files.existing_file(path, "EMPAD XML file")
    with foreign(path, "EMPAD XML file"):
        from rsciio.empad._api import _parse_xml

        om, info = _parse_xml(str(path))
        om = om.as_dictionary() if hasattr(om, "as_dictionary") else om
        raw = path.parent / info["raw_filename"]
        raw = _files.existing_file(raw, f"EMPAD raw file named by {path.name}")
        if "series_count" in info:
            from_xml = (1, int(info["series_count"]))
        else:
            from_xml = (int(info["scan_y"]), int(info["scan_x"]))
        h, w, rh = int(info["height"]), int(info["width"]), int(info["raw_height"])
        record = np.dtype([("data", "<f4", (h, w)), ("footer", "<f4", (rh - h, w))])
        size = raw.stat().st_size
        n_frames, extra = divmod(size, record.itemsize)
        if extra:
            raise FileFormatError(
                f"{raw} is truncated: {size} bytes is {n_frames} whole EMPAD frames of {record.itemsize} bytes "
                f"plus {extra} bytes"
            )
        iom = _get(om, "root", "iom_measurements") or {}
        volts = _finite(iom.get("source.get_voltage"))
        energy = volts * 1e-3 if volts else None
        angle = _finite(iom.get("calibrated_diffraction_angle"))
        q = optics.q_pixel_size_from_angle(angle, energy) if angle and energy else None
        fov = iom.get("optics.get_full_scan_field_of_view")
        step = steps = None
        if fov is not None and "series_count" not in info:
            fov = [float(v) for v in str(fov).strip("[]").split(",")]
            steps = (fov[0] / from_xml[0] * 1e9, fov[1] / from_xml[1] * 1e9)  # paired as RosettaSciIO pairs them
            step = _finite(steps[0]) if math.isclose(steps[0], steps[1], rel_tol=1e-6) else None
        camera = _finite(iom.get("optics.get_cameralength"))
    shape, shape_source = _scan_shape(raw, n_frames, scan_shape, from_xml, f"its XML ({path.name})")
    source = MemmapFrames(raw, shape + (h, w), np.float32, "empad", offset=0, record=record)
    return _cube(source, scan_step_nm=step, q_pixel_size=q, energy_kev=energy, scan_shape_source=shape_source,
                 sources={"energy_kev": "iom_measurements source.get_voltage (V)" if energy else None,
                          "q_pixel_size": "iom_measurements calibrated_diffraction_angle (rad/px)" if q else None,
                          "scan_step_nm": "optics.get_full_scan_field_of_view / (pix_y, pix_x)" if step else None},
                 xml=str(path), camera_length_m=camera, scan_step_nm_yx=steps)


# ----------------------------------------------------------------------------- Gatan DM3/DM4
_DM_LENGTH_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "a": 0.1, "å": 0.1, "pm": 1e-3, "m": 1e9}


def _read_dm(path: Path, scan_shape) -> DataCube:
    path = _files.existing_file(path, "Gatan DM file")
    with foreign(path, "Gatan DM file"):
        from rsciio.digitalmicrograph._api import DigitalMicrographReader, ImageObject

        with open(path, "rb") as f:
            dm = DigitalMicrographReader(f)
            dm.parse_file()
            images = [ImageObject(d, f) for d in dm.get_image_dictionaries() or []]
        images = [im for im in images if len(im.shape) == 4]
        if len(images) != 1:
            raise FileFormatError(f"{path} holds {len(images)} 4D images; expected one 4D-STEM dataset")
        im = images[0]
        dtype = np.dtype(im.dtype)
        if dtype.kind not in "uif" or dtype.fields:
            raise FileFormatError(f"{path}: 4D data of DM type {dtype} is not real numbers")
        shape = tuple(int(n) for n in im.shape)  # C order: (sy, sx, ky, kx) as RosettaSciIO orders it
        offset = int(im.imdict.ImageData.Data.offset)
        need = offset + math.prod(shape) * dtype.itemsize
        if path.stat().st_size < need:
            raise FileFormatError(f"{path} is truncated: {path.stat().st_size} bytes, its 4D data end at byte {need}")
        scales, units = list(im.scales), [str(u).strip().lower() for u in im.units]
        tags = im.imdict.get("ImageTags", {})
        mic = tags.get("Microscope Info", {}) if hasattr(tags, "get") else {}
        volts = _finite(mic.get("Voltage")) if hasattr(mic, "get") else None
        camera_mm = _finite(mic.get("STEM Camera Length")) if hasattr(mic, "get") else None
    energy = volts * 1e-3 if volts else None
    step = scales[0] * _DM_LENGTH_NM[units[0]] if units[0] in _DM_LENGTH_NM and units[0] == units[1] else None
    q_unit = units[3]
    q = None
    if q_unit in _INV_LENGTH_PER_A:
        q = scales[3] * _INV_LENGTH_PER_A[q_unit]
    elif q_unit == "mrad" and energy:
        q = optics.q_pixel_size_from_angle(scales[3] * 1e-3, energy)
    got, shape_source = _scan_shape(path, shape[0] * shape[1], scan_shape, shape[:2], "its dimensions")
    record = np.dtype([("data", dtype, shape[2:])])
    source = MemmapFrames(path, got + shape[2:], dtype.newbyteorder("="), "dm", offset=offset, record=record)
    return _cube(source, scan_step_nm=_finite(step), q_pixel_size=_finite(q), energy_kev=energy,
                 sources={"scan_step_nm": f"calibration of dims 2,3 ({units[0]})" if _finite(step) else None,
                          "q_pixel_size": f"calibration of dims 0,1 ({q_unit})" if _finite(q) else None,
                          "energy_kev": "Microscope Info.Voltage (V)" if energy else None},
                 scan_shape_source=shape_source, camera_length_m=camera_mm * 1e-3 if camera_mm else None)


READERS = {"mib": _read_mib, "blockfile": _read_blockfile, "dm": _read_dm, "velox": _read_velox,
           "fpd": _read_fpd, "arina": _read_arina, "empad": _read_empad}
