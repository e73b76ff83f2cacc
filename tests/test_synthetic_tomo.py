"""Synthetic tomography data: Shepp-Logan, the sodiated NiO particle and the tilt-series simulator."""
import numpy as np
import pytest
from scipy import ndimage

from tomostrain.errors import GeometryError, InputError
from tomostrain.synthetic import shepp_logan, sodiated_particle, tilt_series
from tomostrain.synthetic.tiltseries import _project

SMALL = dict(shape=(48, 64, 64), shell_thickness=2.5, particle_radius=(2.0, 3.0), n_particles=6)


@pytest.fixture(scope="module")
def particle():
    return sodiated_particle(seed=3, **SMALL)


# ---------------------------------------------------------------- Shepp-Logan


def test_shepp_logan_matches_skimage_and_is_upright():
    from skimage.data import shepp_logan_phantom

    ours, ref = shepp_logan(400), shepp_logan_phantom()
    assert ours.dtype == np.float32 and ours.shape == (400, 400)
    assert ours.min() == 0.0 and ours.max() == 1.0
    assert np.mean(np.abs(ours - ref) < 0.01) > 0.99
    assert np.mean(np.abs(ours[::-1] - ref) < 0.01) < 0.9  # flipped would not match: row 0 is the top
    # the three small ellipses at y = -0.605 are near the bottom rows
    assert ours[321, 200] == pytest.approx(0.3, abs=1e-6)
    assert ours[200, 200] == pytest.approx(0.2, abs=1e-6) and ours[0, 200] == 0.0


# ---------------------------------------------------------------- sodiated particle


def test_particle_is_deterministic_and_seeded(particle):
    d, l, t = particle
    d2, l2, _ = sodiated_particle(seed=3, **SMALL)
    d3, _, _ = sodiated_particle(seed=4, **SMALL)
    assert np.array_equal(d, d2) and np.array_equal(l, l2)
    assert not np.array_equal(d, d3)
    assert d.dtype == np.float32 and l.dtype == np.uint8 and d.shape == l.shape == SMALL["shape"]


def test_particle_labels_ordered_by_density_and_fractions(particle):
    d, l, t = particle
    assert set(np.unique(l)) == {0, 1, 2, 3}
    means = [d[l == k].mean() for k in range(4)]
    assert means == sorted(means) and means[0] == 0.0
    assert means[1:] == pytest.approx([0.55, 1.0, 1.6])
    n = [(l == k).sum() for k in (1, 2, 3)]
    assert [t.fractions[k] for k in ("shell", "core", "particles")] == pytest.approx(np.array(n) / sum(n))
    assert sum(t.fractions.values()) == pytest.approx(1.0)


def test_particle_fits_reconstruction_circle_and_rows(particle):
    d, l, _ = particle
    ny, n, _ = l.shape
    y, z, x = np.nonzero(l)
    r = np.hypot(z - (n - 1) / 2, x - (n - 1) / 2)
    assert r.max() < 0.4 * n
    assert y.min() > 0 and y.max() < ny - 1


def test_shell_covers_core_with_varying_thickness(particle):
    d, l, t = particle
    body = (l == 1) | (l == 2)
    surface = body & ~ndimage.binary_erosion(body)
    assert np.all(l[surface] == 1)  # the core is nowhere exposed
    assert t.shell_thickness["mean"] == pytest.approx(SMALL["shell_thickness"], rel=0.1)
    # +-40% field: the thickness spans a good part of [0.6, 1.4] x mean
    assert t.shell_thickness["max"] / t.shell_thickness["min"] > 1.6
    assert t.shell_thickness["max"] <= 1.4 * SMALL["shell_thickness"] + 1e-9
    # a shell voxel is never deeper than the thickest shell; a core voxel never shallower than the thinnest
    depth = ndimage.distance_transform_edt(body) - 0.5
    assert depth[l == 1].max() < t.shell_thickness["max"] + 1.0
    assert depth[l == 2].min() >= t.shell_thickness["min"] - 1.0


def test_ni_particles_sit_on_surface_and_do_not_touch(particle):
    d, l, t = particle
    comps, n = ndimage.label(l == 3, structure=np.ones((3, 3, 3)))
    assert n == t.n_particles == SMALL["n_particles"]
    sizes = np.sort(np.bincount(comps.ravel())[1:])
    assert np.array_equal(sizes, np.sort(t.particle_voxels))
    body = (l == 1) | (l == 2)
    for k in range(1, n + 1):
        touching = ndimage.binary_dilation(comps == k) & body
        assert touching.any()  # each Ni particle rests on the particle surface
    nominal = 2 * t.particle_radii
    assert np.all(np.abs(t.particle_diameters / nominal - 1) < 0.1)
    c = t.particle_centres
    gaps = np.linalg.norm(c[:, None] - c[None], axis=2) - (t.particle_radii[:, None] + t.particle_radii[None])
    assert gaps[~np.eye(n, dtype=bool)].min() >= 2.0


