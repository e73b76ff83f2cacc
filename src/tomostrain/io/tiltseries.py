"""Tilt series: the TiltSeries container and its readers/writers (DXchange HDF5, IMOD MRC, TIFF).

Conventions (DESIGN.md §3): data ``float32 (n_angles, n_rows, n_cols)`` with the tilt axis along
the rows' direction, angles in degrees.

Formats, chosen by suffix:

- DXchange HDF5 (``.h5 .hdf5 .hdf .nxs``): ``/exchange/data`` (n, rows, cols) and
  ``/exchange/theta`` in degrees (radians only when its ``units`` attr says ``rad``/``radians``).
  Optional ``/exchange/data_white`` and ``/exchange/data_dark`` give the flat/dark correction
  ``(data - mean(dark)) / (mean(white) - mean(dark))`` (means over their first axis; dark
  defaults to 0; a dark field alone is only subtracted); the denominator and the result are
  clipped to at least ``FLOOR``, so ``-log`` stays finite. Pixel size: attribute
  ``pixel_size_nm`` of the data dataset.
- IMOD stacks (``.mrc .st .ali``) via mrcfile; pixel size from the voxel size (Å -> nm). Angles
  from a sibling angle file with the same stem: ``.rawtlt`` then ``.tlt`` (``.tlt`` first for an
  aligned ``.ali`` stack, whose refined angles IMOD writes to ``.tlt``).
- TIFF stacks (``.tif .tiff``) via tifffile; angles as for MRC. Pixel size from ImageJ
  resolution tags when their unit is nm (as ``write_tilt_series`` writes them).

Angle files hold one angle (degrees) per line. ``angles=`` (array or path of such a file)
overrides the angles found in or next to the data file.

``log``: ``True`` takes ``-log`` of the (corrected) data, ``False`` does not, ``None`` takes it
exactly when flat (white) fields are present, i.e. for X-ray transmission data but not for
electron (HAADF) data, which are already linear in projected density. ``meta['log_taken']``
records what happened.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, GeometryError, InputError
from ..gpu_core import backend
from . import _files

#: smallest transmission kept by the flat/dark correction and before ``-log``
FLOOR = 1e-6

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
MRC_SUFFIXES = (".mrc", ".st", ".ali")
TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_DATASET = "/exchange/data"


@dataclass
class TiltSeries:
    """A tilt series and its angles.

    data : float32 (n_angles, n_rows, n_cols), NumPy or CuPy; other real dtypes are cast
    angles_deg : float64 (n_angles,) tilt angles in degrees (always NumPy)
    pixel_size_nm : detector pixel size in nm, or None when unknown
    meta : free-form metadata (source file, format, ``log_taken``, ...)
    """

    data: object
    angles_deg: np.ndarray
    pixel_size_nm: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        xp = backend.xp_of(self.data)
        data = xp.asarray(self.data)
        if data.ndim != 3:
            raise InputError(
                f"tilt series data must be 3D (n_angles, n_rows, n_cols), got shape {data.shape}"
            )
        if data.size == 0:
            raise InputError(f"tilt series data is empty: shape {data.shape}")
        if data.dtype.kind not in "uif":
            raise InputError(f"tilt series data must be real numbers, got dtype {data.dtype}")
        self.data = data.astype(xp.float32, copy=False)
        _check_finite(self.data, "tilt series data")

        angles = np.asarray(backend.to_host(self.angles_deg))
        if angles.dtype.kind not in "uif":
            raise InputError(f"tilt angles must be real numbers, got dtype {angles.dtype}")
        angles = angles.astype(np.float64)
        if angles.ndim != 1:
            raise GeometryError(f"tilt angles must be 1D (n_angles,), got shape {angles.shape}")
        if angles.shape[0] != data.shape[0]:
            raise GeometryError(
                f"{angles.shape[0]} tilt angles for {data.shape[0]} projections: "
                "need exactly one angle (degrees) per projection"
            )
        _check_finite(angles, "tilt angles")
        self.angles_deg = angles

        if self.pixel_size_nm is not None:
            px = float(self.pixel_size_nm)
            if not np.isfinite(px) or px <= 0:
                raise InputError(f"pixel_size_nm must be a positive number or None, got {px}")
            self.pixel_size_nm = px

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)


def _check_finite(array, what: str) -> None:
    xp = backend.xp_of(array)
    bad = ~xp.isfinite(array)
    count = int(bad.sum())
    if count:
        flat_index = int(xp.flatnonzero(bad.ravel())[0])
        first = tuple(int(i) for i in np.unravel_index(flat_index, array.shape))
        raise InputError(f"{what} contain {count} NaN/Inf value(s); first at index {first}")


# ------------------------------------------------------------------------------------ reading


@_files.reader_errors("tilt series")
def read_tilt_series(path, *, angles=None, log: bool | None = None, dataset: str | None = None):
    """Read a tilt series (format from the suffix, see the module docstring) -> TiltSeries.

    angles : array of degrees or path of an angle file; overrides the file's own angles
    log : take ``-log`` (True), do not (False), or only when flat fields exist (None)
    dataset : HDF5 path of the projections (default ``/exchange/data``); HDF5 only
    The input file is opened read-only and never modified.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in HDF5_SUFFIXES + MRC_SUFFIXES + TIFF_SUFFIXES:
        raise FileFormatError(
            f"unknown tilt-series format {suffix!r} for {path}; expected one of "
            f"{HDF5_SUFFIXES + MRC_SUFFIXES + TIFF_SUFFIXES}"
        )
    if dataset is not None and suffix not in HDF5_SUFFIXES:
        raise InputError(f"dataset= applies to HDF5 files only, not {path.name}")
    if suffix in HDF5_SUFFIXES:
        data, file_angles, px, flat, meta = _read_dxchange(path, dataset or DEFAULT_DATASET)
    elif suffix in MRC_SUFFIXES:
        data, px, meta = _read_mrc(path)
        file_angles, flat = None, False
    else:
        data, px, meta = _read_tiff(path)
        file_angles, flat = None, False

    if angles is not None:
        ang = _angles_argument(angles)
        meta["angles_source"] = str(angles) if isinstance(angles, (str, os.PathLike)) else "argument"
    elif file_angles is not None:
        ang = file_angles
        meta["angles_source"] = "file"
    else:
        angle_file = _sibling_angle_file(path)
        ang = read_angle_file(angle_file)
        meta["angles_source"] = str(angle_file)
    if np.ndim(ang) == 1 and len(ang) != data.shape[0]:
        raise GeometryError(
            f"{len(ang)} tilt angles ({meta['angles_source']}) for {data.shape[0]} projections "
            f"in {path}: need exactly one angle per projection"
        )
    check_angle_units(ang, meta["angles_source"])

    take_log = flat if log is None else bool(log)
    if take_log:
        data = -np.log(np.maximum(data, np.float32(FLOOR)))
    meta.update(source=str(path), log_taken=take_log, flat_corrected=flat)
    try:
        return TiltSeries(data, ang, px, meta)
    except GeometryError:
        raise
    except InputError as exc:
        raise FileFormatError(f"{path}: {exc}") from exc


