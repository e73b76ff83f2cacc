"""Chemical state from spectra: EELS white-line ratios, onsets, valence and thickness maps."""
from .eels import EDGES, Edge, EelsMaps, fit_power_law_background, log_ratio_thickness, pca_denoise, resolve_edge, valence_map, white_line_maps

__all__ = ["EDGES", "Edge", "EelsMaps", "fit_power_law_background", "log_ratio_thickness", "pca_denoise", "resolve_edge", "valence_map", "white_line_maps"]
