"""Matplotlib figures of a result tree: alignment, orthoslices, labels, depth profile, virtual images,
strain maps, phase map. Each figure is returned as ``(title, matplotlib.figure.Figure)``.

Images are drawn with row 0 at the top (``imshow`` default), the convention under which a
positive strain rotation ``theta`` is counter-clockwise on screen (DESIGN.md §3).
"""
from __future__ import annotations

import json

import numpy as np


def result_figures(results: dict) -> list[tuple[str, object]]:
    """All figures the result tree supports, in report order."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    figs = []
    tomo = results.get("tomo", {})
    if "shifts" in tomo.get("alignment", {}):
        figs.append(("Alignment: shift of each projection", _alignment(tomo["alignment"])))
    if "volume" in tomo:
        figs.append(("Reconstruction: orthoslices through the centre", _orthoslices(tomo["volume"], "gray")))
    if "labels" in tomo:
        figs.append(("Segmentation: vacuum, Na2O-rich shell, NiO core, Ni particles", _orthoslices(tomo["labels"], "viridis")))
    profile = tomo.get("quantify", {}).get("depth_profile")
    if profile:
        figs.append(("Reaction depth profile from the surface inward", _depth_profile(profile)))
    stem = results.get("stem", {})
    virtual = stem.get("virtual", {})
    if virtual:
        figs.append(("Virtual bright field and annular dark field", _maps({k.upper(): virtual[k] for k in ("bf", "adf") if k in virtual}, "gray")))
    strain = stem.get("strain", {})
    if strain:
        figs.append(("Strain (%) and lattice rotation (degrees)", _strain(strain)))
    phase = stem.get("phase", {})
    if "labels" in phase:
        figs.append(("Phase map", _phase(phase)))
    figs.extend(_xanes_figures(results.get("xanes", {})))
    kinetics = results.get("kinetics", {})
    if "front_nm" in kinetics:
        figs.append(("Kinetics: front depth below the original surface and the fit x = k (t - t0)^n", _front(kinetics)))
        if "preview" in kinetics and "depth_px" in kinetics:
            figs.append(("Kinetics: frames with the original outline (white) and the front (red)", _front_frames(kinetics)))
    eels = results.get("eels", {})
    if "l3_l2" in eels:
        maps = {"L3/L2": eels["l3_l2"], "L3 onset (eV)": eels["l3_onset_eV"]}
        for key, name in (("valence", "valence"), ("thickness", "t/lambda")):
            if key in eels:
                maps[name] = eels[key]
        figs.append(("EELS: white-line ratio, L3 onset, valence and thickness maps", _maps(maps, "viridis")))
    return figs


def _xanes_figures(xanes: dict) -> list:
    """XANES: fraction maps, density and edge energy of the middle slice; spectra at selected
    voxels (measured, FBP) with their fits."""
    import matplotlib.pyplot as plt

    if "fractions" not in xanes:
        return []
    figs = []

    def mid(a):
        a = np.asarray(a, dtype=float)
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    maps = {f"fraction {k}": mid(v) for k, v in xanes["fractions"].items() if not k.startswith("@")}
    figs.append(("XANES: reference fractions (middle slice)", _maps(maps, "viridis")))
    figs.append(("XANES: density and edge energy (eV)",
                 _maps({"density": mid(xanes["density"]), "edge energy (eV)": mid(xanes["edge_energy_eV"])}, "magma")))
    sel = xanes.get("selected", {})
    if "fitted" in sel:
        labels = sel.get("@attrs", {}).get("labels", [])
        if isinstance(labels, str):
            labels = json.loads(labels)
        energies = np.asarray(xanes.get("references", {}).get("energy_eV", np.arange(np.shape(sel["fitted"])[1])))
        fig, ax = plt.subplots(figsize=(6.4, 3.8), constrained_layout=True)
        for i, (meas, fit) in enumerate(zip(np.asarray(sel["measured_fbp"]), np.asarray(sel["fitted"]))):
            line = ax.plot(energies, meas, "o", ms=4, label=f"{labels[i] if i < len(labels) else i} {tuple(np.asarray(sel['index'])[i])}")
            ax.plot(energies, fit, "-", color=line[0].get_color())
        ax.set_xlabel("energy (eV)")
        ax.set_ylabel("mu per voxel")
        ax.legend(fontsize=7)
        figs.append(("XANES: spectra at selected voxels (points: measured, lines: NNLS fit)", fig))
    return figs


def _front(kinetics: dict):
    import matplotlib.pyplot as plt

    t = np.asarray(kinetics["time_s"])
    x = np.asarray(kinetics["front_nm"])
    fit = kinetics.get("fit", {}).get("@attrs", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.5), constrained_layout=True)
    used = np.asarray(kinetics.get("used_in_fit", np.ones_like(x)), bool)
    ax.plot(t[~used], x[~used], ".", color="0.6", label="not fitted")
    ax.plot(t[used], x[used], ".", label="front")
    if "k" in fit:
        k, n, t0 = (float(fit[key]) for key in ("k", "n", "t0_s"))
        tt = np.linspace(t[0], t[-1], 400)
        ax.plot(tt, k * np.clip(tt - t0, 0, None) ** n, "-",
                label=f"k = {k:.3g} ± {float(fit.get('k_err', np.nan)):.2g} nm/s^n, n = {n:.3f} ± "
                      f"{float(fit.get('n_err', np.nan)):.3f}, t0 = {t0:.2f} s")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("front depth (nm)")
    ax.legend(fontsize=7)
    return fig


def _front_frames(kinetics: dict):
    import matplotlib.pyplot as plt

    frames = np.asarray(kinetics["preview"]["frames"])
    index = np.asarray(kinetics["preview"]["index"]).astype(int)
    depth = np.asarray(kinetics["depth_px"])
    shifts = np.asarray(kinetics.get("shifts_px", np.zeros((int(index.max()) + 1, 2))))
    px = float(kinetics.get("@attrs", {}).get("pixel_size_nm", 1.0))
    front = np.asarray(kinetics["front_nm"]) / px
    fig, axes = plt.subplots(1, len(index), figsize=(3.2 * len(index), 3.3), constrained_layout=True, squeeze=False)
    yy, xx = np.mgrid[: depth.shape[0], : depth.shape[1]]
    for ax, img, i in zip(axes[0], frames, index):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        dy, dx = shifts[i]
        ax.contour(xx + dx, yy + dy, depth, levels=[0.0], colors="w", linewidths=0.8)
        if front[i] > 0:
            ax.contour(xx + dx, yy + dy, depth, levels=[front[i]], colors="r", linewidths=0.8)
        ax.set_title(f"frame {i}: {front[i] * px:.1f} nm", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _orthoslices(volume, cmap):
    import matplotlib.pyplot as plt

    v = np.asarray(volume)
    cy, cz, cx = (n // 2 for n in v.shape)
    lo, hi = float(v.min()), float(v.max())  # one colour scale for all three views
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), constrained_layout=True)
    for ax, img, title in zip(axes, (v[cy], v[:, cz, :], v[:, :, cx]), ("slice y (z down, x across)", "z (y down, x across)", "x (y down, z across)")):
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _alignment(alignment: dict):
    import matplotlib.pyplot as plt

    shifts = np.asarray(alignment["shifts"])
    angles = np.asarray(alignment.get("angles_deg", np.arange(len(shifts))))
    attrs = alignment.get("@attrs", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.5), constrained_layout=True)
    ax.plot(angles, shifts[:, 0], marker=".", label="dy")
    ax.plot(angles, shifts[:, 1], marker=".", label="dx")
    ax.set_xlabel("tilt angle (degrees)" if "angles_deg" in alignment else "projection")
    ax.set_ylabel("shift (pixels, raw frame)")
    ax.set_title(f"tilt axis {float(attrs.get('tilt_axis_deg', 0.0)):.2f}°, "
                 f"centre column {float(attrs.get('center', float('nan'))):.1f}", fontsize=9)
    ax.legend()
    return fig


def _depth_profile(profile: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), constrained_layout=True)
    depth = np.asarray(profile["depth_nm"])
    for key in [k for k in profile if k.endswith("fraction")]:
        ax.plot(depth, np.asarray(profile[key]), marker=".", label=key.replace("_", " "))
    ax.set_xlabel("depth below the particle surface (nm)")
    ax.set_ylabel("fraction of voxels")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    return fig


def _maps(images: dict, cmap, symmetric=False, unit=""):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3.6 * len(images), 3.4), constrained_layout=True, squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        img = np.asarray(img, dtype=float)
        kw = {}
        if symmetric:
            lim = np.nanpercentile(np.abs(img), 99) or 1.0
            kw = {"vmin": -lim, "vmax": lim}
        im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8, label=unit)
    return fig


def _strain(strain: dict):
    mask = np.asarray(strain.get("mask", True), dtype=bool)
    maps = {}
    for key, scale, label in (("exx", 100, "exx (%)"), ("eyy", 100, "eyy (%)"), ("exy", 100, "exy (%)"), ("theta", 1, "theta (°)")):
        if key in strain:
            maps[label] = np.where(mask, np.asarray(strain[key]) * scale, np.nan)
    return _maps(maps, "RdBu_r", symmetric=True)


def _phase(phase: dict):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    names = phase.get("@attrs", {}).get("names", [])
    if isinstance(names, str):
        names = json.loads(names)
    labels = np.asarray(phase["labels"])
    n = max(len(names), int(labels.max()) + 1)
    cmap = ListedColormap(plt.get_cmap("tab10").colors[:n])
    fig, ax = plt.subplots(figsize=(4.6, 3.8), constrained_layout=True)
    im = ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, ticks=range(n))
    cbar.ax.set_yticklabels([names[i] if i < len(names) else str(i) for i in range(n)])
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
