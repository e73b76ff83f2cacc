"""Electron-optics conversions used by the calibration: wavelength, camera length -> q pixel size."""
from __future__ import annotations

import math


def electron_wavelength_A(energy_kev: float) -> float:
    """Relativistic electron wavelength (Å) at beam energy ``energy_kev`` (keV); 200 keV -> 0.02508 Å."""
    from scipy import constants as _c  # here, not at import: scipy.constants costs ~0.2 s to import

    ev = float(energy_kev) * 1e3 * _c.e
    p = math.sqrt(2 * _c.m_e * ev * (1 + ev / (2 * _c.m_e * _c.c**2)))
    return _c.h / p * 1e10


def q_pixel_size_from_angle(angle_per_pixel_rad: float, energy_kev: float) -> float:
    """Diffraction pixel size (1/Å) from the scattering angle one pixel spans (rad): q = angle / λ."""
    return float(angle_per_pixel_rad) / electron_wavelength_A(energy_kev)


def q_pixel_size_from_camera(pixel_size_m: float, camera_length_m: float, energy_kev: float) -> float:
    """Diffraction pixel size (1/Å) of a detector pixel ``pixel_size_m`` at camera length ``camera_length_m``.

    Small-angle geometry: one pixel spans ``pixel_size / camera_length`` rad, so q = that / λ.
    """
    return q_pixel_size_from_angle(float(pixel_size_m) / float(camera_length_m), energy_kev)
