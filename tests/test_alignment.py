"""Tilt-series alignment against known drift, rotation centre and tilt axis.

The synthetic tilt series (synthetic.tilt_series, independent of the aligner) misaligns ideal
projections with DESIGN.md §3's formula. Alignment is defined up to a rigid translation of the
object: a common shift, and across the axis a drift ``alpha cos(theta) + beta sin(theta)``, which
moves the object in x and z. Errors are measured after removing that family, and the volumes are
compared after registering them onto the phantom.
"""
import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from tomostrain.errors import GeometryError, InputError
from tomostrain.io import TiltSeries
from tomostrain.reconstruction import Alignment, align, reconstruct
from tomostrain.reconstruction import alignment as alignment_module
from tomostrain.reconstruction.alignment import shift_errors
from tomostrain.synthetic.phantoms import sodiated_particle
from tomostrain.synthetic.tiltseries import tilt_series

ANGLES = np.arange(-70.0, 70.1, 2.0)
TILT_AXIS = 4.0
CENTER_OFFSET = 2.5


@pytest.fixture(scope="module")
def drifting():
    density, _, _ = sodiated_particle((64, 128, 128))
    rng = np.random.default_rng(3)
    shifts = np.cumsum(rng.normal(0.0, 0.8, (ANGLES.size, 2)), 0)
    shifts -= shifts.mean(0)
    data, truth = tilt_series(density, ANGLES, dose=2000, shifts=shifts, center_offset=CENTER_OFFSET,
                              tilt_axis_deg=TILT_AXIS, seed=1)
    return density, data, truth


def gauge_free_errors(found, truth_shifts, a_deg):
    return shift_errors(found, truth_shifts, ANGLES, a_deg)


def test_shift_errors_ignore_only_moves_of_the_whole_object():
    th = np.radians(ANGLES)
    a = np.radians(TILT_AXIS)
    e_along, e_across = np.array([np.cos(a), -np.sin(a)]), np.array([np.sin(a), np.cos(a)])
    rigid = 1.5 * e_along + (0.7 + 2.0 * np.cos(th) - 1.2 * np.sin(th))[:, None] * e_across
    assert max(shift_errors(rigid, 0 * rigid, ANGLES, TILT_AXIS)) < 1e-12
    wobble = np.where(np.arange(ANGLES.size) % 2, 0.3, -0.3)          # not a move of the object
    across, along = shift_errors(rigid + wobble[:, None] * e_across, rigid, ANGLES, TILT_AXIS)
    assert across == pytest.approx(0.3, rel=0.05) and along < 1e-12


def registered_rmse(volume, density):
    """RMSE against the phantom after a sub-voxel registration (phase correlation, 1/10 voxel,
    cubic shift) and a least-squares intensity scale."""
    shift, _, _ = phase_cross_correlation(density, volume, upsample_factor=10)
    moved = ndimage.shift(volume, shift, order=3)
    scale = (moved * density).sum() / (moved * moved).sum()
    return float(np.sqrt(np.mean((scale * moved - density) ** 2)))


def test_recovers_tilt_axis_drift_and_centre(drifting):
    density, data, truth = drifting
    found = align(data, ANGLES, tilt_axis_deg=0.0, search_deg=10.0)
    assert isinstance(found, Alignment)
    assert abs(found.tilt_axis_deg - TILT_AXIS) < 0.1
    assert found.center == (data.shape[2] - 1) / 2.0
    across, along = gauge_free_errors(found.shifts, truth["shifts"], TILT_AXIS)
    assert across < 0.1 and along < 0.1, (across, along)
    # the volume from the found alignment is as good as from the true one (up to where it sits)
    ours = reconstruct(found.apply(data), method="sirt", angles_deg=ANGLES, iterations=50)
    true = reconstruct(data, method="sirt", angles_deg=ANGLES, iterations=50, shifts=truth["shifts"],
                       tilt_axis_deg=TILT_AXIS, center=truth["center"])
    none = reconstruct(data, method="sirt", angles_deg=ANGLES, iterations=50)
    assert registered_rmse(ours, density) <= 1.05 * registered_rmse(true, density), (
        registered_rmse(ours, density), registered_rmse(true, density))
    assert registered_rmse(none, density) > 1.3 * registered_rmse(true, density)


def test_no_prior_search_finds_the_compact_particle_axis(drifting):
    """Without a prior the search covers every direction; the compact platelet's profiles along
    the axis decide it (before the profile-spread scan the reprojection mismatch picked 41.06
    degrees for the true 4)."""
    _, data, truth = drifting
    found = align(data, ANGLES, refine=0)
    assert abs(found.tilt_axis_deg - TILT_AXIS) < 0.3, found.tilt_axis_deg     # measured 4.03
    assert max(gauge_free_errors(found.shifts, truth["shifts"], TILT_AXIS)) < 0.1


