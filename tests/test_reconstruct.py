"""The ``reconstruct`` entry point: methods, shifts, chunking, duck-typed series, bad input."""
from types import SimpleNamespace

import numpy as np
import pytest

from tomostrain.errors import GeometryError, InputError
from tomostrain.reconstruction import project, reconstruct


def _phantom(rows=6, n=24):
    zz, xx = np.indices((n, n)) - (n - 1) / 2
    img = ((zz / 6.0) ** 2 + (xx / 9.0) ** 2 <= 1).astype(np.float32)
    img[(zz - 2) ** 2 + (xx + 3) ** 2 <= 4] = 1.6
    vol = np.repeat(img[None], rows, 0) * np.linspace(0.6, 1.2, rows, dtype=np.float32)[:, None, None]
    return vol


ANGLES = np.linspace(-80, 80, 33)


@pytest.mark.parametrize(
    "method,kw",
    [("sirt", dict(iterations=4)), ("cgls", dict(iterations=4)), ("os_sart", dict(iterations=2)),
     ("tv", dict(iterations=4)), ("fbp", {}), ("dart", dict(iterations=1, sirt_iterations=2, free_fraction=0.0))],
)
def test_chunked_equals_unchunked(method, kw):
    vol = _phantom()
    data = project(vol, ANGLES)
    whole = reconstruct(data, method, angles_deg=ANGLES, backend="cpu", **kw)
    tiny = reconstruct(data, method, angles_deg=ANGLES, backend="cpu", chunk_budget=1, **kw)  # one slice a chunk
    assert whole.shape == (6, 24, 24) and whole.dtype == np.float32
    np.testing.assert_allclose(tiny, whole, rtol=1e-5, atol=1e-5 * float(np.abs(whole).max()))


def test_known_shifts_reconstruct_like_unshifted():
    vol = _phantom(rows=12)
    vol[:2] = vol[-2:] = 0  # room for the row shifts
    rng = np.random.default_rng(5)
    shifts = rng.integers(-2, 3, (ANGLES.size, 2)).astype(float)  # whole pixels: resampling is exact
    clean = project(vol, ANGLES)
    moved = project(vol, ANGLES, shifts=shifts)  # raw(y, x) = aligned(y - dy, x - dx)
    ref = reconstruct(clean, "sirt", angles_deg=ANGLES, iterations=20, backend="cpu")
    got = reconstruct(moved, "sirt", angles_deg=ANGLES, shifts=shifts, iterations=20, backend="cpu")
    unaligned = reconstruct(moved, "sirt", angles_deg=ANGLES, iterations=20, backend="cpu")
    # compare away from the borders: rows within |dy| of the edge take the nearest raw row's
    # values, and detector columns shifted out of the detector are lost
    disk = np.hypot(*(np.indices((24, 24)) - 11.5)) < 9
    inner = (slice(2, 10), disk)
    err = np.sqrt(np.mean((got[inner] - ref[inner]) ** 2))
    assert err < 0.01 * vol.max()
    assert np.sqrt(np.mean((unaligned[inner] - ref[inner]) ** 2)) > 10 * err
    # sub-pixel column shifts only: folded exactly into the projector's per-angle centre; the
    # footprints fall differently on the bins, so compare both with the truth
    shifts = np.stack([np.zeros(ANGLES.size), rng.uniform(-1.5, 1.5, ANGLES.size)], 1)
    moved = project(vol, ANGLES, shifts=shifts)
    got = reconstruct(moved, "sirt", angles_deg=ANGLES, shifts=shifts, iterations=20, backend="cpu")
    unaligned = reconstruct(moved, "sirt", angles_deg=ANGLES, iterations=20, backend="cpu")
    e_ref, e_got, e_bad = (np.sqrt(np.mean((v[inner] - vol[inner]) ** 2)) for v in (ref, got, unaligned))
    assert e_got < 1.1 * e_ref and e_bad > 1.25 * e_ref, (e_ref, e_got, e_bad)


def test_series_object_and_centre():
    vol = _phantom(rows=2)
    data = project(vol, ANGLES, center=13.0, n_cols=28)
    series = SimpleNamespace(data=data, angles_deg=ANGLES)
    got = reconstruct(series, "cgls", center=13.0, iterations=15, n_x=24, backend="cpu")
    assert got.shape == (2, 24, 24)
    assert np.sqrt(np.mean((got - vol) ** 2)) < 0.1 * vol.max()
    wrong = reconstruct(series, "cgls", iterations=15, n_x=24, backend="cpu")  # default centre 13.5
    assert np.sqrt(np.mean((wrong - vol) ** 2)) > np.sqrt(np.mean((got - vol) ** 2))


def test_bad_input():
    data = np.ones((5, 3, 8), np.float32)
    angles = np.linspace(-60, 60, 5)
    with pytest.raises(InputError, match="empty"):
        reconstruct(np.ones((0, 3, 8), np.float32), angles_deg=[])
    bad = data.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        reconstruct(bad, angles_deg=angles)
    with pytest.raises(GeometryError, match="4 angles given for 5 projections"):
        reconstruct(data, angles_deg=angles[:4])
    with pytest.raises(GeometryError, match="outside the detector"):
        reconstruct(data, angles_deg=angles, center=8.5)
    with pytest.raises(GeometryError, match="angles_deg"):
        reconstruct(data)
    with pytest.raises(InputError, match="method"):
        reconstruct(data, "art", angles_deg=angles)
    with pytest.raises(InputError, match="not iterative"):
        reconstruct(data, "fbp", angles_deg=angles, iterations=3)
    with pytest.raises(InputError, match="3-D"):
        reconstruct(np.ones((5, 8)), angles_deg=angles)


@pytest.mark.gpu
def test_gpu_streaming_equals_cpu():
    import cupy as cp

    vol = _phantom(rows=40, n=64)
    angles = np.linspace(-70, 70, 71)
    data = project(vol, angles)
    cpu = reconstruct(data, "sirt", angles_deg=angles, iterations=20, backend="cpu")
    streamed = reconstruct(data, "sirt", angles_deg=angles, iterations=20, backend="gpu", chunk_budget=2_000_000)
    assert isinstance(streamed, np.ndarray)  # host in, host out
    np.testing.assert_allclose(streamed, cpu, rtol=1e-4, atol=1e-4 * float(cpu.max()))
    on_gpu = reconstruct(cp.asarray(data), "sirt", angles_deg=angles, iterations=20, backend="gpu")
    assert isinstance(on_gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(on_gpu), cpu, rtol=1e-4, atol=1e-4 * float(cpu.max()))
