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
n_energies, and the non-negativity acts on the projected amounts), or (``fit="joint"``, the
default) the fractions fitted to every energy's projections at once: per-ray inverse-variance
spectral unmixing (``weighted_unmix``: photon-starved energies, e.g. at the white line through a
thick particle, count little), the density by CGLS, then FISTA on the fractions with the simplex
constraint per voxel and a smoothed-TV prior (``joint_fractions``). The centre found by Vo's
search is refined by data consistency (``reconstruction.preprocess.refine_center``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..gpu_core import backend

#: above this many references the exact subset enumeration gives way to projected gradient
EXACT_MAX_REFERENCES = 8
#: cap of the discrepancy-stopped CGLS (slices whose residual never reaches the noise: model errors)
MAX_DISCREPANCY_ITERATIONS = 30
#: ``fit="joint"``: FISTA iterations and TV weight (noise units) of ``joint_fractions``
JOINT_ITERATIONS = 150
JOINT_TV_WEIGHT = 10.0


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
                     method="cgls", fit="joint", backend_name="auto", stopping="discrepancy", refine_center=True,
                     **recon):
    """TXM-XANES tomography -> ``(XanesFit over (n_rows, n_x, n_x), center, attenuation volumes)``.

    data : (n_energies, n_angles, rows, cols) raw counts (or transmission when ``flats`` is None)
    flats : (n_energies, n_flats, rows, cols) or (n_flats, rows, cols) shared; darks (n, rows, cols)
    options : ``reconstruction.preprocess.XrayOptions`` for every energy; its ``center`` ("auto"
        or a column) is resolved once, on the attenuation summed over energies
    fit : "joint" (default; ``joint_fractions`` on the photon-weighted unmixed projections;
        ``method`` is not used, ``iterations`` is the density's CGLS count, default 12, and
        ``tv_weight``, ``fista_iterations`` pass through), "volume" (reconstruct every energy,
        fit per voxel) or "projection" (fit per projection pixel, reconstruct each reference's
        amount)
    refine_center : with ``options.center == "auto"`` and the "vo" method, refine the found
        column by the CGLS residual (``refine_center``; Vo's search steps 0.25 px)
    stopping : with ``method="cgls"``, ``fit="projection"`` and no ``iterations`` given:
        "discrepancy" stops CGLS per slice and per reference where the residual reaches the
        noise of the projected amounts (``discrepancy_cgls``; the noise from the counts' photon
        statistics, ``attenuation_variance``, propagated through the spectral unmixing, or,
        without flats, from the per-pixel misfit of the spectral fit); ``iterations`` then caps
        it (default ``MAX_DISCREPANCY_ITERATIONS``); "sure" keeps the iterate of least estimated
        predictive risk instead (``sure_cgls``); None, or ``iterations`` given, runs a fixed count.
    recon : passed to ``reconstruction.reconstruct`` (e.g. ``iterations``, ``filter``)
    """
    from ..reconstruction import reconstruct
    from ..reconstruction.preprocess import XrayOptions, find_center, preprocess_xray
    from ..reconstruction.preprocess import refine_center as refine_axis

    if fit not in ("volume", "projection", "joint"):
        raise InputError(f"fit must be 'volume', 'projection' or 'joint', got {fit!r}")
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
    if stopping not in ("discrepancy", "sure", None):
        raise InputError(f"stopping must be 'discrepancy', 'sure' or None, got {stopping!r}")
    auto_stop = (fit == "projection" and method == "cgls" and stopping is not None
                 and recon.get("iterations") is None)
    names_p, matrix_p = interpolate_references(references, e[order]) if auto_stop else (None, None)
    unmix = np.linalg.pinv(matrix_p) ** 2 if auto_stop else None  # var(amount_j) = sum_k P_jk^2 var_k
    att, amount_var, energy_var = [], None, []
    for i, k in enumerate(order):  # one energy at a time: a loop over energies, not voxels
        f = None if flats is None else (flats[k] if np.ndim(flats) == 4 else flats)
        a, angles, _ = preprocess_xray(d[k], angles_deg, f, darks, options=step_opt)
        att.append(a)
        if fit == "joint" and f is not None and not opt.fold_360 and not opt.paganin:
            energy_var.append(attenuation_variance(d[k], f, darks).astype(xp.float32))
        if auto_stop and f is not None and not opt.fold_360 and not opt.paganin:
            v = attenuation_variance(d[k], f, darks).astype(xp.float32)
            if amount_var is None:
                amount_var = [xp.zeros_like(v) for _ in range(unmix.shape[0])]
            for j in range(unmix.shape[0]):
                amount_var[j] += xp.float32(unmix[j, i]) * v
    e = e[order]
    if wanted == "auto":
        total = att[0].copy()
        for a in att[1:]:
            total += a
        center = find_center(total, angles, opt.center_method)
        if refine_center and opt.center_method == "vo":
            center = refine_axis(total, angles, center)
    else:
        center = None if wanted is None else float(wanted)
    if fit == "volume":
        vols = xp.stack([xp.asarray(reconstruct(a, method=method, angles_deg=angles, center=center,
                                                backend=backend_name, **recon)) for a in att])
        result = fit_spectra(vols, e, references)
        return result, center, vols
    names, matrix = interpolate_references(references, e)
    stack = xp.stack(att)  # (n_e, n_angles, rows, cols)
    if fit == "joint":
        weights = None if len(energy_var) != e.size else xp.stack([1.0 / xp.maximum(v, 1e-12) for v in energy_var])
        info_rings = {}
        if recon.get("ring_offsets", True):
            stack, offsets = spectral_ring_offsets(matrix, stack, weights)
            if offsets is not None:
                info_rings = {"ring_offset_rms": float(xp.sqrt(xp.mean(offsets.astype(xp.float64) ** 2)))}
        b, metric = weighted_unmix(matrix, stack, weights)
        frac, dens, info = joint_fractions(b, metric, angles, center=center, **recon)
        spectra = xp.tensordot(xp.asarray(matrix, dtype=xp.float32), frac * dens[None], axes=(1, 0))
        result = fit_spectra(spectra, e, references)
        result.meta.update(info, **info_rings)
        return result, center, spectra
    coef = nnls(matrix, stack.reshape(e.size, -1))
    amounts = coef.reshape((len(names),) + stack.shape[1:]).astype(xp.float32)
    if auto_stop:
        if amount_var is None:  # no counts: the spectral misfit per pixel estimates the noise
            flat = stack.reshape(e.size, -1)
            misfit = ((xp.asarray(matrix) @ coef - flat) ** 2).sum(axis=0) / max(e.size - len(names), 1)
            inv = np.diag(np.linalg.inv(matrix.T @ matrix))
            amount_var = [(float(inv[j]) * misfit).reshape(stack.shape[1:]).astype(xp.float32)
                          for j in range(len(names))]
        cap = int(recon.get("max_iterations", MAX_DISCREPANCY_ITERATIONS))
        vols, used = [], []
        for i in range(len(names)):
            if stopping == "sure":
                v, it = sure_cgls(amounts[i], amount_var[i], angles, center=center, max_iterations=cap)
            else:
                v, it = discrepancy_cgls(amounts[i], amount_var[i], angles, center=center, max_iterations=cap,
                                         tau=float(recon.get("tau", 1.0)))
            vols.append(xp.maximum(v, 0) if recon.get("nonnegative") else v)
            used.append(backend.to_host(it))
        vols = xp.stack(vols)
        stop_iterations = {n: [int(u) for u in used[i]] for i, n in enumerate(names)}
    else:
        vols = xp.stack([xp.asarray(reconstruct(amounts[i], method=method, angles_deg=angles, center=center,
                                                backend=backend_name, **recon)) for i in range(len(names))])
        stop_iterations = None
    # the amounts' volumes give mu per voxel back through the references: fit them exactly
    spectra = xp.tensordot(xp.asarray(matrix, dtype=xp.float32), vols, axes=(1, 0))
    result = fit_spectra(spectra, e, references)
    if stop_iterations is not None:
        result.meta["iterations"] = stop_iterations
    return result, center, spectra


