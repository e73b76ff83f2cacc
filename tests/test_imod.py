"""IMOD interop: .xf/.tlt files (exact round trips) and the xf <-> alignment convention, pinned by
hand-made single-pixel cases and by equality with tomostrain's own resampling."""
import numpy as np
import pytest

from tomostrain.errors import FileFormatError, GeometryError, InputError
from tomostrain.io import imod
from tomostrain.reconstruction.geometry import align_projections
from tomostrain.reconstruction.xf import alignment_to_xf, apply_xf, xf_to_alignment


def _dot(shape, row, col):
    img = np.zeros((1,) + shape, np.float32)
    img[0, row, col] = 1.0
    return img


def test_pure_shift_moves_a_pixel_by_dx_columns_and_dy_rows():
    # 9 x 11 image, centre (4, 5); IMOD DX = +2 (x = column), DY = +1 (y = row index)
    raw = _dot((9, 11), 4, 5)
    out = apply_xf(raw, np.array([[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]]), order=1)
    assert [tuple(p) for p in np.argwhere(out[0] > 0.5)] == [(5, 7)]


def test_rotation_is_about_the_centre_and_counter_clockwise_with_y_up():
    # A = [[0, -1], [1, 0]]: (x, y) = (+2, 0) from the centre goes to (0, +2): column -> row
    raw = _dot((9, 11), 4, 7)
    out = apply_xf(raw, np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]), order=1)
    assert [tuple(p) for p in np.argwhere(out[0] > 0.5)] == [(6, 5)]
    # the tomostrain view of the same transform: a = -90 deg, no shift
    shifts, axis = xf_to_alignment(np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]))
    assert axis == pytest.approx(-90.0) and np.allclose(shifts, 0.0)


def test_tomostrain_shift_is_the_negative_imod_shift():
    xf = alignment_to_xf(np.array([[1.5, -2.25]]), 0.0)  # (dy, dx)
    np.testing.assert_allclose(xf[0], [[1, 0, 2.25], [0, 1, -1.5]], atol=1e-15)


@pytest.mark.parametrize("seed, axis", [(0, 0.0), (1, 7.3), (2, -93.0)])
def test_xf_from_tomostrain_shifts_gives_the_same_aligned_series(seed, axis):
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0, 4, (6, 2))
    data = rng.random((6, 20, 26)).astype(np.float32)
    xf = alignment_to_xf(shifts, axis)
    np.testing.assert_allclose(apply_xf(data, xf), align_projections(data, shifts, axis), atol=1e-5)
    back, found = xf_to_alignment(xf)
    np.testing.assert_allclose(back, shifts, atol=1e-12)
    assert found == pytest.approx(axis, abs=1e-12)


def test_centre_is_folded_into_the_exported_shifts():
    rng = np.random.default_rng(4)
    shifts, axis, shape = rng.normal(0, 2, (4, 2)), 5.0, (16, 21)
    centre = 12.5  # the axis sits 2.5 px right of (21 - 1) / 2
    xf = alignment_to_xf(shifts, axis, shape=shape, center=centre)
    folded, _ = xf_to_alignment(xf)
    # the aligned frame differs by a column translation of 2.5 px: same raw point for p and p - 2.5
    rot = np.array([[np.cos(np.radians(axis)), np.sin(np.radians(axis))],
                    [-np.sin(np.radians(axis)), np.cos(np.radians(axis))]])
    np.testing.assert_allclose(folded - shifts, np.tile(rot @ [0.0, 2.5], (4, 1)), atol=1e-12)
    with pytest.raises(InputError, match="shape"):
        alignment_to_xf(shifts, axis, center=centre)


def test_general_transforms_are_refused_as_alignment_but_applied():
    xf = np.array([[[1.02, 0.0, 1.0], [0.0, 0.98, 0.0]]])  # magnification/stretch
    with pytest.raises(GeometryError, match="not one common rotation"):
        xf_to_alignment(xf)
    raw = _dot((9, 11), 4, 5)
    assert np.argwhere(apply_xf(raw, xf)[0] > 0.5).tolist() == [[4, 6]]
    with pytest.raises(GeometryError, match="2 transforms for 1 projections"):
        apply_xf(raw, np.concatenate([xf, xf]))
    with pytest.raises(GeometryError, match="singular"):
        apply_xf(raw, np.zeros((1, 2, 3)))


def test_xf_and_tlt_round_trips_are_exact(tmp_path):
    rng = np.random.default_rng(5)
    xf = alignment_to_xf(rng.normal(0, 10, (7, 2)), rng.uniform(-90, 90))
    xf[3, :, :2] = rng.normal(size=(2, 2))
    imod.write_xf(tmp_path / "a.xf", xf)
    np.testing.assert_array_equal(imod.read_xf(tmp_path / "a.xf"), xf)
    angles = rng.uniform(-80, 80, 7)
    imod.write_tlt(tmp_path / "a.tlt", angles)
    np.testing.assert_array_equal(imod.read_tlt(tmp_path / "a.tlt"), angles)
    assert len((tmp_path / "a.xf").read_text().splitlines()[0].split()) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tlt", "a.xf"]  # no temp files left


def test_xf_column_order_is_a11_a12_a21_a22_dx_dy(tmp_path):
    (tmp_path / "h.xf").write_text("   1.0  2.0  3.0  4.0  5.0  6.0\n\n")
    np.testing.assert_array_equal(imod.read_xf(tmp_path / "h.xf")[0], [[1, 2, 5], [3, 4, 6]])


@pytest.mark.parametrize("text, match", [
    ("1 0 0 1 0\n", "expected 6 numbers"),
    ("1 0 0 1 0 x\n", "not numbers"),
    ("1 0 0 1 0 nan\n", "NaN"),
    ("\n\n", "no transforms"),
])
def test_bad_xf_files(tmp_path, text, match):
    (tmp_path / "b.xf").write_text(text)
    with pytest.raises(FileFormatError, match=match):
        imod.read_xf(tmp_path / "b.xf")
    (tmp_path / "c.xf").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FileFormatError, match="not a text"):
        imod.read_xf(tmp_path / "c.xf")
