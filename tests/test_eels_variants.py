"""EELS white-line maps across generated variants (issue 13: the same numbers on data not tuned
for): dose, dispersion, plural scattering with and without a low loss, energy drift, Ni2+/Ni0
maps, other L2,3 edges; and hand-made analytic spectra for the ratio, onset and deconvolution."""
from math import factorial

import numpy as np
import pytest

from tomostrain.spectral import fourier_ratio_deconvolve, white_line_maps, zero_loss_centre
from tomostrain.synthetic.eels import VARIANTS, eels_variant, random_variant


def _errors(name, seed, scan=(16, 16), **over):
    params = {**VARIANTS[name], **over}
    use_low = params.get("use_low_loss", False)
    s, e, tr = eels_variant(params, scan, seed=seed)
    kw = dict(low_loss=tr["low_loss"], low_loss_energy_eV=tr["low_loss_energy_eV"],
              deconvolve=params.get("deconvolve", False)) if use_low else {}
    m = white_line_maps(s, e, params.get("edge", "Ni-L23"), **kw)
    onset = m.l3_onset_eV - tr["l3_onset_eV"] - (0.0 if use_low else tr["drift_eV"])  # nominal axis without a zero loss
    return np.sqrt(np.mean((m.l3_l2 - tr["l3_l2"]) ** 2)), np.sqrt(np.mean(onset ** 2))


@pytest.mark.parametrize("name,seed", [("low_dose", 3), ("coarse_dispersion", 4), ("drift_no_lowloss", 5),
                                       ("core_shell", 6), ("islands", 7), ("Co", 8), ("Mn", 9), ("Cu", 10),
                                       ("pseudo_voigt", 11)])
def test_variants_ratio_and_onset(name, seed):
    ratio_rmse, onset_rmse = _errors(name, seed)
    assert ratio_rmse <= 0.08, ratio_rmse
    assert onset_rmse <= 0.15, onset_rmse


def test_plural_scattering_with_and_without_the_low_loss():
    """t/lambda 0.2-1.2: the L3 plasmon replica lies under L2. Fourier-ratio deconvolution with
    the low loss brings the ratio back; without a low loss the core-loss plural fit (default
    ``plural="auto"``) does; with it switched off the ratio is off by ~1 (the test fails if the
    correction does nothing)."""
    with_ll, onset = _errors("thick_plural_lowloss", 12, counts=1e5)
    fitted, onset_fit = _errors("thick_plural_no_lowloss", 12, counts=1e5)
    params = {**VARIANTS["thick_plural_no_lowloss"], "counts": 1e5}
    s, e, tr = eels_variant(params, (16, 16), seed=12)
    off = white_line_maps(s, e, "Ni-L23", plural=None)
    assert with_ll <= 0.08 and onset <= 0.15
    assert fitted <= 0.08 and onset_fit <= 0.15
    assert np.sqrt(np.mean((off.l3_l2 - tr["l3_l2"]) ** 2)) > 0.5 and off.thickness is None


@pytest.mark.parametrize("name,seed", [("plural_thin_no_lowloss", 21), ("plural_medium_no_lowloss", 22),
                                       ("plural_thick_no_lowloss", 23)])
def test_plural_from_the_core_loss_alone(name, seed):
    """No low loss, t/lambda 0.1-0.4 / 0.4-0.8 / 0.8-1.5, 1e4 counts: t/lambda per position and
    the plasmon (22 eV, FWHM 7) are fitted from the core loss, the edge deconvolved."""
    ratio_rmse, onset_rmse = _errors(name, seed)
    s, e, tr = eels_variant(name, (16, 16), seed=seed)
    m = white_line_maps(s, e, "Ni-L23")
    assert ratio_rmse <= 0.08 and onset_rmse <= 0.15, (ratio_rmse, onset_rmse)
    assert m.thickness_source == "core_loss" and np.sqrt(np.mean((m.thickness - tr["thickness"]) ** 2)) < 0.03
    assert abs(m.plasmon_eV - 22.0) <= 0.5 and abs(m.plasmon_fwhm_eV - 7.0) <= 1.0


def test_plural_fit_leaves_single_scattering_alone():
    """A single-scattering core loss: the fitted t/lambda is ~0 and the maps are those without it."""
    s, e, tr = eels_variant("default", (16, 16), seed=3)
    m = white_line_maps(s, e, "Ni-L23")
    off = white_line_maps(s, e, "Ni-L23", plural=None)
    assert float(np.mean(m.thickness)) < 0.02
    assert np.abs(m.l3_l2 - off.l3_l2).max() < 0.02