# ------------------------------------------------------------------ noise-aware reconstruction
def attenuation_variance(raw, flats=None, darks=None, gain=None):
    """Per-pixel variance of ``-log`` transmission from the counts' statistics (photon noise).

    raw : (n_angles, rows, cols) raw counts of one energy; flats (n_f, rows, cols), darks
    (n_d, rows, cols) as measured (None: the raw data are already transmission and no variance
    can be known: returns None).
    ``var(-log T) = var(C) / C^2 + var(F) / (n_f F^2)`` with ``C = raw - dark``, ``F`` the mean
    flat minus dark, ``var(C) = g C + s_r^2``: the read noise ``s_r^2`` from the spread of the
    darks (0 with fewer than 2), and the detector's counts per photon ``g`` (``gain``) by photon
    transfer from the flats (the spread of each pixel over the flats, after each flat is scaled
    to the same mean so beam changes between flats drop out, over its mean count; the median
    over pixels, corrected for the skew of a few-sample variance; 1 with fewer than 2 flats).
    """
    if flats is None:
        return None
    xp = backend.xp_of(raw)
    c = xp.asarray(raw, dtype=xp.float64)
    f = xp.asarray(flats, dtype=xp.float64)
    f = f[None] if f.ndim == 2 else f
    if darks is not None:
        dk = xp.asarray(darks, dtype=xp.float64)
        dk = dk[None] if dk.ndim == 2 else dk
        dark = dk.mean(axis=0)
        read2 = float(xp.median(dk.var(axis=0, ddof=1))) if dk.shape[0] >= 2 else 0.0
    else:
        dark, read2 = 0.0, 0.0
    f = f - dark
    mean_f = xp.maximum(f.mean(axis=0), 1.0)
    if gain is None:
        if f.shape[0] >= 2:
            level = f.mean(axis=(1, 2), keepdims=True)
            scaled = f * (level.mean() / level)
            g = (scaled.var(axis=0, ddof=1) - read2) / mean_f
            # the median of a k-sample variance is chi2_k's median / k of the variance (k = n_f - 1;
            # 0.79 for 4 flats): the median is robust to zingers in the flats but needs that factor
            from scipy.stats import chi2

            dof = f.shape[0] - 1
            gain = max(float(xp.median(g)) * dof / float(chi2.median(dof)), 1e-6)
        else:
            gain = 1.0
    counts = xp.maximum(c - dark, 1.0)
    return (gain * counts + read2) / counts ** 2 + (gain * mean_f + read2) / (f.shape[0] * mean_f ** 2)


