"""XANES: NNLS against scipy, edge energies, fractions from simulated TXM-XANES scans, CLI."""
import h5py
import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from tomostrain.cli import main
from tomostrain.errors import InputError
from tomostrain.io.xray import XrayScan, read_reference_spectra, read_xanes, write_xray_scan
from tomostrain.reconstruction.preprocess import XrayOptions, normalize_beam
from tomostrain.spectral.xanes import edge_energy, fit_spectra, nnls, xanes_map_2d, xanes_tomography
from tomostrain.synthetic.tiltseries import tilt_series
from tomostrain.synthetic.txm import k_edge, nickel_references, txm_xanes_series, write_reference_csv


@pytest.mark.parametrize("n_ref", [2, 3, 4, 10])
def test_nnls_equals_scipy(n_ref):
    rng = np.random.default_rng(n_ref)
    a = rng.uniform(0, 1, (14, n_ref))
    truth = rng.uniform(-0.5, 1, (n_ref, 200))  # many points with active constraints
    b = a @ truth + 0.05 * rng.normal(size=(14, 200))
    got = nnls(a, b, iterations=3000)
    want = np.stack([scipy_nnls(a, b[:, i])[0] for i in range(b.shape[1])], 1)
    assert (got >= 0).all()
    tol = 1e-9 if n_ref <= 8 else 2e-3  # exact enumeration; projected gradient beyond 8 references
    np.testing.assert_allclose(got, want, atol=tol)


@pytest.mark.parametrize("edge", [8331.3, 8340.0, 8346.7])
def test_edge_energy_of_an_arctan_step(edge):
    e = np.linspace(8250, 8450, 121)
    mu = k_edge(e, edge, width_eV=1.5, pre_slope=0.0)[:, None] * np.array([0.5, 2.0])  # any amplitude
    got = edge_energy(mu, e, pre=(8250, 8300), post=(8400, 8450))
    np.testing.assert_allclose(got, edge, atol=0.3)


def _refs(s):
    return {k: (s.energies_eV, v) for k, v in s.references.items()}


@pytest.mark.parametrize("seed,offset,photons", [(0, 3.0, 3e4), (1, -2.3, 2e4), (2, 4.6, 3e4)])
def test_xanes_tomography_fractions_from_a_faulty_scan(seed, offset, photons):
    """Noise, rings (gain errors the flats miss), zingers, darks, beam changes, an off-centre
    axis, no centre given: Ni fraction RMSE <= 0.05 in the particle, metal particles >= 0.8
    (the fit per projection pixel, then 12 CGLS iterations per reference)."""
    s = txm_xanes_series(64, 4, seed=seed, center_offset=offset, photons=photons)
    opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
    res, center, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, _refs(s), s.flats, s.darks, opt,
                                      method="cgls", iterations=12, fit="projection")
    assert abs(center - s.center) <= 0.1
    f, m = res.fractions["Ni"], s.particle
    rmse = float(np.sqrt(np.mean((f[m] - s.fraction_ni[m]) ** 2)))
    assert rmse <= 0.05, rmse
    assert s.metal_particles.sum() > 20
    assert float(f[s.metal_particles].mean()) >= 0.8
    np.testing.assert_allclose(res.fractions["Ni"][m] + res.fractions["NiO"][m], 1.0, atol=1e-5)
    dens = res.density[m].mean() / (s.meta["mu_post"] * s.density[m].mean())
    assert abs(dens - 1) < 0.05  # the density is the sum of the amounts, in edge-step units