@pytest.mark.xfail(strict=True, reason="dose- and plasmon-width-limited: t/lambda 0.2-1.2 at 3000 counts, no low loss, seed 1: "
                   "L3/L2 RMSE 0.097 (seed 2: 0.216, fitted plasmon FWHM 6.8 for 7.0; the measured-low-loss Fourier "
                   "ratio: 0.108 / 0.121)")
def test_plural_no_lowloss_default_dose():
    ratio_rmse, onset_rmse = _errors("thick_plural_no_lowloss", 1)
    assert ratio_rmse <= 0.08 and onset_rmse <= 0.15


def test_poisson_plural_deconvolve_inverts_the_kernel():
    """J = S * exp(t (P - 1)) built order by order (Gaussian plasmons, t/lambda 0.5 and 1.3):
    the model-kernel deconvolution gives S back."""
    from tomostrain.spectral import poisson_plural_deconvolve

    de = 0.2
    x = np.arange(0, 700) * de
    s = np.exp(-0.5 * ((x - 40) / 1.0) ** 2) + 0.3 * (0.5 + np.arctan((x - 40) / 0.5) / np.pi) * (x > 20)
    lags = np.arange(0, 700) * de
    out = []
    for t in (0.5, 1.3):
        kern = np.zeros(lags.size)
        kern[0] = np.exp(-t)
        for m in range(1, 12):           # orders of scattering
            g = np.exp(-0.5 * ((lags - 22.0 * m) / (3.0 * np.sqrt(m))) ** 2)
            kern += np.exp(-t) * t ** m / factorial(m) * g / g.sum()
        out.append(np.convolve(s, kern)[: x.size])
    j = np.stack(out)
    rec = poisson_plural_deconvolve(j, np.array([0.5, 1.3]), de, plasmon_eV=22.0, plasmon_fwhm_eV=3.0 * 2.3548)
    assert np.abs(rec - s[None]).max() < 2e-3 * s.max()
    assert np.abs(j - s[None]).max() > 0.2 * s.max()


def test_drift_referenced_to_the_zero_loss():
    """3 eV of drift across the scan: with the low loss the onsets come back in true energy loss."""
    ratio_rmse, onset_rmse = _errors("drift_lowloss", 13, counts=3e4)
    assert ratio_rmse <= 0.08 and onset_rmse <= 0.15


def test_analytic_ratio_onset_and_zero_loss():
    """Hand-made spectra: power law + two Gaussian white lines (areas 3:1, 2.5:1) on a flat 2:1
    double step placed at their centres, no noise. The ratio is the area ratio; with no
    continuum the onset is the half maximum of the Gaussian as measured, after the method's
    0.15 eV smoothing: c - sqrt(sigma^2 + 0.15^2) sqrt(2 ln 2) (0.019 eV below the unsmoothed)."""
    e = np.arange(780.0, 920.0, 0.1)
    sig = 0.7
    c3 = np.array([856.03, 855.51])
    c2 = c3 + 17.3
    ratio = np.array([3.0, 2.5])
    g = lambda c, a: a[:, None] / (np.sqrt(2 * np.pi) * sig) * np.exp(-0.5 * ((e - c[:, None]) / sig) ** 2)  # noqa: E731
    bg = 1e3 * (e / 845.0) ** -3.0
    for h in (0.0, 40.0):
        step = h * (2 / 3 * np.clip((e + 0.05 - c3[:, None]) / 0.1, 0, 1) + 1 / 3 * np.clip((e + 0.05 - c2[:, None]) / 0.1, 0, 1))
        s = (bg + g(c3, 300.0 * ratio / (1 + ratio)) + g(c2, 300.0 / (1 + ratio)) + step)[None]
        m = white_line_maps(s, e, "Ni-L23", denoise=None)
        assert np.allclose(m.l3_l2[0], ratio, rtol=5e-3), m.l3_l2   # steps placed to ~0.02 eV
        if h == 0.0:
            assert np.allclose(m.l3_onset_eV[0], c3 - np.hypot(sig, 0.15) * np.sqrt(2 * np.log(2)), atol=0.004), m.l3_onset_eV
            assert np.allclose(m.l3_peak_eV[0], c3, atol=0.01)
    el = np.arange(-5.0, 60.0, 0.1)
    zl = np.exp(-0.5 * ((el[None] - np.array([[0.37], [-1.22]])) / 0.4) ** 2)
    assert np.allclose(zero_loss_centre(zl * 1e4, el), [0.37, -1.22], atol=1e-6)