def discrepancy_cgls(projections, variance, angles_deg, center=None, max_iterations=100, tau=1.0, weighted=False,
                     x0=None):
    """CGLS on ``A x = b`` stopped per slice by the discrepancy principle (optionally weighted).

    projections : (n_angles, rows, cols) linear data ``b``; variance : their noise variance
        (same shape, or broadcastable), e.g. ``attenuation_variance`` propagated to the data.
    Every slice iterates until its residual ``||b - A x||^2`` falls to ``tau^2 sum(V)`` over
    the slice (weighted: ``||V^-1/2 (b - A x)||^2`` to ``tau^2 m``, m the rays of the slice),
    the noise level: iterating further fits noise
    (Morozov's discrepancy principle; CGLS iterations are the regulariser, and this stops them
    where the data say, not at a tuned count). ``max_iterations`` caps slices whose residual
    never reaches the noise (model errors). Returns ``(volume (rows, n, n) float32,
    iterations per slice (rows,) int)``. Uses the project's projector pair
    (``reconstruction.iterative.Operator``); per-slice scalars, as ``iterative.cgls``.
    """
    from ..reconstruction.geometry import TiltGeometry
    from ..reconstruction.iterative import Operator

    xp = backend.xp_of(projections)
    b = xp.asarray(projections, dtype=xp.float32)
    n_a, n_rows, n_cols = b.shape
    var = xp.broadcast_to(xp.asarray(variance, dtype=xp.float32), b.shape)
    if weighted:
        w = xp.where(var > 0, 1.0 / xp.sqrt(xp.where(var > 0, var, 1.0)), 0.0).astype(xp.float32)
    else:
        w = xp.ones(b.shape, xp.float32)
    op = Operator(TiltGeometry(np.asarray(angles_deg, np.float64), n_rows, n_cols, center=center), n_cols, xp)
    x = xp.zeros((n_rows, n_cols, n_cols), xp.float32) if x0 is None else xp.array(x0, dtype=xp.float32)

    def per_slice(a):  # (n_a, rows, cols) -> (rows,) sums
        return (a.astype(xp.float64) ** 2).sum(axis=(0, 2))

    if weighted:
        goal = tau ** 2 * (w > 0).sum(axis=(0, 2)).astype(xp.float64)
    else:
        goal = tau ** 2 * var.astype(xp.float64).sum(axis=(0, 2))
    r = w * (b - op.forward(x))
    s = op.back(w * r)
    p = s.copy()
    gamma = (s.astype(xp.float64) ** 2).sum(axis=(1, 2))
    active = per_slice(r) > goal
    used = xp.zeros(n_rows, xp.int64)
    for _ in range(int(max_iterations)):
        if not bool(active.any()):
            break
        q = w * op.forward(p)
        qq = per_slice(q)
        alpha = xp.where(active & (qq > 0), gamma / xp.where(qq > 0, qq, 1.0), 0.0)
        x += (alpha[:, None, None] * p).astype(xp.float32)
        r -= (alpha[None, :, None] * q).astype(xp.float32)
        used += active
        s = op.back(w * r)
        gamma_new = (s.astype(xp.float64) ** 2).sum(axis=(1, 2))
        beta = xp.where(gamma > 0, gamma_new / xp.where(gamma > 0, gamma, 1.0), 0.0)
        p = (s + beta[:, None, None] * p).astype(xp.float32)
        gamma = gamma_new
        active = active & (per_slice(r) > goal)
    return x, used


