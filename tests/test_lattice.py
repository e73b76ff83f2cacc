"""Indexing and per-position lattice fits on hand-made peak lists with a known lattice."""
import numpy as np
import pytest

from tomostrain.errors import CalibrationError, InputError
from tomostrain.strain.calibrate import correct_ellipse
from tomostrain.strain.disks import BraggPeaks
from tomostrain.strain.lattice import (bragg_vector_map, central_beam, choose_lattice_vectors, fit_lattice,
                                       index_peaks)

G1 = np.array([-30.0, 4.0])     # detector pixels (y, x)
G2 = np.array([5.0, 31.0])
HK = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1)]


def make_peaks(origins, g1s, g2s, rng=None, noise=0.0, hk=HK):
    """BraggPeaks of lattices per position (flat lists of origin, g1, g2); central beam brightest."""
    qy, qx, inten, counts = [], [], [], []
    hk = sorted(hk, key=lambda t: (t != (0, 0), -abs(t[0] + 2 * t[1])))   # strongest first, as detected
    for o, a, b in zip(origins, g1s, g2s):
        for h, k in hk:
            q = o + h * a + k * b + (rng.normal(0, noise, 2) if noise else 0.0)
            qy.append(q[0])
            qx.append(q[1])
            inten.append(10.0 if (h, k) == (0, 0) else 1.0 + 0.1 * abs(h + 2 * k))
        counts.append(len(hk))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = len(origins)
    side = int(np.sqrt(n))
    shape = (side, n // side)
    return BraggPeaks(np.array(qy, np.float32), np.array(qx, np.float32), np.array(inten, np.float32), offsets, shape)


def test_index_peaks_rounds_in_the_lattice_basis():
    peaks = make_peaks([np.array([64.0, 64.0])], [G1], [G2], hk=[(0, 0), (2, -1), (-1, 3)])
    last = int(np.argmin(np.abs(peaks.qx - (64 - 1 * 4 + 3 * 31))))   # the (-1, 3) peak
    peaks.qy[last] += 0.4 * 30          # moved 0.4 of a spacing off its site
    h, k, ok = index_peaks(peaks, np.array([64.0, 64.0]), G1, G2, tol=0.25)
    np.testing.assert_array_equal(np.sort(h[ok]), [0, 2])
    np.testing.assert_array_equal(np.sort(k[ok]), [-1, 0])
    assert ok.sum() == 2 and not ok[last]


def test_fit_lattice_recovers_a_different_lattice_at_every_position(rng):
    n = 12
    origins = 64 + rng.normal(0, 2, (n, 2))
    F = np.eye(2)[None] + rng.normal(0, 0.02, (n, 2, 2))   # 2 % strain / rotation
    g1s, g2s = F @ G1, F @ G2
    peaks = make_peaks(origins, g1s, g2s)
    fit = fit_lattice(peaks, np.array([64.0, 64.0]), G1, G2)
    np.testing.assert_allclose(fit.g1.reshape(n, 2), g1s, atol=1e-4)
    np.testing.assert_allclose(fit.g2.reshape(n, 2), g2s, atol=1e-4)
    np.testing.assert_allclose(fit.origin_fit.reshape(n, 2), origins, atol=1e-4)
    np.testing.assert_array_equal(fit.n_peaks, len(HK))
    assert np.nanmax(fit.residual) < 1e-4


def test_fit_lattice_noise_weights_and_too_few_peaks(rng):
    n = 16
    origins = np.tile([60.0, 66.0], (n, 1))
    peaks = make_peaks(origins, [G1] * n, [G2] * n, rng=rng, noise=0.05)
    fit = fit_lattice(peaks, None, G1, G2, weights=None)        # origin from the central beam
    err = np.concatenate([fit.g1.reshape(n, 2) - G1, fit.g2.reshape(n, 2) - G2])
    assert np.sqrt(np.mean(err ** 2)) < 0.05
    np.testing.assert_allclose(np.nanmean(fit.residual), 0.05 * np.sqrt(2 * 5 / 8), rtol=0.35)  # 8 peaks, 3 unknowns per axis
    sparse = make_peaks(origins[:4], [G1] * 4, [G2] * 4, hk=[(0, 0), (1, 0), (2, 0), (0, 1)])
    assert np.isfinite(fit_lattice(sparse, None, G1, G2).g1).all()
    too_few = fit_lattice(sparse, None, G1, G2, min_peaks=5)
    assert np.isnan(too_few.g1).all() and np.isnan(too_few.residual).all()
    collinear = make_peaks(origins[:4], [G1] * 4, [G2] * 4, hk=[(0, 0), (1, 0), (2, 0), (-1, 0)])
    assert np.isnan(fit_lattice(collinear, None, G1, G2).g1).all()
    with pytest.raises(InputError, match="weights"):
        fit_lattice(sparse, None, G1, G2, weights=np.ones(3))
    with pytest.raises(InputError, match="min_peaks"):
        fit_lattice(sparse, None, G1, G2, min_peaks=2)


def test_ellipse_correction_and_units():
    ratio, angle, qpix = 1.02, 30.0, 0.0125
    a = np.radians(angle)
    u = np.array([np.sin(a), np.cos(a)])
    E = np.eye(2) + (ratio - 1) * np.outer(u, u)     # undistorted -> detector (calibrate's model)
    true1, true2 = np.array([0.0, 0.4]), np.array([0.4, 0.0])   # 1/Å
    det1, det2 = E @ true1 / qpix, E @ true2 / qpix
    peaks = make_peaks([np.array([64.0, 64.0])] * 4, [det1] * 4, [det2] * 4)
    fit = fit_lattice(peaks, np.array([64.0, 64.0]), det1, det2, ellipse=(ratio, angle), q_pixel_size=qpix)
    np.testing.assert_allclose(fit.g1.reshape(-1, 2), np.tile(true1, (4, 1)), atol=1e-5)
    np.testing.assert_allclose(fit.g2.reshape(-1, 2), np.tile(true2, (4, 1)), atol=1e-5)
    np.testing.assert_allclose(np.stack(correct_ellipse(*det1, ratio, angle)) * qpix, true1, atol=1e-12)


def test_choose_lattice_vectors_from_the_bragg_vector_map(rng):
    n = 16
    origins = 64 + rng.normal(0, 1.5, (n, 2))
    hk = [(h, k) for h in range(-2, 3) for k in range(-2, 3)]
    peaks = make_peaks(origins, [G1] * n, [G2] * n, rng=rng, noise=0.03, hk=hk)
    g1, g2 = choose_lattice_vectors(peaks, origins.reshape(4, 4, 2))
    # shortest vector is ±G1 (30.3 px) and the other must make g1_y g2_x - g1_x g2_y > 0
    assert min(np.linalg.norm(g1 - G1), np.linalg.norm(g1 + G1)) < 0.05
    assert min(np.linalg.norm(g2 - G2), np.linalg.norm(g2 + G2)) < 0.05
    assert g1[0] * g2[1] - g1[1] * g2[0] > 0
    bvm = bragg_vector_map(peaks, origins.reshape(4, 4, 2), shape=(181, 181))
    assert np.unravel_index(np.argmax(bvm), bvm.shape) == (90, 90)      # central beam at the middle
    np.testing.assert_allclose(bvm.sum(), peaks.intensity.sum(), rtol=1e-6)
    np.testing.assert_allclose(central_beam(peaks).reshape(n, 2), origins, atol=0.15)  # noisy central peak
    lonely = make_peaks(origins, [G1] * n, [G2] * n, hk=[(0, 0), (1, 0), (-1, 0)])
    with pytest.raises(CalibrationError, match="one line"):
        choose_lattice_vectors(lonely, None)


def test_no_peaks_and_an_empty_region_give_nan_maps_or_a_clear_error(rng):
    """A scan with no peaks fits to NaN everywhere (on the GPU too: the sums tolerate empty
    tables); a reference region with no indexed spots raises instead of returning NaN vectors."""
    empty = np.zeros(0, np.float32)
    none = BraggPeaks(empty, empty, empty, np.zeros(5, np.int64), (2, 2))
    fit = fit_lattice(none, np.zeros((2, 2, 2)), G1, G2)
    assert np.isnan(fit.g1).all() and np.isnan(fit.g2).all()
    assert (fit.n_peaks == 0).all()
    n = 16
    origins = 64 + rng.normal(0, 0.5, (n, 2))
    peaks = make_peaks(origins, [G1] * n, [G2] * n, hk=[(h, k) for h in range(-2, 3) for k in range(-2, 3)])
    with pytest.raises(CalibrationError, match="Bragg"):
        choose_lattice_vectors(peaks, origins.reshape(4, 4, 2), mask=np.zeros((4, 4), bool))
