"""EELS benchmark: accuracy of tomostrain's white-line maps across generated variants (dose,
dispersion, thickness with plural scattering with and without a low loss, energy drift, Ni2+/Ni0
maps, other L2,3 edges, pseudo-Voigt lines) and positions per second beside exspy/hyperspy's
model fit (power law + two Gaussian white lines + two arctan steps, ``multifit``) on the same
positions, with each one's L3/L2 and L3-peak RMSE against the truth (exspy's model has no
plural-scattering kernel without a low loss: on the plural variants it is the uncorrected fit).
Random plural-scattering draws (no low loss) report the core-loss plural fit against no correction.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_eels [--quick]
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, machine, timeit, version_of, write_json
from tomostrain.spectral import white_line_maps
from tomostrain.synthetic.eels import EDGE_PARAMS, VARIANTS, eels_variant, random_plural_variant, random_variant


def exspy_fit(spectra, energy, hs, edge_eV=855.0, spin_orbit_eV=17.3):
    """(L3/L2 = area ratio of the two Gaussians, L3 Gaussian centre) per position from a
    hyperspy/exspy model fit; initial values from the edge table, centres bounded to +-3 eV."""
    warnings.filterwarnings("ignore")
    s = hs.signals.Signal1D(np.asarray(spectra, np.float64))
    try:
        s.set_signal_type("EELS")
    except Exception:  # noqa: BLE001 - exspy registers the EELS type; plain Signal1D still fits
        pass
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(energy[0]), float(energy[1] - energy[0]), "eV"
    s.axes_manager.signal_axes[0].name = "Energy loss"
    m = s.create_model() if not hasattr(s, "estimate_elastic_scattering_threshold") else s.create_model(
        auto_background=False, auto_add_edges=False)
    comp = hs.model.components1D
    bg = comp.PowerLaw()
    g3, g2 = comp.Gaussian(), comp.Gaussian()
    s3, s2 = comp.Arctan(), comp.Arctan()
    m.extend([bg, g3, g2, s3, s2])
    bg.estimate_parameters(s, edge_eV - 50.0, edge_eV - 8.0)
    for g, c in ((g3, edge_eV + 1.0), (g2, edge_eV + 1.0 + spin_orbit_eV)):
        g.centre.value, g.sigma.value, g.A.value = c, 1.0, float(np.median(spectra)) * 10
        g.centre.bmin, g.centre.bmax = c - 3, c + 3
    for st, c, h in ((s3, edge_eV + 1.0, 2 / 3), (s2, edge_eV + 1.0 + spin_orbit_eV, 1 / 3)):
        st.x0.value, st.k.value = c, 1.6
        st.A.value = h * float(np.median(spectra)) * 0.1
    m.set_signal_range(edge_eV - 50.0, edge_eV + spin_orbit_eV + 43.0)
    m.multifit(show_progressbar=False)
    return (np.asarray(g3.A.map["values"]) / np.asarray(g2.A.map["values"]), np.asarray(g3.centre.map["values"]))


def exspy_ratios(spectra, energy, hs):
    """L3/L2 per position from ``exspy_fit`` at the Ni L2,3 edge (the peer test's entry)."""
    return exspy_fit(spectra, energy, hs)[0]


def _rmse(a, b):
    return float(np.sqrt(np.nanmean((np.asarray(a) - np.asarray(b)) ** 2)))


def variant_rows(scan, seeds):
    """One row per variant: L3/L2 and onset RMSE per seed (onsets in true loss with a low loss,
    else on the nominal axis, i.e. truth + drift), and the seconds of one call."""
    rows = []
    for name, params in VARIANTS.items():
        use_low = params.get("use_low_loss", False)
        row = {"variant": name, "params": {k: v for k, v in params.items()}, "scan": list(scan),
               "l3_l2_rmse": [], "onset_rmse_eV": [], "seconds": [], "thickness_rmse": [], "thickness_source": None}
        for seed in seeds:
            s, e, tr = eels_variant(name, scan, seed=seed)
            kw = dict(low_loss=tr["low_loss"], low_loss_energy_eV=tr["low_loss_energy_eV"],
                      deconvolve=params.get("deconvolve", False)) if use_low else {}
            t0 = time.perf_counter()
            m = white_line_maps(s, e, params.get("edge", "Ni-L23"), **kw)
            row["seconds"].append(time.perf_counter() - t0)
            row["l3_l2_rmse"].append(_rmse(m.l3_l2, tr["l3_l2"]))
            row["onset_rmse_eV"].append(_rmse(m.l3_onset_eV, tr["l3_onset_eV"] + (0.0 if use_low else tr["drift_eV"])))
            if m.thickness is not None and params.get("plural_scattering", False):
                row["thickness_rmse"].append(_rmse(m.thickness, tr["thickness"]))
                row["thickness_source"] = m.thickness_source
        row["passes"] = bool(max(row["l3_l2_rmse"]) <= 0.08 and max(row["onset_rmse_eV"]) <= 0.15)
        rows.append(row)
    return rows


def random_rows(n, rng_seed, dose, log_dose):
    """``n`` random single-scattering variants (``random_variant``): RMSEs and pass per draw."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for _ in range(n):
        params, scan, seed = random_variant(rng, dose, log_dose)
        s, e, tr = eels_variant(params, scan, seed=seed)
        m = white_line_maps(s, e, params["edge"])
        rr = _rmse(m.l3_l2, tr["l3_l2"])
        ro = _rmse(m.l3_onset_eV, tr["l3_onset_eV"] + tr["drift_eV"])
        rows.append({"params": params, "scan": list(scan), "seed": seed, "l3_l2_rmse": rr, "onset_rmse_eV": ro,
                     "passes": bool(rr <= 0.08 and ro <= 0.15)})
    return rows


def plural_rows(n, rng_seed):
    """``n`` random plural-scattering variants (``random_plural_variant``) measured without a low
    loss: RMSEs with the core-loss plural fit and without it, t/lambda RMSE, fitted plasmon."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for _ in range(n):
        params, scan, seed = random_plural_variant(rng)
        s, e, tr = eels_variant(params, scan, seed=seed)
        t0 = time.perf_counter()
        m = white_line_maps(s, e, params["edge"])
        sec = time.perf_counter() - t0
        off = white_line_maps(s, e, params["edge"], plural=None)
        rr = _rmse(m.l3_l2, tr["l3_l2"])
        ro = _rmse(m.l3_onset_eV, tr["l3_onset_eV"] + tr["drift_eV"])
        rows.append({"params": params, "scan": list(scan), "seed": seed, "l3_l2_rmse": rr, "onset_rmse_eV": ro,
                     "l3_l2_rmse_uncorrected": _rmse(off.l3_l2, tr["l3_l2"]),
                     "thickness_rmse": _rmse(m.thickness, tr["thickness"]), "plasmon_fit_eV": [m.plasmon_eV, m.plasmon_fwhm_eV],
                     "seconds": sec, "passes": bool(rr <= 0.08 and ro <= 0.15)})
    return rows


def run(out_dir, quick: bool = False, backend: str = "cpu") -> Path:
    scan = (8, 8) if quick else (32, 32)
    peer_scan = (3, 3) if quick else (5, 5)
    s, e, tr = eels_variant("default", scan, seed=31)
    t_ours, maps = timeit(lambda: white_line_maps(s, e, "Ni-L23"), repeat=2)
    t_raw, raw = timeit(lambda: white_line_maps(s, e, "Ni-L23", denoise=None), repeat=2)
    n = scan[0] * scan[1]
    row = {"scan": list(scan), "channels": int(e.size), "backend": backend,
           "tomostrain": {"seconds": t_ours, "positions_per_s": n / t_ours,
                          "l3_l2_rmse": _rmse(maps.l3_l2, tr["l3_l2"]),
                          "onset_rmse_eV": _rmse(maps.l3_onset_eV, tr["l3_onset_eV"])},
           "tomostrain_no_denoise": {"seconds": t_raw, "positions_per_s": n / t_raw,
                                     "l3_l2_rmse": _rmse(raw.l3_l2, tr["l3_l2"]),
                                     "onset_rmse_eV": _rmse(raw.l3_onset_eV, tr["l3_onset_eV"])}}
    peers = []
    try:
        import hyperspy.api as hs
        import exspy  # noqa: F401

        for name in (("default", "plural_thick_no_lowloss") if quick else
                     ("default", "low_dose", "coarse_dispersion", "Co", "plural_thin_no_lowloss", "plural_thick_no_lowloss")):
            params = VARIANTS[name]
            sv, ev, tv = eels_variant(name, scan, seed=32)
            e0, so = EDGE_PARAMS[params.get("edge", "Ni-L23")]
            sub = sv[: peer_scan[0], : peer_scan[1]]
            t0 = time.perf_counter()
            ratio, centre = exspy_fit(sub, ev, hs, e0, so)
            t_peer = time.perf_counter() - t0
            ours = white_line_maps(sv, ev, params.get("edge", "Ni-L23"))   # the whole scan (PCA needs it)
            ours_raw = white_line_maps(sub, ev, params.get("edge", "Ni-L23"), denoise=None)
            cut = (slice(0, peer_scan[0]), slice(0, peer_scan[1]))
            m = peer_scan[0] * peer_scan[1]
            peers.append({"variant": name, "scan": list(peer_scan), "seconds": t_peer, "positions_per_s": m / t_peer,
                          "exspy_l3_l2_rmse": _rmse(ratio, tv["l3_l2"][cut]),
                          "exspy_l3_peak_rmse_eV": _rmse(centre, tv["l3_peak_eV"][cut]),
                          "tomostrain_l3_l2_rmse": _rmse(ours.l3_l2[cut], tv["l3_l2"][cut]),
                          "tomostrain_l3_peak_rmse_eV": _rmse(ours.l3_peak_eV[cut], tv["l3_peak_eV"][cut]),
                          "tomostrain_no_denoise_l3_l2_rmse": _rmse(ours_raw.l3_l2, tv["l3_l2"][cut])})
        row["speed_ratio_tomostrain_over_exspy"] = (n / t_ours) / peers[0]["positions_per_s"]
    except ImportError:
        peers = None
    variants = variant_rows((8, 8) if quick else (16, 16), (1,) if quick else (1, 2, 3))
    draws = {"log_uniform_2500_1e5": random_rows(4 if quick else 16, 5, (2500.0, 1e5), True),
             "uniform_2500_6000": random_rows(4 if quick else 16, 7, (2500.0, 6000.0), False)}
    payload = {"suite": "eels", "machine": machine(backend), "exspy": version_of("exspy"),
               "hyperspy": version_of("hyperspy"), "rows": [row], "exspy_model_fit": peers, "variants": variants,
               "random_draws": draws,
               "random_plural_draws_no_lowloss_seed777": plural_rows(2 if quick else 6, 777),
               "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
               "note": "timings on a 2-core machine shared with other jobs; ratios measured in one run. Run with "
                       "OPENBLAS_NUM_THREADS=1: under that load a threaded 351 x 351 eigh took 7.3 s, 0.035 s on one thread"}
    return write_json(out_dir, "bench_eels", payload)


if __name__ == "__main__":
    command_line(run, __doc__)
