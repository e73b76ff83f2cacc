"""XANES: per-voxel (or per-pixel) fractions of reference spectra and edge energies.

A voxel's spectrum ``mu(E_k)`` (k over the measured energies) is modelled as
``sum_j c_j ref_j(E_k)`` with ``c_j >= 0``: non-negative least squares, solved for every voxel
at once (``nnls``). ``density = sum_j c_j`` (the amount of absorber, in units of the references'
edge step) and ``fraction_j = c_j / density`` (0 where the density is below ``min_density``).
The edge energy is where the pre/post-edge normalised spectrum first reaches one half.

Arrays are NumPy or CuPy (``xp``); spectra run along axis 0: ``(n_energies, ...)``.
Tomography (``xanes_tomography``): the X-ray chain of ``reconstruction.preprocess`` on every
energy with one centre found once (on the energy-summed attenuation), a reconstruction per
energy, then the fit per voxel (``fit="volume"``), or the fit per projection pixel first and a
reconstruction of each reference's amount (``fit="projection"``: 2 reconstructions instead of
n_energies, and the non-negativity acts on the projected amounts).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..gpu_core import backend

#: above this many references the exact subset enumeration gives way to projected gradient
EXACT_MAX_REFERENCES = 8


def interpolate_references(references: dict, energies_eV) -> tuple[list[str], np.ndarray]:
    """``(names, A)``: each reference ``{name: (energy_eV, mu)}`` linearly interpolated to
    ``energies_eV``; A is ``(n_energies, n_references)`` float64. Energies outside a reference's
    range are an error (no extrapolation)."""
    e = np.asarray(energies_eV, np.float64).ravel()
    names, cols = [], []
    for name, (ref_e, mu) in references.items():
        ref_e, mu = np.asarray(ref_e, np.float64), np.asarray(mu, np.float64)
        order = np.argsort(ref_e)
        ref_e, mu = ref_e[order], mu[order]
        if e.min() < ref_e[0] - 1e-6 or e.max() > ref_e[-1] + 1e-6:
            raise InputError(f"reference {name!r} covers {ref_e[0]:.1f}-{ref_e[-1]:.1f} eV but the data span "
                             f"{e.min():.1f}-{e.max():.1f} eV; give a reference over the whole range")
        names.append(name)
        cols.append(np.interp(e, ref_e, mu))
    if not names:
        raise InputError("need at least one reference spectrum")
    matrix = np.stack(cols, axis=1)
    if np.linalg.matrix_rank(matrix) < matrix.shape[1]:
        raise InputError(f"the references {names} are linearly dependent at the measured energies")
    return names, matrix


def nnls(matrix, spectra, iterations=500):
    """Non-negative least squares ``min ||A c - b||, c >= 0`` for every column of ``spectra``.

    matrix : (n_energies, n_refs) host array A; spectra : (n_energies, n_points) NumPy/CuPy b.
    Returns (n_refs, n_points) float64 on the device of ``spectra``.
    Up to ``EXACT_MAX_REFERENCES`` references: exact, by enumerating the supports (every
    non-empty subset S, its unconstrained least squares ``pinv(A_S) b`` for all points in one
    matrix product, kept where non-negative; the feasible support with the smallest residual
    is the NNLS solution, since the NNLS optimum is the least-squares solution on its own
    support). Beyond that: accelerated projected gradient (FISTA) for ``iterations`` steps.
    """
    xp = backend.xp_of(spectra)
    a = np.asarray(matrix, np.float64)
    b = xp.asarray(spectra, dtype=xp.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise InputError(f"need A (n_energies, n_refs) and b (n_energies, n_points), got {a.shape}, {b.shape}")
    n_ref = a.shape[1]
    if n_ref > EXACT_MAX_REFERENCES:
        return _nnls_fista(a, b, iterations)
    best = xp.zeros((n_ref, b.shape[1]))
    best_res = (b ** 2).sum(axis=0)  # c = 0 is always feasible
    for k in range(1, n_ref + 1):
        for subset in itertools.combinations(range(n_ref), k):
            sub = list(subset)
            pinv = xp.asarray(np.linalg.pinv(a[:, sub]))
            c = pinv @ b  # (k, n_points)
            res = ((xp.asarray(a[:, sub]) @ c - b) ** 2).sum(axis=0)
            ok = (c >= 0).all(axis=0) & (res < best_res)
            best_res = xp.where(ok, res, best_res)
            full = xp.zeros_like(best)
            full[sub] = c
            best = xp.where(ok[None], full, best)
    return best


def _nnls_fista(a, b, iterations):
    xp = backend.xp_of(b)
    ata = xp.asarray(a.T @ a)
    atb = xp.asarray(a.T) @ b
    step = 1.0 / float(np.linalg.eigvalsh(a.T @ a).max())
    x = xp.maximum(xp.asarray(np.linalg.lstsq(a, np.eye(a.shape[0]), rcond=None)[0]) @ b, 0)
    y, t = x, 1.0
    for _ in range(int(iterations)):
        nxt = xp.maximum(y - step * (ata @ y - atb), 0)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = nxt + ((t - 1) / t_next) * (nxt - x)
        x, t = nxt, t_next
    return x


def edge_energy(spectra, energies_eV, pre=None, post=None, level=0.5):
    """Edge energy (eV) of every spectrum: where the normalised spectrum first reaches ``level``.

    spectra : (n_energies, ...) NumPy/CuPy; energies_eV : (n_energies,) increasing
    pre, post : ``(lo, hi)`` eV windows of the pre-edge and post-edge lines (default: below the
        first 20 % of the range, and above the last 30 %); normalised = (mu - pre line) /
        (post line - pre line), both lines least-squares fitted per spectrum.
    Returns an array of the spectra's trailing shape; NaN where the step is not positive or the
    level is never reached.
    """
    xp = backend.xp_of(spectra)
    e = np.asarray(energies_eV, np.float64).ravel()
    s = xp.asarray(spectra, dtype=xp.float64)
    if s.shape[0] != e.size or e.size < 4 or np.any(np.diff(e) <= 0):
        raise InputError(f"need >= 4 increasing energies matching the spectra's axis 0, got {e.size} for {s.shape}")
    span = e[-1] - e[0]
    pre = (e[0] - 1, e[0] + 0.2 * span) if pre is None else pre
    post = (e[-1] - 0.3 * span, e[-1] + 1) if post is None else post
    flat = s.reshape(e.size, -1)

    def line(window):
        sel = (e >= window[0]) & (e <= window[1])
        if sel.sum() < 1:
            raise InputError(f"no energies in the window {window} eV")
        design = np.stack([np.ones(sel.sum()), e[sel] - e.mean()], 1) if sel.sum() >= 2 else np.ones((1, 1))
        coef = xp.asarray(np.linalg.pinv(design)) @ flat[xp.asarray(np.flatnonzero(sel))]
        basis = np.stack([np.ones_like(e), e - e.mean()], 1)[:, : design.shape[1]]
        return xp.asarray(basis) @ coef  # (n_energies, n_points)

    lo, hi = line(pre), line(post)
    step = hi - lo
    norm = (flat - lo) / xp.where(step > 0, step, xp.nan)
    above = norm >= level
    k = xp.argmax(above, axis=0)
    reached = above.any(axis=0) & (k > 0)
    k1 = xp.maximum(k, 1)
    cols = xp.arange(flat.shape[1])
    n0, n1 = norm[k1 - 1, cols], norm[k1, cols]
    ee = xp.asarray(e)
    e0, e1 = ee[k1 - 1], ee[k1]
    frac = xp.clip((level - n0) / xp.where(n1 != n0, n1 - n0, 1.0), 0, 1)
    out = xp.where(reached & (step[0] > 0), e0 + frac * (e1 - e0), xp.nan)
    return out.reshape(s.shape[1:])


@dataclass
class XanesFit:
    """Per-point result of ``fit_spectra``: ``fractions[name]``, ``density``, ``edge_energy_eV``,
    ``amounts[name]`` (the NNLS coefficients) and ``residual`` (RMS misfit per point), each of
    the spectra's trailing shape; ``names``, ``energies_eV``, ``matrix`` (the interpolated refs)."""

    names: list
    energies_eV: np.ndarray
    matrix: np.ndarray
    amounts: dict
    fractions: dict
    density: object
    edge_energy_eV: object
    residual: object
    meta: dict = field(default_factory=dict)