def test_xanes_map_2d_projected_fractions():
    """No rotation: the per-pixel fit of -log transmission gives the projected Ni fraction."""
    s = txm_xanes_series(48, 3, seed=4, photons=1e5)
    frac_vol = s.fraction_ni * s.density
    offset = s.center - (48 - 1) / 2
    p_ni, _ = tilt_series(frac_vol.astype(np.float32), np.array([0.0]), center_offset=offset)
    p_all, _ = tilt_series(s.density.astype(np.float32), np.array([0.0]), center_offset=offset)
    t = (s.data[:, 0] - s.darks.mean(0)) / (s.flats.mean(1) - s.darks.mean(0))
    t = normalize_beam(t, 3)  # each energy's frame has its own beam factor: its air columns fix it
    res = xanes_map_2d(t, s.energies_eV, _refs(s))
    thick = p_all[0] > 0.5 * p_all.max()
    truth = p_ni[0][thick] / p_all[0][thick]
    assert np.sqrt(np.mean((res.fractions["Ni"][thick] - truth) ** 2)) < 0.08


def test_fit_rejects_references_that_do_not_cover_the_data():
    e = np.linspace(8300, 8400, 10)
    refs = {"a": (np.linspace(8320, 8400, 5), np.ones(5)), "b": (e, e / 8000)}
    with pytest.raises(InputError):
        fit_spectra(np.ones((10, 3)), e, refs)


def test_cli_xanes_writes_fractions_and_reads_per_energy_files(tmp_path):
    s = txm_xanes_series(48, 2, seed=5, center_offset=-1.5, energies_eV=np.array(
        [8300, 8325, 8331, 8335, 8339, 8343, 8347, 8351, 8360, 8380, 8400.0]), angles_deg=np.arange(0, 180.1, 3.0))
    one = tmp_path / "xanes.h5"
    write_xray_scan(XrayScan(s.data, s.angles_deg, s.flats, s.darks, energies_eV=s.energies_eV), one)
    per = []
    for k, e in enumerate(s.energies_eV):
        p = tmp_path / f"e{k}.h5"
        write_xray_scan(XrayScan(s.data[k], s.angles_deg, s.flats[k], s.darks, energies_eV=np.array([e])), p)
        per.append(p)
    both = read_xanes(per)
    np.testing.assert_array_equal(both.data, read_xanes(one).data)
    refs = []
    for name, mu in s.references.items():
        write_reference_csv(tmp_path / f"{name}.csv", s.energies_eV, mu)
        refs.append(str(tmp_path / f"{name}.csv"))
    assert set(read_reference_spectra(refs)) == {"Ni", "NiO"}
    out = tmp_path / "out.h5"
    assert main(["xanes", str(one), "-o", str(out), "--references", ",".join(refs), "--backend", "cpu",
                 "--method", "fbp"]) == 0
    with h5py.File(out) as h5:
        g = h5["xanes"]
        assert set(g["fractions"]) == {"Ni", "NiO"}
        assert g["density"].shape == (2, 48, 48) and g["edge_energy_eV"].shape == (2, 48, 48)
        assert abs(g.attrs["center"] - s.center) <= 0.3
        f = g["fractions/Ni"][()]
        inside = s.particle
        assert np.sqrt(np.mean((f[inside] - s.fraction_ni[inside]) ** 2)) < 0.12  # FBP, 61 angles, 48 px
        edge = g["edge_energy_eV"][()][inside]
        core = inside & (s.fraction_ni < 0.01)
        shell = inside & (s.fraction_ni > 0.99)
        assert np.nanmedian(g["edge_energy_eV"][()][core]) > np.nanmedian(g["edge_energy_eV"][()][shell]) + 3
        assert np.isfinite(edge).mean() > 0.9
    assert main(["xanes", str(one), "-o", str(tmp_path / "bad.h5"), "--references", refs[0] + ",missing.csv"]) == 2


def test_nickel_references_shift_the_oxide_edge():
    e = np.linspace(8280, 8420, 141)
    r = nickel_references(e)
    got = edge_energy(np.stack([r["Ni"], r["NiO"]], 1), e)
    assert got[1] - got[0] > 4