#: angles within +-this (after any declared radian conversion) over a wider span look like radians
RADIAN_LIMIT = np.pi + 1e-6


def check_angle_units(angles, source: str) -> None:
    """GeometryError for angles that cannot be degrees: all within +-pi over a span of more than
    0.5 (radians taken for degrees), or beyond +-360."""
    a = np.asarray(angles, np.float64)
    if a.size < 3 or not np.isfinite(a).all():
        return
    if np.abs(a).max() > 360:
        raise GeometryError(f"tilt angles from {source} reach {np.abs(a).max():g}: degrees within +-360 expected")
    if np.abs(a).max() <= RADIAN_LIMIT and np.ptp(a) > 0.5:
        raise GeometryError(
            f"tilt angles from {source} span {a.min():.3g}..{a.max():.3g}: these look like radians, but "
            "tomostrain reads degrees; convert them (or, in DXchange, set the theta attribute units='rad')")


def _read_dxchange(path: Path, name: str):
    with _files.open_h5(path) as h5:
        ds = _files.h5_dataset(h5, name)
        if ds.ndim != 3:
            raise FileFormatError(
                f"{path}:{name} must be 3D (n_angles, n_rows, n_cols), got shape {ds.shape}"
            )
        _files.real_dtype(ds.dtype, f"{path}:{name}")
        data = _files.read_h5(ds, np.float32)
        px = _files.h5_attr(ds, "pixel_size_nm")
        px = None if px is None else float(px)

        theta = None
        if "/exchange/theta" in h5:
            th = _files.h5_dataset(h5, "/exchange/theta")
            _files.real_dtype(th.dtype, f"{path}:/exchange/theta")
            theta = np.ravel(_files.read_h5(th, np.float64))
            units = _files.h5_attr(th, "units", "degrees")
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units.lower() in ("rad", "radian", "radians"):
                theta = np.degrees(theta)

        white = _mean_field(h5, "/exchange/data_white", data.shape[1:])
        dark = _mean_field(h5, "/exchange/data_dark", data.shape[1:])

    flat = white is not None
    if flat:
        dark = np.float32(0) if dark is None else dark
        den = np.maximum(white - dark, np.float32(FLOOR))
        data = np.maximum((data - dark) / den, np.float32(FLOOR))
    elif dark is not None:
        data = data - dark
    meta = {"format": "dxchange", "dataset": name}
    return data, theta, px, flat, meta


