"""Bragg disk detection on hand-made patterns with known disk centres."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.strain.datacube import DataCube
from tomostrain.strain.disks import BraggPeaks, disk_geometry, find_bragg_disks

R = 5.0


def render(shape, disks, radius=R):
    """Disks as the synthetic simulator draws them: a one-pixel linear edge ramp and an inside
    ``amp * (1 + slope * (p - c) . direction / radius)``; disks = [(cy, cx, amp, slope, (dy, dx))]."""
    iy, ix = np.indices(shape, dtype=np.float64)
    img = np.zeros(shape)
    for cy, cx, amp, slope, (dy, dx) in disks:
        edge = np.clip(radius + 0.5 - np.hypot(iy - cy, ix - cx), 0.0, 1.0)
        img += amp * edge * (1.0 + slope * ((iy - cy) * dy + (ix - cx) * dx) / radius)
    return img.astype(np.float32)


TEMPLATE = render((32, 32), [(15.3, 16.6, 1.0, 0.0, (0, 0))])


def _first_peaks(bp, n):
    """(positions, n, 2) centres of the n strongest peaks, sorted by x then y within a position."""
    out = []
    for p in range(len(bp.offsets) - 1):
        a = int(bp.offsets[p])
        q = np.stack([bp.qy[a:a + n], bp.qx[a:a + n]], 1)
        out.append(q[np.lexsort((q[:, 0], q[:, 1]))])
    return np.array(out)


@pytest.mark.parametrize("subpixel", ["edge", "parabolic"])
def test_uniform_disks_found_at_their_centres(subpixel, rng):
    centres = rng.uniform(-0.5, 0.5, (3, 2, 3, 2)) + np.array([[20.0, 20.0], [40.0, 47.0], [22.0, 60.0]])
    amps = [3.0, 1.0, 0.5]
    data = np.stack([np.stack([render((64, 80), [(c[i, 0], c[i, 1], amps[i], 0.0, (0, 0)) for i in range(3)])
                               for c in row]) for row in centres])
    bp = find_bragg_disks(data, TEMPLATE, subpixel=subpixel)
    assert isinstance(bp, BraggPeaks) and bp.scan_shape == (3, 2)
    np.testing.assert_array_equal(bp.counts(), 3)
    got = _first_peaks(bp, 3)
    want = centres.reshape(6, 3, 2)
    want = np.array([w[np.lexsort((w[:, 0], w[:, 1]))] for w in want])
    np.testing.assert_allclose(got, want, atol={"edge": 0.02, "parabolic": 0.06}[subpixel])
    # strongest first: the bright disk (20, 20) leads every list; intensities fall
    qy, qx, inten = bp.for_position(2, 1)
    assert abs(qy[0] - centres[2, 1, 0, 0]) < 0.05 and abs(qx[0] - centres[2, 1, 0, 1]) < 0.05
    assert np.all(np.diff(inten) <= 0)
    np.testing.assert_array_equal(bp.positions(), np.repeat(np.arange(6), 3))


def test_edge_fit_removes_the_bias_of_disks_with_an_intensity_gradient(rng):
    """Strong gradient inside the disk (0.5 to 1.5 of the mean): the correlation peak moves towards
    the bright side; the edge fit stays on the true centre."""
    n = 12
    centres = rng.uniform(-0.5, 0.5, (n, 2)) + [32.0, 36.0]
    direction = rng.normal(size=(n, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    data = np.stack([render((64, 72), [(c[0], c[1], 1.0, 0.5, tuple(d))]) for c, d in zip(centres, direction)])[None]
    errors = {}
    for subpixel in ("parabolic", "edge"):
        bp = find_bragg_disks(data, TEMPLATE, subpixel=subpixel, max_peaks=1)
        np.testing.assert_array_equal(bp.counts(), 1)
        errors[subpixel] = np.hypot(bp.qy - centres[:, 0], bp.qx - centres[:, 1])
        if subpixel == "parabolic":  # the bias points to the bright side
            along = (bp.qy - centres[:, 0]) * direction[:, 0] + (bp.qx - centres[:, 1]) * direction[:, 1]
            assert (along > 0.2).all()
    assert errors["parabolic"].min() > 0.2
    assert errors["edge"].max() < 0.05


def test_noisy_gradient_disks_edge_fit_is_unbiased(rng):
    """Poisson noise (about 2000 counts a disk): the edge fit's mean error is far below the
    correlation peak's bias."""
    n = 40
    centres = rng.uniform(-0.5, 0.5, (n, 2)) + [32.0, 32.0]
    clean = np.stack([render((64, 64), [(c[0], c[1], 25.0, 0.4, (0.6, 0.8))]) for c in centres])
    data = rng.poisson(clean).astype(np.float32)[None]
    bias = {}
    for subpixel in ("parabolic", "edge"):
        bp = find_bragg_disks(data, TEMPLATE, subpixel=subpixel, max_peaks=1)
        bias[subpixel] = np.hypot(np.mean(bp.qy - centres[:, 0]), np.mean(bp.qx - centres[:, 1]))
    assert bias["parabolic"] > 0.25
    assert bias["edge"] < 0.04


