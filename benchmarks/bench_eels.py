"""EELS benchmark: positions per second of tomostrain's white-line maps beside exspy/hyperspy's
model fit (power law + two Gaussian white lines + two arctan steps, ``multifit``) on the same
synthetic Ni-L23 spectrum image, with each one's L3/L2 RMSE against the truth.

    python -m benchmarks.bench_eels [--quick]
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, machine, timeit, version_of, write_json
from tomostrain.spectral import white_line_maps
from tomostrain.synthetic.eels import eels_spectrum_image


def exspy_ratios(spectra, energy, hs):
    """L3/L2 (area ratio of the two Gaussians) per position from a hyperspy/exspy model fit."""
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
    bg.estimate_parameters(s, 805.0, 847.0)
    for g, c in ((g3, 856.0), (g2, 873.3)):
        g.centre.value, g.sigma.value, g.A.value = c, 1.0, float(np.median(spectra)) * 10
        g.centre.bmin, g.centre.bmax = c - 3, c + 3
    for st, c, h in ((s3, 856.0, 2 / 3), (s2, 873.3, 1 / 3)):
        st.x0.value, st.k.value = c, 1.6
        st.A.value = h * float(np.median(spectra)) * 0.1
    m.set_signal_range(805.0, 915.0)
    m.multifit(show_progressbar=False)
    return np.asarray(g3.A.map["values"]) / np.asarray(g2.A.map["values"])


def run(out_dir, quick: bool = False, backend: str = "cpu") -> Path:
    scan = (8, 8) if quick else (32, 32)
    peer_scan = (3, 3) if quick else (6, 6)
    s, e, tr = eels_spectrum_image(scan, seed=31)
    t_ours, maps = timeit(lambda: white_line_maps(s, e, "Ni-L23"), repeat=2)
    t_raw, raw = timeit(lambda: white_line_maps(s, e, "Ni-L23", denoise=None), repeat=2)
    n = scan[0] * scan[1]
    row = {"scan": list(scan), "channels": int(e.size), "backend": backend,
           "tomostrain": {"seconds": t_ours, "positions_per_s": n / t_ours,
                          "l3_l2_rmse": float(np.sqrt(np.mean((maps.l3_l2 - tr["l3_l2"]) ** 2))),
                          "onset_rmse_eV": float(np.sqrt(np.mean((maps.l3_onset_eV - tr["l3_onset_eV"]) ** 2)))},
           "tomostrain_no_denoise": {"seconds": t_raw, "positions_per_s": n / t_raw,
                                     "l3_l2_rmse": float(np.sqrt(np.mean((raw.l3_l2 - tr["l3_l2"]) ** 2)))}}
    try:
        import hyperspy.api as hs
        import exspy  # noqa: F401

        sub = s[: peer_scan[0], : peer_scan[1]]
        t0 = time.perf_counter()
        ratio = exspy_ratios(sub, e, hs)
        t_peer = time.perf_counter() - t0
        truth = tr["l3_l2"][: peer_scan[0], : peer_scan[1]]
        ours_sub = raw.l3_l2[: peer_scan[0], : peer_scan[1]]
        m = peer_scan[0] * peer_scan[1]
        row["exspy_model_fit"] = {"scan": list(peer_scan), "seconds": t_peer, "positions_per_s": m / t_peer,
                                  "l3_l2_rmse": float(np.sqrt(np.nanmean((ratio - truth) ** 2))),
                                  "tomostrain_same_positions_no_denoise_rmse": float(np.sqrt(np.mean((ours_sub - truth) ** 2)))}
        row["speed_ratio_tomostrain_over_exspy"] = (n / t_ours) / (m / t_peer)
    except ImportError:
        row["exspy_model_fit"] = None
    payload = {"suite": "eels", "machine": machine(backend), "exspy": version_of("exspy"),
               "hyperspy": version_of("hyperspy"), "rows": [row]}
    return write_json(out_dir, "bench_eels", payload)


if __name__ == "__main__":
    command_line(run, __doc__)