def _mean_field(h5, name: str, frame_shape):
    """Mean over the first axis of a white/dark field stack, or None when absent."""
    if name not in h5:
        return None
    ds = _files.h5_dataset(h5, name)
    _files.real_dtype(ds.dtype, f"{h5.filename}:{name}")
    field_ = _files.read_h5(ds, np.float32)
    if field_.ndim == 2:
        field_ = field_[None]
    if field_.ndim != 3 or field_.shape[1:] != tuple(frame_shape) or field_.shape[0] == 0:
        raise FileFormatError(
            f"{h5.filename}:{name} must be (n, {frame_shape[0]}, {frame_shape[1]}) to match the "
            f"projections, got shape {ds.shape}"
        )
    mean = field_.mean(axis=0, dtype=np.float64).astype(np.float32)
    _check_finite(mean, f"{name} of {h5.filename}")
    return mean


def _read_mrc(path: Path):
    import mrcfile

    path = _files.existing_file(path, "MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a size mismatch is an error below
            mrc = mrcfile.mmap(path, mode="r", permissive=False)
        with mrc:
            expected = 1024 + int(mrc.header.nsymbt) + int(mrc.data.nbytes)
            size = path.stat().st_size
            if size != expected:  # mrcfile only warns about extra bytes
                state = "truncated" if size < expected else "longer than its header says"
                raise FileFormatError(f"MRC file {path} is {state}: {size} bytes, but its header "
                                      f"({mrc.data.shape} of {mrc.data.dtype}) needs {expected} bytes")
            _files.real_dtype(mrc.data.dtype, f"MRC file {path}")
            from ..safety import preflight

            preflight(mrc.data.size * 4, f"reading MRC file {path} ({mrc.data.shape})",
                      "crop or bin the stack into a smaller file, or run it on a bigger machine")
            data = np.array(mrc.data, dtype=np.float32)
            vx = float(mrc.voxel_size.x)
    except FileFormatError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"cannot read MRC file {path} (truncated or not MRC?): {exc}") from exc
    if data.ndim == 2:
        data = data[None]
    px = vx / 10.0 if vx > 0 else None
    return data, px, {"format": "mrc"}


def _read_tiff(path: Path):
    import tifffile

    path = _files.existing_file(path, "TIFF file")
    try:
        with tifffile.TiffFile(path) as tif:
            raw = tif.asarray()
            _files.real_dtype(raw.dtype, f"TIFF file {path}")
            data = np.asarray(raw, dtype=np.float32)
            px = _tiff_pixel_size_nm(tif)
            images = (tif.imagej_metadata or {}).get("images")
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"cannot read TIFF file {path} (truncated or not TIFF?): {exc}") from exc
    if data.ndim == 2:
        data = data[None]
    if images is not None and data.ndim == 3 and data.shape[0] != images:
        raise FileFormatError(
            f"TIFF file {path} is truncated: its ImageJ header announces {images} images, "
            f"{data.shape[0]} could be read"
        )
    return data, px, {"format": "tiff"}


