"""Device path of the X-ray preprocessing and the XANES fit equals the CPU path (needs a GPU)."""
import numpy as np
import pytest

from tomostrain.reconstruction import preprocess as pp
from tomostrain.spectral.xanes import nnls

pytestmark = pytest.mark.gpu


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def test_preprocessing_on_the_device_equals_algotom_on_the_host(cp):
    rng = np.random.default_rng(0)
    t = rng.uniform(0.2, 1.0, (181, 4, 256)).astype(np.float32)
    for method, kw in (("sort", {"size": 11}), ("fit", {}), ("wavelet", {}), ("normalize", {})):
        host = pp.remove_rings(t, method, **kw)
        dev = pp.remove_rings(cp.asarray(t), method, **kw)
        np.testing.assert_allclose(cp.asnumpy(dev), host, atol=2e-4, err_msg=method)
    z = (t * 1000).astype(np.float32)
    np.testing.assert_allclose(cp.asnumpy(pp.remove_zingers(cp.asarray(z), 0.5)), pp.remove_zingers(z, 0.5), rtol=1e-5)
    att = -np.log(t)
    folded, c = pp.sinogram_360_to_180(att[:180], 12.0)
    dfold, dc = pp.sinogram_360_to_180(cp.asarray(att[:180]), 12.0)
    np.testing.assert_allclose(cp.asnumpy(dfold), folded, atol=1e-4)
    assert dc == pytest.approx(c)


def test_center_and_nnls_on_the_device(cp):
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_sinogram

    n = 256
    ell = SHEPP_LOGAN.copy()
    ell[:, 1:5] *= n / 2 * 0.7
    angles = np.linspace(0, 180, 361)
    sino = ellipse_sinogram(ell, angles, n, center=130.4)[:, None, :].repeat(3, 1).astype(np.float32) * (2.0 / n)
    for method in ("vo", "phase"):
        assert abs(pp.find_center(cp.asarray(sino), angles, method) - 130.4) <= 0.3
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (15, 3))
    b = a @ rng.uniform(-0.5, 1, (3, 10000))
    np.testing.assert_allclose(cp.asnumpy(nnls(a, cp.asarray(b))), nnls(a, b), atol=1e-9)


def test_sort_offset_variance_and_discrepancy_cgls_on_the_device(cp):
    """The new pieces run where their input lives and agree with the host: ``sort_offset``
    (the sort step is ``_rings_sort_xp`` on the device, algotom on the host: tie-free data),
    ``attenuation_variance`` and ``discrepancy_cgls`` (same stop per slice)."""
    from tomostrain.spectral.xanes import attenuation_variance, discrepancy_cgls
    from tomostrain.synthetic.txm import txm_xanes_series

    rng = np.random.default_rng(2)
    t = rng.uniform(0.2, 1.0, (181, 3, 256)).astype(np.float32)
    t[90:, 1, 100] *= 0.6  # a pixel failing mid-scan: the interpolation branch runs too
    np.testing.assert_allclose(cp.asnumpy(pp.remove_rings(cp.asarray(t), "sort_offset")),
                               pp.remove_rings(t, "sort_offset"), atol=2e-4)
    s = txm_xanes_series(64, 2, seed=0)
    var = attenuation_variance(s.data[0], s.flats[0], s.darks)
    dvar = attenuation_variance(cp.asarray(s.data[0]), cp.asarray(s.flats[0]), cp.asarray(s.darks))
    np.testing.assert_allclose(cp.asnumpy(dvar), var, rtol=1e-6)
    att = -np.log(pp.flat_dark_correct(s.data[0], s.flats[0], s.darks))
    host, its = discrepancy_cgls(att, var, s.angles_deg, center=s.center)
    dev, dits = discrepancy_cgls(cp.asarray(att), cp.asarray(var), s.angles_deg, center=s.center)
    np.testing.assert_array_equal(cp.asnumpy(dits), its)
    np.testing.assert_allclose(cp.asnumpy(dev), host, atol=1e-4 * float(np.abs(host).max()))