def fit_spectra(spectra, energies_eV, references, min_density=None, edge_windows=(None, None)):
    """Fit every spectrum (axis 0) to the references by NNLS; see the module docstring.

    spectra : (n_energies, ...) NumPy/CuPy (reconstructed mu per voxel, or -log transmission
        per pixel for 2-D mapping); references : ``{name: (energy_eV, mu)}``
    min_density : fractions are 0 where the density is below it (default 10 % of the 99.5th
        percentile of the density)
    """
    xp = backend.xp_of(spectra)
    s = xp.asarray(spectra)
    e = np.asarray(energies_eV, np.float64).ravel()
    if s.shape[0] != e.size:
        raise InputError(f"{e.size} energies for spectra with {s.shape[0]} points along axis 0")
    names, matrix = interpolate_references(references, e)
    flat = s.reshape(e.size, -1)
    coef = nnls(matrix, flat)
    resid = xp.sqrt(((xp.asarray(matrix) @ coef - flat) ** 2).mean(axis=0))
    density = coef.sum(axis=0)
    if min_density is None:
        top = float(xp.percentile(density, 99.5)) if density.size else 0.0
        min_density = 0.1 * top
    ok = density > min_density
    shape = s.shape[1:]
    amounts = {n: coef[i].reshape(shape).astype(xp.float32) for i, n in enumerate(names)}
    fractions = {n: xp.where(ok, coef[i] / xp.where(ok, density, 1.0), 0.0).reshape(shape).astype(xp.float32)
                 for i, n in enumerate(names)}
    edge = edge_energy(flat, e, *edge_windows)
    edge = xp.where(ok, edge, xp.nan).reshape(shape).astype(xp.float32)
    return XanesFit(names, e, matrix, amounts, fractions, density.reshape(shape).astype(xp.float32), edge,
                    resid.reshape(shape).astype(xp.float32), {"min_density": float(min_density)})


