"""4D-STEM readers/writer: ``.npy``, raw binary, generic HDF5 and py4DSTEM EMD -> DataCube.

Nothing is loaded: ``.npy`` and raw files are memory-mapped read-only, HDF5 datasets stay lazy
(``cube.data`` is the ``h5py.Dataset``). For HDF5/EMD the open ``h5py.File`` is kept in
``cube.meta['file']``; close it (``cube.meta['file'].close()``) when done with the cube.

Calibration read from HDF5 attributes of the data dataset or its parent group (dataset attrs
win): ``q_pixel_size`` (1/Å), ``scan_step_nm`` (nm), ``energy_kev`` (keV), ``convergence_mrad``
(mrad). The first two become ``cube.q_pixel_size`` / ``cube.scan_step_nm``, the others
``cube.meta['energy_kev']`` / ``cube.meta['convergence_mrad']``. EMD files (py4DSTEM 0.14 /
emdfile layout) give ``Q_pixel_size`` (used when its units are ``A^-1``; ``pixels`` or ``mrad``
leave it None) and ``R_pixel_size`` (units ``nm`` or ``A``) and ``convergence_semiangle_mrad``
from the Calibration metadata group; the raw entries are kept in ``cube.meta['emd_calibration']``.
Attributes on the data dataset override the EMD calibration. Data axes are
``(scan_y, scan_x, ky, kx)`` as stored (py4DSTEM's ``(Rx, Ry, Qx, Qy)`` is the same index order).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import FileFormatError, InputError
from ..gpu_core import backend
from ..strain.datacube import DataCube
from . import _files, stem_formats

RAW_SUFFIXES = (".raw", ".bin", ".dat")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
EMD_SUFFIXES = (".emd",)
CALIBRATION_ATTRS = ("q_pixel_size", "scan_step_nm", "energy_kev", "convergence_mrad")
WRITE_DATASET = "/datacube/data"

_Q_UNITS = {"a^-1": 1.0}  # -> 1/Å
_R_UNITS = {"nm": 1.0, "a": 0.1}  # -> nm


@_files.reader_errors("4D-STEM file")
def read_datacube(path, *, shape=None, dtype=None, dataset: str | None = None, offset: int = 0,
                  scan_shape=None, check: bool = True):
    """Open a 4D-STEM file (format from the suffix) as a lazy DataCube.

    Microscope formats (Merlin .mib/.hdr, blockfile .blo, DM3/DM4 4D, Velox .emd, fpd HDF5,
    Dectris ``*_master.h5``, EMPAD .xml/.raw) are read by ``io.stem_formats``; ``scan_shape``
    (scan_y, scan_x) gives the scan where the file does not (e.g. a .mib without .hdr).
    check : stream through the data once (chunks of scan rows) and refuse NaN/Inf, an all-zero
        cube and a cube with no positive value (negated data): ``check_datacube``

    shape, dtype, offset : raw binary only: (scan_y, scan_x, ky, kx), element dtype (byte order
        included, e.g. ``'<u2'``) and the header size in bytes before the data
    dataset : HDF5/EMD only: path of the 4D dataset; by default the single 4D dataset in the file
        (EMD: the ``data`` of a py4DSTEM DataCube group)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = None if shape is not None or dtype is not None or offset or dataset is not None else stem_formats.detect(path)
    if fmt is not None:
        cube = stem_formats.read(path, fmt, scan_shape=scan_shape)
    elif scan_shape is not None:
        raise InputError(f"scan_shape= applies to microscope 4D-STEM formats (.mib, .blo, .emd, ...), not {path.name}")
    else:
        cube = _read_plain(path, suffix, shape, dtype, dataset, offset)
    if check:
        try:
            check_datacube(cube)
        except BaseException:
            handle = cube.meta.get("file")
            if handle is not None:
                handle.close()
            raise
    return cube


