"""Ring removal over phantom variants: sizes, object kinds, gain-error kinds (ground truth: the
reconstruction of the same data without gain errors)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from tomostrain.reconstruction import preprocess as pp
from tomostrain.reconstruction.fbp import fbp

pytest.importorskip("algotom")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_xray import ring_case, ring_gain, ring_holdout_case  # noqa: E402


def _ratio_and_bias(kind, n, fault, method):
    """Ring amplitude (RMS over radius of the azimuthal mean of recon - clean recon, about the
    rotation axis: rings are circles about it, so they survive the average while noise and
    streaks cancel) before / after, and the relative change of the mean density."""
    data, clean, angles = ring_case(kind, n, fault)
    ref = fbp(-np.log(clean).astype(np.float32), angles)
    before = fbp(-np.log(data), angles)
    after = fbp(-np.log(pp.remove_rings(data, method)), angles)
    return pp.ring_amplitude(before, ref) / pp.ring_amplitude(after, ref), (after.mean() - ref.mean()) / ref.mean()


@pytest.mark.parametrize("kind,fault", [("shepp", "dense 2 %"), ("shepp", "strong 10 %"), ("sparse", "sparse 5 %"),
                                        ("sparse", "partial"), ("offcentre", "dense 2 %"), ("offcentre", "partial"),
                                        ("ellipses", "strong 10 %")])
def test_sort_offset_lowers_rings_10x_at_512_px(kind, fault):
    """512 px, smooth, sparse, off-centre and hard-edged objects, every kind of gain error (2 %
    on 30 % of the pixels, 5 % on 10 %, 10 % on 5 %, pixels failing part-way): >= 10x, mean
    kept to 1 % (measured 11.6, 27.3, 11.4, 18.1, 34.0, 114.8, 20.2x; Vo's plain sorting filter
    7.4, 21.1, 7.8, 12.9, 10.6, 25.5, 10.2x)."""
    ratio, bias = _ratio_and_bias(kind, 512, fault, "sort_offset")
    assert ratio >= 10, ratio
    assert abs(bias) < 0.01, bias


@pytest.mark.parametrize("kind,n,fault,measured", [("porous", 512, "sparse 5 %", 3.6), ("ellipses", 512, "dense 2 %", 4.8),
                                                   ("shepp", 128, "sparse 5 %", 4.0), ("sparse", 256, "strong 10 %", 6.8)])
@pytest.mark.xfail(strict=True, reason="known shortfall: ring removal < 10x on dense/porous or hard-edged objects and "
                                       "below 512 px (docs/design.md, table of ring_variants)")
def test_ring_removal_shortfall(kind, n, fault, measured):
    """``measured``: the ratio found when this was written (strict: passing would be news)."""
    ratio, _ = _ratio_and_bias(kind, n, fault, "sort_offset")
    assert ratio >= 10, (ratio, measured)


def test_sort_offset_keeps_a_pixel_that_fails_mid_scan():
    """A column whose response drops to 60 % half-way through the scan is not one gain: the
    column keeps the sorting filter's own per-pixel correction, so the half-ring goes too."""
    data, clean, angles = ring_case("shepp", 256, "sparse 5 %")
    broken = data.copy()
    broken[angles.size // 2:, :, 200] *= 0.6
    out = pp.remove_rings(broken, "sort_offset")
    got = -np.log(out[:, 0, 200]) + np.log(clean[:, 0, 200])
    whole = -np.log(pp.remove_rings(data, "sort_offset")[:, 0, 200]) + np.log(clean[:, 0, 200])
    # the two halves of the scan are corrected alike (the 0.51 log step is gone to 10 %)
    step = abs(np.median(got[angles.size // 2:]) - np.median(got[:angles.size // 2]))
    assert step < 0.05, step
    assert np.abs(np.median(got) - np.median(whole)) < 0.05


def test_ring_amplitude_sees_the_axis_symmetric_part_only():
    """The metric (azimuthal mean about the axis) of a per-column error e(c), the same at every
    angle, is that of its part symmetric about the axis, (e(c) + e(2 c0 - c)) / 2; the
    antisymmetric part averages out exactly (measured 4e-10 against 6.5e-4). So the metric scores
    exactly the part of a stripe that no filter can tell from a real axially symmetric object."""
    n = 128
    angles = np.linspace(0, 180, n + 1)[:-1]
    e = np.random.default_rng(0).normal(size=n) * 0.01
    zero = np.zeros((n, n))

    def amp(v):
        return pp.ring_amplitude(fbp(np.repeat(v[None, None, :], n, 0).astype(np.float32), angles), zero)

    full, even, odd = amp(e), amp((e + e[::-1]) / 2), amp((e - e[::-1]) / 2)
    assert abs(even - full) < 1e-3 * full
    assert odd < 1e-4 * full


@pytest.mark.parametrize("kind,n,fault", [("shepp", 128, "sparse 5 %"), ("porous", 128, "dense 2 %"),
                                          ("ellipses", 128, "strong 10 %")])
def test_perfect_stripe_removal_scores_far_above_10x(kind, n, fault):
    """The metric is fair: dividing out the true gain (a perfect removal that leaves the 0.1-0.3 %
    noise) scores 47-147x at 128 px on every object (measured 104, 86, 47x), so >= 10x asks for
    a removal that leaves < 10 % of the stripes and object damage, well above the noise floor."""
    data, clean, angles = ring_case(kind, n, fault)
    ref = fbp(-np.log(clean).astype(np.float32), angles)
    before = pp.ring_amplitude(fbp(-np.log(data), angles), ref)
    oracle = fbp(-np.log(data / ring_gain(n, fault)).astype(np.float32), angles)
    assert before / pp.ring_amplitude(oracle, ref) > 40
    assert abs(oracle.mean() - ref.mean()) < 1e-3 * abs(ref.mean())


def _ratio_iter(kind, n, fault, iterations):
    data, clean, angles = ring_case(kind, n, fault)
    ref = fbp(-np.log(clean).astype(np.float32), angles)
    before = pp.ring_amplitude(fbp(-np.log(data), angles), ref)
    after = fbp(-np.log(pp.remove_rings(data, "sort_offset", iterations=iterations)), angles)
    return before / pp.ring_amplitude(after, ref), (after.mean() - ref.mean()) / ref.mean()


@pytest.mark.parametrize("kind,fault", [("shepp", "strong 10 %"), ("offcentre", "sparse 5 %")])
def test_sort_offset_passes_lift_256_px_cells_above_10x(kind, fault):
    """``iterations=3`` (each pass filters the data corrected by the gains found so far): 256 px
    Shepp-Logan with 10 % gain errors 8.7 -> 30.9x, off-centre bodies with 5 % 10.0 -> 21.3x, the
    mean to 0.1 % (one pass: -0.9 %, +0.2 %). Not the default: no gain on the hold-out cells."""
    ratio1, _ = _ratio_iter(kind, 256, fault, 1)
    ratio3, bias3 = _ratio_iter(kind, 256, fault, 3)
    assert ratio3 >= 10 and ratio3 > 1.5 * ratio1, (ratio1, ratio3)
    assert abs(bias3) < 0.01, bias3


def _holdout_ratio(kind, n, fault):
    data, clean, angles, gain = ring_holdout_case(kind, n, fault)
    ref = fbp(-np.log(clean).astype(np.float32), angles)
    before = pp.ring_amplitude(fbp(-np.log(data), angles), ref)
    after = fbp(-np.log(pp.remove_rings(data, "sort_offset")), angles)
    return before / pp.ring_amplitude(after, ref)


@pytest.mark.parametrize("kind,n,fault", [("offcentre", 192, "sparse 5 %"), ("shepp", 384, "drift")])
def test_sort_offset_on_holdout_cells_that_hold(kind, n, fault):
    """Hold-out data (another seed, 192/384 px, a gain drifting by +-40 % of itself over the
    scan): >= 10x where the objects are smooth or off the axis (measured 23.0, 15.7x)."""
    assert _holdout_ratio(kind, n, fault) >= 10


@pytest.mark.parametrize("kind,n,fault,measured", [("blobs", 192, "dense 1 %", 1.2), ("ellipses", 192, "drift", 2.6),
                                                   ("porous", 384, "sparse 5 %", 3.4)])
@pytest.mark.xfail(strict=True, reason="known shortfall on hold-out data: 1 % gain errors on every pixel (1.2-2.5x on "
                                       "every phantom), overlapping blobs, hard edges (docs/design.md, ring_holdout)")
def test_sort_offset_holdout_shortfall(kind, n, fault, measured):
    """``measured``: the ratio found when this was written (strict: passing would be news)."""
    assert _holdout_ratio(kind, n, fault) >= 10, measured
