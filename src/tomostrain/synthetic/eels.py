"""Synthetic EELS spectrum images with known L3/L2 ratios and onsets per position.

Each spectrum (eV axis ``energy_eV``): a power-law background ``A E^-r`` (A and r vary across the
scan) plus the edge: two white lines at ``E3`` and ``E3 + spin_orbit`` (Gaussian, or a
pseudo-Voigt with ``lorentz_fraction`` > 0) with areas in the ratio ``l3_l2`` and a double arctan
continuum (2:1) under them, scaled by the local thickness, then Poisson noise.

Optional physics of real spectrum images:

- ``plural_scattering``: the core loss is convolved with the plasmon multiple-scattering
  kernel of the local ``t/lambda`` (``e^-t sum t^m/m! p^{*m}``, p a Gaussian plasmon at
  ``plasmon_eV``), the same kernel that makes the low-loss spectrum; the L3 plasmon replica
  then lies under L2 and the post-edge continuum.
- ``drift_eV``: the energy axis drifts across the scan (the zero-loss peak sits at ``+drift``
  nominal eV at each position, a ramp along the fast scan axis plus a slow wander, spanning
  ``drift_eV``); core and low loss drift together (dual EELS).
- ``pattern``: the Ni2+ -> Ni0 map: ``"random"`` (independent smooth fields for ratio and
  chemical shift, with a gradient), ``"core_shell"`` (a reduced Ni0 shell around an oxide core,
  ratio and shift tied to one fraction map with a sharp-ish front) or ``"islands"`` (Ni0
  particles in the oxide).

A low-loss spectrum image (zero loss ``zlp_fwhm_eV`` + plasmons, the same multiple-scattering
kernel, the same drift, the same dispersion) comes with it; it matches the core loss only with
``plural_scattering=True`` (without it the core loss is single scattering, as if deconvolved).

Truth per position: ``l3_l2`` (ratio of the white-line areas), ``l3_onset_eV`` (where the
noise-free single-scattering edge signal, evaluated on a fine grid of the continuous model, first
rises to half its L3 maximum, the definition ``spectral.eels.white_line_maps`` measures; in true
energy loss, without the drift), ``l3_peak_eV``, ``thickness`` (t/lambda) and ``drift_eV``.
"""
from __future__ import annotations

from math import factorial

import numpy as np
from scipy import ndimage

#: (L3 onset, spin-orbit splitting) eV of the L2,3 edges the generator knows
EDGE_PARAMS = {"Mn-L23": (640.0, 11.2), "Fe-L23": (708.0, 12.9), "Co-L23": (779.0, 15.0),
               "Ni-L23": (855.0, 17.3), "Cu-L23": (931.0, 19.8)}


