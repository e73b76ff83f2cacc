"""Chemical state: XANES fraction fits per voxel, EELS white-line ratios, onsets, valence and thickness maps."""
from .eels import (EDGES, Edge, EelsMaps, estimate_core_loss_plural, fit_power_law_background,
                   fourier_ratio_deconvolve, log_ratio_thickness, pca_denoise, poisson_plural_deconvolve, resolve_edge,
                   valence_map, white_line_maps, zero_loss_centre)
from .xanes import XanesFit, edge_energy, fit_spectra, interpolate_references, nnls, xanes_map_2d, xanes_tomography

__all__ = ["XanesFit", "edge_energy", "fit_spectra", "interpolate_references", "nnls", "xanes_map_2d",
           "xanes_tomography", "EDGES", "Edge", "EelsMaps", "fit_power_law_background", "log_ratio_thickness",
           "pca_denoise", "resolve_edge", "valence_map", "white_line_maps", "fourier_ratio_deconvolve",
           "zero_loss_centre", "estimate_core_loss_plural", "poisson_plural_deconvolve"]