def _read_plain(path: Path, suffix: str, shape, dtype, dataset, offset) -> DataCube:
    """.npy, raw binary and plain HDF5/EMD cubes (the formats that are not microscope files)."""
    known = tuple(stem_formats.SUFFIX_FORMATS) + (".npy",) + RAW_SUFFIXES + HDF5_SUFFIXES + EMD_SUFFIXES
    if suffix not in known:
        raise FileFormatError(f"unknown 4D-STEM format {suffix!r} for {path}; expected one of {known}")
    if suffix not in RAW_SUFFIXES and (shape is not None or dtype is not None or offset):
        raise InputError(f"shape=, dtype= and offset= apply to raw binary files only, not {path.name}")
    if dataset is not None and suffix not in HDF5_SUFFIXES + EMD_SUFFIXES:
        raise InputError(f"dataset= applies to HDF5/EMD files only, not {path.name}")
    if suffix == ".npy":
        return _read_npy(path)
    if suffix in RAW_SUFFIXES:
        return _read_raw(path, shape, dtype, offset)
    return _read_h5(path, dataset, emd=suffix in EMD_SUFFIXES)


#: bytes of float32 data checked at once by ``check_datacube``
CHECK_CHUNK_BYTES = 64 << 20


def check_datacube(cube: DataCube) -> None:
    """Stream through a cube in chunks of scan rows and refuse what no 4D-STEM scan holds: NaN
    or Inf (position and count named), only zeros, or no positive value at all (negated counts).
    A read failure of the file (a corrupt compressed chunk) becomes a FileFormatError.
    (``strain.passes.first_pass`` makes the same check within its pass over the cube.)"""
    with read_errors(cube):
        parts = [value_summary(chunk, sl.start) for sl, chunk in _check_chunks(cube)]
    check_values(cube, *(np.concatenate(p) for p in zip(*parts)))


def value_summary(chunk, start_row: int = 0):
    """Per scan row of a chunk ``(rows, sx, ky, kx)`` (NumPy): ``(number of NaN/Inf, flat index
    in the whole scan of the first one or -1, largest and smallest finite value)``, what
    ``check_values`` judges."""
    xp = backend.xp_of(chunk)
    rows = chunk.shape[0]
    per_row = int(np.prod(chunk.shape[1:]))
    flat = chunk.reshape(rows, -1)
    if chunk.dtype.kind in "ui":  # integer counts: always finite, compared as they are
        return (np.zeros(rows, np.int64), np.full(rows, -1, np.int64),
                backend.to_host(flat.max(1)).astype(np.float64), backend.to_host(flat.min(1)).astype(np.float64))
    finite = xp.isfinite(flat)
    bad = backend.to_host((~finite).sum(1)).astype(np.int64)
    first = np.full(rows, -1, np.int64)
    if bad.any():
        first = np.where(bad > 0, backend.to_host(xp.argmin(finite, axis=1)) + (start_row + np.arange(rows)) * per_row,
                         -1)
        flat = xp.where(finite, flat, 0)
    return bad, first, backend.to_host(flat.max(1)).astype(np.float64), backend.to_host(flat.min(1)).astype(np.float64)


def check_values(cube: DataCube, bad, first, peak, low) -> None:
    """Refuse a cube by its ``value_summary`` rows (``check_datacube``'s errors)."""
    source = cube.meta.get("source", "4D-STEM data")
    if bad.sum():
        where = np.unravel_index(int(first[first >= 0].min()), cube.shape)
        raise InputError(f"{source}: {int(bad.sum())} NaN/Inf value(s) in the 4D-STEM data; first at "
                         f"(scan_y, scan_x, ky, kx) = {tuple(int(i) for i in where)}")
    peak, low = float(peak.max()), float(low.min())
    if peak == 0 and low == 0:
        raise InputError(f"{source}: every value of the 4D-STEM data is zero (an empty or unwritten scan)")
    if peak <= 0:
        raise InputError(f"{source}: the 4D-STEM data have no positive value (min {low:g}, max {peak:g}); "
                         "diffraction counts are positive: negated or wrongly offset data?")


class read_errors:
    """Context: a read failure of the cube's file (a corrupt compressed chunk, a truncated file)
    becomes a FileFormatError naming the file."""

    def __init__(self, cube: DataCube):
        self.source = cube.meta.get("source", "4D-STEM data")

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, (OSError, ValueError, RuntimeError, KeyError)):
            raise FileFormatError(f"cannot read the data of {self.source} (damaged or truncated file?): "
                                  f"{kind.__name__}: {exc}") from None
        return False


