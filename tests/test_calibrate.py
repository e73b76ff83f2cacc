"""Calibration against the simulator's truth: probe, descan origin, ellipse, q pixel size."""
import numpy as np
import pytest

from tomostrain.errors import CalibrationError, InputError
from tomostrain.strain.calibrate import (
    correct_ellipse,
    fit_ellipse,
    fit_origin,
    measure_origin,
    probe_template,
    q_pixel_size,
)
from tomostrain.strain.datacube import DataCube
from tomostrain.synthetic.nanobeam import LABEL_NAMES, ellipse_matrix, nanobeam_4dstem


@pytest.fixture(scope="module")
def synth():
    return nanobeam_4dstem((32, 32), (128, 128), seed=4)


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_descan_origin_recovered(synth):
    data, truth = synth
    measured = measure_origin(data)
    assert _rmse(measured, truth["origin"]) < 0.08          # per position, Poisson noise included
    fitted = fit_origin(DataCube(data))
    assert _rmse(fitted, truth["origin"]) < 0.05             # plane: only the 0.02 px jitter left
    assert _rmse(fitted, truth["origin_plane"]) < 0.01


def test_fit_origin_rejects_outliers_and_honours_mask(rng):
    sy, sx = 20, 24
    yy, xx = np.indices((sy, sx), dtype=float)
    plane = np.stack([30 + 0.05 * yy - 0.02 * xx, 33 + 0.1 * xx + 0.01 * yy], -1)
    noisy = plane + rng.normal(0, 0.02, plane.shape)
    noisy[rng.random((sy, sx)) < 0.1] += 5.0                 # missed disks
    noisy[3, 4] = np.nan
    assert _rmse(fit_origin(noisy), plane) < 0.01
    mask = np.zeros((sy, sx), bool)
    mask[:, :8] = True
    clean_left = noisy.copy()
    clean_left[:, 8:] = 99.0                                 # garbage outside the mask
    assert _rmse(fit_origin(clean_left, mask=mask & np.isfinite(noisy).all(2)), plane) < 0.05
    with pytest.raises(InputError, match="mask"):
        fit_origin(noisy, mask=np.ones((3, 3), bool))


def test_probe_template_from_vacuum(synth):
    data, truth = synth
    want = truth["probe"] / truth["probe"].sum()
    iy, ix = np.indices(want.shape)
    for region in ("auto", (0, 3, 0, 4)):
        probe = probe_template(data, region)
        assert probe.sum() == pytest.approx(1.0) and probe.min() >= 0
        assert np.corrcoef(probe.ravel(), want.ravel())[0, 1] > 0.99
        np.testing.assert_allclose([(probe * iy).sum(), (probe * ix).sum()], [64, 64], atol=0.05)
    image = probe_template(truth["probe"])
    np.testing.assert_allclose(image, want, atol=1e-9)
    with pytest.raises(CalibrationError, match="outside"):
        probe_template(data, (0, 40, 0, 4))
    with pytest.raises(InputError, match="region"):
        probe_template(data, "vacuum")