def test_weak_disks_edge_fit_is_unbiased_and_beats_the_correlation_peak(rng):
    """About 80 counts a disk (higher-order reflections at a realistic dose): the edge fit still
    converges (no fallback to the biased correlation peak) and its errors are smaller."""
    n = 300
    centres = rng.uniform(-0.5, 0.5, (n, 2)) + [32.0, 32.0]
    clean = np.stack([render((64, 64), [(c[0], c[1], 1.0, 0.4, (0.6, 0.8))]) for c in centres])
    data = rng.poisson(clean).astype(np.float32)[None]
    rms, bias = {}, {}
    for subpixel in ("parabolic", "edge"):
        bp = find_bragg_disks(data, TEMPLATE, subpixel=subpixel, max_peaks=1)
        np.testing.assert_array_equal(bp.counts(), 1)
        err = np.stack([bp.qy - centres[:, 0], bp.qx - centres[:, 1]], 1)
        rms[subpixel] = np.sqrt((err ** 2).sum(1).mean())
        bias[subpixel] = np.hypot(*err.mean(0))
    assert bias["parabolic"] > 0.2
    assert bias["edge"] < 0.05, bias
    assert rms["edge"] < 0.8 * rms["parabolic"], rms


def test_flat_inside_moments_equal_the_per_pixel_normal_equations(rng):
    """Inside the disk the edge fit sums weighted moments instead of Jacobian outer products:
    the two must give the same normal equations."""
    from tomostrain.gpu_core.kernels.disk_peaks import N_PAR, _add_flat

    m = 50
    w, u, v, res = rng.random(m) + 0.1, rng.normal(size=m), rng.normal(size=m), rng.normal(size=m)
    ey, ex = rng.normal(size=2)
    J = np.zeros((m, N_PAR))
    J[:, 0], J[:, 1], J[:, 3], J[:, 4], J[:, 5], J[:, 6] = ey, ex, 1.0, u, v, 1.0
    want_A = np.tril((J * w[:, None]).T @ J)
    want_g = (J * (w * res)[:, None]).sum(0)
    A, g, work = np.zeros((N_PAR, N_PAR)), np.zeros(N_PAR), np.zeros(N_PAR)
    _add_flat(A, g, work, ey, ex, w.sum(), (w * u).sum(), (w * v).sum(), (w * u * u).sum(), (w * u * v).sum(),
              (w * v * v).sum(), (w * res).sum(), (w * u * res).sum(), (w * v * res).sum())
    np.testing.assert_allclose(np.tril(A), want_A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-12)


def test_cholesky_step_and_centre_variance(rng):
    """The edge fit's solver: the Gauss-Newton step and the larger centre variance of ``A^-1``."""
    from tomostrain.gpu_core.kernels.disk_peaks import N_PAR, _solve_spd

    M = rng.normal(size=(N_PAR, N_PAR))
    A = M @ M.T + N_PAR * np.eye(N_PAR)
    r = rng.normal(size=N_PAR)
    inv = np.linalg.inv(A)
    x, work = r.copy(), np.zeros(N_PAR)
    var = _solve_spd(np.tril(A), x, N_PAR, work)     # only the lower triangle is read
    np.testing.assert_allclose(x, inv @ r, rtol=1e-10)
    assert var == pytest.approx(max(inv[0, 0], inv[1, 1]), rel=1e-10)
    assert _solve_spd(-np.eye(N_PAR), r.copy(), N_PAR, work) == -1.0


def test_spacing_threshold_border_and_max_peaks():
    disks = [(20.0, 20.0, 1.0, 0.0, (0, 0)), (20.0, 31.0, 0.5, 0.0, (0, 0)),   # 11 px apart
             (45.0, 45.0, 0.02, 0.0, (0, 0)), (3.0, 50.0, 1.0, 0.0, (0, 0))]   # faint; at the border
    data = render((64, 64), disks)[None, None]
    assert find_bragg_disks(data, TEMPLATE).counts()[0, 0] == 3                    # border one dropped
    assert find_bragg_disks(data, TEMPLATE, edge_boundary=1).counts()[0, 0] == 4
    assert find_bragg_disks(data, TEMPLATE, min_spacing=12).counts()[0, 0] == 2   # the weaker neighbour goes
    assert find_bragg_disks(data, TEMPLATE, min_rel_intensity=0.05).counts()[0, 0] == 2  # faint one goes
    one = find_bragg_disks(data, TEMPLATE, max_peaks=1)
    assert one.counts()[0, 0] == 1 and abs(one.qx[0] - 20.0) < 0.05
    assert find_bragg_disks(np.zeros((1, 2, 64, 64), np.float32), TEMPLATE).counts().sum() == 0