def sure_cgls(projections, variance, angles_deg, center=None, max_iterations=MAX_DISCREPANCY_ITERATIONS, eps=0.3,
              seed=0, per_slice=False):
    """CGLS stopped per slice at the iterate of least estimated predictive risk (Monte-Carlo SURE).

    ``SURE_k = ||b - A x_k||^2 - sum(V) + 2 df_k``: an unbiased estimate of
    ``E ||A x_k - A x_true||^2`` for Gaussian noise of variance ``V``, with the degrees of freedom
    ``df_k = sum V d(A x_k)/db`` estimated by one probe (Ramani et al. 2008): the same CGLS on
    ``b + eps sqrt(V) z`` (z standard normal) runs alongside as extra slices, and
    ``df_k = (sqrt(V) z) . (A x_k(b + eps sqrt(V) z) - A x_k(b)) / eps``. The discrepancy
    principle ignores ``df_k`` and stops earlier. Runs ``max_iterations`` and keeps the iterate
    of least SURE summed over the slices (``per_slice``: per slice; one probe per slice makes
    that noisy). Returns ``(volume, iterations per slice)``.
    """
    from ..reconstruction.geometry import TiltGeometry
    from ..reconstruction.iterative import Operator

    xp = backend.xp_of(projections)
    b = xp.asarray(projections, dtype=xp.float32)
    n_a, n_rows, n_cols = b.shape
    var = xp.broadcast_to(xp.asarray(variance, dtype=xp.float32), b.shape)
    sd = xp.sqrt(xp.maximum(var, 0))
    rng = np.random.default_rng(seed)
    z = xp.asarray(rng.standard_normal(b.shape).astype(np.float32)) * sd
    data = xp.concatenate([b, b + np.float32(eps) * z], axis=1)  # (n_a, 2 rows, cols): probe as slices
    op = Operator(TiltGeometry(np.asarray(angles_deg, np.float64), 2 * n_rows, n_cols, center=center), n_cols, xp)
    x = xp.zeros((2 * n_rows, n_cols, n_cols), xp.float32)
    r = data.copy()
    s = op.back(r)
    p = s.copy()
    gamma = (s.astype(xp.float64) ** 2).sum(axis=(1, 2))
    total_var = var.astype(xp.float64).sum(axis=(0, 2))
    best = xp.zeros((n_rows, n_cols, n_cols), xp.float32)
    best_risk = xp.full(n_rows, np.inf)
    best_it = xp.zeros(n_rows, xp.int64)
    for it in range(int(max_iterations)):
        q = op.forward(p)
        qq = (q.astype(xp.float64) ** 2).sum(axis=(0, 2))
        alpha = xp.where(qq > 0, gamma / xp.where(qq > 0, qq, 1.0), 0.0)
        x += (alpha[:, None, None] * p).astype(xp.float32)
        r -= (alpha[None, :, None] * q).astype(xp.float32)
        s = op.back(r)
        gamma_new = (s.astype(xp.float64) ** 2).sum(axis=(1, 2))
        beta = xp.where(gamma > 0, gamma_new / xp.where(gamma > 0, gamma, 1.0), 0.0)
        p = (s + beta[:, None, None] * p).astype(xp.float32)
        gamma = gamma_new
        r0, r1 = r[:, :n_rows], r[:, n_rows:]
        # A x(b') - A x(b) = (b' - r1) - (b - r0) = eps z - r1 + r0
        df = (z.astype(xp.float64) * (np.float32(eps) * z - r1 + r0)).sum(axis=(0, 2)) / eps
        risk = (r0.astype(xp.float64) ** 2).sum(axis=(0, 2)) - total_var + 2 * df
        if not per_slice:
            risk = xp.broadcast_to(risk.sum(), risk.shape)
        better = risk < best_risk
        best = xp.where(better[:, None, None], x[:n_rows], best)
        best_risk = xp.where(better, risk, best_risk)
        best_it = xp.where(better, it + 1, best_it)
    return best, best_it