def eels_spectrum_image(scan_shape=(24, 24), *, edge_eV=855.0, spin_orbit_eV=17.3, energy=(780.0, 920.0, 0.2),
                        ratio_range=(2.2, 3.4), shift_range_eV=(-1.5, 0.5), width_eV=(0.8, 1.2),
                        thickness_range=(0.3, 1.0), counts=3000.0, edge_jump=0.35, pattern="random",
                        plural_scattering=False, plasmon_eV=22.0, plasmon_fwhm_eV=7.0, zlp_fwhm_eV=0.8,
                        drift_eV=0.0, lorentz_fraction=0.0, low_loss_counts=2e5, low_loss_range=(-10.0, 130.0),
                        seed=0):
    """(spectra (sy, sx, n_E) float32 counts, energy_eV (n_E,), truth dict).

    ``energy = (first, last, step)`` eV: the dispersion is ``step``. ``counts`` is the background
    count per channel just before the edge at unit thickness; ``edge_jump`` the continuum step
    relative to that background. ``truth["low_loss"]`` is the low-loss spectrum image on
    ``truth["low_loss_energy_eV"]`` (same dispersion).
    """
    rng = np.random.default_rng(seed)
    sy, sx = scan_shape
    de = float(energy[2])
    e = np.arange(*energy)
    e = e[e < energy[1]]

    def field(lo, hi, sigma=3.0):
        f = ndimage.gaussian_filter(rng.standard_normal(scan_shape), sigma, mode="wrap")
        grad = np.linspace(-1, 1, sx)[None, :] * rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
        f = f / (np.abs(f).max() + 1e-12) + grad
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        return lo + (hi - lo) * f

    yy, xx = np.mgrid[0:sy, 0:sx]
    if pattern == "random":
        ratio = field(*ratio_range)
        shift = field(*shift_range_eV)
    elif pattern in ("core_shell", "islands"):
        if pattern == "core_shell":   # Ni0 (fraction 1) outside a core of radius ~0.3 scan, sharp-ish front
            cy, cx = (sy - 1) / 2 + rng.uniform(-1, 1), (sx - 1) / 2 + rng.uniform(-1, 1)
            rad = np.hypot((yy - cy) / sy, (xx - cx) / sx)
            frac = 1.0 / (1.0 + np.exp(-(rad - rng.uniform(0.22, 0.32)) / 0.03))
        else:                          # Ni0 islands of 1.5-3 px radius in the oxide
            frac = np.zeros(scan_shape)
            for _ in range(max(3, sy * sx // 40)):
                c = rng.uniform(0, sy), rng.uniform(0, sx)
                frac = np.maximum(frac, np.exp(-0.5 * (np.hypot(yy - c[0], xx - c[1]) / rng.uniform(1.5, 3.0)) ** 4))
        # Ni2+ (oxide) has the larger ratio and the higher onset
        ratio = ratio_range[1] + frac * (ratio_range[0] - ratio_range[1])
        shift = shift_range_eV[1] + frac * (shift_range_eV[0] - shift_range_eV[1])
    else:
        raise ValueError(f"pattern must be 'random', 'core_shell' or 'islands', got {pattern!r}")
    width = field(*width_eV)
    thick = field(*thickness_range)
    r = field(2.6, 3.6)
    drift = np.zeros(scan_shape)
    if drift_eV:
        ramp = (xx + sx * yy) / float(sx * sy)                 # scan order: slow drift along the acquisition
        drift = drift_eV * (0.7 * ramp + 0.3 * (field(0.0, 1.0, 2.0) - 0.5) + 0.3 * (xx / max(sx - 1, 1)))
        drift -= drift.mean()
    e3 = edge_eV + shift + 1.0            # the white-line maximum sits ~1 eV above the tabulated onset
    e2 = e3 + spin_orbit_eV
    pre = edge_eV - 10.0
    A = counts * thick * pre ** r
    step = edge_jump * counts * thick
    # white-line areas: L3 + L2 total ~ 6x the continuum step times 2.5 eV (a strong white line)
    total = 6.0 * step * 2.5
    a3 = total * ratio / (1 + ratio)
    a2 = total / (1 + ratio)
    eta = float(lorentz_fraction)

    def edge_model(E):
        """Noise-free single-scattering edge signal at true losses E (..., n)."""
        def line(c, a, w):
            x = E - c[..., None]
            sg = w[..., None]
            gauss = np.exp(-0.5 * (x / sg) ** 2) / (np.sqrt(2 * np.pi) * sg)
            if eta == 0.0:
                return a[..., None] * gauss
            gam = sg * np.sqrt(2 * np.log(2))                # same FWHM as the Gaussian
            return a[..., None] * ((1 - eta) * gauss + eta * gam / (np.pi * (x ** 2 + gam ** 2)))
        cont = step[..., None] * (2 / 3 * (0.5 + np.arctan((E - e3[..., None]) / 0.6) / np.pi)
                                  + 1 / 3 * (0.5 + np.arctan((E - e2[..., None]) / 0.6) / np.pi))
        cont = cont * (np.abs(E) / edge_eV) ** -1.5
        return line(e3, a3, width) + line(e2, a2, width) + cont

    def kernel_terms(n_max=7):
        w = [np.exp(-thick) * thick ** m / factorial(m) for m in range(n_max + 1)]
        return w

    sig_p = plasmon_fwhm_eV / 2.3548
    if plural_scattering:
        # single scattering on an extended grid (true loss), convolved with the multiple-scattering kernel
        n_lo = int(np.ceil(6 * plasmon_eV / de)) + 8
        e_ext = e[0] - de * np.arange(n_lo, 0, -1)
        e_all = np.concatenate([e_ext, e])
        true = e_all[None, None, :] - drift[..., None]
        single = A[..., None] * np.abs(true) ** (-r[..., None]) + edge_model(true)
        n = e_all.size
        nfft = int(2 ** np.ceil(np.log2(n + n_lo)))
        f = np.fft.rfftfreq(nfft, d=de)
        ws = kernel_terms()
        kf = np.zeros(scan_shape + (f.size,), complex)
        for m, w_m in enumerate(ws):   # loop over scattering orders, not positions
            g = np.exp(-2j * np.pi * f * m * plasmon_eV - 2 * (np.pi * f) ** 2 * m * sig_p ** 2)
            kf += w_m[..., None] * g
        conv = np.fft.irfft(np.fft.rfft(single, nfft, axis=-1) * kf, nfft, axis=-1)[..., :n]
        clean = conv[..., n_lo:]
    else:
        true = e[None, None, :] - drift[..., None]
        clean = A[..., None] * true ** (-r[..., None]) + edge_model(true)
    spectra = rng.poisson(np.clip(clean, 0, None)).astype(np.float32)
    # truth onset: half of the L3 maximum on the rising side of the noise-free edge signal (fine grid)
    u = np.arange(-8.0, 3.0, 0.002)
    fine = e3[..., None] + u                                    # (sy, sx, n_fine) true energies
    s = edge_model(fine)
    near = np.abs(u) < 2.5
    kp = np.argmax(np.where(near, s, -np.inf), axis=-1)
    top = np.take_along_axis(s, kp[..., None], -1)
    below = (s < 0.5 * top) & (np.arange(u.size) < kp[..., None])
    j = np.max(np.where(below, np.arange(u.size), -1), axis=-1)
    s0 = np.take_along_axis(s, j[..., None], -1)[..., 0]
    s1 = np.take_along_axis(s, j[..., None] + 1, -1)[..., 0]
    onset = np.take_along_axis(fine, j[..., None], -1)[..., 0] + (0.5 * top[..., 0] - s0) / (s1 - s0) * 0.002
    peak = np.take_along_axis(fine, kp[..., None], -1)[..., 0]
    # low loss: zero loss (Gaussian) + plasmons with Poisson multiplicity, drifted with the core loss
    el = np.arange(low_loss_range[0], low_loss_range[1], de)
    sig_z = zlp_fwhm_eV / 2.3548
    ll = np.zeros(scan_shape + (el.size,))
    for m, w_m in enumerate(kernel_terms()):   # scattering orders
        wid = np.sqrt(sig_z ** 2 + m * sig_p ** 2)
        ll += w_m[..., None] * np.exp(-0.5 * ((el - drift[..., None] - plasmon_eV * m) / wid) ** 2) / wid
    ll = ll / ll.sum(-1, keepdims=True) * low_loss_counts
    low_loss = rng.poisson(ll).astype(np.float32)
    truth = {"l3_l2": ratio, "l3_onset_eV": onset, "l3_peak_eV": peak, "thickness": thick, "r": r,
             "low_loss": low_loss, "low_loss_energy_eV": el, "edge_eV": edge_eV, "width_eV": width,
             "drift_eV": drift}
    return spectra, e.astype(np.float64), truth


def eels_variant(name_or_params, scan_shape=(16, 16), seed=0):
    """A generated spectrum image from a named variant (``VARIANTS``) or a parameter dict.

    Keys besides ``eels_spectrum_image``'s (``use_low_loss`` and ``deconvolve``, how the variant is
    measured, are ignored here): ``edge`` (an ``EDGE_PARAMS`` name; sets edge_eV,
    spin_orbit_eV and a window of edge - 75 .. L2 + 48 eV at ``dispersion``), ``dispersion``.
    """
    p = dict(VARIANTS[name_or_params]) if isinstance(name_or_params, str) else dict(name_or_params)
    edge = p.pop("edge", "Ni-L23")
    disp = p.pop("dispersion", 0.2)
    p.pop("use_low_loss", None)
    p.pop("deconvolve", None)
    e0, so = EDGE_PARAMS[edge]
    p.setdefault("edge_eV", e0)
    p.setdefault("spin_orbit_eV", so)
    p.setdefault("energy", (e0 - 75.0, e0 + so + 48.0, disp))
    return eels_spectrum_image(scan_shape, seed=seed, **p)


#: the variants the tests and the benchmark run (counts per channel before the edge at t/lambda = 1)
VARIANTS = {
    "default": {},
    "low_dose": {"counts": 2500.0},
    "high_dose": {"counts": 1e5},
    "thick_plural_lowloss": {"thickness_range": (0.2, 1.2), "plural_scattering": True, "use_low_loss": True,
                             "deconvolve": True},
    "thick_plural_no_lowloss": {"thickness_range": (0.2, 1.2), "plural_scattering": True, "use_low_loss": False},
    # the dispersion variants keep the dose per eV of 2500 counts per 0.2 eV channel
    "fine_dispersion": {"dispersion": 0.05, "counts": 625.0},
    "coarse_dispersion": {"dispersion": 0.5, "counts": 6250.0},
    "coarse_dispersion_2500_per_ch": {"dispersion": 0.5, "counts": 2500.0},
    "drift_lowloss": {"drift_eV": 3.0, "plural_scattering": True, "use_low_loss": True, "deconvolve": True},
    "drift_no_lowloss": {"drift_eV": 3.0, "use_low_loss": False},
    "core_shell": {"pattern": "core_shell"},
    "islands": {"pattern": "islands", "counts": 2500.0},
    "Co": {"edge": "Co-L23"},
    "Fe": {"edge": "Fe-L23"},
    "Mn": {"edge": "Mn-L23"},
    "Cu": {"edge": "Cu-L23"},
    "pseudo_voigt": {"lorentz_fraction": 0.5},
    # plural scattering measured from the core loss alone (no low loss), thin / medium / thick
    "plural_thin_no_lowloss": {"thickness_range": (0.1, 0.4), "plural_scattering": True, "counts": 1e4},
    "plural_medium_no_lowloss": {"thickness_range": (0.4, 0.8), "plural_scattering": True, "counts": 1e4},
    "plural_thick_no_lowloss": {"thickness_range": (0.8, 1.5), "plural_scattering": True, "counts": 1e4},
    "worst": {"counts": 6250.0, "dispersion": 0.5, "thickness_range": (0.2, 1.2), "plural_scattering": True,
              "drift_eV": 3.0, "pattern": "core_shell", "use_low_loss": True, "deconvolve": True},
}


def random_variant(rng, dose=(2500.0, 1e5), log_dose=True):
    """Parameters of a random single-scattering variant (for sweeps over data no one tuned for):
    edge, dispersion 0.05-0.5 eV/ch (counts scaled to keep the dose per eV), dose (counts per
    0.2 eV before the edge), ratio, shift, width and thickness ranges, map pattern, drift, line
    shape and edge jump. Returns (params for ``eels_variant``, scan_shape, seed)."""
    edge = str(rng.choice(list(EDGE_PARAMS)))
    disp = float(rng.choice([0.05, 0.1, 0.2, 0.3, 0.5]))
    c02 = float(np.exp(rng.uniform(np.log(dose[0]), np.log(dose[1])))) if log_dose else float(rng.uniform(*dose))
    lo = rng.uniform(1.6, 3.0)
    hi = lo + rng.uniform(0.5, 1.5)
    s0 = rng.uniform(-2, 0)
    w0 = rng.uniform(0.6, 1.0)
    t0 = rng.uniform(0.2, 0.6)
    t1 = rng.uniform(t0 + 0.2, 1.2)
    params = dict(edge=edge, dispersion=disp, counts=c02 * disp / 0.2, ratio_range=(lo, hi),
                  shift_range_eV=(s0, s0 + rng.uniform(0.5, 2.0)), width_eV=(w0, w0 + rng.uniform(0.1, 0.5)),
                  thickness_range=(t0, t1), pattern=str(rng.choice(["random", "core_shell", "islands"])),
                  drift_eV=float(rng.choice([0.0, 0.0, 2.0])), lorentz_fraction=float(rng.choice([0.0, 0.0, 0.3])),
                  edge_jump=rng.uniform(0.25, 0.5))
    scan = (int(rng.choice([12, 16, 24])),) * 2
    return params, scan, int(rng.integers(1000))


def random_plural_variant(rng, dose=(1e4, 1e5)):
    """Parameters of a random plural-scattering variant measured without a low loss: edge,
    dispersion 0.1-0.5 eV/ch, dose per 0.2 eV (log-uniform in ``dose``), t/lambda ranges up to
    1.5, plasmon 14-30 eV with FWHM 4-12 eV, map pattern, drift, line shape. Returns (params for
    ``eels_variant``, scan_shape, seed)."""
    params, scan, seed = random_variant(rng, dose, True)
    t0 = rng.uniform(0.1, 0.8)
    params.update(thickness_range=(t0, min(1.5, t0 + rng.uniform(0.2, 0.8))), plural_scattering=True,
                  plasmon_eV=float(rng.uniform(14.0, 30.0)), plasmon_fwhm_eV=float(rng.uniform(4.0, 12.0)),
                  dispersion=float(rng.choice([0.1, 0.2, 0.3, 0.5])))
    params["counts"] = float(np.exp(rng.uniform(np.log(dose[0]), np.log(dose[1])))) * params["dispersion"] / 0.2
    return params, scan, seed
