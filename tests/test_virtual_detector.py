"""Virtual-detector kernel (CPU twin) against a plain NumPy reference on a synthetic cube."""
import numpy as np

from tomostrain.gpu_core.kernels.virtual_detector import MAX_MASKS, virtual_detector


def _reference(frames, masks):
    sums = np.einsum("nyx,myx->nm", frames.astype(np.float64), masks.astype(np.float64))
    iy, ix = np.indices(frames.shape[1:])
    tot = frames.sum((1, 2), dtype=np.float64)
    com = np.stack([(frames * iy).sum((1, 2)) / tot, (frames * ix).sum((1, 2)) / tot], 1)
    return sums, com, tot


def test_matches_numpy_with_more_masks_than_one_launch(rng):
    frames = rng.poisson(4.0, (50, 24, 20)).astype(np.float32)
    masks = rng.random((MAX_MASKS + 4, 24, 20)).astype(np.float32)  # two launches
    sums, com, tot = virtual_detector(frames, masks)
    ref_sums, ref_com, ref_tot = _reference(frames, masks)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-6)
    np.testing.assert_allclose(com, ref_com, rtol=1e-9)
    np.testing.assert_allclose(tot, ref_tot, rtol=1e-12)


def test_centre_of_mass_of_a_shifted_disk_and_empty_frame():
    ky = kx = 32
    iy, ix = np.indices((ky, kx))
    frames = np.zeros((3, ky, kx), np.float32)
    frames[0] = ((iy - 10) ** 2 + (ix - 20) ** 2 <= 9).astype(np.float32)   # disk at (10, 20)
    frames[1] = ((iy - 25.0) ** 2 + (ix - 5.0) ** 2 <= 16).astype(np.float32)
    sums, com, tot = virtual_detector(frames)
    assert sums.shape == (3, 0)
    np.testing.assert_allclose(com[0], [10, 20], atol=1e-9)
    np.testing.assert_allclose(com[1], [25, 5], atol=1e-9)
    assert np.isnan(com[2]).all() and tot[2] == 0


def test_bright_field_and_annular_masks_split_the_intensity(rng):
    frames = rng.random((7, 16, 16)).astype(np.float32)
    r = np.hypot(*(np.indices((16, 16)) - 7.5))
    bf = (r < 4).astype(np.float32)
    adf = (r >= 4).astype(np.float32)
    sums, _, tot = virtual_detector(frames, np.stack([bf, adf]))
    np.testing.assert_allclose(sums.sum(1), tot, rtol=1e-6)


def test_radial_sums_equal_numpy_annuli_and_ellipse_corrected_profiles(rng):
    """The radial_sums kernel (BF/ADF sums and the phase map's profiles) against masks and bins
    built in NumPy from the definition (annuli in the plain radius inside the box, profile bins of
    the ellipse-corrected radius), each pattern about its own origin; empty bins and an empty
    pattern included."""
    from tomostrain.gpu_core.kernels.virtual_detector import radial_sums
    from tomostrain.strain.calibrate import correct_ellipse

    frames = rng.poisson(3.0, (9, 31, 27)).astype(np.float32)
    frames[4] = 0.0
    origins = np.column_stack([15.0 + 2 * rng.random(9), 12.0 + 2 * rng.random(9)])
    edges, box, ellipse = [(0.0, 4.3), (6.0, 11.5)], (2, 29, 1, 25), (1.12, 35.0)
    sums, prof = radial_sums(frames, origins, edges, box, ellipse=ellipse, r_min=2.5, nbins=14)
    iy, ix = np.indices(frames.shape[1:])
    dy, dx = iy - origins[:, 0, None, None], ix - origins[:, 1, None, None]
    r = np.hypot(dy, dx)
    inside = np.zeros(frames.shape[1:], bool)
    inside[2:29, 1:25] = True
    want = np.stack([np.where((r >= a) & (r < b) & inside, frames, 0).sum((1, 2)) for a, b in edges], 1)
    b = np.floor(np.hypot(*correct_ellipse(dy, dx, *ellipse)) - 2.5)
    want_prof = np.stack([np.where(b == k, frames, 0).sum((1, 2)) for k in range(14)], 1)
    np.testing.assert_allclose(sums, want, rtol=1e-12)
    np.testing.assert_allclose(prof, want_prof, rtol=1e-12)
    assert want.min() == 0 and want[:, 1].max() > 0 and want_prof[:, -1].max() > 0
    _, plain = radial_sums(frames, origins, r_min=2.5, nbins=14)           # no ellipse, no annuli
    want_plain = np.stack([np.where(np.floor(r - 2.5) == k, frames, 0).sum((1, 2)) for k in range(14)], 1)
    np.testing.assert_allclose(plain, want_plain, rtol=1e-12)
    assert not np.allclose(plain, prof)                                     # the ellipse counts
