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
