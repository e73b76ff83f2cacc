"""A minimal lazy DXchange row source: the chunk source of the out-of-core tomography path.

``DXchangeRows(path)`` holds only the file path, dataset name, angles and pixel size, so it
pickles to a Dask worker and is opened there: ``read(rows=slice)`` opens the file, reads those
detector rows of every projection as float32 ``(n_angles, n_rows_sel, n_cols)`` and closes it.
It implements the interface of ``io.open_tilt_series``'s TiltSource (``shape``, ``angles_deg``,
``pixel_size_nm``, ``meta``, ``read``, ``to_series``) for the one case the out-of-core benchmark
needs: DXchange HDF5 without flat/dark fields (those, and other formats, are read whole by
``read_tilt_series``; ``open_rows`` then wraps the series in memory).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FileFormatError, GeometryError
from . import _files
from .tiltseries import DEFAULT_DATASET, HDF5_SUFFIXES, TiltSeries, read_tilt_series


class DXchangeRows:
    """Lazy rows of a DXchange tilt series (see the module docstring)."""

    def __init__(self, path, dataset: str = DEFAULT_DATASET, angles=None):
        self.path, self.dataset = str(path), dataset
        with _files.open_h5(path) as h5:
            ds = _files.h5_dataset(h5, dataset)
            if ds.ndim != 3:
                raise FileFormatError(f"{path}:{dataset} must be 3D (n_angles, n_rows, n_cols), got {ds.shape}")
            self.shape = tuple(int(n) for n in ds.shape)
            px = ds.attrs.get("pixel_size_nm")
            self.pixel_size_nm = None if px is None else float(px)
            if angles is None:
                th = _files.h5_dataset(h5, "/exchange/theta")
                angles = np.ravel(_files.read_h5(th, np.float64))
                units = th.attrs.get("units", "degrees")
                units = units.decode() if isinstance(units, bytes) else str(units)
                if units.lower() in ("rad", "radian", "radians"):
                    angles = np.degrees(angles)
        self.angles_deg = np.asarray(angles, np.float64).ravel()
        if self.angles_deg.size != self.shape[0]:
            raise GeometryError(f"{self.angles_deg.size} tilt angles for {self.shape[0]} projections in {path}")
        self.meta = {"source": self.path, "format": "dxchange", "dataset": dataset, "log_taken": False,
                     "flat_corrected": False, "lazy": True}

    def read(self, rows: slice = slice(None)) -> np.ndarray:
        """Detector rows ``rows`` of every projection, float32 (n_angles, n_rows_sel, n_cols)."""
        with _files.open_h5(self.path) as h5:
            try:
                out = np.asarray(h5[self.dataset][:, rows], dtype=np.float32)
            except (OSError, ValueError) as exc:
                raise FileFormatError(f"cannot read rows {rows} of {self.path}:{self.dataset}: {exc}") from exc
        if not np.isfinite(out).all():
            raise FileFormatError(f"{self.path}: NaN/Inf in detector rows {rows.start}:{rows.stop}")
        return out

    def to_series(self) -> TiltSeries:
        return TiltSeries(self.read(), self.angles_deg, self.pixel_size_nm, dict(self.meta, lazy=False))


class SeriesRows:
    """The same interface over a TiltSeries already in memory."""

    def __init__(self, series: TiltSeries):
        self.series = series
        self.shape, self.angles_deg = series.shape, series.angles_deg
        self.pixel_size_nm, self.meta = series.pixel_size_nm, series.meta

    def read(self, rows: slice = slice(None)):
        return self.series.data[:, rows]

    def to_series(self) -> TiltSeries:
        return self.series


def open_rows(path, angles=None):
    """A lazy row source for a DXchange file without flat/dark fields, else the whole series."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        with _files.open_h5(path) as h5:
            plain = DEFAULT_DATASET in h5 and not ({"/exchange/data_white", "/exchange/data_dark"} & set(
                "/exchange/" + k for k in h5.get("exchange", {}).keys()))
        if plain and (angles is None or not isinstance(angles, (str, Path))):
            return DXchangeRows(path, angles=angles)
    return SeriesRows(read_tilt_series(path, angles=angles))


class H5Rows:
    """A picklable stand-in for an ``h5py.Dataset`` read by leading-axis slices (4D-STEM scan
    rows): holds the path and dataset name, opens the file for each read (on the worker)."""

    def __init__(self, path, dataset: str):
        self.path, self.dataset = str(path), dataset
        with _files.open_h5(path) as h5:
            ds = _files.h5_dataset(h5, dataset)
            self.shape, self.dtype = tuple(ds.shape), ds.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index):
        with _files.open_h5(self.path) as h5:
            try:
                return h5[self.dataset][index]
            except (OSError, ValueError) as exc:
                raise FileFormatError(f"cannot read {index} of {self.path}:{self.dataset}: {exc}") from exc