def test_phase_and_hybrid_correlation_find_the_same_disks(rng):
    disks = [(24.3, 20.6, 2.0, 0.0, (0, 0)), (40.8, 44.1, 1.0, 0.0, (0, 0))]
    data = (rng.poisson(render((64, 64), disks) * 200) / 200).astype(np.float32)[None, None]
    for power in (0.0, 0.5):
        bp = find_bragg_disks(data, TEMPLATE, corr_power=power, min_rel_intensity=0.2, subpixel="edge")
        assert bp.counts()[0, 0] == 2
        got = np.sort(np.stack([bp.qy, bp.qx], 1), axis=0)
        np.testing.assert_allclose(got, [[24.3, 20.6], [40.8, 44.1]], atol=0.1)


def test_datacube_chunks_and_integer_data_give_the_same_peaks(rng):
    centres = rng.uniform(15, 45, (5, 3, 2))
    data = np.stack([np.stack([render((60, 60), [(c[0], c[1], 1000.0, 0.0, (0, 0))]) for c in row])
                     for row in centres]).astype(np.uint16)
    whole = find_bragg_disks(data, TEMPLATE)
    chunked = find_bragg_disks(DataCube(data), TEMPLATE, budget_bytes=1)   # one scan row per chunk
    for a, b in ((whole.qy, chunked.qy), (whole.qx, chunked.qx), (whole.offsets, chunked.offsets)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.stack([whole.qy, whole.qx], 1), centres.reshape(-1, 2), atol=0.05)


def test_disk_geometry_of_the_template():
    cy, cx, radius, width = disk_geometry(TEMPLATE)
    assert abs(cy - 15.3) < 0.03 and abs(cx - 16.6) < 0.03
    assert abs(radius - R) < 0.15 and 0.3 <= width < 0.6


def test_input_is_not_modified_and_bad_input_raises():
    data = render((40, 40), [(20.0, 20.0, 1.0, 0.0, (0, 0))])[None, None]
    before = data.copy()
    find_bragg_disks(data, TEMPLATE)
    np.testing.assert_array_equal(data, before)
    with pytest.raises(InputError, match="4D"):
        find_bragg_disks(data[0], TEMPLATE)
    with pytest.raises(InputError, match="template"):
        find_bragg_disks(data, np.zeros((40, 40)))
    with pytest.raises(InputError, match="template"):
        find_bragg_disks(data, np.ones((50, 50)))
    with pytest.raises(InputError, match="subpixel"):
        find_bragg_disks(data, TEMPLATE, subpixel="spline")
    with pytest.raises(InputError, match="corr_power"):
        find_bragg_disks(data, TEMPLATE, corr_power=2.0)
    with pytest.raises(InputError, match="max_peaks"):
        find_bragg_disks(data, TEMPLATE, max_peaks=1000)
    bad = data.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        find_bragg_disks(bad, TEMPLATE)
    with pytest.raises(InputError, match="outside the scan"):
        find_bragg_disks(data, TEMPLATE).for_position(1, 0)


@pytest.mark.gpu
def test_gpu_equals_cpu_full_size():
    import cupy

    from tomostrain.synthetic.nanobeam import nanobeam_4dstem

    data, truth = nanobeam_4dstem((32, 32), (256, 256), seed=3)
    for subpixel in ("edge", "parabolic"):
        cpu = find_bragg_disks(data, truth["probe"], subpixel=subpixel)
        gpu = find_bragg_disks(cupy.asarray(data), cupy.asarray(truth["probe"]), subpixel=subpixel)
        np.testing.assert_array_equal(cupy.asnumpy(gpu.offsets), cpu.offsets)
        d = np.hypot(cupy.asnumpy(gpu.qy) - cpu.qy, cupy.asnumpy(gpu.qx) - cpu.qx)
        # the GPU sums a disk's pixels in another order (a warp's lanes), so the noise-aware stop
        # can fall one Gauss-Newton step apart on a few weak disks: a fraction of their own error
        assert np.median(d) < 1e-4 and np.quantile(d, 0.99) < 2e-3 and d.max() < 0.05, (np.median(d), d.max())
        np.testing.assert_allclose(cupy.asnumpy(gpu.intensity), cpu.intensity, rtol=1e-3)


@pytest.mark.parametrize("shape, radius", [((6, 64, 48), 5.0), ((3, 9, 70), 3.2), ((2, 40, 40), 12.0)])
def test_local_background_equals_scipy_grey_opening(shape, radius):
    """The Numba top-hat (van Herk min/max filters) equals scipy.ndimage's opening bit for bit,
    windows wider than a side and borders included; the GPU path runs cupyx's."""
    from scipy import ndimage

    from tomostrain.strain.disks import _above_local_background

    rng = np.random.default_rng(3)
    corr = (rng.normal(size=shape) + 3 * rng.random(shape[:1])[:, None, None]).astype(np.float32)
    side = 2 * int(np.ceil(2 * radius)) + 1
    size = (1, side, side)
    want = corr - ndimage.maximum_filter(ndimage.minimum_filter(corr, size=size, mode="nearest"), size=size,
                                         mode="nearest")
    got = _above_local_background(corr, radius, np)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert (got >= 0).all() and got.max() > 0
