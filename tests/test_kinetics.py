"""Reaction-front kinetics against synthetic movies with known k, n, t0 (issue 10 item 4)."""
import h5py
import numpy as np
import pytest

from tomostrain.analysis.kinetics import fit_power_law, fit_track, power_law, track_front
from tomostrain.synthetic.movie import reaction_movie


def test_power_law_fit_recovers_known_parameters(rng):
    t = np.arange(0, 150, 1.0)
    x = power_law(t, 4.0, 0.5, 5.0) + rng.normal(0, 0.3, t.size)
    fit = fit_power_law(t, x, used=power_law(t, 4.0, 0.5, 5.0) > 2)
    assert abs(fit.n - 0.5) < 0.02 and abs(fit.k / 4.0 - 1) < 0.05 and abs(fit.t0_s - 5.0) < 1.0
    assert fit.k_err > 0 and fit.n_err > 0


def test_front_sign_convention_tiny_case():
    """A front 10 px deep in a sheet below row 40 (vacuum above): the depth is below the first outline."""
    m, tr = reaction_movie((64, 64), 20, n=1.0, k=1.0, t0_s=2.0, pixel_size_nm=1.0, outline="edge", drift_px=0.0,
                           swelling=0.5, ni_dots=0, seed=5)
    tk = track_front(m, tr.time_s, 1.0, vacuum="bright", register=False)
    moved = tr.front_nm > 2
    assert np.all(np.abs(tk.front_nm[moved] - tr.front_nm[moved]) < 1.0)
    assert np.corrcoef(tk.depth_px.ravel(), tr.depth_px.ravel())[0, 1] > 0.99  # positive inside the sheet


# aligned movies (no drift): swelling, fading, flicker, Poisson noise and Ni dots, both laws, 4 outlines
CASES = [("lobed", 1.0, "bf", 24), ("wavy", 0.5, "df", 22)]


@pytest.mark.parametrize("outline,n,contrast,seed", CASES)
def test_front_depth_and_fit_on_aligned_movies(outline, n, contrast, seed):
    m, tr = reaction_movie((128, 128), 150, outline=outline, n=n, contrast=contrast, drift_px=0.0, seed=seed,
                           frame_interval_s=1.0 if n == 0.5 else 0.5)
    tk = track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="auto", register=False)
    assert tk.vacuum == ("bright" if contrast == "bf" else "dark")
    moved = tr.front_nm > 2.0
    rmse = np.sqrt(np.mean((tk.front_nm[moved] - tr.front_nm[moved]) ** 2))
    assert rmse <= 1.5
    fit = fit_track(tk)
    assert abs(fit.n - tr.n) <= 0.05
    assert abs(fit.k / tr.k - 1) <= 0.05


@pytest.mark.parametrize("outline,n,seed", [("disc", 0.5, 30), ("edge", 1.0, 31)])
def test_front_with_stage_drift(outline, n, seed):
    """Bright-field movies with 20 px of stage drift, swelling, fading, flicker and Ni dots."""
    m, tr = reaction_movie((128, 128), 150, outline=outline, n=n, contrast="bf", drift_px=20.0, seed=seed,
                           frame_interval_s=1.0 if n == 0.5 else 0.5)
    tk = track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="auto")
    assert tk.vacuum == "bright"
    assert np.abs(tk.shifts_px - tr.shifts_px).max() < 1.5
    moved = tr.front_nm > 2.0
    assert np.sqrt(np.mean((tk.front_nm[moved] - tr.front_nm[moved]) ** 2)) <= 1.5
    fit = fit_track(tk)
    assert abs(fit.n - n) <= 0.05 and abs(fit.k / tr.k - 1) <= 0.05


@pytest.mark.parametrize("outline,seed", [("wavy", 31), ("lobed", 35)])
def test_vacuum_auto_on_drifting_dark_field_movie(outline, seed):
    """Was a known failure (the log-ratio band reached further into the dark vacuum); the side now
    comes from step fits on both sides of the outline in frames spread over the movie."""
    m, tr = reaction_movie((128, 128), 150, outline=outline, n=0.5, contrast="df", drift_px=20.0, seed=seed)
    assert track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="auto").vacuum == "dark"