def test_tilt_axis_search_on_binned_projections(drifting, monkeypatch):
    """Projections over LINE_SIZE pixels are searched for the tilt axis binned (here 2 x 2), from
    the nominal axis 0 as a prior (as the demo does)."""
    _, data, truth = drifting
    monkeypatch.setattr(alignment_module, "LINE_SIZE", 64)
    found = align(data, ANGLES, tilt_axis_deg=0.0, refine=0)
    assert abs(found.tilt_axis_deg - TILT_AXIS) < 0.1
    assert max(gauge_free_errors(found.shifts, truth["shifts"], TILT_AXIS)) < 0.1


@pytest.mark.xfail(reason="since the common-field mask (real needles), matching on this 48-px crop only "
                          "moves 0.285 -> 0.277 px; the centre-of-mass start is already masked", strict=False)
def test_projection_matching_corrects_mass_leaving_the_field_of_view(drifting, monkeypatch):
    """Cropped detector: at high tilt part of the particle leaves the field of view and biases the
    centre of mass; rounds of projection matching (here on 2x-binned projections) reduce the error."""
    _, data, truth = drifting
    cropped = np.ascontiguousarray(data[:, :, 40:88])
    monkeypatch.setattr(alignment_module, "MATCH_SIZE", 32)
    errors = [gauge_free_errors(align(cropped, ANGLES, tilt_axis_deg=TILT_AXIS, find_tilt_axis=False,
                                      refine=r).shifts, truth["shifts"], TILT_AXIS)[0] for r in (0, 3)]
    assert errors[0] > 0.2
    assert errors[1] < 0.6 * errors[0], errors


def test_sign_conventions_by_hand():
    """A single bright voxel off the axis, pure drift (no rotation): the found shifts put it back
    where the aligned frame has it, and apply() takes a series or its array."""
    vol = np.zeros((16, 32, 32), np.float32)
    vol[8, 12, 20] = 1.0
    vol = ndimage.gaussian_filter(vol, 1.0)
    shifts = np.zeros((ANGLES.size, 2))
    shifts[:, 0] = np.linspace(-2, 2, ANGLES.size)                 # drift along the axis (y)
    shifts[:, 1] = 1.5 * np.sin(np.linspace(0, 9, ANGLES.size))   # and across it
    shifts -= shifts.mean(0)
    data, truth = tilt_series(vol, ANGLES, shifts=shifts)
    found = align(data, ANGLES, find_tilt_axis=False, refine=0)
    across, along = gauge_free_errors(found.shifts, shifts, 0.0)
    assert across < 0.05 and along < 0.05
    # apply() takes a TiltSeries or its array alike (an ndarray's own .data is a memoryview)
    np.testing.assert_array_equal(found.apply(TiltSeries(data, ANGLES)), found.apply(data))
    # the aligned voxel stays on one row (the drift along the axis is undone with the right sign)
    aligned = found.apply(data)
    rows = (aligned.sum(2) * np.arange(16)).sum(1) / aligned.sum((1, 2))
    assert np.ptp(rows) < 0.1   # a wrong sign would leave the 4 px drift; found: 0.06 px


def test_bad_input():
    data = np.ones((5, 8, 8), np.float32)
    with pytest.raises(GeometryError, match="angles"):
        align(data, np.arange(4.0))
    with pytest.raises(InputError, match="at least 3"):
        align(data[:2], np.arange(2.0))
    with pytest.raises(InputError, match="search_deg"):
        align(data, np.arange(5.0), search_deg=120)
    with pytest.raises(InputError, match="positive signal"):
        align(np.zeros((5, 8, 8), np.float32), np.arange(5.0))


def test_aligned_pipeline_keeps_the_phase_fractions(drifting, tmp_path):
    """Drift, off-centre axis and a 4 degree tilt axis, aligned from a nominal axis of 0: the TV
    reconstruction, segmentation and quantification recover the phantom's phase fractions (with
    linear instead of cubic resampling of the projections they did not: 0.15 / 0.49 / 0.37)."""
    from tomostrain import io, pipeline
    from tomostrain.synthetic.phantoms import sodiated_particle

    _, data, _ = drifting
    _, _, truth = sodiated_particle((64, 128, 128))
    out = pipeline.tomo(io.TiltSeries(data, ANGLES), tmp_path / "res.h5", method="tv", segment=4, align=True,
                        tilt_axis_deg=0.0, backend="cpu")
    fractions = io.read_results(out)["tomo"]["quantify"]["@attrs"]["fractions"]
    fractions = json.loads(fractions) if isinstance(fractions, str) else fractions
    for key in ("shell", "core", "particles"):
        assert abs(fractions[key] - truth.fractions[key]) < 0.03, (fractions, truth.fractions)


@pytest.mark.gpu
def test_gpu_alignment_equals_cpu(drifting):
    import cupy as cp

    _, data, _ = drifting
    cpu = align(data, ANGLES, refine=1)
    gpu = align(cp.asarray(data), ANGLES, refine=1)
    assert abs(gpu.tilt_axis_deg - cpu.tilt_axis_deg) < 0.02
    assert max(shift_errors(gpu.shifts, cpu.shifts, ANGLES, cpu.tilt_axis_deg)) < 0.02
    np.testing.assert_allclose(gpu.shifts, cpu.shifts, atol=0.05)
