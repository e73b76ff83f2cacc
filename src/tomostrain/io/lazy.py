"""Picklable stand-ins for open HDF5 datasets, so that chunks read on a Dask worker.

``H5Rows(path, dataset)`` holds the path and dataset name, opens the file for each read (one per
chunk, on the worker) and returns ``dataset[index]``: the 4D-STEM cube handed to Dask workers
(``pipeline.stem`` with a Dask executor). Tilt series have their own lazy source,
``io.open_tilt_series``.
"""
from __future__ import annotations

from ..errors import FileFormatError
from . import _files


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
