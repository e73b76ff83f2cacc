"""Reading and writing: tilt series, 4D-STEM data cubes and result files (no computation here).

Tilt series: DXchange HDF5, IMOD MRC (+ .rawtlt/.tlt), TIFF. 4D-STEM: .npy, raw binary, HDF5,
py4DSTEM EMD. Results: the HDF5 layout of DESIGN.md §4, written atomically.
"""
from .datacube import read_datacube, write_datacube
from .images import read_image
from .movie import Movie, SpectrumImage, read_movie, read_spectrum_image, write_movie, write_spectrum_image
from .results import append_results, read_results, write_results
from .tiltseries import TiltSeries, read_tilt_series, write_tilt_series

__all__ = [
    "TiltSeries",
    "read_tilt_series",
    "write_tilt_series",
    "read_datacube",
    "write_datacube",
    "write_results",
    "append_results",
    "read_results",
    "read_image",
    "Movie",
    "read_movie",
    "write_movie",
    "SpectrumImage",
    "read_spectrum_image",
    "write_spectrum_image",
]
