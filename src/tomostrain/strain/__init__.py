"""4D-STEM: calibration, virtual images, Bragg disks, lattice fits, strain and phase maps.

Data are ``(scan_y, scan_x, ky, kx)``; lattice vectors ``(gy, gx)`` in 1/Å; strain conventions
of DESIGN.md §3 (``exx = F[1,1] - 1``, ``eyy = F[0,0] - 1``, tensor shear, ``theta`` positive
turning +y towards +x).
"""
from . import calibrate
from .datacube import DataCube
from .disks import BraggPeaks, find_bragg_disks
from .lattice import LatticeFit, choose_lattice_vectors, fit_lattice, index_peaks
from .phases import PHASES, Phase, PhaseMap, phase_map
from .strainmap import StrainMap, strain_map
from .virtual import center_of_mass, dpc_icom, virtual_adf, virtual_bf, virtual_image

__all__ = [
    "BraggPeaks", "DataCube", "LatticeFit", "PHASES", "Phase", "PhaseMap", "StrainMap", "calibrate",
    "center_of_mass", "choose_lattice_vectors", "dpc_icom", "find_bragg_disks", "fit_lattice", "index_peaks",
    "phase_map", "strain_map", "virtual_adf", "virtual_bf", "virtual_image",
]