def test_particle_bad_input():
    with pytest.raises(InputError, match="shape"):
        sodiated_particle((10, 64, 64))
    with pytest.raises(InputError, match="densities"):
        sodiated_particle(SMALL["shape"], densities={"shell": 1.0, "core": 0.5, "particles": 2.0})
    with pytest.raises(InputError, match="too small"):
        sodiated_particle((32, 32, 32), shell_thickness=6)


# ---------------------------------------------------------------- tilt series: geometry pins


def _delta(shape, y, z, x):
    v = np.zeros(shape, np.float32)
    v[y, z, x] = 1.0
    return v


def _centroid(row):
    return float((row * np.arange(row.size)).sum() / row.sum())


def test_projection_sign_convention_positive_z_moves_right():
    # voxel at z = +6 (from the centre 16), x = 0: column = 16 + 6 sin(theta)
    vol = _delta((5, 33, 33), 2, 16 + 6, 16)
    data, truth = tilt_series(vol, [30.0, 0.0, -30.0])
    assert truth["center"] == 16.0
    assert [_centroid(p[2]) for p in data] == pytest.approx([19.0, 16.0, 13.0], abs=0.01)
    assert np.all(data[:, [0, 1, 3, 4]] == 0)  # the tilt axis runs along the rows: row y sees slice y


def test_projection_x_and_mass():
    vol = _delta((5, 33, 33), 1, 16, 16 + 5)  # x = +5
    data, _ = tilt_series(vol, [0.0, 60.0, -60.0, 90.0])
    assert [_centroid(p[1]) for p in data] == pytest.approx([21.0, 18.5, 18.5, 16.0], abs=0.01)
    assert data.sum(axis=(1, 2)) == pytest.approx(1.0, abs=0.01)


def test_projection_of_particle_conserves_mass(particle):
    d = particle[0][::8]  # 6 slices
    data, _ = tilt_series(d, np.arange(-70, 71, 35.0))
    assert data.sum(axis=(1, 2)) == pytest.approx(float(d.sum()), rel=5e-4)


def test_projector_equals_affine_transform_formula():
    """The sparse operator is ndimage.affine_transform(order=1) on the rotated supersampled grid
    (zeros outside the volume, interpolated up to the edge: mode 'grid-constant')."""
    rng = np.random.default_rng(0)
    vol = rng.random((3, 14, 18)).astype(np.float32)
    ss, center, theta = 2, 8.5 + 1.25, np.radians(27.0)
    ny, nz, nx = vol.shape
    nw = int(np.ceil((np.hypot(nz, nx) + 2.0) * ss))
    c, s = np.cos(theta), np.sin(theta)
    u0, w0 = 0.5 / ss - 0.5 - center, -(nw - 1) / (2.0 * ss)
    matrix = np.array([[1, 0, 0], [0, c / ss, s / ss], [0, -s / ss, c / ss]])
    offset = [0, (nz - 1) / 2 + u0 * s + w0 * c, (nx - 1) / 2 + u0 * c - w0 * s]
    samples = ndimage.affine_transform(vol, matrix, offset=offset, output_shape=(ny, nw, nx * ss), order=1,
                                       mode="grid-constant", prefilter=False)
    want = samples.sum(1).reshape(ny, nx, ss).mean(2) / ss
    got = _project(vol, np.array([theta]), center, ss, np)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_peer_astra_parallel_geometry():
    """DESIGN.md §3: ASTRA 2D parallel with slice vol[y] as the image and angles -radians(theta)."""
    astra = pytest.importorskip("astra")
    img = shepp_logan(48)
    vol = np.stack([img, img[::-1].copy()])
    angles = np.array([-60.0, -20.0, 0.0, 35.0, 70.0])
    data, _ = tilt_series(vol, angles)
    vg = astra.create_vol_geom(48, 48)
    pg = astra.create_proj_geom("parallel", 1.0, 48, -np.radians(angles))
    pid = astra.create_projector("linear", pg, vg)
    try:
        for y in range(2):
            sid, sino = astra.create_sino(vol[y], pid)
            astra.data2d.delete(sid)
            err = np.linalg.norm(data[:, y] - sino) / np.linalg.norm(sino)
            assert err < 0.03
    finally:
        astra.projector.delete(pid)


# ---------------------------------------------------------------- tilt series: misalignment pins