def test_ellipse_convention_by_hand():
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = 20 * np.stack([np.sin(t), np.cos(t)], 1)
    # ratio 1.2 at 90 degrees: stretched along y only
    np.testing.assert_allclose(ellipse_matrix(1.2, 90.0) @ [10.0, 0.0], [12.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(ellipse_matrix(1.2, 90.0) @ [0.0, 10.0], [0.0, 10.0], atol=1e-12)
    for ratio, angle in [(1.1, 30.0), (1.02, -60.0), (1.05, 90.0)]:
        pts = circle @ ellipse_matrix(ratio, angle).T
        got_ratio, got_angle = fit_ellipse(pts)
        assert got_ratio == pytest.approx(ratio, abs=1e-9) and got_angle == pytest.approx(angle, abs=1e-6)
        qy, qx = correct_ellipse(pts[:, 0], pts[:, 1], ratio, angle)
        np.testing.assert_allclose(np.hypot(qy, qx), 20.0, rtol=1e-12)


def _truth_spots(truth, phases, rng, noise_px=0.1):
    """Distorted spot offsets (from the origin) of every position of the given phases, with the
    reflection family (h^2 + k^2) as ring id."""
    E = ellipse_matrix(*truth["ellipse"])
    pts, rings = [], []
    for name in phases:
        sel = truth["labels"] == LABEL_NAMES.index(name)
        G = np.stack([truth["g1"][sel], truth["g2"][sel]], -1)
        for h, k, _ in truth["reflections"][name]:
            q = G @ np.array([h / 2, k / 2]) / truth["q_pixel_size"]
            pts.append(q @ E.T + rng.normal(0, noise_px, q.shape))
            rings.append(np.full(len(q), 100 * LABEL_NAMES.index(name) + h * h + k * k))
    return np.concatenate(pts), np.concatenate(rings)


def test_ellipse_from_spots(synth, rng):
    _, truth = synth
    pts, rings = _truth_spots(truth, ["Na2O", "Ni"], rng)    # unstrained phases
    ratio, angle = fit_ellipse(pts, rings)
    assert abs(ratio - truth["ellipse"][0]) < 0.0005 * truth["ellipse"][0]
    assert abs(angle - truth["ellipse"][1]) < 3.0


def test_q_pixel_size_from_nio(rng):
    zero = {"exx": 0.0, "eyy": 0.0, "exy": 0.0, "theta": 0.0}
    _, truth = nanobeam_4dstem((24, 24), (128, 128), strain=zero, seed=6, noise=False)
    pts, rings = _truth_spots(truth, ["Na2O", "NiO", "Ni"], rng)
    ratio, angle = fit_ellipse(pts, rings)
    nio200 = rings == 100 * 2 + 4
    qy, qx = correct_ellipse(pts[nio200, 0], pts[nio200, 1], ratio, angle)
    got = q_pixel_size(np.stack([qy, qx], -1), 4.177, (2, 0, 0))
    assert got == pytest.approx(truth["q_pixel_size"], rel=1e-3)
    assert q_pixel_size([40.0, 40.0], 4.177, (2, 0, 0)) == pytest.approx(2 / 4.177 / 40)
    assert q_pixel_size([[0.0, 30.0]], 4.177, (2, 2, 0)) == pytest.approx(np.sqrt(8) / 4.177 / 30)
    with pytest.raises(InputError):
        q_pixel_size([0.0], 4.177, (2, 0, 0))
    with pytest.raises(InputError):
        q_pixel_size([10.0], 4.177, (0, 0, 0))


def test_fit_ellipse_bad_input():
    with pytest.raises(InputError):
        fit_ellipse(np.zeros((5, 3)))
    with pytest.raises(CalibrationError):
        fit_ellipse(np.ones((2, 2)))


def test_ellipse_from_detected_disks(synth):
    """Integration with strain.disks: spots found in the data, origin fitted, rings by radius."""
    disks = pytest.importorskip("tomostrain.strain.disks")
    data, truth = synth
    peaks = disks.find_bragg_disks(data, probe_template(data))
    origin = fit_origin(data).reshape(-1, 2)[peaks.positions()]
    d = np.stack([peaks.qy - origin[:, 0], peaks.qx - origin[:, 1]], 1)
    r = np.hypot(d[:, 0], d[:, 1])
    label = truth["labels"].ravel()[peaks.positions()]
    use = (label == 1) & (r > 2 * truth["disk_radius"])       # Na2O: unstrained, two rings
    ratio, angle = fit_ellipse(d[use], np.round(r[use] / 5))
    assert abs(ratio - truth["ellipse"][0]) < 0.0005 * truth["ellipse"][0]
    assert abs(angle - truth["ellipse"][1]) < 5.0


@pytest.mark.parametrize("shape", [(5, 16, 16), (4, 15, 17), (3, 16, 13), (3, 13, 16)])
def test_fourier_shift_equals_the_complex_round_trip(shape):
    """The real-FFT sub-pixel move (and its one-inverse-transform mean) equals the plain complex
    one, ``ifft2(fft2(f) ramp).real``, on noise (all the Nyquist content), even and odd sides."""
    from tomostrain.strain.calibrate import _fourier_shift

    rng = np.random.default_rng(4)
    frames, shift = rng.random(shape), rng.normal(0, 3, (shape[0], 2))
    fy = np.fft.fftfreq(shape[1])[None, :, None]
    fx = np.fft.fftfreq(shape[2])[None, None, :]
    want = np.fft.ifft2(np.fft.fft2(frames) * np.exp(-2j * np.pi * (fy * shift[:, 0, None, None]
                                                                    + fx * shift[:, 1, None, None]))).real
    np.testing.assert_allclose(_fourier_shift(frames, shift, np), want, atol=1e-12)
    np.testing.assert_allclose(_fourier_shift(frames, shift, np, mean=True), want.mean(0), atol=1e-12)
    assert np.abs(want - frames).max() > 0.1          # the frames did move


def test_disk_centroids_kernel_equals_array_expression(synth):
    """The CPU kernel (disk_centroids_cpu) against the NumPy expression the GPU path runs
    (_thresholded_centroid, both windows in turn), on patterns with descan, a dark pattern (NaN)
    and a box clipped at the detector edge."""
    from tomostrain.strain import calibrate as cal

    data, _ = synth
    chunk = np.asarray(data[:3], np.float32).copy()
    chunk[1, 2] = 0.0                                   # no disk: NaN from both
    ky, kx = chunk.shape[2:]
    c0, radius = cal.central_disk(chunk.sum((0, 1), dtype=np.float64))
    near_edge = np.roll(chunk, -int(c0[1] - radius - 4), axis=3)   # its box is clipped at x = 0
    for chunk in (chunk, near_edge):
        centre0, _ = cal.central_disk(chunk.sum((0, 1), dtype=np.float64))
        box = cal.origin_box(centre0, radius, (ky, kx))
        got = cal.disk_centroids(chunk, centre0, radius, box, np)
        (ys, xs), iy, ix = box
        frames = chunk.reshape(-1, ky, kx)[:, ys, xs]
        want = np.broadcast_to(centre0, (frames.shape[0], 2))
        for window in (2.0 * radius + 4.0, radius + 2.0):
            want = cal._thresholded_centroid(frames, want, window, radius, iy, ix, np)
        want = want.reshape(got.shape)
        assert np.isnan(got[1, 2]).all() and np.isnan(want[1, 2]).all()
        assert box[0][1].start == 0 or chunk is not near_edge
        assert np.isfinite(want).sum() > 10 and np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=0, atol=1e-6)
