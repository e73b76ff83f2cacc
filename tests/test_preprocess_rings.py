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
from benchmarks.bench_xray import ring_case  # noqa: E402


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
