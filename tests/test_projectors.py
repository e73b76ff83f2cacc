"""Forward/back projectors: the DESIGN.md §3 convention, adjointness, scaling, ASTRA, shifts."""
import numpy as np
import pytest

from tomostrain.errors import GeometryError, InputError
from tomostrain.reconstruction import TiltGeometry, backproject, project


def _disk(n, r):
    c = (n - 1) / 2
    zz, xx = np.indices((n, n)) - c
    return (zz**2 + xx**2 <= r**2).astype(np.float32)


def test_single_voxel_lands_where_the_convention_says():
    n = 9  # centre voxel index 4
    vol = np.zeros((1, n, n), np.float32)
    vol[0, 4 + 2, 4] = 1.0  # z = +2, x = 0
    p = project(vol, [0.0, 90.0, -90.0, 30.0], n_cols=11)  # detector centre column 5
    np.testing.assert_allclose(p[0, 0], np.eye(11)[5], atol=1e-6)  # u = 0
    np.testing.assert_allclose(p[1, 0], np.eye(11)[7], atol=1e-6)  # +90: positive z -> higher column
    np.testing.assert_allclose(p[2, 0], np.eye(11)[3], atol=1e-6)
    np.testing.assert_allclose(p[3, 0], np.eye(11)[6], atol=1e-6)  # u = 2 sin 30 = 1
    vol[:] = 0
    vol[0, 4, 4 + 3] = 1.0  # x = +3, z = 0; at 60 degrees u = 1.5: half in columns 6 and 7
    p = project(vol, [0.0, 60.0], n_cols=11)
    np.testing.assert_allclose(p[0, 0], np.eye(11)[8], atol=1e-6)
    np.testing.assert_allclose(p[1, 0, 6:8], [0.5, 0.5], atol=1e-6)
    # and back: a delta at column centre+1 seen at 90 degrees smears along the row z = +1
    sino = np.zeros((1, 1, 9), np.float32)
    sino[0, 0, 5] = 1.0
    bp = backproject(sino, [90.0])
    want = np.zeros((9, 9), np.float32)
    want[5, :] = 1.0
    np.testing.assert_allclose(bp[0], want, atol=1e-6)


def test_centre_moves_the_projection():
    vol = np.zeros((1, 9, 9), np.float32)
    vol[0, 4, 4] = 1.0
    p = project(vol, [0.0, 37.0], center=2.0, n_cols=9)
    assert np.argmax(p[0, 0]) == 2 and np.argmax(p[1, 0]) == 2


@pytest.mark.parametrize("n_cols,center", [(23, None), (27, 14.3)])
def test_adjoint(rng, n_cols, center):
    n, rows = 21, 3
    angles = np.concatenate([np.linspace(-90, 90, 13), [45.0, -45.0, 44.9, 0.0, 0.0]])  # duplicates ok
    shifts = np.stack([np.zeros(angles.size), rng.uniform(-3, 3, angles.size)], 1)
    geo = TiltGeometry(angles, rows, n_cols, center=center, shifts=shifts)
    x = rng.standard_normal((rows, n, n)).astype(np.float32)
    y = rng.standard_normal((angles.size, rows, n_cols)).astype(np.float32)
    ax = project(x, geometry=geo)
    aty = backproject(y, geometry=geo, n_x=n)
    lhs = np.dot(ax.ravel().astype(np.float64), y.ravel())
    rhs = np.dot(x.ravel().astype(np.float64), aty.ravel())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_uniform_disk_projects_to_chord_length():
    n, r = 64, 20.0
    vol = _disk(n, r)[None]
    angles = np.array([0.0, 13.0, 45.0, 71.0, 90.0, -33.0])
    p = project(vol, angles)[:, 0]
    u = np.arange(n) - (n - 1) / 2
    chord = 2 * np.sqrt(np.clip(r**2 - u**2, 0, None))
    inner = np.abs(u) < 0.8 * r
    for k in range(len(angles)):
        rel = np.abs(p[k, inner] - chord[inner]) / chord[inner]
        assert rel.max() < 0.04, (angles[k], rel.max())  # distance driven: no 45-degree ripple
        assert abs(p[k].sum() - vol.sum()) < 1e-3 * vol.sum()  # mass is conserved