def test_tomo_cli_xray_options_and_job_file(tmp_path):
    """`tomostrain tomo` on a raw scan with flats before and after, zingers, rings, beam changes
    and an off-centre axis: --center auto finds the axis; the [xanes] job section runs too."""
    s = txm_xanes_series(48, 2, seed=6, center_offset=2.7, angles_deg=np.arange(0, 180.1, 3.0))
    k = s.energies_eV.size - 1
    drift = np.linspace(1.0, 1.1, s.angles_deg.size)[:, None, None]  # the beam drifts up 10 % during the scan
    dark = s.darks.mean(0)
    raw = (s.data[k] - dark) * drift + dark
    after = (s.flats[k] - dark) * 1.1 + dark
    write_xray_scan(XrayScan(raw, s.angles_deg, s.flats[k], s.darks, flats_after=after), tmp_path / "scan.h5")
    out = tmp_path / "tomo.h5"
    assert main(["tomo", str(tmp_path / "scan.h5"), "-o", str(out), "--center", "auto", "--zingers", "--rings", "sort",
                 "--backend", "cpu"]) == 0
    with h5py.File(out) as h5:
        assert abs(h5["tomo"].attrs["center"] - s.center) <= 0.3
        vol = h5["tomo/volume"][()]
    mu = s.meta["mu_post"] * (s.fraction_ni * s.references["Ni"][k] + (1 - s.fraction_ni) * s.references["NiO"][k]) * s.density
    inside = s.particle
    assert abs(vol[inside].mean() / mu[inside].mean() - 1) < 0.03  # the interpolated flats keep the level
    write_xray_scan(XrayScan(s.data, s.angles_deg, s.flats, s.darks, energies_eV=s.energies_eV), tmp_path / "x.h5")
    for name, m in s.references.items():
        write_reference_csv(tmp_path / f"{name}.csv", s.energies_eV, m)
    (tmp_path / "job.toml").write_text('[job]\noutput = "job.h5"\nbackend = "cpu"\n[xanes]\ninput = "x.h5"\n'
                                       'references = ["Ni.csv", "NiO.csv"]\nmethod = "fbp"\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    with h5py.File(tmp_path / "job.h5") as h5:
        assert abs(h5["xanes"].attrs["center"] - s.center) <= 0.3
        assert "selected" in h5["xanes"]


def test_attenuation_variance_matches_the_spread_of_repeated_scans():
    """Photon transfer: counts = g * Poisson(photons) + read noise; the variance of -log T
    predicted from one scan (gain from the flats, read noise from the darks) equals the spread
    over repeated scans, for a detector with 2.5 counts per photon."""
    from tomostrain.reconstruction.preprocess import flat_dark_correct
    from tomostrain.spectral.xanes import attenuation_variance

    rng = np.random.default_rng(3)
    g, photons, dark, read = 2.5, 4e3, 100.0, 4.0
    trans = np.linspace(0.05, 1.0, 40)[None, None, :] * np.ones((1, 3, 1))
    beam = np.array([1.0, 1.05, 0.97, 1.02])[:, None, None]  # flats at different beam levels

    def scan():
        raw = g * rng.poisson(photons * np.broadcast_to(trans, (200, 3, 40))) + dark + rng.normal(0, read, (200, 3, 40))
        flats = g * rng.poisson(photons * beam * np.ones((4, 3, 40))) + dark + rng.normal(0, read, (4, 3, 40))
        darks = dark + rng.normal(0, read, (6, 3, 40))
        return raw, flats, darks

    raw, flats, darks = scan()
    predicted = attenuation_variance(raw, flats, darks).mean(axis=0)
    atts = np.stack([-np.log(flat_dark_correct(*scan())) for _ in range(6)])  # (6 scans, 200, 3, 40)
    measured = atts.var(axis=(0, 1), ddof=1)  # over scans and angles: photon noise and flat noise
    np.testing.assert_allclose(predicted, measured, rtol=0.25)
    ratio = np.median(predicted / measured)
    assert 0.85 < ratio < 1.15, ratio


@pytest.mark.parametrize("n,photons,seed,offset,metal", [(64, 3e4, 0, 3.0, (3.0, 4.0)), (64, 5e4, 7, 4.5, (2.5, 3.0)),
                                                         (96, 3e4, 6, 0.5, (3.0, 4.0))])
def test_xanes_discrepancy_stop_over_variants(n, photons, seed, offset, metal):
    """No iteration count given: CGLS stops per slice and reference where the residual reaches
    the photon noise of the projected amounts. Fractions RMSE <= 0.05 and metal particles
    >= 0.8 on variants (sizes, photons, metal particle radii, axis offsets); a 10x dimmer copy
    of the same scan stops earlier (the data, not a tuned count, set the regularisation)."""
    s = txm_xanes_series(n, 4, seed=seed, center_offset=offset, photons=photons, metal_radius=metal)
    opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
    res, center, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, _refs(s), s.flats, s.darks, opt,
                                      method="cgls", fit="projection")
    assert abs(center - s.center) <= 0.3
    f, m = res.fractions["Ni"], s.particle
    rmse = float(np.sqrt(np.mean((f[m] - s.fraction_ni[m]) ** 2)))
    assert rmse <= 0.05, rmse
    assert float(f[s.metal_particles].mean()) >= 0.8
    its = res.meta["iterations"]
    assert set(its) == {"Ni", "NiO"} and all(1 <= k < 30 for v in its.values() for k in v), its
    if seed == 0:
        dim = txm_xanes_series(n, 4, seed=seed, center_offset=offset, photons=photons / 10, metal_radius=metal)
        res_dim, _, _ = xanes_tomography(dim.data, dim.angles_deg, dim.energies_eV, _refs(dim), dim.flats, dim.darks,
                                         opt, method="cgls", fit="projection")
        for name in its:
            assert np.mean(res_dim.meta["iterations"][name]) < np.mean(its[name]) - 2


