"""In situ movies ``(frames, y, x)`` and EELS spectrum images ``(scan_y, scan_x, energy)``.

Movies: HDF5 ``/data`` with ``/time_s`` (optional) and attrs ``pixel_size_nm``,
``frame_interval_s`` (on the dataset or the file); TIFF stacks; DM3/DM4 stacks through
RosettaSciIO. Spectrum images: HDF5 ``/data`` with ``/energy_eV`` or attrs
``energy_offset_eV``, ``energy_scale_eV`` (optional ``/low_loss`` + ``/low_loss_energy_eV``);
DM3/DM4 and EMD through RosettaSciIO, the energy calibration from the signal axis (offset,
scale, units eV). No computation here; foreign reader errors become ``FileFormatError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from . import _files


@dataclass
class Movie:
    """Frames (float32), times (s) or None, pixel size (nm) or None, metadata."""

    data: np.ndarray
    time_s: np.ndarray | None = None
    pixel_size_nm: float | None = None
    frame_interval_s: float | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class SpectrumImage:
    """Spectra (scan_y, scan_x, n_E) float32 and their energy axis (eV); optional low-loss SI."""

    data: np.ndarray
    energy_eV: np.ndarray
    low_loss: np.ndarray | None = None
    low_loss_energy_eV: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


@_files.reader_errors("movie")
def read_movie(path) -> Movie:
    """Read an in situ movie (HDF5, TIFF, DM3/DM4)."""
    path = _files.existing_file(Path(path), "movie")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf", ".nxs"):
        with _files.open_h5(path) as h5:
            ds = _files.h5_dataset(h5, "data")
            data = _files.read_h5(ds, np.float32)
            attrs = {**dict(h5.attrs), **dict(ds.attrs)}
            times = _files.read_h5(h5["time_s"], np.float64) if "time_s" in h5 else None
        movie = Movie(data, times, _num(attrs.get("pixel_size_nm")), _num(attrs.get("frame_interval_s")),
                      {"format": "hdf5"})
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                data = np.asarray(tif.asarray(), np.float32)
                meta = tif.imagej_metadata or {}
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on bad files
            raise FileFormatError(f"cannot read TIFF movie {path}: {exc}") from None
        interval = _num(meta.get("finterval"))
        movie = Movie(data, None, None, interval, {"format": "tiff"})
    elif suffix in (".dm3", ".dm4"):
        sig = _rsciio_signal(path, 3)
        axes = sig["axes"]
        px = _num(axes[-1].get("scale")) if str(axes[-1].get("units", "")).strip() == "nm" else None
        interval = _num(axes[0].get("scale")) if str(axes[0].get("units", "")).strip() == "s" else None
        movie = Movie(np.asarray(sig["data"], np.float32), None, px, interval, {"format": suffix[1:]})
    else:
        raise FileFormatError(f"{path}: unknown movie format {suffix!r} (use .h5, .tif or .dm3/.dm4)")
    if movie.data.ndim != 3:
        raise FileFormatError(f"{path}: a movie must be (frames, y, x), got shape {movie.data.shape}")
    if movie.time_s is not None and movie.time_s.shape != (movie.data.shape[0],):
        raise FileFormatError(f"{path}: /time_s has {movie.time_s.size} values for {movie.data.shape[0]} frames")
    return movie


def write_movie(path, data, *, time_s=None, pixel_size_nm=None, frame_interval_s=None) -> None:
    """Write a movie as HDF5 (``/data``, ``/time_s``, attrs), atomically."""
    import h5py

    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset("data", data=np.asarray(data, np.float32))
            if time_s is not None:
                h5.create_dataset("time_s", data=np.asarray(time_s, np.float64))
            for key, value in (("pixel_size_nm", pixel_size_nm), ("frame_interval_s", frame_interval_s)):
                if value is not None:
                    ds.attrs[key] = float(value)


@_files.reader_errors("spectrum image")
def read_spectrum_image(path) -> SpectrumImage:
    """Read an EELS spectrum image (HDF5, DM3/DM4, EMD)."""
    path = _files.existing_file(Path(path), "spectrum image")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf") or (suffix == ".emd" and _is_plain_h5(path)):
        with _files.open_h5(path) as h5:
            ds = _files.h5_dataset(h5, "data")
            data = _files.read_h5(ds, np.float32)
            attrs = {**dict(h5.attrs), **dict(ds.attrs)}
            energy = _energy_axis(h5, "energy_eV", attrs, data.shape[-1], path)
            low = low_e = None
            if "low_loss" in h5:
                low = _files.read_h5(h5["low_loss"], np.float32)
                low_e = _energy_axis(h5, "low_loss_energy_eV", dict(h5["low_loss"].attrs), low.shape[-1], path)
        si = SpectrumImage(data, energy, low, low_e, {"format": "hdf5"})
    elif suffix in (".dm3", ".dm4", ".emd"):
        sig = _rsciio_signal(path, 3, reader="emd" if suffix == ".emd" else "dm")
        ax = sig["axes"][-1]
        if str(ax.get("units", "")).strip() != "eV":
            raise FileFormatError(f"{path}: the signal axis is in {ax.get('units')!r}, not eV: not an EELS spectrum image")
        n = np.asarray(sig["data"]).shape[-1]
        energy = float(ax.get("offset", 0.0)) + float(ax.get("scale", 1.0)) * np.arange(n)
        si = SpectrumImage(np.asarray(sig["data"], np.float32), energy, meta={"format": suffix[1:]})
    else:
        raise FileFormatError(f"{path}: unknown spectrum-image format {suffix!r} (use .h5, .dm3/.dm4 or .emd)")
    if si.data.ndim == 2:
        si.data = si.data[None]
    if si.data.ndim != 3:
        raise FileFormatError(f"{path}: a spectrum image must be (scan_y, scan_x, energy), got shape {si.data.shape}")
    return si


def write_spectrum_image(path, data, energy_eV, *, low_loss=None, low_loss_energy_eV=None) -> None:
    """Write a spectrum image as HDF5 (``/data``, ``/energy_eV``, optional low loss), atomically."""
    import h5py

    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("data", data=np.asarray(data, np.float32))
            h5.create_dataset("energy_eV", data=np.asarray(energy_eV, np.float64))
            if low_loss is not None:
                h5.create_dataset("low_loss", data=np.asarray(low_loss, np.float32))
                h5.create_dataset("low_loss_energy_eV", data=np.asarray(low_loss_energy_eV, np.float64))


def _energy_axis(h5, name, attrs, n, path):
    if name in h5:
        e = _files.read_h5(h5[name], np.float64)
    elif "energy_offset_eV" in attrs and "energy_scale_eV" in attrs:
        e = float(attrs["energy_offset_eV"]) + float(attrs["energy_scale_eV"]) * np.arange(n)
    else:
        raise FileFormatError(f"{path}: no energy calibration (/{name} or attrs energy_offset_eV, energy_scale_eV)")
    if e.shape != (n,):
        raise FileFormatError(f"{path}: /{name} has {e.size} values for {n} channels")
    return e


def _is_plain_h5(path) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as h5:
        return "data" in h5 and isinstance(h5["data"], h5py.Dataset)


def _rsciio_signal(path, ndim, reader="dm"):
    """The first signal of ``ndim`` dimensions read by RosettaSciIO, errors as FileFormatError."""
    try:
        if reader == "emd":
            from rsciio.emd import file_reader
        else:
            from rsciio.digitalmicrograph import file_reader
        signals = file_reader(str(path))
    except Exception as exc:  # noqa: BLE001 - the readers raise many kinds on bad files
        raise FileFormatError(f"cannot read {path} with RosettaSciIO: {exc}") from None
    for sig in signals:
        if np.ndim(sig.get("data")) == ndim:
            return sig
    shapes = [np.shape(s.get("data")) for s in signals]
    raise FileFormatError(f"{path}: no {ndim}D dataset (found shapes {shapes})")


def _num(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None
