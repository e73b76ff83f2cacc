"""The CPU projectors' rows-last kernels against the GPU kernels' per-element math.

The CPU twins (``forward_rows_cpu``, ``back_rows_cpu``) tile the work (blocks of ``XB`` x voxels,
groups of ``KA`` angles, blocks of ``RB`` rows) and share one footprint between all rows. Here
they are checked against the GPU kernels' own device functions (``_fp_bin``: a gather per
detector bin; ``_bp_voxel``: a gather per voxel), evaluated element by element in a jitted loop
exactly as the CUDA grid does, on sizes that leave a remainder in every tile dimension.
"""
import numba
import numpy as np
import pytest

from tomostrain.gpu_core.kernels import projector as K
from tomostrain.reconstruction import TiltGeometry
from tomostrain.reconstruction.iterative import os_sart, sirt


@numba.njit(parallel=True)
def _gpu_forward_on_cpu(vol, vol_zx, geo, out):
    n_angles, n_rows, n_cols = out.shape
    for i in numba.prange(out.size):  # the kernel's flat index -> (k, y, j)
        j = i % n_cols
        r = i // n_cols
        out[r // n_rows, r % n_rows, j] = K._fp_bin(vol, vol_zx, r % n_rows, j, geo, r // n_rows)


@numba.njit(parallel=True)
def _gpu_back_on_cpu(proj, geo, out):
    n_rows, nz, nx = out.shape
    half = np.float32(0.5) * np.float32(nx - 1)
    for i in numba.prange(out.size):
        ix = i % nx
        r = i // nx
        out[r // nz, r % nz, ix] = K._bp_voxel(proj, r // nz, np.float32(r % nz) - half, np.float32(ix) - half, geo)


def _case(rng, n_rows, n, n_cols, n_angles):
    theta = np.concatenate([[np.pi / 4, -np.pi / 2, 0.0], rng.uniform(-np.pi / 2, np.pi / 2, n_angles - 3)])
    geo = K.geometry_table(np.cos(theta), np.sin(theta), (n_cols - 1) / 2 + rng.uniform(-4, 4, n_angles))
    return geo


@pytest.mark.parametrize("n_rows", [1, 5, K.RB + 7])  # one row; fewer than a SIMD vector; two row blocks
def test_rows_last_kernels_equal_the_gpu_per_element_math(rng, n_rows):
    n, n_cols, n_angles = K.XB + 5, K.XB + 11, 2 * K.KA + 1  # a remainder in every tile dimension
    geo = _case(rng, n_rows, n, n_cols, n_angles)
    vol = rng.random((n_rows, n, n), dtype=np.float32)
    proj = rng.random((n_angles, n_rows, n_cols), dtype=np.float32)

    want_f = np.zeros((n_angles, n_rows, n_cols), np.float32)
    _gpu_forward_on_cpu(vol, np.ascontiguousarray(vol.transpose(0, 2, 1)), geo, want_f)
    got_f = K.swap_last(K.forward_rows(K.volume_to_rows_last(vol), geo, n_cols))
    np.testing.assert_allclose(got_f, want_f, rtol=2e-5, atol=2e-5 * float(want_f.max()))
    assert np.array_equal(K.forward(vol, geo, n_cols), got_f)          # the public-layout wrapper

    want_b = np.zeros((n_rows, n, n), np.float32)
    _gpu_back_on_cpu(proj, geo, want_b)
    got_b = K.volume_from_rows_last(K.back_rows(K.swap_last(proj), geo, n))
    assert np.array_equal(got_b, want_b)  # same terms in the same order: bit-identical
    assert np.array_equal(K.back(proj, geo, n), got_b)


def test_swap_last_and_volume_layouts_round_trip(rng):
    a = rng.random((3, 37, 70), dtype=np.float32)
    assert np.array_equal(K.swap_last(a), a.transpose(0, 2, 1))
    v = rng.random((5, 33, 33), dtype=np.float32)
    t = K.volume_to_rows_last(v)
    assert np.array_equal(t, v.transpose(1, 2, 0)) and t.flags.c_contiguous
    assert np.array_equal(K.volume_from_rows_last(t), v)


def _reference_sirt(b, geo, n_x, iterations, mask=None, nonnegative=False):
    """SIRT in the public layout with plain array expressions (the GPU code path)."""
    from tomostrain.reconstruction.iterative import Operator

    op = Operator(geo, n_x, np)
    row, col = op.row_weights(), op.column_weights()
    if mask is not None:
        col = col * mask
    x = np.zeros((geo.n_rows, n_x, n_x), np.float32)
    for _ in range(iterations):
        x += col * op.back(row * (b - op.forward(x)))
        if nonnegative:
            np.maximum(x, 0, out=x)
    return x


def test_sirt_in_the_work_layout_equals_the_public_layout_iteration(rng):
    n, rows = 24, 6
    angles = np.linspace(-70, 70, 29)
    geo = TiltGeometry(angles, rows, n)
    truth = np.zeros((rows, n, n), np.float32)
    truth[:, 6:18, 8:16] = rng.random((rows, 1, 1)).astype(np.float32) + 0.5
    b = K.forward(truth, geo.kernel_table(np), n)
    norms = []
    got = sirt(b, angles, iterations=15, callback=lambda it, x, r: norms.append((x.shape, r)))
    want = _reference_sirt(b, geo, n, 15)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))
    assert all(shape == (rows, n, n) for shape, _ in norms)             # the callback sees [y, z, x]
    assert norms[0][1] == pytest.approx(float(np.linalg.norm(b)), rel=1e-5)  # ||b - A 0||
    assert norms[-1][1] < 0.2 * norms[0][1]                             # and it converges
    support = np.zeros((rows, n, n), bool)
    support[:, 4:20, 4:20] = True                                       # a per-slice support
    got = sirt(b, angles, iterations=5, support=support)
    np.testing.assert_allclose(got, _reference_sirt(b, geo, n, 5, support), rtol=1e-4, atol=1e-5 * float(want.max()))
    assert not got[~support].any()
    one = os_sart(b, angles, iterations=1, n_subsets=1)                 # one subset: one SIRT iteration
    np.testing.assert_allclose(one, _reference_sirt(b, geo, n, 1), rtol=1e-4, atol=1e-5 * float(want.max()))
    # the non-negative iteration (clip at 0 fused into the update) against the clipped reference
    clipped = _reference_sirt(b, geo, n, 15, nonnegative=True)
    assert clipped.min() >= 0 and want.min() < -1e-3 * float(want.max())  # the clip matters here
    np.testing.assert_allclose(sirt(b, angles, iterations=15, nonnegative=True), clipped, rtol=1e-4,
                               atol=1e-5 * float(want.max()))
    np.testing.assert_allclose(os_sart(b, angles, iterations=1, n_subsets=1, nonnegative=True),
                               _reference_sirt(b, geo, n, 1, nonnegative=True), rtol=1e-4, atol=1e-5 * float(want.max()))
