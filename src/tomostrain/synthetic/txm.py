"""Simulated TXM-XANES tomography of a partly reduced NiO particle, with every detector fault.

The object (indexed ``[y, z, x]``, DESIGN.md §3) is a NiO sphere whose outer layer is reduced to
Ni metal (Ni fraction 1 at the surface falling smoothly to 0 at ``shell`` voxels depth) with a
few small Ni metal particles inside the oxide core. ``density`` is the Ni amount per voxel
(both phases hold about the same number of Ni atoms per volume) with a smooth +-10 % variation.
Attenuation at energy E: ``mu_E = density (f mu_Ni(E) + (1 - f) mu_NiO(E))`` per voxel, with the
reference spectra of ``nickel_references`` (per unit density, per voxel).

Projections are linear in the two phase amounts, so the two amount volumes are projected once
(``synthetic.tilt_series``, an off-centre axis) and combined per energy. The detector then
records ``counts = Poisson(photons * beam * gain * (1 + ring) * exp(-p)) + dark``: ``gain`` a
per-pixel gain the flats see, ``ring`` a per-pixel gain error they do not (rings), ``beam`` a
per-projection intensity change (the flats see their own), zingers (a few pixels several times
too bright), and a dark current with read noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .tiltseries import tilt_series

#: energies (eV) of the default series: pre-edge, edge (dense), post-edge
DEFAULT_ENERGIES = np.array([8300.0, 8320, 8328, 8331, 8334, 8337, 8340, 8343, 8346, 8349, 8352, 8356, 8362,
                             8375, 8400])
EDGE_METAL_EV = 8333.0
EDGE_OXIDE_EV = 8342.0


def k_edge(energies_eV, edge_eV, width_eV=2.0, white_line=0.0, white_line_eV=None, white_line_width_eV=3.0,
           pre=0.25, pre_slope=-5e-4, step=1.0):
    """Analytic K-edge absorption ``mu(E)``: pre-edge line + arctan step + Gaussian white line.

    ``pre + pre_slope (E - edge) + step (1/2 + atan((E - edge) / width) / pi)
    + white_line exp(-(E - E_wl)^2 / (2 w^2))`` with ``E_wl`` default ``edge + 2 width``.
    """
    e = np.asarray(energies_eV, np.float64)
    ewl = edge_eV + 2 * width_eV if white_line_eV is None else white_line_eV
    return (pre + pre_slope * (e - edge_eV) + step * (0.5 + np.arctan((e - edge_eV) / width_eV) / np.pi)
            + white_line * np.exp(-((e - ewl) ** 2) / (2 * white_line_width_eV ** 2)))


def nickel_references(energies_eV, metal_edge_eV=EDGE_METAL_EV, oxide_edge_eV=EDGE_OXIDE_EV):
    """``{"Ni": mu, "NiO": mu}`` at ``energies_eV``: Ni-like metal (small shoulder) and NiO-like
    oxide (edge shifted up, strong white line) K edges, unit edge step, per unit density."""
    return {"Ni": k_edge(energies_eV, metal_edge_eV, width_eV=2.5, white_line=0.15, white_line_eV=metal_edge_eV + 4),
            "NiO": k_edge(energies_eV, oxide_edge_eV, width_eV=2.0, white_line=0.9, white_line_eV=oxide_edge_eV + 7)}


def write_reference_csv(path, energies_eV, mu) -> None:
    """Write one reference spectrum as CSV ``energy_eV,mu`` (the format ``tomostrain xanes`` reads)."""
    rows = "".join(f"{e:.4f},{m:.8g}\n" for e, m in zip(np.asarray(energies_eV), np.asarray(mu)))
    with open(path, "w") as fh:
        fh.write("energy_eV,mu\n" + rows)


@dataclass
class TxmXanes:
    """A simulated TXM-XANES scan and its truth.

    data : (n_energies, n_angles, n_rows, n_cols) float32 raw counts
    flats : (n_energies, n_flats, n_rows, n_cols) raw flat fields; darks (n_darks, n_rows, n_cols)
    angles_deg (n_angles,), energies_eV (n_energies,); references {name: mu at energies_eV}
    fraction_ni (n_rows, n, n) Ni-metal fraction, density (n_rows, n, n), particle mask,
    metal_particles mask (the small Ni particles in the core); center (column of the axis)
    """

    data: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    angles_deg: np.ndarray
    energies_eV: np.ndarray
    references: dict
    fraction_ni: np.ndarray
    density: np.ndarray
    particle: np.ndarray
    metal_particles: np.ndarray
    center: float
    meta: dict = field(default_factory=dict)

    @property
    def fractions(self) -> dict:
        return {"Ni": self.fraction_ni * self.particle, "NiO": (1 - self.fraction_ni) * self.particle}


def reduced_particle(n=64, n_rows=4, seed=0, radius=None, shell=4.0, n_metal=3, metal_radius=(3.0, 4.0)):
    """(fraction_ni, density, particle, metal) volumes ``(n_rows, n, n)`` of a partly reduced NiO
    sphere cut through its middle (rows = slices near the equator), Ni metal particles in the core.
    Voxel values are 4x4x4-supersampled averages."""
    rng = np.random.default_rng(seed)
    r_obj = 0.30 * n if radius is None else float(radius)
    ss = 4
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    cy = rng.uniform(-1, 1)  # the equator near the middle row
    y = ((np.arange(n_rows)[:, None] + sub).ravel() - (n_rows - 1) / 2 + cy)[:, None, None]
    c = ((np.arange(n)[:, None] + sub).ravel() - (n - 1) / 2)
    z, x = c[None, :, None], c[None, None, :]
    off = rng.uniform(-0.06, 0.06, 2) * n  # particle centre in (z, x)
    r = np.sqrt(y ** 2 + (z - off[0]) ** 2 + (x - off[1]) ** 2)
    # ellipticity and a wobbly surface so no two seeds look alike
    ang = np.arctan2(z - off[0], x - off[1])
    r_surf = r_obj * (1 + 0.06 * np.cos(2 * ang + rng.uniform(0, 2 * np.pi)) + 0.03 * np.cos(3 * ang + rng.uniform(0, 6)))
    inside = r <= r_surf
    depth = r_surf - r
    f = np.clip(1.0 - (depth - (shell - 1.5)) / 3.0, 0.0, 1.0)  # 1 at the surface, 0 below shell+1.5
    metal = np.zeros_like(inside)
    placed = []
    tries = 0
    while len(placed) < n_metal and tries < 500:
        tries += 1
        rm = rng.uniform(*metal_radius)
        lim = r_obj - shell - rm - 2.5
        if lim <= 0:
            break
        pz, px = rng.uniform(-lim, lim, 2)
        if np.hypot(pz, px) > lim or any(np.hypot(pz - q[0], px - q[1]) < rm + q[2] + 2 for q in placed):
            continue
        placed.append((pz, px, rm))
        metal |= (y ** 2 * 0 + (z - off[0] - pz) ** 2 + (x - off[1] - px) ** 2) <= rm ** 2
    f = np.where(metal, 1.0, f)
    dens = 1.0 + 0.1 * np.cos(2 * np.pi * (z * rng.uniform(0.5, 1.5) + x * rng.uniform(0.5, 1.5)) / n + rng.uniform(0, 6))
    dens = dens * np.ones_like(y)

    def down(a):
        return a.reshape(n_rows, ss, n, ss, n, ss).mean(axis=(1, 3, 5))

    occ = down(inside.astype(np.float64))
    amount_ni = down(inside * dens * f)
    amount = down(inside * dens)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(amount > 0, amount_ni / np.maximum(amount, 1e-12), 0.0)
    particle = occ > 0.999
    metal_mask = down(metal.astype(np.float64) * inside) > 0.999
    return frac, amount, particle, metal_mask, placed


def txm_xanes_series(n=64, n_rows=4, energies_eV=None, angles_deg=None, *, seed=0, center_offset=3.0,
                     photons=3e4, gain_spread=0.1, ring_error=0.01, beam_drift=0.05, zinger_rate=2e-4,
                     dark_level=100.0, read_noise=3.0, n_flats=4, n_darks=4, mu_post=0.05, shell=4.0,
                     n_metal=3, metal_radius=(3.0, 4.0)) -> TxmXanes:
    """Simulate a TXM-XANES tomography scan (see the module docstring).

    n, n_rows : slice width and number of detector rows (voxels = pixels)
    energies_eV : default ``DEFAULT_ENERGIES``; angles_deg : default 0..180 in 2 degree steps
    center_offset : rotation axis column minus ``(n - 1) / 2`` (pixels)
    photons : flat-field counts per pixel; gain_spread : per-pixel gain the flats record;
    ring_error : std of the per-pixel gain error the flats miss (rings); beam_drift : relative
    std of the per-projection beam intensity; zinger_rate : fraction of pixels hit (x3-x8);
    mu_post : attenuation per voxel of unit density one edge step above the edge
    shell, n_metal, metal_radius : of ``reduced_particle`` (reduced-layer depth, number and
    radius range (voxels) of the Ni particles in the oxide core)
    """
    if n < 32 or n_rows < 1:
        raise InputError(f"need n >= 32 and n_rows >= 1, got {n}, {n_rows}")
    rng = np.random.default_rng(seed + 1000)
    energies = np.asarray(DEFAULT_ENERGIES if energies_eV is None else energies_eV, np.float64)
    angles = np.arange(0.0, 180.0 + 1e-9, 2.0) if angles_deg is None else np.asarray(angles_deg, np.float64)
    frac, amount, particle, metal, placed = reduced_particle(n, n_rows, seed, shell=shell, n_metal=n_metal,
                                                         metal_radius=metal_radius)
    refs = nickel_references(energies)
    vol_ni = (amount * frac).astype(np.float32)
    vol_ox = (amount * (1 - frac)).astype(np.float32)
    p_ni, truth = tilt_series(vol_ni, angles, center_offset=center_offset)
    p_ox, _ = tilt_series(vol_ox, angles, center_offset=center_offset)
    p_ni, p_ox = np.asarray(p_ni, np.float64), np.asarray(p_ox, np.float64)

    gain = np.clip(1.0 + gain_spread * rng.normal(size=(n_rows, n)), 0.3, None)
    ring = 1.0 + ring_error * rng.normal(size=(n_rows, n))
    n_e, n_a = energies.size, angles.size
    data = np.empty((n_e, n_a, n_rows, n), np.float32)
    flats = np.empty((n_e, n_flats, n_rows, n), np.float32)
    dark_frame = dark_level + rng.normal(0, 2.0, (n_rows, n))
    darks = (dark_frame[None] + rng.normal(0, read_noise, (n_darks, n_rows, n))).astype(np.float32)
    for k in range(n_e):
        att = mu_post * (refs["Ni"][k] * p_ni + refs["NiO"][k] * p_ox)
        e_level = 1.0 + 0.1 * np.cos(k)  # the source spectrum: each energy has its own flux
        beam = e_level * (1.0 + beam_drift * rng.normal(size=n_a))[:, None, None]
        expected = photons * beam * gain * ring * np.exp(-att)
        counts = rng.poisson(expected).astype(np.float64)
        hits = rng.random(counts.shape) < zinger_rate
        counts[hits] *= rng.uniform(3, 8, int(hits.sum()))
        data[k] = counts + dark_frame + rng.normal(0, read_noise, counts.shape)
        fbeam = e_level * (1.0 + beam_drift * rng.normal(size=n_flats))[:, None, None]
        flats[k] = rng.poisson(photons * fbeam * gain) + dark_frame + rng.normal(0, read_noise, (n_flats, n_rows, n))
    return TxmXanes(data, flats, darks, angles, energies, refs, frac.astype(np.float32), amount.astype(np.float32),
                    particle, metal, float(truth["center"]),
                    meta={"seed": seed, "mu_post": mu_post, "metal_particles": placed, "photons": photons})
