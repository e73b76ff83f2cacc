"""Reading and writing: tilt series, 4D-STEM data cubes and result files (no computation here).

Tilt series: DXchange HDF5, MRC (IMOD, FEI, SerialEM + .mdoc; + .rawtlt/.tlt), TIFF, DM3/DM4
(stacks or one file per tilt), HyperSpy/ETSpy .hspy, Velox EMD; lazy through ``open_tilt_series``.
4D-STEM: .npy, raw binary, HDF5, py4DSTEM EMD, and (``stem_formats``) Merlin MIB, blockfile,
DM 4D, Velox EMD, fpd, Dectris Arina, EMPAD. Results: the HDF5 layout of DESIGN.md §4, written
atomically.
"""
from . import imod
from .datacube import check_datacube, read_datacube, write_datacube
from .images import read_image
from .movie import Movie, SpectrumImage, read_movie, read_spectrum_image, write_movie, write_spectrum_image
from .results import append_results, read_results, write_results
from .tiltseries import TiltSeries, TiltSource, open_tilt_series, read_tilt_series, write_tilt_series
from . import xray
from .xray import XrayScan, read_reference_spectra, read_xanes, read_xray_scan, write_xray_scan

__all__ = [
    "TiltSeries",
    "read_tilt_series",
    "write_tilt_series",
    "TiltSource",
    "open_tilt_series",
    "read_datacube",
    "check_datacube",
    "write_datacube",
    "write_results",
    "append_results",
    "read_results",
    "read_image",
    "XrayScan",
    "read_xray_scan",
    "read_xanes",
    "read_reference_spectra",
    "write_xray_scan",
    "Movie",
    "read_movie",
    "write_movie",
    "SpectrumImage",
    "read_spectrum_image",
    "write_spectrum_image",
]