def test_discrepancy_cgls_stops_near_the_best_iteration():
    """A noisy parallel-beam slice with known noise: the stop lands where the residual first
    reaches the noise (not earlier, not later) and its error is within 15 % of the best
    iterate's error; without noise information (tau -> 0) it runs to the cap."""
    from tomostrain.reconstruction.iterative import cgls
    from tomostrain.spectral.xanes import discrepancy_cgls
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_image, ellipse_sinogram

    n = 64
    ell = SHEPP_LOGAN.copy()
    ell[:, 1:5] *= n / 2 * 0.8
    angles = np.linspace(0, 180, 91)[:-1]
    truth = ellipse_image(ell, n)
    clean = ellipse_sinogram(ell, angles, n)[:, None, :]
    rng = np.random.default_rng(5)
    sigma = 0.05 * clean.max()
    b = (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32)
    var = np.full(b.shape, sigma ** 2, np.float32)
    x, its = discrepancy_cgls(b, var, angles)
    errors, residuals = [], []
    cgls(b, angles, iterations=40, callback=lambda it, v, r: (errors.append(np.sqrt(np.mean((v[0] - truth) ** 2))),
                                                               residuals.append(r)))
    k = int(its[0])
    assert residuals[k - 1] ** 2 <= var.sum() < residuals[k - 2] ** 2  # the first iterate at the noise level
    err = np.sqrt(np.mean((x[0] - truth) ** 2))
    assert err <= 1.15 * min(errors), (k, err, min(errors), int(np.argmin(errors)) + 1)
    _, capped = discrepancy_cgls(b, var, angles, tau=1e-3, max_iterations=25)
    assert int(capped[0]) == 25


