"""Segmentation (Otsu, multi-Otsu, labels, distance transform, watershed split) and denoising filters."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.gpu_core import filters, segment


def _ball(shape, centre, radius):
    g = np.indices(shape, dtype=np.float64)
    return np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(len(shape)))) <= radius


@pytest.fixture
def three_levels(rng):
    """Background 0, a block at 1 holding a ball at 2 (similar volumes), noise sigma 0.08."""
    truth = np.zeros((24, 28, 32), np.uint8)
    truth[:, :, 12:] = 1
    truth[_ball(truth.shape, (12, 14, 22), 9.5)] = 2
    vol = truth.astype(np.float32) + rng.normal(0, 0.08, truth.shape).astype(np.float32)
    return vol, truth


# ---------------------------------------------------------------- thresholds


def test_otsu_splits_two_levels(three_levels):
    from skimage.filters import threshold_otsu

    vol, truth = three_levels
    two = np.where(truth > 0, 1.0, 0.0).astype(np.float32) + (vol - truth)
    t = segment.otsu(two)
    assert two[truth == 0].max() < t < two[truth > 0].min()  # anywhere in the empty gap is optimal
    assert np.array_equal(two > t, truth > 0)
    width = float(two.max() - two.min()) / 256
    assert t == pytest.approx(threshold_otsu(two), abs=width)


def test_multi_otsu_recovers_classes(three_levels):
    from skimage.filters import threshold_multiotsu

    vol, truth = three_levels
    before = vol.copy()
    th, labels = segment.multi_otsu(vol, 3)
    assert np.array_equal(vol, before)  # input untouched
    assert th.shape == (2,)
    for k in range(2):  # each threshold lies in the empty gap between two levels
        assert vol[truth == k].max() < th[k] < vol[truth == k + 1].min()
    assert labels.dtype == np.uint8 and np.array_equal(labels, truth)
    width = float(vol.max() - vol.min()) / 256
    np.testing.assert_allclose(th, threshold_multiotsu(vol, 3), atol=width)
    # labels count the thresholds strictly below the value: label > k  <=>  value > th[k]
    for k in range(2):
        assert np.array_equal(labels > k, vol > th[k])


def test_multi_otsu_on_denoised_particle_matches_truth(rng):
    """Noisy phantom -> TV denoise -> 4-class multi-Otsu recovers >= 97% of every phase."""
    from tomostrain.synthetic import sodiated_particle

    d, truth, _ = sodiated_particle((40, 64, 64), seed=2, shell_thickness=2.5, particle_radius=(2.0, 3.0), n_particles=5)
    noisy = d + rng.normal(0, 0.15, d.shape).astype(np.float32)
    _, labels = segment.multi_otsu(filters.tv_denoise(noisy, 0.1), 4)
    for k in range(4):
        assert ((labels == k) & (truth == k)).sum() / (truth == k).sum() > 0.97


def test_threshold_bad_input():
    with pytest.raises(InputError, match="classes"):
        segment.multi_otsu(np.random.rand(8, 8), 1)
    with pytest.raises(InputError, match="constant"):
        segment.otsu(np.ones((8, 8)))
    bad = np.random.rand(8, 8)
    bad[2, 2] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        segment.multi_otsu(bad, 3)
    with pytest.raises(InputError, match="fewer than 4"):
        segment.multi_otsu(np.repeat([0.0, 1.0, 2.0], 10).reshape(5, 6), 4)


# ---------------------------------------------------------------- labels, distance, watershed


def test_label_connectivity():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner neighbours
    m[4, 4, 0] = True
    labels, n = segment.label(m)
    assert n == 3 and labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2, 3}
    labels, n = segment.label(m, connectivity=3)
    assert n == 2 and labels[1, 1, 1] == labels[2, 2, 2]
    with pytest.raises(InputError, match="connectivity"):
        segment.label(m, connectivity=4)
    with pytest.raises(InputError, match="boolean or integer"):
        segment.label(m.astype(float))


def test_distance_transform_is_euclidean():
    m = np.ones((9, 9, 9), bool)
    m[4, 4, 4] = False
    d = segment.distance_transform(m)
    g = np.indices(m.shape)
    want = np.sqrt(((g - 4) ** 2).sum(0))
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, want, atol=1e-6)
    d2 = segment.distance_transform(m, sampling=(2.0, 1.0, 1.0))  # voxel twice as tall in y
    assert d2[0, 4, 4] == pytest.approx(8.0) and d2[4, 4, 0] == pytest.approx(4.0)
    with pytest.raises(InputError, match="background"):
        segment.distance_transform(np.ones((4, 4), bool))


def test_split_touching_spheres():
    shape = (36, 36, 52)
    c1, c2, c3 = (18.0, 18.0, 15.3), (18.4, 17.6, 25.8), (8.0, 8.0, 44.0)
    mask = _ball(shape, c1, 6.2) | _ball(shape, c2, 6.2) | _ball(shape, c3, 3.0)  # pair overlaps, third apart
    assert segment.label(mask)[1] == 2
    labels, n = segment.split_particles(mask)
    assert n == 3 and labels.dtype == np.int32
    assert np.array_equal(labels > 0, mask)
    g = np.indices(shape)
    centres = np.array([[(g[i] * (labels == k)).sum() / (labels == k).sum() for i in range(3)] for k in range(1, 4)])
    for c in (c1, c2, c3):
        assert np.linalg.norm(centres - np.array(c), axis=1).min() < 1.0


def test_split_keeps_single_ball_whole_and_handles_empty():
    mask = _ball((20, 20, 20), (9.5, 10.0, 10.2), 5.0)  # plateau of equal maxima at the centre
    labels, n = segment.split_particles(mask)
    assert n == 1 and np.array_equal(labels > 0, mask)
    labels, n = segment.split_particles(np.zeros((6, 6), bool))
    assert n == 0 and not labels.any()


# ---------------------------------------------------------------- filters


def test_gaussian_delta_moments():
    v = np.zeros((25, 25, 25), np.float32)
    v[12, 12, 12] = 1
    out = filters.gaussian(v, (1.0, 2.0, 1.5))
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    g = np.indices(v.shape) - 12
    variances = [(out * g[i] ** 2).sum() for i in range(3)]
    assert variances == pytest.approx([1.0, 4.0, 2.25], rel=0.01)
    assert v.sum() == 1  # input untouched


def test_median_removes_impulses(rng):
    v = np.full((16, 16, 16), 0.5, np.float32)
    idx = rng.choice(v.size, 40, replace=False)
    v.ravel()[idx] = rng.choice([0.0, 5.0], 40)
    out = filters.median(v, 3)
    assert np.allclose(out, 0.5)


def test_tv_denoise_smooths_noise_and_keeps_edge(rng):
    step = np.zeros((16, 16, 32), np.float32)
    step[..., 16:] = 1.0
    noisy = step + rng.normal(0, 0.2, step.shape).astype(np.float32)
    tv = filters.tv_denoise(noisy, 0.2)
    flat = (slice(None), slice(None), slice(2, 12))
    assert tv[flat].std() < noisy[flat].std() / 4
    edge = tv[..., 16].mean() - tv[..., 15].mean()
    assert edge > 0.7  # most of the unit step stays within one voxel
    # a Gaussian with comparable noise reduction smears the edge
    g = filters.gaussian(noisy, 2.0)
    assert g[flat].std() > tv[flat].std() / 2 and g[..., 16].mean() - g[..., 15].mean() < 0.4


def test_tv_denoise_equals_skimage(rng):
    from skimage.restoration import denoise_tv_chambolle

    v = rng.random((6, 8, 10)).astype(np.float32)
    np.testing.assert_allclose(filters.tv_denoise(v, 0.15), denoise_tv_chambolle(v, weight=0.15), atol=1e-5)
    img = rng.random((12, 16)).astype(np.float32)
    np.testing.assert_allclose(filters.tv_denoise(img, 0.3), denoise_tv_chambolle(img, weight=0.3), atol=1e-5)


def test_filter_bad_input():
    with pytest.raises(InputError, match="2D or 3D"):
        filters.gaussian(np.zeros(5), 1.0)
    with pytest.raises(InputError, match="weight"):
        filters.tv_denoise(np.zeros((4, 4)), 0.0)
    with pytest.raises(InputError, match="sigma"):
        filters.gaussian(np.zeros((4, 4)), -1.0)
    with pytest.raises(InputError, match="numeric"):
        filters.median(np.array([["a", "b"], ["c", "d"]]), 3)


# ---------------------------------------------------------------- GPU twins


@pytest.mark.gpu
def test_gpu_matches_cpu(three_levels):
    import cupy as cp

    vol, truth = three_levels
    gvol = cp.asarray(vol)
    th_c, lab_c = segment.multi_otsu(vol, 3)
    th_g, lab_g = segment.multi_otsu(gvol, 3)
    assert isinstance(lab_g, cp.ndarray)
    np.testing.assert_allclose(th_g, th_c, rtol=1e-5)
    assert np.array_equal(cp.asnumpy(lab_g), lab_c)
    for f, arg, tol in ((filters.gaussian, 1.5, 1e-5), (filters.median, 3, 0), (filters.tv_denoise, 0.1, 1e-3)):
        np.testing.assert_allclose(cp.asnumpy(f(gvol, arg)), f(vol, arg), atol=tol)
    np.testing.assert_allclose(cp.asnumpy(segment.distance_transform(gvol > 0.5)), segment.distance_transform(vol > 0.5))
    lab, n = segment.split_particles(cp.asarray(truth == 2))
    assert isinstance(lab, cp.ndarray) and n == 1
    assert segment.label(cp.asarray(truth > 0))[1] == segment.label(truth > 0)[1]