# ------------------------------------------------------------- joint fraction reconstruction
def project_simplex(f):
    """Euclidean projection of every column ``f[:, ...]`` (axis 0: the references) onto the
    probability simplex ``{f >= 0, sum f = 1}`` (sort-based, vectorised over the points)."""
    xp = backend.xp_of(f)
    n = f.shape[0]
    if n == 1:
        return xp.ones_like(f)
    if n == 2:
        a = xp.clip((f[0] - f[1] + 1) / 2, 0, 1)
        return xp.stack([a, 1 - a])
    u = -xp.sort(-f, axis=0)
    css = xp.cumsum(u, axis=0) - 1
    k = xp.arange(1, n + 1, dtype=f.dtype).reshape((n,) + (1,) * (f.ndim - 1))
    cond = u - css / k > 0
    rho = n - 1 - xp.argmax(cond[::-1], axis=0)  # last index where cond holds
    theta = xp.take_along_axis(css, rho[None], axis=0)[0] / (rho + 1).astype(f.dtype)
    return xp.maximum(f - theta[None], 0)


def _tv_grad(f, eps):
    """Gradient of the smoothed total variation ``sum sqrt(|grad f|^2 + eps^2)`` of every slice
    (forward differences along z and x, Neumann boundary) of ``f`` (..., rows, n, n)."""
    from ..reconstruction.iterative import slice_gradient, slice_gradient_adjoint

    xp = backend.xp_of(f)
    g = slice_gradient(f)
    return slice_gradient_adjoint(g / xp.sqrt((g * g).sum(0) + eps * eps))


