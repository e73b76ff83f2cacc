"""TiltGeometry validation and the alignment resampling formula of DESIGN.md §3."""
import numpy as np
import pytest

from tomostrain.errors import GeometryError, InputError
from tomostrain.reconstruction import TiltGeometry, align_projections


def test_defaults_and_per_angle_centres():
    geo = TiltGeometry([-10, 0, 10, 10], 5, 8, shifts=[[0, 1], [0, 0], [2, -1.5], [0, 0]])
    assert geo.center == 3.5 and geo.n_angles == 4
    np.testing.assert_allclose(geo.column_centres(), [4.5, 3.5, 2.0, 3.5])
    np.testing.assert_allclose(geo.angles_rad, np.deg2rad([-10, 0, 10, 10]))
    assert geo.needs_resampling  # a row shift
    assert not TiltGeometry([0.0], 5, 8, shifts=[[0, 3]]).needs_resampling
    assert TiltGeometry([0.0], 5, 8, tilt_axis_deg=1.0).needs_resampling
    sub = geo.subset(np.array([2, 3]))
    np.testing.assert_allclose(sub.column_centres(), [2.0, 3.5])
    assert not geo.aligned().needs_resampling and geo.aligned().center == 3.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(angles_deg=[]), "non-empty"),
        (dict(angles_deg=[0.0, np.nan]), "NaN"),
        (dict(center=-0.5), "outside the detector"),
        (dict(center=7.01), "outside the detector"),
        (dict(shifts=np.zeros((3, 2))), r"\(2, 2\)"),
        (dict(shifts=[[0, 0], [np.inf, 0]]), "NaN or Inf"),
        (dict(n_cols=0), "positive integer"),
        (dict(tilt_axis_deg=np.nan), "tilt_axis_deg"),
    ],
)
def test_validation(kwargs, match):
    args = dict(angles_deg=[0.0, 10.0], n_rows=4, n_cols=8) | kwargs
    with pytest.raises(GeometryError, match=match):
        TiltGeometry(**args)


def test_integer_shifts_move_by_whole_pixels(rng):
    raw = rng.random((2, 12, 14)).astype(np.float32)
    out = align_projections(raw, [[2, -3], [0, 1]])
    np.testing.assert_allclose(out[0, 2:7, 3:10], raw[0, 4:9, 0:7], atol=1e-6)  # aligned(y,x) = raw(y+2, x-3)
    np.testing.assert_allclose(out[1, :, 2:10], raw[1, :, 3:11], atol=1e-6)
    assert out.dtype == np.float32


def test_tilt_axis_direction():
    # in the raw image the tilt axis runs along (dy, dx) = (cos a, -sin a); aligning makes it vertical
    n, a = 41, 20.0
    c = (n - 1) / 2
    yy, xx = np.indices((n, n)) - c
    t = np.deg2rad(a)
    dist = yy * np.sin(t) + xx * np.cos(t)  # distance from the line through the centre along (cos a, -sin a)
    raw = np.exp(-(dist**2) / 2.0).astype(np.float32)[None]
    out = align_projections(raw, None, a)[0]
    inner = slice(10, 31)
    assert (np.argmax(out[inner], axis=1) == c).all()
    wrong = align_projections(raw, None, -a)[0]
    assert not (np.argmax(wrong[inner], axis=1) == c).all()


def test_align_rejects_bad_input():
    with pytest.raises(InputError):
        align_projections(np.zeros((2, 3)), None)
    with pytest.raises(GeometryError, match="shifts"):
        align_projections(np.zeros((2, 3, 3)), np.zeros((3, 2)))