def _tiff_pixel_size_nm(tif) -> float | None:
    meta = tif.imagej_metadata or {}
    tag = tif.pages[0].tags.get("XResolution")
    if meta.get("unit") != "nm" or tag is None:
        return None
    num, den = tag.value
    return float(den) / float(num) if num else None


def _angles_argument(angles) -> np.ndarray:
    if isinstance(angles, (str, os.PathLike)):
        return read_angle_file(angles)
    ang = np.asarray(backend.to_host(angles))
    if ang.dtype.kind not in "uif" or ang.ndim != 1:
        raise GeometryError(
            f"angles= must be a 1D array of degrees or an angle-file path, got {ang.dtype} "
            f"array of shape {ang.shape}"
        )
    return ang.astype(np.float64)


def _sibling_angle_file(path: Path) -> Path:
    order = (".tlt", ".rawtlt") if path.suffix.lower() == ".ali" else (".rawtlt", ".tlt")
    candidates = [path.with_suffix(s) for s in order]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise FileFormatError(
        f"no tilt angles for {path}: none of {', '.join(str(c) for c in candidates)} exists; "
        "pass angles= (degrees, or an angle-file path)"
    )


@_files.reader_errors("angle file")
def read_angle_file(path) -> np.ndarray:
    """Angles (degrees, float64) from a text file with one angle per line (IMOD .rawtlt/.tlt)."""
    path = _files.existing_file(path, "angle file")
    values = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"angle file {path} is not text (byte {exc.start} is not UTF-8); "
                              "expected one angle in degrees per line") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            values.append(float(text.split()[0]))
        except ValueError:
            raise FileFormatError(
                f"{path} line {lineno}: expected one angle in degrees, got {text!r}"
            ) from None
    if not values:
        raise FileFormatError(f"angle file {path} holds no angles")
    return np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------ writing


def write_tilt_series(series: TiltSeries, path) -> None:
    """Write ``series`` atomically; the format comes from the suffix of ``path``.

    HDF5: DXchange ``/exchange/data`` (float32), ``/exchange/theta`` (degrees, attr units),
    data attr ``pixel_size_nm``. MRC/TIFF: the stack plus a sibling ``.rawtlt`` angle file.
    """
    if not isinstance(series, TiltSeries):
        raise InputError(f"write_tilt_series needs a TiltSeries, got {type(series).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    data = backend.to_host(series.data)
    if suffix in HDF5_SUFFIXES:
        _write_dxchange(series, data, path)
    elif suffix in MRC_SUFFIXES or suffix in TIFF_SUFFIXES:
        rawtlt = path.with_suffix(".rawtlt")
        with _files.atomic_paths(path, rawtlt) as (tmp, tmp_tlt):
            if suffix in MRC_SUFFIXES:
                _write_mrc(series, data, tmp)
            else:
                _write_tiff(series, data, tmp)
            tmp_tlt.write_text("".join(f"{a:.10g}\n" for a in series.angles_deg))
    else:
        raise FileFormatError(
            f"unknown tilt-series format {suffix!r} for {path}; expected one of "
            f"{HDF5_SUFFIXES + MRC_SUFFIXES + TIFF_SUFFIXES}"
        )


def _write_dxchange(series, data, path):
    import h5py

    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset("/exchange/data", data=data)
            if series.pixel_size_nm is not None:
                ds.attrs["pixel_size_nm"] = series.pixel_size_nm
            th = h5.create_dataset("/exchange/theta", data=series.angles_deg)
            th.attrs["units"] = "degrees"


def _write_mrc(series, data, tmp):
    import mrcfile

    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        if series.pixel_size_nm is not None:
            mrc.voxel_size = series.pixel_size_nm * 10.0  # nm -> Å


def _write_tiff(series, data, tmp):
    import tifffile

    kwargs = {"metadata": {"axes": "ZYX"}}
    if series.pixel_size_nm is not None:
        px = 1.0 / series.pixel_size_nm
        kwargs = {"resolution": (px, px), "metadata": {"unit": "nm", "axes": "ZYX"}}
    tifffile.imwrite(tmp, data, imagej=True, **kwargs)
