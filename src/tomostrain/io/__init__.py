"""Reading and writing: tilt series, 4D-STEM data cubes and result files (no computation here).

Tilt series: DXchange HDF5, MRC (IMOD, FEI, SerialEM + .mdoc; + .rawtlt/.tlt), TIFF, DM3/DM4
(stacks or one file per tilt), HyperSpy/ETSpy .hspy, Velox EMD; lazy through ``open_tilt_series``. 4D-STEM: .npy, raw binary, HDF5,
py4DSTEM EMD. Results: the HDF5 layout of DESIGN.md §4, written atomically.
"""
from . import imod
from .datacube import read_datacube, write_datacube
from .images import read_image
from .results import append_results, read_results, write_results
from .tiltseries import TiltSeries, TiltSource, open_tilt_series, read_tilt_series, write_tilt_series

__all__ = [
    "TiltSeries",
    "read_tilt_series",
    "write_tilt_series",
    "TiltSource",
    "open_tilt_series",
    "read_datacube",
    "write_datacube",
    "write_results",
    "append_results",
    "read_results",
    "read_image",
]
