"""X-ray benchmark: preprocessing + reconstruction of a 180-degree scan beside algotom (and
TomoPy when installed), and XANES fit throughput.

Scan: ``WIDTH`` columns (2048; ``--quick`` 512) x ``ROWS`` rows, ``ANGLES`` projections over
0..180 degrees (inclusive), raw counts from exact ellipse sinograms with per-pixel gains, gain
errors the flats miss (rings), zingers, darks, Poisson noise and an off-centre axis. Both
chains run: zingers -> flat/dark -> ring removal (Vo's sorting) -> -log -> automatic centre
-> reconstruction. tomostrain: ``preprocess`` + ``gridrec`` (and ``fbp``); algotom:
``remove_zinger``, ``flat_field_correction``, ``remove_stripe_based_sorting``,
``find_center_vo``, ``dfi_reconstruction``, per sinogram. Recorded: seconds per slice for each
stage, the centre error (px) of each finder (tomostrain vo / phase, algotom vo / phase
correlation, TomoPy ``find_center_vo`` when importable), and the reconstruction RMSE against the
phantom.

Accuracy tables: ``ring_variants`` (ring amplitude ratio and mean bias of each ring method on
five phantoms x four gain-error kinds x 128-1024 px; ``ring_holdout``: the same on data not tuned
on, full run only) and ``xanes_variants`` (fraction RMSE of
XANES with the discrepancy stop and with 12 CGLS iterations on ten TXM phantom variants).

XANES: ``nnls`` throughput (voxels/s) for 2 and 4 references over 15 energies, and the whole
``xanes_tomography`` on a 64-px, 4-row simulated TXM-XANES scan with "volume" vs "projection"
fitting and fbp vs cgls: seconds and Ni-fraction RMSE in the particle.

    python -m benchmarks.bench_xray [--quick] [--out DIR]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, machine, version_of, write_json

WIDTH, ROWS, ANGLES = 2048, 4, 1201
QUICK = (512, 2, 361)


def _scan(width, rows, n_angles, seed=0):
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_image, ellipse_sinogram

    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 180, n_angles)
    ell = SHEPP_LOGAN.copy()
    ell[:, 1:5] *= width / 2 * 0.7
    center = (width - 1) / 2 + 7.3
    sino = ellipse_sinogram(ell, angles, width, center=center) * (2.0 / width)
    gain = np.clip(1 + 0.1 * rng.normal(size=(rows, width)), 0.3, None)
    ring = 1 + 0.05 * rng.normal(size=(rows, width)) * (rng.random((rows, width)) < 0.1)
    photons, dark = 2e4, 100.0
    expected = photons * gain * ring * np.exp(-sino)[:, None, :]
    raw = rng.poisson(expected).astype(np.float32) + dark
    hits = rng.random(raw.shape) < 1e-4
    raw[hits] *= 4
    flats = (rng.poisson(photons * gain[None].repeat(5, 0)) + dark).astype(np.float32)
    darks = np.full((3, rows, width), dark, np.float32)
    phantom = ellipse_image(ell, width, supersample=1) * (2.0 / width)
    return raw, flats, darks, angles, center, phantom


def _xray(width, rows, n_angles):
    from algotom.prep import calculation, correction, removal
    from algotom.rec import reconstruction as arec

    from tomostrain.reconstruction import preprocess as pp
    from tomostrain.reconstruction.fbp import fbp, gridrec

    raw, flats, darks, angles, center, phantom = _scan(width, rows, n_angles)
    out = {"width": width, "rows": rows, "angles": n_angles, "true_center": center}
    t = {}
    t0 = time.perf_counter()
    r = pp.remove_zingers(raw, 0.5)
    f = pp.remove_zingers(flats, 0.5)
    t["zingers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = pp.flat_dark_correct(r, f, darks)
    t["flat_dark"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = pp.remove_rings(tr, "sort", size=21)
    t["rings"] = time.perf_counter() - t0
    att = -np.log(tr)
    t0 = time.perf_counter()
    c_vo = pp.find_center(att, angles, "vo", rows=[rows // 2])
    t["center_vo"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    c_ph = pp.find_center(att, angles, "phase")
    t["center_phase"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the batched Vo twin is the device path; on the CPU it evaluates every candidate at full size
    c_vo_twin = pp._center_vo_xp(att[:, rows // 2, :], width / 2 - width / 8, width / 2 + width / 8) if width <= 1024 else float("nan")
    t["center_vo_batched_twin"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = gridrec(att, angles, center=c_vo)
    t["gridrec"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec_fbp = fbp(att[:, :1], angles, center=c_vo)
    t["fbp_one_slice"] = time.perf_counter() - t0
    circle = np.hypot(*np.indices(phantom.shape) - (width - 1) / 2) < 0.45 * width
    rmse = float(np.sqrt(np.mean((rec[:, circle] - phantom[circle]) ** 2)))
    once = ("center_vo", "center_phase", "center_vo_batched_twin", "fbp_one_slice")  # once per scan / one slice
    ours = {k: (v if k in once else v / rows) for k, v in t.items()}
    ours_total = sum(ours[k] for k in ("zingers", "flat_dark", "rings", "center_vo", "gridrec"))
    out["tomostrain"] = {"seconds_per_slice": ours, "total_seconds_per_slice (vo + gridrec)": ours_total,
                         "center": {"vo": c_vo, "phase": c_ph, "vo_batched_twin": c_vo_twin},
                         "center_error_px": {"vo": c_vo - center, "phase": c_ph - center,
                                             "vo_batched_twin": c_vo_twin - center},
                         "rmse_vs_phantom (gridrec)": rmse,
                         "rmse_fbp_vs_gridrec_slice0": float(np.sqrt(np.mean((rec_fbp[0] - rec[0])[circle] ** 2)))}

    # algotom, per sinogram, on the same raw data
    a = {}
    sl = raw.transpose(1, 0, 2)
    t0 = time.perf_counter()
    sinos = []
    for y in range(rows):
        proj_z = np.stack([removal.remove_zinger(im, 0.5) for im in raw[:, y:y + 1, :]])  # zingers per frame row
        fz = np.stack([removal.remove_zinger(im, 0.5) for im in flats[:, y:y + 1, :]])
        sinos.append((proj_z[:, 0], fz[:, 0]))
    a["zingers"] = (time.perf_counter() - t0) / rows
    t0 = time.perf_counter()
    corrected = [correction.flat_field_correction(s, fz.mean(0), darks[:, y].mean(0)) for y, (s, fz) in enumerate(sinos)]
    a["flat_dark"] = (time.perf_counter() - t0) / rows
    t0 = time.perf_counter()
    corrected = [removal.remove_stripe_based_sorting(s, size=21) for s in corrected]
    a["rings"] = (time.perf_counter() - t0) / rows
    att_a = [-np.log(np.maximum(s, 1e-6)) for s in corrected]
    t0 = time.perf_counter()
    ca_vo = float(calculation.find_center_vo(att_a[rows // 2]))
    a["center_vo"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ca_ph = float(calculation.find_center_based_phase_correlation(att[0], att[-1]))
    a["center_phase"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec_a = [arec.dfi_reconstruction(s, ca_vo, angles=np.radians(angles), apply_log=False) for s in att_a]
    a["dfi"] = (time.perf_counter() - t0) / rows
    del sl
    total_a = sum(a[k] for k in ("zingers", "flat_dark", "rings", "center_vo", "dfi"))
    out["algotom"] = {"version": version_of("algotom"), "seconds_per_slice": a,
                      "total_seconds_per_slice (vo + dfi)": total_a,
                      "center": {"vo": ca_vo, "phase_correlation": ca_ph},
                      "center_error_px": {"vo": ca_vo - center, "phase_correlation": ca_ph - center},
                      "reconstruction_shape": list(np.shape(rec_a[0]))}
    out["ratio_total_time_algotom_over_tomostrain"] = total_a / ours_total
    try:
        import tomopy  # noqa: F401

        out["tomopy"] = {"version": version_of("tomopy"),
                         "center_vo": float(tomopy.find_center_vo(att, ind=rows // 2))}
    except ImportError:
        out["tomopy"] = "missing (not on PyPI; not installed here)"
    return out


def _xanes(quick):
    from tomostrain.reconstruction.preprocess import XrayOptions
    from tomostrain.spectral.xanes import interpolate_references, nnls, xanes_tomography
    from tomostrain.synthetic.txm import k_edge, nickel_references, txm_xanes_series

    out = {}
    e = np.linspace(8300, 8400, 15)
    refs2 = nickel_references(e)
    refs4 = dict(refs2, A=k_edge(e, 8337, white_line=0.4), B=k_edge(e, 8348, white_line=0.2))
    n_vox = 200_000 if quick else 2_000_000
    rng = np.random.default_rng(0)
    for name, refs in (("2_references", refs2), ("4_references", refs4)):
        _, a = interpolate_references({k: (e, v) for k, v in refs.items()}, e)
        b = a @ rng.uniform(0, 1, (a.shape[1], n_vox)) + 0.02 * rng.normal(size=(e.size, n_vox))
        t0 = time.perf_counter()
        nnls(a, b)
        sec = time.perf_counter() - t0
        out[f"nnls_{name}_voxels_per_s"] = n_vox / sec
    s = txm_xanes_series(64, 4, seed=0)
    refs = {k: (s.energies_eV, v) for k, v in s.references.items()}
    m = s.particle
    runs = [("joint", "cgls", {}), ("projection", "fbp", {}), ("volume", "fbp", {}),
            ("projection", "cgls", {"iterations": 20})]
    if not quick:
        runs.append(("volume", "cgls", {"iterations": 20}))
    for fit, method, kw in runs:
        opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
        t0 = time.perf_counter()
        res, c, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, refs, s.flats, s.darks, opt,
                                     method=method, fit=fit, **kw)
        sec = time.perf_counter() - t0
        f = res.fractions["Ni"]
        out[f"tomography_{fit}_{method}"] = {
            "seconds": sec, "voxels_per_s": f.size / sec, "center_error_px": c - s.center,
            "ni_fraction_rmse_in_particle": float(np.sqrt(np.mean((f[m] - s.fraction_ni[m]) ** 2))),
            "metal_particles_mean_fraction": float(f[s.metal_particles].mean())}
    out["scan"] = {"n": 64, "rows": 4, "energies": int(s.energies_eV.size), "angles": int(s.angles_deg.size)}
    return out


RING_FAULTS = {"sparse 5 %": {"strength": 0.05, "fraction": 0.1},
               "dense 2 %": {"strength": 0.02, "fraction": 0.3},
               "partial": {"strength": 0.05, "fraction": 0.1, "partial": 0.01},
               "strong 10 %": {"strength": 0.1, "fraction": 0.05}}


def ring_case(kind, n, fault, seed=1):
    """(data, clean, angles) transmission sinograms (angles, 1, n) of ``xray_phantom(kind)`` with
    the ``RING_FAULTS[fault]`` gain errors and 0.1 % (strong: 0.3 %) noise; n angles up to 256 px,
    0.75 n beyond."""
    from tomostrain.synthetic import ellipse_sinogram
    from tomostrain.synthetic.xray import gain_errors, xray_phantom

    rng = np.random.default_rng(seed)
    n_ang = n if n <= 256 else int(round(0.75 * n))
    angles = np.linspace(0, 180, n_ang + 1)[:-1]
    sino = ellipse_sinogram(xray_phantom(kind, n, seed), angles, n) * (2.0 / n)
    clean = np.exp(-sino)[:, None, :]
    noise = 3e-3 if fault.startswith("strong") else 1e-3
    noisy = clean * (1 + noise * rng.normal(size=clean.shape))
    data = (noisy * gain_errors(n_ang, n, seed + 100, **RING_FAULTS[fault])).astype(np.float32)
    return data, clean, angles


def ring_gain(n, fault, seed=1):
    """The gain errors (angles, 1, n) that ``ring_case(kind, n, fault, seed)`` multiplies in."""
    from tomostrain.synthetic.xray import gain_errors

    n_ang = n if n <= 256 else int(round(0.75 * n))
    return gain_errors(n_ang, n, seed + 100, **RING_FAULTS[fault])


#: hold-out faults (not tuned on): 1 % rms on every pixel; 3 % on 20 % of the pixels drifting
#: linearly in time to +-40 % of itself over the scan
HOLDOUT_FAULTS = ("dense 1 %", "drift", "sparse 5 %", "dense 2 %")


def _blobs(n, rng):
    rows = []
    for _ in range(15):
        r = rng.uniform(0.03, 0.15) * n
        c = rng.uniform(-0.25, 0.25, 2) * n
        rows.append([rng.uniform(0.2, 1.0), r, r * rng.uniform(0.4, 1.0), c[0], c[1], rng.uniform(0, 180)])
    return np.array(rows)


def ring_holdout_case(kind, n, fault, seed=7):
    """(data, clean, angles, gain) like ``ring_case`` for data not tuned on: another seed, the
    ``xray_phantom`` kinds or ``"blobs"`` (15 overlapping random ellipses of density 0.2-1),
    ``HOLDOUT_FAULTS``, 0.1 % noise."""
    from tomostrain.synthetic import ellipse_sinogram
    from tomostrain.synthetic.xray import gain_errors, xray_phantom

    rng = np.random.default_rng(seed)
    n_ang = n if n <= 256 else int(round(0.75 * n))
    angles = np.linspace(0, 180, n_ang + 1)[:-1]
    ell = _blobs(n, np.random.default_rng(seed)) if kind == "blobs" else xray_phantom(kind, n, seed)
    clean = np.exp(-ellipse_sinogram(ell, angles, n) * (2.0 / n))[:, None, :]
    noisy = clean * (1 + 1e-3 * rng.normal(size=clean.shape))
    if fault == "dense 1 %":
        gain = gain_errors(n_ang, n, seed + 5, strength=0.01, fraction=1.0)
    elif fault == "drift":
        e = 0.03 * rng.normal(size=(1, 1, n)) * (rng.random((1, 1, n)) < 0.2)
        gain = 1 + e * (1 + 0.8 * np.linspace(-0.5, 0.5, n_ang)[:, None, None])
    else:
        gain = gain_errors(n_ang, n, seed + 5, **RING_FAULTS[fault])
    return (noisy * gain).astype(np.float32), clean, angles, gain


def _ring_row(data, clean, angles, gain, methods):
    """{method: (ratio, bias)} for ``methods`` ("name" or "name:iterations"; "oracle": the data
    divided by the true gain, i.e. a perfect stripe removal that leaves the noise; "none": no
    removal, ratio 1, the bias the gain errors themselves cause)."""
    from tomostrain.reconstruction import preprocess as pp
    from tomostrain.reconstruction.fbp import fbp

    ref = fbp(-np.log(clean).astype(np.float32), angles)
    before = pp.ring_amplitude(fbp(-np.log(data), angles), ref)
    row = {}
    for m in methods:
        if m == "none":
            out = data
        elif m == "oracle":
            out = (data / gain).astype(np.float32)
        else:
            name, _, it = m.partition(":")
            out = pp.remove_rings(data, name, iterations=int(it or 1))
        after = fbp(-np.log(np.maximum(out, pp.FLOOR)), angles)
        row[m] = (before / pp.ring_amplitude(after, ref), float((after.mean() - ref.mean()) / ref.mean()))
    return row


def ring_variants(sizes=(128, 256, 512, 1024), kinds=None, faults=None, methods=("sort", "sort_offset")):
    """Ring amplitude ratio (``ring_amplitude`` before / after, about the reconstruction of the
    data without gain errors) and the mean bias of every ring method on every phantom, fault
    and size: ``{size: {kind: {fault: {method: (ratio, bias)}}}}`` (methods as ``_ring_row``)."""
    from tomostrain.synthetic.xray import XRAY_PHANTOMS

    out = {}
    for n in sizes:
        for kind in kinds or XRAY_PHANTOMS:
            for fault in faults or RING_FAULTS:
                data, clean, angles = ring_case(kind, n, fault)
                row = _ring_row(data, clean, angles, ring_gain(n, fault), methods)
                out.setdefault(n, {}).setdefault(kind, {})[fault] = row
    return out


def ring_holdout(sizes=(192, 384), kinds=("shepp", "ellipses", "sparse", "porous", "offcentre", "blobs"),
                 faults=HOLDOUT_FAULTS, methods=("sort", "sort_offset")):
    """``ring_variants`` on ``ring_holdout_case``: data the ring methods were not tuned on."""
    out = {}
    for n in sizes:
        for kind in kinds:
            for fault in faults:
                row = _ring_row(*ring_holdout_case(kind, n, fault), methods)
                out.setdefault(n, {}).setdefault(kind, {})[fault] = row
    return out


XANES_VARIANTS = [(64, 3e4, 0, 3.0, (3.0, 4.0)), (64, 2e4, 1, -2.3, (3.0, 4.0)), (64, 5e4, 7, 4.5, (2.5, 3.0)),
                  (64, 1e4, 9, 0.0, (3.0, 4.0)), (64, 1e5, 10, -1.2, (3.0, 4.0)), (96, 1e4, 3, 2.5, (3.0, 4.0)),
                  (96, 3e4, 6, 0.5, (3.0, 4.0)), (96, 2e4, 8, -5.5, (4.0, 6.0)), (128, 1e4, 4, -3.7, (3.0, 4.0)),
                  (128, 1e5, 5, 1.5, (3.0, 4.0))]


def xanes_variants(variants=XANES_VARIANTS, runs=(("joint", {"fit": "joint"}),
                                                  ("discrepancy", {"fit": "projection"}),
                                                  ("12 it.", {"fit": "projection", "iterations": 12}))):
    """Ni-fraction RMSE in the particle and metal-particle mean fraction of XANES on TXM phantom
    variants ``(n, photons, seed, centre offset, metal radius)``: the joint fit (the default),
    and the per-pixel fit with CGLS stopped by the discrepancy principle or at a fixed count."""
    from tomostrain.reconstruction.preprocess import XrayOptions
    from tomostrain.spectral.xanes import xanes_tomography
    from tomostrain.synthetic.txm import txm_xanes_series

    out = []
    for n, photons, seed, offset, metal in variants:
        s = txm_xanes_series(n, 4, seed=seed, center_offset=offset, photons=photons, metal_radius=metal)
        refs = {k: (s.energies_eV, v) for k, v in s.references.items()}
        row = {"n": n, "photons": photons, "seed": seed, "offset": offset, "metal_radius": metal}
        for name, kw in runs:
            opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
            res, c, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, refs, s.flats, s.darks, opt,
                                         method="cgls", **kw)
            f, m = res.fractions["Ni"], s.particle
            row[name] = {"rmse": float(np.sqrt(np.mean((f[m] - s.fraction_ni[m]) ** 2))),
                         "metal": float(f[s.metal_particles].mean()), "center_error_px": c - s.center,
                         "iterations": res.meta.get("iterations")}
        out.append(row)
    return out


def run(out_dir="benchmarks/results/cpu", quick=False, backend="cpu") -> Path:
    width, rows, n_angles = QUICK if quick else (WIDTH, ROWS, ANGLES)
    payload = {"machine": machine(backend), "quick": quick, "xray_180": _xray(width, rows, n_angles),
               "xanes": _xanes(quick),
               "ring_variants": {str(k): v for k, v in ring_variants(sizes=(128, 512) if quick else
                                                                   (128, 256, 512, 1024)).items()},
               "ring_holdout": None if quick else {str(k): v for k, v in ring_holdout().items()},
               "xanes_variants": xanes_variants(XANES_VARIANTS[:3] if quick else XANES_VARIANTS)}
    return write_json(out_dir, "bench_xray", payload)


if __name__ == "__main__":
    command_line(run, __doc__)