def spectral_ring_offsets(matrix, stack, weights=None):
    """Remove per-detector-pixel offsets that are flat across energies (rings) -> ``(stack, offsets)``.

    A gain error of a detector pixel that the flats miss adds ``-log(1 + g)`` to that pixel's
    attenuation at every angle and every energy: a flat spectrum, which no mixture of the
    references makes (checked: ``[A, 1]`` must have full rank, else nothing is done and
    ``offsets`` is None). Each ray is fitted with ``[A, 1]`` (``weighted_unmix``); the flat
    part, averaged over the angles with its inverse variance as weight, is the pixel's offset
    (rows, cols), subtracted from every energy and angle. Without rings the flat part of a ray
    is noise only (the object's spectra lie in the references' span), so the average is ~0.
    stack : (n_energies, n_angles, rows, cols); weights : like ``weighted_unmix``.
    """
    xp = backend.xp_of(stack)
    a = np.asarray(matrix, np.float64)
    a1 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    if a.shape[0] <= a1.shape[1] or np.linalg.matrix_rank(a1) < a1.shape[1]:
        return stack, None
    b1, m1 = weighted_unmix(a1, stack, weights)
    k = a.shape[1]
    mm = xp.moveaxis(m1.reshape(k + 1, k + 1, -1), -1, 0).astype(xp.float64)
    prec = 1.0 / xp.maximum(xp.linalg.inv(mm)[:, k, k], 1e-30)  # 1 / var of the flat part, per ray
    prec = prec.reshape(stack.shape[1:]).astype(xp.float32)
    offsets = (prec * b1[k]).sum(axis=0) / xp.maximum(prec.sum(axis=0), 1e-30)  # (rows, cols)
    return (stack - offsets[None, None]).astype(xp.float32), offsets.astype(xp.float32)


def weighted_unmix(matrix, stack, weights=None):
    """Per-ray spectral unmixing ``b = (A^T W A)^-1 A^T W y`` and its metric ``M = A^T W A``.

    matrix : (n_energies, n_refs) A; stack : (n_energies, ...) attenuation y of every ray;
    weights : (n_energies, ...) inverse noise variances W of y per ray (photon statistics), or
    None: unweighted, with the noise variance from the misfit of the spectral fit (averaged over
    the rays), ``W = 1 / s^2``. ``r^T M r`` with ``r = b_true - b`` is then chi-square with
    n_refs degrees of freedom per ray. Returns ``(b (n_refs, ...), M (n_refs, n_refs, ...))``.
    """
    xp = backend.xp_of(stack)
    a = np.asarray(matrix, np.float64)
    n_e, n_ref = a.shape
    y = xp.asarray(stack, dtype=xp.float32).reshape(n_e, -1)
    if weights is None:
        b = xp.asarray(np.linalg.pinv(a), dtype=xp.float32) @ y
        misfit = ((xp.asarray(a, dtype=xp.float32) @ b - y) ** 2).sum(axis=0)
        s2 = max(float(misfit.mean()) / max(n_e - n_ref, 1), 1e-20)
        metric = xp.broadcast_to(xp.asarray(a.T @ a / s2, dtype=xp.float32)[:, :, None], (n_ref, n_ref, y.shape[1]))
        return b.reshape((n_ref,) + stack.shape[1:]), metric.reshape((n_ref, n_ref) + stack.shape[1:])
    w = xp.asarray(weights, dtype=xp.float32).reshape(n_e, -1)
    ad = xp.asarray(a, dtype=xp.float32)
    metric = xp.einsum("ki,kj,kp->pij", ad, ad, w)  # (points, n_ref, n_ref)
    rhs = xp.einsum("ki,kp->pi", ad, w * y)
    metric64 = metric.astype(xp.float64)
    b = xp.linalg.solve(metric64, rhs.astype(xp.float64)[..., None])[..., 0].T.astype(xp.float32)
    metric = xp.ascontiguousarray(metric.transpose(1, 2, 0))
    return b.reshape((n_ref,) + stack.shape[1:]), metric.reshape((n_ref, n_ref) + stack.shape[1:])