def test_center_offset_moves_rotation_axis():
    vol = _delta((3, 33, 33), 1, 16, 16)  # on the rotation axis
    data, truth = tilt_series(vol, [-50.0, 0.0, 40.0], center_offset=2.5)
    assert truth["center"] == 18.5
    assert [_centroid(p[1]) for p in data] == pytest.approx([18.5] * 3, abs=0.01)


def test_shift_convention_integer_shift():
    rng = np.random.default_rng(1)
    vol = np.zeros((16, 20, 20), np.float32)
    vol[4:12, 6:14, 6:14] = rng.random((8, 8, 8))
    shifts = np.array([[2.0, -3.0], [2.0, -3.0]])
    data, truth = tilt_series(vol, [0.0, 25.0], shifts=shifts)
    ideal, raw = truth["ideal"], truth["clean"]
    # aligned(y, x) = raw(y + dy, x + dx): raw[y + 2, x - 3] == ideal[y, x]
    np.testing.assert_allclose(raw[:, 2:, :-3], ideal[:, :-2, 3:], atol=1e-5)
    assert np.array_equal(data, raw)  # no dose: data are the clean projections
    assert np.array_equal(truth["shifts"], shifts)


def test_tilt_axis_rotation_convention():
    # voxel on the rotation axis, 4 rows below the image centre: aligned p0 = (4, 0)
    vol = _delta((21, 21, 21), 14, 10, 10)
    a, s = 30.0, np.array([1.5, -0.5])
    data, truth = tilt_series(vol, [0.0], shifts=s[None], tilt_axis_deg=a)
    img = data[0]
    yy, xx = np.indices(img.shape)
    got = np.array([(img * yy).sum(), (img * xx).sum()]) / img.sum()
    ra = np.radians(a)
    rot = np.array([[np.cos(ra), np.sin(ra)], [-np.sin(ra), np.cos(ra)]])
    want = 10 + rot @ np.array([4.0, 0.0]) + s  # raw q0 = R(a) p0 + s: the axis runs along (cos a, -sin a)
    np.testing.assert_allclose(got, want, atol=0.02)
    assert truth["tilt_axis_deg"] == a


def test_dose_poisson_statistics(particle):
    d = particle[0][20:24]
    dose = 50.0
    data, truth = tilt_series(d, [0.0, 30.0], dose=dose, seed=7)
    again, _ = tilt_series(d, [0.0, 30.0], dose=dose, seed=7)
    assert np.array_equal(data, again)
    clean = truth["clean"]
    scale = clean.max() / dose
    counts = data / scale
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # integer electron counts
    lam = clean / scale
    bright = lam > 10
    z = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    assert np.all(data[clean == 0] == 0)


def test_tilt_series_bad_input():
    vol = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(InputError, match="3D"):
        tilt_series(vol[0], [0.0])
    with pytest.raises(GeometryError, match="angles_deg"):
        tilt_series(vol, [[0.0, 1.0]])
    with pytest.raises(GeometryError, match="shifts"):
        tilt_series(vol, [0.0, 10.0], shifts=np.zeros((3, 2)))
    with pytest.raises(InputError, match="dose"):
        tilt_series(vol, [0.0], dose=-1)
    bad = vol.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        tilt_series(bad, [0.0])


@pytest.mark.gpu
def test_tilt_series_gpu_matches_cpu(particle):
    import cupy as cp

    d = particle[0]
    angles = np.arange(-60, 61, 20.0)
    shifts = np.random.default_rng(0).normal(0, 1.5, (len(angles), 2))
    cpu, _ = tilt_series(d, angles, shifts=shifts, tilt_axis_deg=2.0, center_offset=0.7)
    gpu, _ = tilt_series(cp.asarray(d), angles, shifts=shifts, tilt_axis_deg=2.0, center_offset=0.7)
    assert isinstance(gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, atol=1e-4 * float(cpu.max()))


def test_exact_ellipse_sinogram_matches_image_sums():
    """theta = 0 integrates along z (columns = x), theta = 90 along x (columns = z), DESIGN.md §3."""
    from tomostrain.synthetic import SHEPP_LOGAN, ellipse_image, ellipse_sinogram

    n = 64
    e = SHEPP_LOGAN.copy()
    e[:, 1:5] *= 0.45 * n
    e[:, 3] += 5.0                                       # off-centre in x: a mirror would show
    img = ellipse_image(e, n, supersample=8)             # [z, x]
    sino = ellipse_sinogram(e, [0.0, 90.0], n)
    np.testing.assert_allclose(sino[0], img.sum(axis=0), atol=0.02 * sino.max())
    np.testing.assert_allclose(sino[1], img.sum(axis=1), atol=0.02 * sino.max())
    assert np.abs(sino[0] - img.sum(axis=0)[::-1]).max() > 0.1 * sino.max()