def test_dark_field_with_drift_given_the_vacuum_side():
    m, tr = reaction_movie((128, 128), 150, outline="corner", n=0.5, contrast="df", drift_px=20.0, seed=34)
    tk = track_front(m, tr.time_s, tr.pixel_size_nm, vacuum="dark")
    moved = (tr.front_nm > 2.0) & np.isfinite(tk.front_nm)
    assert np.sqrt(np.mean((tk.front_nm[moved] - tr.front_nm[moved]) ** 2)) <= 1.5
    fit = fit_track(tk)
    assert abs(fit.n - 0.5) <= 0.05 and abs(fit.k / tr.k - 1) <= 0.05


def test_cli_kinetics_writes_result(tmp_path):
    from tomostrain import cli, io

    m, tr = reaction_movie((64, 64), 40, outline="disc", n=1.0, drift_px=0.0, seed=3, frame_interval_s=1.0)
    io.write_movie(tmp_path / "movie.h5", m, time_s=tr.time_s, pixel_size_nm=tr.pixel_size_nm)
    out = tmp_path / "k.h5"
    assert cli.main(["kinetics", str(tmp_path / "movie.h5"), "-o", str(out), "--backend", "cpu"]) == 0
    with h5py.File(out) as h5:
        front = h5["kinetics/front_nm"][()]
        assert front.shape == (40,)
        attrs = dict(h5["kinetics/fit"].attrs)
        assert {"k", "n", "t0_s", "k_err", "n_err", "t0_err"} <= set(attrs)
    moved = tr.front_nm > 2
    assert np.sqrt(np.mean((front[moved] - tr.front_nm[moved]) ** 2)) < 3.0  # registered, small drift-free movie
    assert cli.main(["kinetics", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "x.h5")]) == 2


def test_front_in_a_sequence_of_volumes():
    """3D: depth below the first volume's surface by a 3D distance transform, drifting grain."""
    from tomostrain.analysis.kinetics import track_front_volumes
    from tomostrain.synthetic.movie import reaction_volumes

    v, tr = reaction_volumes((40, 40, 40), 10, n=0.5, seed=3)
    tk = track_front_volumes(v, tr.time_s, 1.0)
    moved = tr.front_nm > 2
    assert np.sqrt(np.mean((tk.front_nm[moved] - tr.front_nm[moved]) ** 2)) <= 0.6


def test_cli_kinetics_on_a_cluster_equals_inline(tmp_path):
    """``tomostrain kinetics --cluster local:2`` (the per-frame profiles on Dask workers) and a
    thread executor give the inline result exactly."""
    from tomostrain import cli, io

    m, tr = reaction_movie((64, 64), 30, outline="disc", n=1.0, drift_px=5.0, seed=4, frame_interval_s=1.0)
    io.write_movie(tmp_path / "movie.h5", m, time_s=tr.time_s, pixel_size_nm=tr.pixel_size_nm)
    runs = {}
    for name, extra in (("inline", []), ("dask", ["--cluster", "local:2"])):
        out = tmp_path / f"{name}.h5"
        assert cli.main(["kinetics", str(tmp_path / "movie.h5"), "-o", str(out), "--backend", "cpu", *extra]) == 0
        with h5py.File(out) as h5:
            runs[name] = (h5["kinetics/front_nm"][()], h5["kinetics/shifts_px"][()], dict(h5["kinetics/fit"].attrs))
            assert h5["provenance"].attrs["executor"].startswith("inline" if name == "inline" else "dask tcp://")
    assert np.array_equal(runs["inline"][0], runs["dask"][0]) and np.array_equal(runs["inline"][1], runs["dask"][1])
    assert runs["inline"][2] == runs["dask"][2]
    assert np.sqrt(np.mean((runs["inline"][0] - tr.front_nm)[tr.front_nm > 2] ** 2)) < 1.5

    from tomostrain.analysis.kinetics import track_front
    from tomostrain.distributed import ThreadExecutor

    with ThreadExecutor(2) as ex:
        threaded = track_front(m, tr.time_s, tr.pixel_size_nm, executor=ex, backend="cpu")
    assert np.array_equal(threaded.front_nm, runs["inline"][0])
