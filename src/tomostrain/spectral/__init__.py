"""Chemical state: XANES fraction fits per voxel (and EELS white-line ratios and valence maps)."""
from .xanes import XanesFit, edge_energy, fit_spectra, interpolate_references, nnls, xanes_map_2d, xanes_tomography

__all__ = ["XanesFit", "edge_energy", "fit_spectra", "interpolate_references", "nnls", "xanes_map_2d",
           "xanes_tomography"]