def test_fourier_ratio_recovers_a_single_scattering_edge():
    """J = S * K (K = e^-t sum t^m/m! p^{*m}, Gaussian plasmons, t/lambda = 1); the low loss is
    L = Z * K (Z the zero loss, which the core loss already carries in S). Deconvolution gives S."""
    de, t = 0.2, 1.0
    x = np.arange(0, 600) * de
    s = np.exp(-0.5 * ((x - 40) / 1.0) ** 2) + 0.3 * (0.5 + np.arctan((x - 40) / 0.5) / np.pi)
    lags = np.arange(0, 800) * de
    gauss = lambda c, w: np.exp(-0.5 * ((lags - c) / w) ** 2) / w  # noqa: E731
    weights = [np.exp(-t) * t ** m / factorial(m) for m in range(8)]
    kern = np.zeros(lags.size)
    kern[0] = weights[0]
    for m in range(1, 8):           # orders of scattering
        g = gauss(22.0 * m, 3.0 * np.sqrt(m))
        kern += weights[m] * g / g.sum()
    j = np.convolve(s, kern)[: x.size]
    z = gauss(10.0, 0.34)
    low = np.convolve(z / z.sum(), kern)[: lags.size]
    out = fourier_ratio_deconvolve(j[None] * 1e4, low[None] * 1e6, zlp_half_width_ch=6, pad_ch=150)[0] / 1e4
    expect = s
    keep = (x > 5) & (x < 110)
    assert np.abs(out - expect)[keep].max() < 0.01 * s.max()
    assert np.abs(j - expect)[keep].max() > 0.1 * s.max()      # plural scattering was there


def test_batched_score_tv_equals_the_filter():
    """``tv_denoise(stack=True)`` (the PCA score maps' TV in ``pca_denoise``) is
    ``tv_denoise`` image by image, with one weight per image, in float64 (fixed iteration count)."""
    from tomostrain.errors import InputError
    from tomostrain.gpu_core.filters import tv_denoise

    f = np.random.default_rng(0).standard_normal((3, 16, 20)) + 0.3 * np.arange(20)
    w = np.array([0.5, 1.0, 2.0])
    ours = tv_denoise(f, w, stack=True, dtype=np.float64, eps=0.0, max_iter=300)
    ref = np.stack([tv_denoise(x, wi, dtype=np.float64, eps=0.0, max_iter=300) for x, wi in zip(f, w)])
    assert ours.dtype == np.float64 and np.abs(ours - ref).max() < 1e-12
    assert np.abs(ours - f).max() > 0.1 and np.abs(ours[0] - ours[2]).max() > 0.1   # the weights differ
    same = tv_denoise(f, 1.0, stack=True, dtype=np.float64, eps=0.0, max_iter=300)
    assert np.abs(same[1] - ours[1]).max() < 1e-12
    with pytest.raises(InputError):
        tv_denoise(f, [1.0, 2.0], stack=True)


def _assert_goals(params, scan, seed):
    """Issue 13's goals on one drawn variant: L3/L2 RMSE <= 0.08 and onset RMSE <= 0.15 eV
    (the onset against the truth plus the drawn energy drift)."""
    s, e, tr = eels_variant(params, scan, seed=seed)
    m = white_line_maps(s, e, params["edge"])
    assert np.sqrt(np.mean((m.l3_l2 - tr["l3_l2"]) ** 2)) <= 0.08
    assert np.sqrt(np.mean((m.l3_onset_eV - tr["l3_onset_eV"] - tr["drift_eV"]) ** 2)) <= 0.15


@pytest.mark.parametrize("draw", range(4))
def test_random_single_scattering_draws(draw):
    """Random edges, dispersions, doses (2500-1e5 per 0.2 eV), ranges, maps, drift and line
    shapes (``random_variant``, generator seed 5; nothing tuned on them)."""
    rng = np.random.default_rng(5)
    for _ in range(draw + 1):
        params, scan, seed = random_variant(rng)
    _assert_goals(params, scan, seed)


@pytest.mark.parametrize("draw", [pytest.param(2), pytest.param(5),
                                  pytest.param(3, marks=pytest.mark.xfail(strict=True, reason=(
                                      "Cu, plasmon 17.6 eV FWHM 10.9: fitted FWHM 10.0, t/lambda RMSE 0.108, "
                                      "L3/L2 RMSE 0.217 (broad plasmons: width and t/lambda trade off)")))])
def test_random_plural_draws_without_low_loss(draw):
    """Random plural-scattering variants (``random_plural_variant``, generator seed 777, drawn after
    the method was fixed; nothing tuned on them), measured without a low loss."""
    from tomostrain.synthetic.eels import random_plural_variant

    rng = np.random.default_rng(777)
    for _ in range(draw + 1):
        params, scan, seed = random_plural_variant(rng)
    _assert_goals(params, scan, seed)