def test_sure_cgls_picks_the_iterate_of_least_predictive_risk():
    """Monte-Carlo SURE tracks the true predictive risk ||A x_k - A x_true||^2 (known here: the
    exact noise-free sinogram): the iterate it keeps has a true risk within 10 % of the best
    of the first 30 iterates."""
    from tomostrain.reconstruction.iterative import cgls
    from tomostrain.spectral.xanes import sure_cgls
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_sinogram

    n = 64
    ell = SHEPP_LOGAN.copy()
    ell[:, 1:5] *= n / 2 * 0.8
    angles = np.linspace(0, 180, 91)[:-1]
    clean = np.repeat(ellipse_sinogram(ell, angles, n)[:, None, :], 3, axis=1)
    rng = np.random.default_rng(6)
    sd = 0.03 * clean.max() * (0.5 + rng.random(clean.shape))  # heteroscedastic, known
    b = (clean + sd * rng.normal(size=clean.shape)).astype(np.float32)
    x, its = sure_cgls(b, sd ** 2, angles, max_iterations=30)
    assert len(set(int(k) for k in its)) == 1  # one choice for the volume (risk summed over slices)
    from tomostrain.reconstruction.geometry import TiltGeometry
    from tomostrain.reconstruction.iterative import Operator

    op = Operator(TiltGeometry(angles, 3, n), n, np)
    risks = []
    cgls(b, angles, iterations=30, callback=lambda it, v, r: risks.append(float(((op.forward(v) - clean) ** 2).sum())))
    kept = float(((op.forward(x) - clean) ** 2).sum())
    assert kept <= 1.1 * min(risks), (int(its[0]), kept, min(risks), int(np.argmin(risks)) + 1)
    assert abs(int(its[0]) - (int(np.argmin(risks)) + 1)) <= 4


@pytest.mark.parametrize("n,photons,seed,offset,metal,extra", [
    (96, 2e4, 8, -5.5, (4.0, 6.0), {}),  # Vo was 0.25 px off: 0.064 with the per-pixel fit and 12 iterations
    (96, 1e4, 3, 2.5, (3.0, 4.0), {}),  # photon-starved white line: 0.052 with the per-pixel fit
    (64, 7e3, 33, 3.6, (3.0, 4.0), {"angles_deg": np.linspace(0, 180, 90, endpoint=False), "n_metal": 4}),
    (72, 3e4, 42, -1.1, (3.0, 4.0), {"ring_error": 0.03}),  # 3x the rings: per-pixel fit 0.062
])
def test_xanes_joint_default_over_variants(n, photons, seed, offset, metal, extra):
    """The default (``fit="joint"``, centre found and refined): fractions RMSE <= 0.05 in the
    particle and metal particles >= 0.8 on variants where the per-pixel fit + CGLS failed,
    and on one unseen in tuning (fewer photons, no 180-degree view, four metal particles)."""
    s = txm_xanes_series(n, 4, seed=seed, center_offset=offset, photons=photons, metal_radius=metal, **extra)
    opt = XrayOptions(zingers=0.5, beam_background=4, center="auto")
    res, center, _ = xanes_tomography(s.data, s.angles_deg, s.energies_eV, _refs(s), s.flats, s.darks, opt)
    assert abs(center - s.center) <= 0.1
    f, m = res.fractions["Ni"], s.particle
    rmse = float(np.sqrt(np.mean((f[m] - s.fraction_ni[m]) ** 2)))
    assert rmse <= 0.05, rmse
    assert s.metal_particles.sum() > 20 and float(f[s.metal_particles].mean()) >= 0.8
    np.testing.assert_allclose(res.fractions["Ni"][m] + res.fractions["NiO"][m], 1.0, atol=1e-5)
    dens = res.density[m].mean() / (s.meta["mu_post"] * s.density[m].mean())
    assert abs(dens - 1) < 0.05


