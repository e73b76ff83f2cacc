"""Virtual detectors, centre of mass and iCOM against NumPy masks and known fields."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.strain.datacube import DataCube
from tomostrain.strain.virtual import (
    annular_masks,
    center_of_mass,
    dpc_icom,
    total_intensity,
    virtual_adf,
    virtual_bf,
    virtual_image,
)
from tomostrain.synthetic.nanobeam import nanobeam_4dstem


@pytest.fixture(scope="module")
def synth():
    return nanobeam_4dstem((20, 20), (64, 64), seed=2, dtype="uint16")


def _numpy_annulus(data, inner, outer, origin):
    ky, kx = data.shape[2:]
    iy, ix = np.indices((ky, kx))
    o = np.broadcast_to(np.asarray(origin, float), data.shape[:2] + (2,))
    r2 = (iy - o[..., :1, None]) ** 2 + (ix - o[..., 1:, None]) ** 2
    return np.where((r2 >= inner**2) & (r2 < outer**2), data.astype(np.float64), 0).sum((2, 3))


def test_annular_masks_pin_the_edges_and_the_centre():
    m = annular_masks((5, 7), [(0, 1.5), (1, 2)], origin=(2, 3))
    assert m.shape == (2, 5, 7) and m.dtype == np.float32
    assert m[0].sum() == 9 and m[0, 2, 3] == 1 and m[0, 1, 2] == 1    # r = sqrt(2) < 1.5
    assert m[1, 2, 3] == 0 and m[1, 2, 4] == 1 and m[1, 2, 5] == 0     # r = 1 in, r = 2 out
    default = annular_masks((4, 4), [(0, 0.8)])                          # centre (1.5, 1.5)
    assert default[0].sum() == 4 and default[0, 1:3, 1:3].all()
    with pytest.raises(InputError):
        annular_masks((4, 4), [(3, 2)])


def test_bf_adf_equal_numpy_masks(synth):
    data, truth = synth
    centre = (32.1, 31.7)
    np.testing.assert_allclose(virtual_bf(data, 7.0, centre), _numpy_annulus(data, 0, 7.0, centre), rtol=1e-6)
    np.testing.assert_allclose(virtual_adf(data, 20, 31, centre), _numpy_annulus(data, 20, 31, centre), rtol=1e-6)
    # per-position origin (descan followed exactly): direct beam entirely inside the BF disk
    origin = truth["origin"]
    bf = virtual_bf(DataCube(data, origin=origin), 7.0)
    np.testing.assert_allclose(bf, _numpy_annulus(data, 0, 7.0, origin), rtol=1e-6)
    adf = virtual_adf(data, 20, 31, origin)
    np.testing.assert_allclose(adf, _numpy_annulus(data, 20, 31, origin), rtol=1e-6)
    # annuli reaching past the detector edge, or lying wholly outside it (only a crop is read)
    for inner, outer in ((20, 60), (50, 70)):
        np.testing.assert_allclose(virtual_adf(data, inner, outer, origin), _numpy_annulus(data, inner, outer, origin),
                                   rtol=1e-6)
    np.testing.assert_allclose(total_intensity(data), data.sum((2, 3), dtype=np.float64), rtol=1e-6)
    # ADF is bright on the particle, dark in vacuum
    labels = truth["labels"]
    assert adf[labels == 0].max() < 0.2 * adf[labels == 2].mean()


def test_virtual_image_many_masks_and_chunking(synth, monkeypatch):
    data, _ = synth
    rng = np.random.default_rng(0)
    masks = rng.random((15, 64, 64)).astype(np.float32)
    want = np.einsum("abyx,myx->abm", data.astype(np.float64), masks.astype(np.float64))
    monkeypatch.setenv("TOMOSTRAIN_MEMORY_BUDGET", str(3 * 4 * 4 * 20 * 64 * 64))  # 3 rows a chunk
    np.testing.assert_allclose(virtual_image(data, masks), want, rtol=1e-5)
    np.testing.assert_allclose(virtual_image(data, masks[0]), want[..., 0], rtol=1e-5)
    with pytest.raises(InputError, match="mask"):
        virtual_image(data, masks[:, :32])


def test_center_of_mass_follows_the_descan_plane(synth):
    data, truth = synth
    com = center_of_mass(data)
    err = com - truth["origin"]
    assert np.sqrt(np.mean(err**2)) < 0.05               # Friedel-symmetric patterns: COM = origin
    rel = center_of_mass(DataCube(data, origin=truth["origin"]))
    np.testing.assert_allclose(rel, err, atol=1e-12)
    np.testing.assert_allclose(center_of_mass(data, origin=(1.0, 2.0)), com - [1.0, 2.0], atol=1e-12)


def test_center_of_mass_of_hand_made_shift():
    data = np.zeros((1, 2, 9, 9), np.float32)
    data[0, 0, 3, 6] = 1.0
    data[0, 1, 5, 4] = data[0, 1, 5, 2] = 1.0
    np.testing.assert_allclose(center_of_mass(data, origin=(4, 4))[0], [[-1, 2], [1, -1]])


def _potential(sy=48, sx=56):
    y, x = np.indices((sy, sx), dtype=float)
    phi = (np.exp(-((y - 20) ** 2 + (x - 30) ** 2) / 60) - 0.7 * np.exp(-((y - 30) ** 2 + (x - 15) ** 2) / 30)
           + 0.02 * x)  # ramp: a non-periodic potential
    gy, gx = np.gradient(phi)
    return phi, gy, gx


def test_icom_recovers_a_known_potential():
    phi, gy, gx = _potential()
    got = dpc_icom(gy, gx)
    assert np.corrcoef(got.ravel(), phi.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(got, phi - phi.mean(), atol=0.03)


def test_icom_rotation_sign():
    phi, gy, gx = _potential()
    # measured field = the gradient turned by -90 degrees: (gy, gx) -> (gx, -gy)
    got = dpc_icom(gx, -gy, rotation_deg=90.0)
    assert np.corrcoef(got.ravel(), phi.ravel())[0, 1] > 0.99
    assert np.corrcoef(dpc_icom(gx, -gy).ravel(), phi.ravel())[0, 1] < 0.5


def test_bad_input():
    bad = np.ones((2, 2, 8, 8), np.float32)
    bad[1, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        virtual_bf(bad, 3)
    with pytest.raises(InputError, match="4D"):
        center_of_mass(np.ones((4, 8, 8)))
    with pytest.raises(InputError, match="origin"):
        virtual_bf(np.ones((2, 2, 8, 8)), 3, origin=np.zeros((3, 2, 2)))
    with pytest.raises(InputError, match="NaN"):
        dpc_icom(np.full((4, 4), np.nan), np.zeros((4, 4)))


@pytest.mark.gpu
def test_gpu_equals_cpu_full_size():
    import cupy as cp

    data, truth = nanobeam_4dstem((64, 64), (128, 128), seed=5)
    gpu = cp.asarray(data)
    for cpu_fn, gpu_fn in [
        (lambda: virtual_adf(data, 25, 60, truth["origin"]), lambda: virtual_adf(gpu, 25, 60, cp.asarray(truth["origin"]))),
        (lambda: virtual_bf(data, 8, (64, 64)), lambda: virtual_bf(gpu, 8, (64, 64))),
        (lambda: center_of_mass(data), lambda: center_of_mass(gpu)),
        (lambda: virtual_bf(data, 8), lambda: virtual_bf(data, 8, backend="gpu")),
    ]:
        got = gpu_fn()
        assert isinstance(got, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(got), cpu_fn(), rtol=1e-6, atol=1e-6)
    com = center_of_mass(data) - truth["origin"]
    np.testing.assert_allclose(cp.asnumpy(dpc_icom(cp.asarray(com[..., 0]), cp.asarray(com[..., 1]))),
                               dpc_icom(com[..., 0], com[..., 1]), atol=1e-9)
