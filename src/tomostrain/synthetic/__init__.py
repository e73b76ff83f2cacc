"""Phantoms and simulators with known ground truth, used by the demo, tests and benchmarks."""
from .nanobeam import nanobeam_4dstem
from .phantoms import ParticleTruth, shepp_logan, sodiated_particle
from .tiltseries import tilt_series

__all__ = ["ParticleTruth", "nanobeam_4dstem", "shepp_logan", "sodiated_particle", "tilt_series"]