def joint_fractions(amounts, metric, angles_deg, center=None, tv_weight=JOINT_TV_WEIGHT, eps=0.05,
                    fista_iterations=JOINT_ITERATIONS, iterations=12, min_density=0.1, **_ignored):
    """Fractions per voxel fitted to the projections of all energies at once, with a
    spatial total-variation prior and the simplex constraint (``fit="joint"``).

    The projections at energy k are ``sum_j A_kj P(d f_j)`` (d the density, f_j the fraction of
    reference j, P the projector), so with the unconstrained spectral unmixing per ray
    ``b = pinv(A) y`` the whole spectral least-squares misfit is ``sum_rays r^T (A^T A) r``,
    ``r_j = P(d f_j) - b_j``: n_refs projections per iteration, not n_energies. Steps: the
    density ``d`` by CGLS (``iterations``) on ``sum_j b_j`` (the best-determined
    combination), clipped at 0; then FISTA on the fractions of the voxels whose density exceeds
    ``min_density`` x its 99.5th percentile, minimising
    ``sum r^T M r / 2 + tv_weight sum_j TV_eps(f_j)`` with every voxel's ``f`` projected on the
    simplex (``f_j >= 0``, ``sum_j f_j = 1``); ``M = A^T W A`` per ray (W the inverse noise
    variances, ``weighted_unmix``), so the misfit is in units of the noise and the weight is
    too: the prior counts more where the data are noisier.
    amounts : (n_refs, n_angles, rows, cols); metric : (n_refs, n_refs, n_angles, rows, cols), the
    per-ray ``A^T W A`` of ``weighted_unmix``.
    Returns ``(fractions (n_refs, rows, n, n), density (rows, n, n), info)``.
    """
    from ..reconstruction.geometry import TiltGeometry
    from ..reconstruction.iterative import Operator, cgls

    xp = backend.xp_of(amounts)
    b = xp.asarray(amounts, dtype=xp.float32)
    n_ref, n_a, n_rows, n_cols = b.shape
    iterations = 12 if iterations is None else int(iterations)
    angles = np.asarray(angles_deg, np.float64)
    dens = xp.maximum(cgls(b.sum(axis=0), angles, center=center, iterations=int(iterations)), 0)
    op = Operator(TiltGeometry(angles, n_rows, n_cols, center=center), n_cols, xp)
    top = float(xp.percentile(dens, 99.5)) if dens.size else 0.0
    support = (dens > min_density * top).astype(xp.float32)
    m = xp.asarray(metric, dtype=xp.float32)  # (n_ref, n_ref, n_a, rows, cols)

    def normal(v):  # the data term's Hessian D P^T M P D on the support, applied to v
        r = xp.stack([op.forward(dens * v[j]) for j in range(n_ref)])
        mr = (m * r[None]).sum(axis=1)
        return xp.stack([dens * op.back(xp.ascontiguousarray(mr[j])) for j in range(n_ref)]) * support[None]

    v = xp.ones((n_ref,) + dens.shape, xp.float32) * support[None]
    lip_data = 0.0
    for _ in range(12):  # power iteration (a non-negative operator: a positive start converges)
        v = normal(v)
        lip_data = float(xp.sqrt(xp.sum(v.astype(xp.float64) ** 2)))
        if lip_data == 0.0:
            break
        v = v / lip_data
    step = 1.0 / (1.05 * lip_data + tv_weight * 8.0 / eps)
    # start: each reference's CGLS amount over the density, on the simplex
    x0 = xp.stack([cgls(b[j], angles, center=center, iterations=int(iterations)) for j in range(n_ref)])
    f = project_simplex(x0 / xp.where(dens > 0, dens, 1.0)[None])
    y, t = f, 1.0
    for _ in range(int(fista_iterations)):
        r = xp.stack([op.forward(dens * y[j]) for j in range(n_ref)]) - b  # (n_ref, n_a, rows, cols)
        mr = (m * r[None]).sum(axis=1)
        grad = xp.stack([dens * op.back(xp.ascontiguousarray(mr[j])) for j in range(n_ref)])
        if tv_weight:
            grad += xp.float32(tv_weight) * _tv_grad(y, eps)
        nxt = project_simplex(y - xp.float32(step) * grad * support[None])
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = (nxt + ((t - 1) / t_next) * (nxt - f)).astype(xp.float32)
        f, t = nxt, t_next
    f = f * support[None]
    return f.astype(xp.float32), dens.astype(xp.float32), {"tv_weight": float(tv_weight),
                                                           "fista_iterations": int(fista_iterations)}
