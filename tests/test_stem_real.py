"""The stem pipeline's calibration, disk finding and lattice choice on real diffraction files and on
generated spot patterns like them: sharp spots without disk edges, a diffuse background and the
halo of the direct beam, a beam stop, saturation, tiny scans, no vacuum position anywhere."""
import json

import h5py
import numpy as np
import pytest
from _data import real_file

from tomostrain import io, pipeline
from tomostrain.errors import CalibrationError
from tomostrain.strain import calibrate
from tomostrain.strain.disks import disk_geometry, find_bragg_disks
from tomostrain.strain.lattice import choose_lattice_vectors, fit_lattice, index_peaks


def _stem(path, tmp_path, **kw):
    out = tmp_path / "out.h5"
    pipeline.stem(path, out, backend="cpu", **kw)
    with h5py.File(out) as f:
        s = f["stem"]
        return {"origin": s["calibration/origin"][()], "attrs": dict(s["calibration"].attrs),
                "g1": s["lattice/g1"][()], "g2": s["lattice/g2"][()], "n_peaks": s["lattice/n_peaks"][()],
                "residual": s["lattice/residual"][()]}


def test_blockfile_zone_axis_pattern_gives_one_lattice(tmp_path):
    """test1.blo (ASTAR, 3x2 scan, saturated central beam on a diffuse halo, spots ~2 px): every
    position scatters. The lattice is one rectangular net, the same at all 6 positions; the origin is
    the central beam; the probe radius is the direct beam's edge (~5 px), not its halo (~9 px)."""
    path = real_file("4dstem/test1.blo")
    r = _stem(path, tmp_path)
    q = r["attrs"]["q_pixel_size"]
    assert q == pytest.approx(0.0320, abs=1e-4)
    assert 3.5 < r["attrs"]["disk_radius_px"] < 6.5
    ellipse = r["attrs"]["ellipse"]
    np.testing.assert_allclose(json.loads(ellipse) if isinstance(ellipse, str) else ellipse, [1.0, 0.0])      # not a square net: no ellipse
    g1, g2 = r["g1"].reshape(-1, 2) / q, r["g2"].reshape(-1, 2) / q    # pixels
    assert np.isfinite(g1).all() and np.isfinite(g2).all()
    assert np.std(g1, 0).max() < 0.3 and np.std(g2, 0).max() < 0.3     # one lattice at every position
    lengths = sorted([np.hypot(*g1.mean(0)), np.hypot(*g2.mean(0))])
    np.testing.assert_allclose(lengths, [20.0, 31.8], atol=0.6)
    assert (r["n_peaks"] >= 12).all() and (r["residual"] < 1.6).all()
    # the origin sits on the central beam: the strongest peak of every pattern
    cube = io.read_datacube(path)
    peaks = find_bragg_disks(cube, calibrate.probe_template(cube, backend="cpu"), backend="cpu")
    strongest = np.stack([peaks.qy[peaks.offsets[:-1]], peaks.qx[peaks.offsets[:-1]]], 1)
    assert np.abs(r["origin"].reshape(-1, 2) - strongest).max() < 0.5
    # the fitted lattice indexes the strong spots of the net, with the right positions
    fitg1, fitg2 = g1.mean(0), g2.mean(0)
    h, k, ok = index_peaks(peaks, r["origin"], fitg1, fitg2, tol=0.15)
    assert ok.sum() >= 12 * 6
    strong = peaks.intensity >= 0.2 * np.median(peaks.intensity[peaks.offsets[:-1]])
    assert ok[strong].mean() > 0.6


def test_saturated_merlin_frames_give_a_clear_error(tmp_path):
    """test_multi.mib: 9 6-bit frames where 96 % of the pixels sit at the counter's top value."""
    path = real_file("4dstem/test_multi.mib")
    with pytest.raises(CalibrationError, match="no central disk"):
        pipeline.stem(path, tmp_path / "out.h5", backend="cpu", scan_shape=(3, 3), q_pixel_size=0.01)
    assert not (tmp_path / "out.h5").exists()


def test_single_merlin_frame_with_beam_block(tmp_path):
    """test.mib: one 12-bit frame, central beam behind the beam block. A 1x1 scan still calibrates
    (one common origin) and its oblique spot net (spacings ~92 and ~96 px, 61°) is found."""
    r = _stem(real_file("4dstem/test.mib"), tmp_path, q_pixel_size=0.01)
    g = np.stack([r["g1"].reshape(2), r["g2"].reshape(2)]) / 0.01
    lengths = np.sort(np.hypot(*g.T))
    np.testing.assert_allclose(lengths, [90.5, 92.0], atol=3.0)
    cos = abs(g[0] @ g[1]) / np.prod(lengths)
    assert 0.35 < cos < 0.6
    assert r["n_peaks"].item() >= 7


# ---- generated spot patterns like the real ones -------------------------------------------------