def select_voxels(result: XanesFit, row=None, per_reference=1):
    """``(index (k, 3) [y, z, x], labels)``: voxels of slice ``row`` (default the middle) to
    show spectra of: for each reference the dense voxel richest in it, and the densest voxel
    closest to an equal mix."""
    names = result.names
    dens = backend.to_host(result.density)
    row = dens.shape[0] // 2 if row is None else int(row)
    d = dens[row]
    ok = d > result.meta.get("min_density", 0.0)
    if not ok.any():
        return np.zeros((0, 3), int), []
    picks, labels = [], []
    for n in names:
        f = np.where(ok, backend.to_host(result.fractions[n])[row], -1.0)
        order = np.argsort(f, axis=None)[::-1][:per_reference]
        for flat in order:
            picks.append((row, *np.unravel_index(flat, f.shape)))
            labels.append(f"richest in {n}")
    f0 = backend.to_host(result.fractions[names[0]])[row]
    mix = np.where(ok, -np.abs(f0 - 0.5), -np.inf)
    flat = int(np.argmax(mix))
    picks.append((row, *np.unravel_index(flat, f0.shape)))
    labels.append("mixed")
    return np.asarray(picks, int), labels


def xanes_map_2d(transmission, energies_eV, references, **kw) -> XanesFit:
    """2-D XANES mapping (no rotation): ``transmission`` (n_energies, rows, cols) flat/dark
    corrected; the -log is fitted per pixel, so amounts are projected (per pixel) amounts."""
    xp = backend.xp_of(transmission)
    t = xp.asarray(transmission, dtype=xp.float32)
    return fit_spectra(-xp.log(xp.maximum(t, xp.float32(1e-6))), energies_eV, references, **kw)


def xanes_tomography(data, angles_deg, energies_eV, references, flats=None, darks=None, options=None,
                     method="fbp", fit="volume", backend_name="auto", **recon):
    """TXM-XANES tomography -> ``(XanesFit over (n_rows, n_x, n_x), center, attenuation volumes)``.

    data : (n_energies, n_angles, rows, cols) raw counts (or transmission when ``flats`` is None)
    flats : (n_energies, n_flats, rows, cols) or (n_flats, rows, cols) shared; darks (n, rows, cols)
    options : ``reconstruction.preprocess.XrayOptions`` for every energy; its ``center`` ("auto"
        or a column) is resolved once, on the attenuation summed over energies
    fit : "volume" (reconstruct every energy, fit per voxel) or "projection" (fit per
        projection pixel, reconstruct each reference's amount)
    recon : passed to ``reconstruction.reconstruct`` (e.g. ``iterations``, ``filter``)
    """
    from ..reconstruction import reconstruct
    from ..reconstruction.preprocess import XrayOptions, find_center, preprocess_xray

    if fit not in ("volume", "projection"):
        raise InputError(f"fit must be 'volume' or 'projection', got {fit!r}")
    xp = backend.xp_of(data)
    d = xp.asarray(data)
    if d.ndim != 4:
        raise InputError(f"XANES data must be (n_energies, n_angles, rows, cols), got shape {d.shape}")
    e = np.asarray(energies_eV, np.float64).ravel()
    if e.size != d.shape[0]:
        raise InputError(f"{e.size} energies for {d.shape[0]} energy frames")
    order = np.argsort(e)
    opt = options or XrayOptions()
    wanted = opt.center
    step_opt = XrayOptions(**{**opt.__dict__, "center": None})
    att = []
    for k in order:  # one energy at a time: a loop over energies, not voxels
        f = None if flats is None else (flats[k] if np.ndim(flats) == 4 else flats)
        a, angles, _ = preprocess_xray(d[k], angles_deg, f, darks, options=step_opt)
        att.append(a)
    e = e[order]
    if wanted == "auto":
        total = att[0].copy()
        for a in att[1:]:
            total += a
        center = find_center(total, angles, opt.center_method)
    else:
        center = None if wanted is None else float(wanted)
    if fit == "volume":
        vols = xp.stack([xp.asarray(reconstruct(a, method=method, angles_deg=angles, center=center,
                                                backend=backend_name, **recon)) for a in att])
        result = fit_spectra(vols, e, references)
        return result, center, vols
    names, matrix = interpolate_references(references, e)
    stack = xp.stack(att)  # (n_e, n_angles, rows, cols)
    coef = nnls(matrix, stack.reshape(e.size, -1))
    amounts = coef.reshape((len(names),) + stack.shape[1:]).astype(xp.float32)
    vols = xp.stack([xp.asarray(reconstruct(amounts[i], method=method, angles_deg=angles, center=center,
                                            backend=backend_name, **recon)) for i in range(len(names))])
    # the amounts' volumes give mu per voxel back through the references: fit them exactly
    spectra = xp.tensordot(xp.asarray(matrix, dtype=xp.float32), vols, axes=(1, 0))
    result = fit_spectra(spectra, e, references)
    return result, center, spectra