def _check_chunks(cube: DataCube):
    """``(row slice, chunk)`` over the scan for ``check_datacube``: integer data as read (no float
    copy), anything else as float32 (so float64 beyond float32's range counts as Inf, as the
    steps would see it)."""
    sy, sx, ky, kx = cube.shape
    dtype = getattr(cube.data, "dtype", None)
    if dtype is None or np.dtype(dtype).kind not in "ui":
        yield from cube.iter_rows(4 * CHECK_CHUNK_BYTES)
        return
    from ..gpu_core import chunks

    for sl in chunks.plan(sy, 16 * sx * ky * kx, 4 * CHECK_CHUNK_BYTES):
        yield sl, np.asarray(backend.to_host(cube.data[sl]))


def _check_4d(shape, where) -> None:
    if len(shape) != 4:
        raise FileFormatError(
            f"{where} must be 4D (scan_y, scan_x, ky, kx), got shape {tuple(shape)}"
        )
    if min(shape) < 1:
        raise FileFormatError(f"{where} is empty: shape {tuple(shape)}")


def _read_npy(path: Path) -> DataCube:
    path = _files.existing_file(path, ".npy file")
    try:
        _files.check_npy_size(path)
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileFormatError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"cannot read {path} as .npy (truncated or not .npy?): {exc}") from exc
    _check_4d(data.shape, str(path))
    _files.real_dtype(data.dtype, str(path))
    return DataCube(data, meta={"source": str(path), "format": "npy"})


def _read_raw(path: Path, shape, dtype, offset: int) -> DataCube:
    if shape is None or dtype is None:
        raise InputError(
            f"raw file {path.name} needs shape=(scan_y, scan_x, ky, kx) and dtype= (e.g. '<u2')"
        )
    shape = tuple(int(n) for n in shape)
    _check_4d(shape, "shape=")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"dtype={dtype!r} is not a NumPy dtype") from exc
    if dtype.kind not in "uif":
        raise InputError(f"raw 4D-STEM data must be real numbers, got dtype {dtype}")
    offset = int(offset)
    if offset < 0:
        raise InputError(f"offset must be >= 0 bytes, got {offset}")
    path = _files.existing_file(path, "raw file")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "larger than expected"
        raise FileFormatError(
            f"raw file {path} is {state}: {size} bytes, but shape {shape} of {dtype} "
            f"plus offset {offset} needs {expected} bytes"
        )
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return DataCube(data, meta={"source": str(path), "format": "raw"})


def _read_h5(path: Path, dataset: str | None, emd: bool) -> DataCube:
    h5 = _files.open_h5(path)
    try:
        ds = _files.h5_dataset(h5, dataset) if dataset is not None else _find_4d(h5, emd)
        _check_4d(ds.shape, f"{path}:{ds.name}")
        _files.real_dtype(ds.dtype, f"{path}:{ds.name}")
        cal = _attr_calibration(ds)
        if emd:
            cal = {**_emd_calibration(h5, ds), **{k: v for k, v in cal.items() if v is not None}}
        meta = {
            "source": str(path),
            "format": "emd" if emd else "hdf5",
            "dataset": ds.name,
            "file": h5,
            "energy_kev": cal.get("energy_kev"),
            "convergence_mrad": cal.get("convergence_mrad"),
        }
        if "emd_calibration" in cal:
            meta["emd_calibration"] = cal["emd_calibration"]
        return DataCube(
            ds, scan_step_nm=cal.get("scan_step_nm"), q_pixel_size=cal.get("q_pixel_size"), meta=meta
        )
    except BaseException:
        h5.close()
        raise


def _find_4d(h5: h5py.File, emd: bool) -> h5py.Dataset:
    found = [d for _name, d in _files.walk_datasets(h5) if d.ndim == 4]
    if emd:  # py4DSTEM/emdfile: <root>/<name>/data with the group's python_class == "DataCube"
        cubes = [d for d in found if _text(_files.h5_attr(d.parent, "python_class")) == "DataCube"]
        found = cubes or found
    if len(found) == 1:
        return found[0]
    if not found:
        present = ", ".join(f"{n} {d.shape}" for n, d in _files.walk_datasets(h5)) or "none"
        raise FileFormatError(f"{h5.filename} has no 4D dataset (datasets present: {present})")
    names = ", ".join(f"{d.name} {d.shape}" for d in found)
    raise FileFormatError(f"{h5.filename} has several 4D datasets ({names}); pick one with dataset=")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _positive(value, what: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(np.asarray(value).item())
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"calibration {what}={value!r} is not a number") from exc
    if not np.isfinite(v) or v <= 0:
        raise FileFormatError(f"calibration {what}={v} must be a positive number")
    return v


