"""Strain read-out conventions of DESIGN.md §3, pinned on hand-made lattices."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.strain.strainmap import strain_map

G0 = 0.5  # 1/Å


def _maps(g1, g2, shape=(2, 3)):
    return np.broadcast_to(g1, shape + (2,)).copy(), np.broadcast_to(g2, shape + (2,)).copy()


G_REF = np.array([[G0, 0.0], [0.0, G0]])  # g1 along y, g2 along x


def test_pure_exx_one_percent():
    # tensile 1 % along x: the x spot moves inwards, g_x -> g_x / 1.01
    g1, g2 = _maps([G0, 0.0], [0.0, G0 / 1.01])
    sm = strain_map(g1, g2, G_REF)
    np.testing.assert_allclose(sm.exx, 0.01, atol=1e-12)
    np.testing.assert_allclose(sm.eyy, 0.0, atol=1e-12)
    np.testing.assert_allclose(sm.exy, 0.0, atol=1e-12)
    np.testing.assert_allclose(sm.theta, 0.0, atol=1e-12)


def test_pure_eyy_compressive():
    g1, g2 = _maps([G0 / 0.98, 0.0], [0.0, G0])
    sm = strain_map(g1, g2, G_REF)
    np.testing.assert_allclose(sm.eyy, -0.02, atol=1e-12)
    np.testing.assert_allclose(sm.exx, 0.0, atol=1e-12)


def test_rotation_half_degree_turns_y_towards_x():
    t = np.radians(0.5)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # +y -> (cos t, sin t): towards +x
    assert (R @ [1.0, 0.0])[1] > 0
    G = R @ G_REF
    g1, g2 = _maps(G[:, 0], G[:, 1])
    sm = strain_map(g1, g2, G_REF)
    np.testing.assert_allclose(sm.theta, 0.5, atol=1e-10)
    np.testing.assert_allclose(sm.exx, np.cos(t) - 1, atol=1e-12)   # F = R: second order only
    np.testing.assert_allclose(sm.exy, 0.0, atol=1e-12)


def test_shear_is_tensor_shear():
    # real-space F = I + [[0, e], [e, 0]] -> exy = e (not 2e)
    e = 0.004
    F = np.array([[1.0, e], [e, 1.0]])
    G = np.linalg.inv(F).T @ G_REF   # A = F A_ref  <=>  G = inv(F).T G_ref
    g1, g2 = _maps(G[:, 0], G[:, 1])
    sm = strain_map(g1, g2, G_REF)
    np.testing.assert_allclose(sm.exy, e, atol=1e-12)
    np.testing.assert_allclose(sm.theta, 0.0, atol=1e-10)


def test_swapping_g1_and_g2_gives_the_same_strain():
    rng = np.random.default_rng(3)
    F = np.eye(2) + rng.normal(0, 0.01, (2, 2))
    G_ref = np.array([[0.1, 0.45], [0.47, -0.05]])
    G = np.linalg.inv(F).T @ G_ref
    a = strain_map(*_maps(G[:, 0], G[:, 1]), G_ref)
    b = strain_map(*_maps(G[:, 1], G[:, 0]), G_ref[:, ::-1])
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-12)
    np.testing.assert_allclose(a.exx, F[1, 1] - 1, atol=1e-12)
    np.testing.assert_allclose(a.eyy, F[0, 0] - 1, atol=1e-12)


def test_reference_region_median_and_mask():
    g1, g2 = _maps([G0, 0.0], [0.0, G0], shape=(4, 5))
    g2[:, 3:, 1] = G0 / 1.02           # right part stretched 2 % in x
    g1[0, 0] = np.nan                  # an unfit position
    sm = strain_map(g1, g2, (slice(0, 4), slice(0, 3)))
    np.testing.assert_allclose(sm.exx[:, :3][sm.mask[:, :3]], 0.0, atol=1e-12)
    np.testing.assert_allclose(sm.exx[:, 3:], 0.02, atol=1e-12)
    assert not sm.mask[0, 0] and np.isnan(sm.exx[0, 0])
    np.testing.assert_allclose(sm.G_ref, G_REF)
    by_mask = strain_map(g1, g2, np.pad(np.ones((4, 3), bool), ((0, 0), (0, 2))))
    np.testing.assert_allclose(by_mask.exx, sm.exx)


def test_bad_input():
    g1, g2 = _maps([G0, 0.0], [0.0, G0])
    with pytest.raises(InputError, match="reference"):
        strain_map(g1, g2)
    with pytest.raises(InputError, match="no position"):
        strain_map(g1, g2, np.zeros((2, 3), bool))
    with pytest.raises(InputError, match="scan_y, scan_x, 2"):
        strain_map(g1[0], g2[0], G_REF)
    with pytest.raises(InputError, match="non-singular"):
        strain_map(g1, g2, np.zeros((2, 2)))