def test_column_and_row_shifts_move_the_projections():
    rng = np.random.default_rng(3)
    vol = np.zeros((12, 16, 16), np.float32)
    vol[3:9, 4:12, 4:12] = rng.random((6, 8, 8))
    angles = np.array([-50.0, 0.0, 20.0])
    p0 = project(vol, angles, n_cols=20)
    shifts = np.array([[0.0, 2.0], [0.0, -1.0], [0.0, 3.0]])
    p1 = project(vol, angles, shifts=shifts, n_cols=20)  # dx folded into the centre
    for k, (_, dx) in enumerate(shifts.astype(int)):
        np.testing.assert_allclose(np.roll(p0[k], dx, axis=1), p1[k], atol=1e-5)  # raw(x + dx) = aligned(x)
    shifts[:, 0] = [1.0, -2.0, 0.0]
    p2 = project(vol, angles, shifts=shifts, n_cols=20)  # dy by resampling
    for k, (dy, dx) in enumerate(shifts.astype(int)):
        np.testing.assert_allclose(np.roll(p0[k], (dy, dx), axis=(0, 1)), p2[k], atol=1e-5)
    # backprojecting the shifted data with its shifts equals backprojecting the unshifted data
    np.testing.assert_allclose(backproject(p2, angles, shifts=shifts, n_x=16), backproject(p0, angles, n_x=16),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.peer
def test_sinogram_equals_astra():
    astra = pytest.importorskip("astra")
    from tomostrain.synthetic.phantoms import shepp_logan

    n = 64
    img = shepp_logan(n)
    angles = np.linspace(-75, 88, 37)
    ours = project(img[None], angles)[:, 0]
    vg = astra.create_vol_geom(n, n)
    pg = astra.create_proj_geom("parallel", 1.0, n, -np.deg2rad(angles))
    pid = astra.create_projector("linear", pg, vg)
    sid, theirs = astra.create_sino(img, pid)
    astra.data2d.delete(sid)
    astra.projector.delete(pid)
    corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    assert corr > 0.99
    np.testing.assert_array_equal(np.argmax(ours, 1), np.argmax(theirs, 1))  # no mirror, no offset
    mirrored = project(img[None], -angles)[:, 0]
    assert np.corrcoef(mirrored.ravel(), theirs.ravel())[0, 1] < corr - 0.05


def test_bad_input():
    vol = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(InputError, match="volume"):
        project(np.zeros((2, 8, 9)), [0.0])
    with pytest.raises(GeometryError, match="angles_deg"):
        project(vol)
    with pytest.raises(GeometryError, match="center"):
        project(vol, [0.0], center=9.0)
    with pytest.raises(GeometryError, match="shape"):
        backproject(np.zeros((3, 2, 8), np.float32), [0.0, 1.0])
    with pytest.raises(InputError, match="NaN"):
        backproject(np.full((1, 2, 8), np.nan, np.float32), [0.0])
    with pytest.raises(GeometryError, match="not both"):
        project(vol, [0.0], geometry=TiltGeometry([0.0], 2, 8))
    p = np.ones((1, 2, 8), np.float64)
    backproject(p, [0.0])
    assert p.dtype == np.float64 and (p == 1).all()  # input untouched


@pytest.mark.gpu
def test_gpu_equals_cpu_and_is_adjoint():
    import cupy as cp

    rng = np.random.default_rng(0)
    n, rows, na = 256, 16, 181
    angles = np.linspace(-90, 90, na)
    geo = TiltGeometry(angles, rows, 300, center=151.7, shifts=np.stack([np.zeros(na), rng.uniform(-4, 4, na)], 1))
    x = rng.random((rows, n, n), dtype=np.float32)
    y = rng.random((na, rows, 300), dtype=np.float32)
    ax_cpu, aty_cpu = project(x, geometry=geo), backproject(y, geometry=geo, n_x=n)
    ax_gpu = project(cp.asarray(x), geometry=geo)
    aty_gpu = backproject(cp.asarray(y), geometry=geo, n_x=n)
    assert isinstance(ax_gpu, cp.ndarray) and isinstance(aty_gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(ax_gpu), ax_cpu, rtol=1e-4, atol=1e-4 * float(ax_cpu.max()))
    np.testing.assert_allclose(cp.asnumpy(aty_gpu), aty_cpu, rtol=1e-4, atol=1e-4 * float(aty_cpu.max()))
    lhs = float(cp.vdot(ax_gpu.astype(cp.float64), cp.asarray(y, cp.float64)))
    rhs = float(cp.vdot(cp.asarray(x, cp.float64), aty_gpu.astype(cp.float64)))
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