def spot_scan(rng, *, scan=(2, 3), det=128, basis=None, sigma=1.3, background=0.0, halo=0.0,
              beam_stop=False, block_centre=False, saturate=None, dose=2e4, strain=0.0):
    """(sy, sx, det, det) patterns of Gaussian spots on a 2D net (no disk edges), with a brighter
    central beam, an optional diffuse background + halo about the centre, a bar-shaped beam stop
    from the left edge (not over the centre) or one over the central beam, saturation and Poisson
    noise. Every position
    scatters. Returns data, per-position origins (sy, sx, 2), basis (2, 2) rows g1, g2 (px)."""
    sy, sx = scan
    if basis is None:
        a = rng.uniform(0, np.pi)
        l1, l2, gam = rng.uniform(16, 24), rng.uniform(16, 30), rng.uniform(np.radians(65), np.radians(115))
        basis = np.array([[l1 * np.sin(a), l1 * np.cos(a)], [l2 * np.sin(a + gam), l2 * np.cos(a + gam)]])
    iy, ix = np.indices((det, det), dtype=float)
    out = np.empty((sy, sx, det, det))
    origins = det / 2 + rng.uniform(-4, 4, 2) + rng.normal(0, 0.3, (sy, sx, 2))
    hk = np.array([(h, k) for h in range(-6, 7) for k in range(-6, 7)])
    for p in np.ndindex(sy, sx):
        o = origins[p]
        F = np.eye(2) + rng.normal(0, strain, (2, 2))
        g = hk @ (basis @ F.T)
        pos = o + g
        inten = np.exp(-np.hypot(*g.T) / 40.0) * rng.uniform(0.3, 1.0, len(g))
        inten[(hk == 0).all(1)] = 8.0
        keep = (pos > 3).all(1) & (pos < det - 4).all(1)
        img = np.zeros((det, det))
        for (cy, cx), w in zip(pos[keep], inten[keep]):
            img += w * np.exp(-((iy - cy) ** 2 + (ix - cx) ** 2) / (2 * sigma**2))
        r = np.hypot(iy - o[0], ix - o[1])
        img += background + halo / (1 + (r / 8.0) ** 2)
        if beam_stop:
            img[int(o[0]) + 12 :, : int(o[1]) - 15] *= 0.01
        if block_centre:
            img[int(o[0]) - 6 :, int(o[1]) - 4 : int(o[1]) + 4] = 0.0
        img = rng.poisson(img * dose / img.sum()).astype(float)
        if saturate is not None:
            img = np.minimum(img, saturate * img.max())
        out[p] = img
    return out, origins, basis


def _same_net(found, basis, tol=0.03):
    """True when the found (g1, g2) rows generate the lattice of ``basis``'s rows."""
    m = np.asarray(found) @ np.linalg.inv(basis)
    return np.abs(m - np.rint(m)).max() < tol and abs(abs(np.linalg.det(np.rint(m))) - 1) < 1e-9


VARIANTS = {
    "sharp spots": {},
    "diffuse background and halo": {"background": 0.002, "halo": 0.25},
    "beam stop": {"beam_stop": True, "halo": 0.1},
    "saturated": {"saturate": 0.15, "background": 0.001},
    "central beam blocked": {"block_centre": True},
    "1x1, background": {"scan": (1, 1), "background": 0.002, "halo": 0.2},
    "strained 1%": {"strain": 0.01, "halo": 0.1},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generated_spot_patterns(name):
    rng = np.random.default_rng(sorted(VARIANTS).index(name) + 11)
    data, origins, basis = spot_scan(rng, **VARIANTS[name])
    probe = calibrate.probe_template(data, backend="cpu")
    radius = disk_geometry(probe)[2]
    assert 1.0 < radius < 4.0, radius                        # the spot, not the halo or the detector
    measured = calibrate.measure_origin(data)
    # the origin is the direct beam's centre, or with it blocked a Bragg spot (a lattice point)
    off = np.linalg.solve(basis.T, (measured - origins).reshape(-1, 2).T).T
    err = np.abs((off - (np.rint(off) if VARIANTS[name].get("block_centre") else 0)) @ basis).max()
    assert err < (0.6 if VARIANTS[name].get("saturate") else 0.35), err
    origin = calibrate.fit_origin(measured)                  # the plane (one value for 1-2 positions)
    peaks = find_bragg_disks(data, probe)
    g1, g2 = choose_lattice_vectors(peaks, origin)
    assert _same_net([g1, g2], basis), (g1, g2, basis)
    fit = fit_lattice(peaks, origin, g1, g2)
    assert (fit.n_peaks >= 10).all()
    if not VARIANTS[name].get("strain"):
        G = np.stack([fit.g1.reshape(-1, 2), fit.g2.reshape(-1, 2)], 1) @ np.linalg.inv(basis)
        np.testing.assert_allclose(np.abs(np.linalg.det(G)), 1.0, atol=0.02)   # cell area to 2 %


def test_flooded_frames_and_tiny_scans():
    """Frames bright almost everywhere give the one-line CalibrationError; a 1x2 scan gets one
    common origin (a plane needs 3 positions)."""
    flooded = np.full((2, 2, 64, 64), 63.0)
    flooded[..., 30:40, 10:20] = 1.0
    with pytest.raises(CalibrationError, match="no central disk"):
        calibrate.fit_origin(flooded)
    measured = np.array([[[30.0, 31.0], [30.4, 31.2]]])
    np.testing.assert_allclose(calibrate.fit_origin(measured), [[[30.2, 31.1], [30.2, 31.1]]])