def _attr_calibration(ds: h5py.Dataset) -> dict:
    return {k: _positive(_files.h5_attr(ds, k, _files.h5_attr(ds.parent, k)), k) for k in CALIBRATION_ATTRS}


def _emd_calibration(h5: h5py.File, ds: h5py.Dataset) -> dict:
    """Calibration of an emdfile/py4DSTEM file: the Calibration group under the cube's root."""
    root = h5["/" + ds.name.strip("/").split("/")[0]]
    root = root if isinstance(root, h5py.Group) else h5
    groups: list[h5py.Group] = []
    root.visititems(
        lambda n, o: groups.append(o)
        if isinstance(o, h5py.Group) and _text(o.attrs.get("python_class")) == "Calibration"
        else None
    )
    if not groups:
        return {}
    cal = groups[0]

    def value(name):
        obj = cal.get(name)
        return obj[()] if isinstance(obj, h5py.Dataset) else None

    raw = {k: value(k) for k in ("Q_pixel_size", "Q_pixel_units", "R_pixel_size", "R_pixel_units")}
    out = {"emd_calibration": {k: _text(v) if k.endswith("units") else v for k, v in raw.items()}}
    q, q_units = value("Q_pixel_size"), (_text(value("Q_pixel_units")) or "").lower()
    if q is not None and q_units in _Q_UNITS:
        out["q_pixel_size"] = _positive(q, "Q_pixel_size") * _Q_UNITS[q_units]
    r, r_units = value("R_pixel_size"), (_text(value("R_pixel_units")) or "").lower()
    if r is not None and r_units in _R_UNITS:
        out["scan_step_nm"] = _positive(r, "R_pixel_size") * _R_UNITS[r_units]
    conv = value("convergence_semiangle_mrad")
    if conv is not None:
        out["convergence_mrad"] = _positive(conv, "convergence_semiangle_mrad")
    return out


def write_datacube(cube_or_array, path, **calibration) -> None:
    """Write a DataCube or 4D array to HDF5 ``/datacube/data`` with calibration attrs, atomically.

    calibration : any of ``q_pixel_size`` (1/Å), ``scan_step_nm`` (nm), ``energy_kev`` (keV),
        ``convergence_mrad`` (mrad); they override the cube's own values. The data are copied
        one scan row at a time, so lazy (memmap/HDF5) and CuPy cubes never load at once.
    """
    unknown = sorted(set(calibration) - set(CALIBRATION_ATTRS))
    if unknown:
        raise InputError(f"unknown calibration {unknown}; expected some of {CALIBRATION_ATTRS}")
    if isinstance(cube_or_array, DataCube):
        cube = cube_or_array
        own = {
            "q_pixel_size": cube.q_pixel_size,
            "scan_step_nm": cube.scan_step_nm,
            "energy_kev": cube.meta.get("energy_kev"),
            "convergence_mrad": cube.meta.get("convergence_mrad"),
        }
    else:
        cube, own = DataCube(cube_or_array), {}
    attrs = {**own, **calibration}
    attrs = {k: _positive(v, k) for k, v in attrs.items() if v is not None}
    path = Path(path)
    if path.suffix.lower() not in HDF5_SUFFIXES:
        raise FileFormatError(f"write_datacube writes HDF5; use one of {HDF5_SUFFIXES}, not {path.name}")
    sy, sx, ky, kx = cube.shape
    dtype = np.dtype(cube.data.dtype)
    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset(WRITE_DATASET, shape=cube.shape, dtype=dtype, chunks=(1, sx, ky, kx))
            for y in range(sy):
                ds[y] = backend.to_host(cube.data[y])
            ds.attrs.update(attrs)
