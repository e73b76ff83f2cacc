"""Phantoms and simulators with known ground truth, used by the demo, tests and benchmarks."""
from .nanobeam import nanobeam_4dstem
from .phantoms import SHEPP_LOGAN, ParticleTruth, ellipse_image, ellipse_sinogram, shepp_logan, sodiated_particle
from .tiltseries import tilt_series
from .movie import MovieTruth, reaction_movie, reaction_volumes
from .eels import eels_spectrum_image

__all__ = ["SHEPP_LOGAN", "ParticleTruth", "ellipse_image", "ellipse_sinogram", "nanobeam_4dstem", "shepp_logan",
           "sodiated_particle", "tilt_series", "MovieTruth", "reaction_movie", "reaction_volumes", "eels_spectrum_image"]
