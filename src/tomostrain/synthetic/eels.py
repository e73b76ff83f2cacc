"""Synthetic EELS spectrum images with known L3/L2 ratios and onsets per position.

Each spectrum (eV axis ``energy_eV``): a power-law background ``A E^-r`` (A and r vary across the
scan) plus the edge: two Gaussian white lines at ``E3`` and ``E3 + spin_orbit`` with areas in the
ratio ``l3_l2`` and a double arctan continuum (2:1) under them, scaled by the local thickness,
then Poisson noise. A low-loss spectrum image (zero-loss + plasmons, Poisson-distributed
plasmon multiplicity for ``t/lambda``) comes with it.

Truth per position: ``l3_l2`` (ratio of the white-line areas), ``l3_onset_eV`` (where the
noise-free edge signal first rises to half its L3 maximum, the definition
``spectral.eels.white_line_maps`` measures), ``l3_peak_eV`` and ``thickness`` (t/lambda).
"""
from __future__ import annotations

import numpy as np
from math import factorial

from scipy import ndimage


def eels_spectrum_image(scan_shape=(24, 24), *, edge_eV=855.0, spin_orbit_eV=17.3, energy=(780.0, 920.0, 0.2),
                        ratio_range=(2.2, 3.4), shift_range_eV=(-1.5, 0.5), width_eV=(0.8, 1.2),
                        thickness_range=(0.3, 1.0), counts=3000.0, edge_jump=0.35, seed=0):
    """(spectra (sy, sx, n_E) float32 counts, energy_eV (n_E,), truth dict).

    ``truth["low_loss"]`` is the low-loss spectrum image on ``truth["low_loss_energy_eV"]``.

    The L3/L2 ratio and chemical shift vary smoothly (a Ni2+ -> Ni0 like gradient plus random
    smooth patches); ``counts`` is the background count per channel just before the edge at unit
    thickness; ``edge_jump`` the continuum step relative to that background.
    """
    rng = np.random.default_rng(seed)
    sy, sx = scan_shape
    e = np.arange(*energy)
    e = e[e < energy[1]]

    def field(lo, hi, sigma=3.0):
        f = ndimage.gaussian_filter(rng.standard_normal(scan_shape), sigma, mode="wrap")
        grad = np.linspace(-1, 1, sx)[None, :] * rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
        f = f / (np.abs(f).max() + 1e-12) + grad
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        return lo + (hi - lo) * f

    ratio = field(*ratio_range)
    shift = field(*shift_range_eV)
    width = field(*width_eV)
    thick = field(*thickness_range)
    r = field(2.6, 3.6)
    e3 = edge_eV + shift + 1.0            # the white-line maximum sits ~1 eV above the tabulated onset
    e2 = e3 + spin_orbit_eV
    pre = edge_eV - 10.0
    A = counts * thick * pre ** r
    bg = A[..., None] * e ** (-r[..., None])
    step = edge_jump * counts * thick
    # white-line areas: L3 + L2 total ~ 6x the continuum step times 1 eV (a strong white line)
    total = 6.0 * step * 2.5
    a3 = total * ratio / (1 + ratio)
    a2 = total / (1 + ratio)
    g = lambda c, a, w: a[..., None] / (np.sqrt(2 * np.pi) * w[..., None]) * np.exp(-0.5 * ((e - c[..., None]) / w[..., None]) ** 2)  # noqa: E731
    cont = step[..., None] * (2 / 3 * (0.5 + np.arctan((e - e3[..., None]) / 0.6) / np.pi)
                              + 1 / 3 * (0.5 + np.arctan((e - e2[..., None]) / 0.6) / np.pi))
    cont = cont * (e / edge_eV) ** -1.5
    edge_signal = g(e3, a3, width) + g(e2, a2, width) + cont
    spectra = rng.poisson(np.clip(bg + edge_signal, 0, None)).astype(np.float32)
    # truth onset: half of the L3 maximum on the rising side of the noise-free edge signal
    de = e[1] - e[0]
    fine = np.arange(edge_eV - 12.0, edge_eV + 12.0, de / 20)
    onset = np.empty(scan_shape)
    peak = np.empty(scan_shape)
    for idx in np.ndindex(*scan_shape):   # truth only (cheap 1D interpolations); never in the method
        s = np.interp(fine, e, edge_signal[idx])
        kp = np.argmax(np.where(np.abs(fine - e3[idx]) < 3, s, -np.inf))
        half = 0.5 * s[kp]
        j = np.flatnonzero(s[:kp] < half)[-1]
        onset[idx] = fine[j] + (half - s[j]) / (s[j + 1] - s[j]) * (fine[1] - fine[0])
        peak[idx] = fine[kp]
    # low loss: zero-loss (Gaussian 0.8 eV FWHM) + plasmons at 22 eV with Poisson multiplicity
    el = np.arange(-10.0, 120.0, 0.2)
    ll = np.zeros(scan_shape + (el.size,))
    for m in range(0, 6):
        w_m = np.exp(-thick) * thick ** m / factorial(m)
        wid = np.sqrt(0.34 ** 2 + m * 3.0 ** 2)
        ll += w_m[..., None] * np.exp(-0.5 * ((el - 22.0 * m) / wid) ** 2) / wid
    ll = ll / ll.sum(-1, keepdims=True) * 2e5
    low_loss = rng.poisson(ll).astype(np.float32)
    truth = {"l3_l2": ratio, "l3_onset_eV": onset, "l3_peak_eV": peak, "thickness": thick, "r": r,
             "low_loss": low_loss, "low_loss_energy_eV": el, "edge_eV": edge_eV, "width_eV": width}
    return spectra, e.astype(np.float64), truth