def test_refine_center_beats_the_quarter_pixel_search():
    """Vo's search works in 0.25-px steps; the CGLS-residual refinement lands within 0.08 px."""
    from tomostrain.reconstruction.preprocess import find_center, refine_center

    vol = np.zeros((2, 80, 80), np.float32)
    yy, xx = np.mgrid[:80, :80] - 39.5
    vol[:] = ((yy - 6) ** 2 + (xx + 4) ** 2 < 24 ** 2) * 0.04 + ((yy + 10) ** 2 + (xx - 9) ** 2 < 7 ** 2) * 0.05
    angles = np.arange(0.0, 180.0, 2.0)
    rng = np.random.default_rng(2)
    for offset in (-3.37, 1.62):
        proj, truth = tilt_series(vol, angles, center_offset=offset)
        proj = np.asarray(proj) + rng.normal(0, 0.01, np.shape(proj)).astype(np.float32)
        vo = find_center(proj, angles)
        got = refine_center(proj, angles, vo)
        assert abs(got - truth["center"]) <= 0.08, (vo - truth["center"], got - truth["center"])


def test_weighted_unmix_and_simplex_projection():
    """Per-ray weighted least squares equals NumPy's on each ray; the simplex projection equals
    the nearest point of a fine grid on the 3-simplex."""
    from tomostrain.spectral.xanes import project_simplex, weighted_unmix

    rng = np.random.default_rng(4)
    a = rng.uniform(0, 1, (9, 3))
    y = rng.normal(size=(9, 5, 4))
    w = rng.uniform(0.1, 3, (9, 5, 4))
    b, m = weighted_unmix(a, y, w)
    for p in np.ndindex(5, 4):
        sw = np.sqrt(w[(slice(None),) + p])
        want = np.linalg.lstsq(a * sw[:, None], y[(slice(None),) + p] * sw, rcond=None)[0]
        np.testing.assert_allclose(b[(slice(None),) + p], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m[(slice(None), slice(None)) + p], a.T @ (a * w[(slice(None),) + p][:, None]),
                                   rtol=1e-5)
    pts = rng.normal(0.3, 0.8, (3, 50))
    got = project_simplex(pts)
    g = np.linspace(0, 1, 201)
    grid = np.array([(u, v, 1 - u - v) for u in g for v in g if u + v <= 1 + 1e-12]).T
    best = grid[:, np.argmin(((grid[:, :, None] - pts[:, None]) ** 2).sum(0), axis=0)]
    np.testing.assert_allclose(got, best, atol=0.01)
    np.testing.assert_allclose(got.sum(0), 1, atol=1e-6)
    two = project_simplex(pts[:2])
    np.testing.assert_allclose(two, project_simplex(np.concatenate([pts[:2], np.full((1, 50), -50.0)]))[:2], atol=1e-6)


def test_spectral_ring_offsets_recover_flat_per_pixel_offsets():
    """Offsets flat across energies and constant over angles come back (within 10 % of their
    spread); without them the estimate is noise-sized, so the object is left alone."""
    from tomostrain.spectral.xanes import spectral_ring_offsets

    rng = np.random.default_rng(8)
    e = np.linspace(8300, 8400, 15)
    refs = nickel_references(e)
    a = np.stack([refs["Ni"], refs["NiO"]], 1)
    amounts = rng.uniform(0, 3, (2, 60, 3, 40))
    clean = np.tensordot(a, amounts, axes=(1, 0))
    ring = rng.normal(0, 0.02, (3, 40))
    sigma = 0.01
    noise = sigma * rng.normal(size=clean.shape)
    w = np.full(clean.shape, 1 / sigma ** 2)
    _, got = spectral_ring_offsets(a, (clean + ring + noise).astype(np.float32), w)
    assert np.sqrt(np.mean((got - ring) ** 2)) < 0.1 * ring.std()
    _, none = spectral_ring_offsets(a, (clean + noise).astype(np.float32), w)
    assert np.sqrt(np.mean(none ** 2)) < 0.1 * ring.std() and np.abs(none).max() < 0.2 * ring.std()
    assert spectral_ring_offsets(a[:3], clean[:3], w[:3])[1] is None  # 3 energies: no flat part is left to see
