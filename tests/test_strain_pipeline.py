"""Whole strain pipeline on the synthetic sodiated-NiO nano-beam scan, against its ground truth and
against py4DSTEM's disk detection on the same cube.

48 x 48 scan, 128^2 detector, strain up to ±2 %, rotation up to ±1°, drifting descan, 0.5 %
ellipticity, disks with thickness-dependent intensity gradients, Poisson noise (3e4 e- a pattern).
Calibration comes from the data: probe from the least-scattering positions, origin plane from the
central disks, ellipse and q pixel size from the unstrained Na2O shell's {200}/{220} spots.
"""
import numpy as np
import pytest

from tomostrain.strain import calibrate
from tomostrain.strain.disks import BraggPeaks, find_bragg_disks
from tomostrain.strain.lattice import choose_lattice_vectors, fit_lattice
from tomostrain.strain.strainmap import lattice_matrix, strain_map
from tomostrain.synthetic.nanobeam import LATTICE_A, nanobeam_4dstem, strain_from_lattice


@pytest.fixture(scope="module")
def scan():
    data, truth = nanobeam_4dstem((48, 48), (128, 128), seed=0)
    probe = calibrate.probe_template(data)
    origin = calibrate.fit_origin(data)
    ref = np.zeros((48, 48), bool)
    ref[21:27, 21:27] = True           # reference region inside the NiO core
    G = lattice_matrix(truth["g1"], truth["g2"])
    want = strain_from_lattice(G, np.median(G[ref], axis=0))   # truth relative to the reference
    return data, truth, probe, origin, ref, want


def strain_from_peaks(peaks, origin, labels, ref):
    """Lattice + strain from detected peaks: ellipse and q pixel size from the Na2O shell."""
    shell, nio = labels == 1, labels == 2
    s1, s2 = choose_lattice_vectors(peaks, origin, mask=shell)
    sfit = fit_lattice(peaks, origin, s1, s2)
    u, v = sfit.g1[shell], sfit.g2[shell]
    pts = np.concatenate([u, v, u + v, u - v])                  # {200} and {220} spots
    rings = np.repeat([0, 0, 1, 1], len(u))
    ok = np.isfinite(pts).all(1)
    ellipse = calibrate.fit_ellipse(pts[ok], rings[ok])
    g200 = np.stack(calibrate.correct_ellipse(*pts[ok & (rings == 0)].T, *ellipse), 1)
    qpix = calibrate.q_pixel_size(g200, LATTICE_A["Na2O"], (2, 0, 0))
    g1, g2 = choose_lattice_vectors(peaks, origin, mask=nio)
    fit = fit_lattice(peaks, origin, g1, g2, ellipse=ellipse, q_pixel_size=qpix)
    return strain_map(fit, reference=ref, mask=nio), ellipse, qpix


def rmse(sm, want, nio):
    return {k: float(np.sqrt(np.nanmean((getattr(sm, k) - want[k])[nio] ** 2))) for k in ("exx", "eyy", "exy", "theta")}


def test_strain_rmse_against_truth(scan):
    data, truth, probe, origin, ref, want = scan
    nio = truth["labels"] == 2
    assert np.abs(origin - truth["origin"]).max() < 0.15
    peaks = find_bragg_disks(data, probe)
    sm, ellipse, qpix = strain_from_peaks(peaks, origin, truth["labels"], ref)
    assert abs(ellipse[0] - truth["ellipse"][0]) < 1e-3 and abs(ellipse[1] - truth["ellipse"][1]) < 3.0
    assert abs(qpix / truth["q_pixel_size"] - 1) < 1e-3
    assert sm.mask[nio].all()
    err = rmse(sm, want, nio)
    assert err["exx"] <= 1e-3 and err["eyy"] <= 1e-3 and err["exy"] <= 1e-3, err
    assert err["theta"] <= 0.05, err
    # the plain correlation peak is biased by the disks' intensity gradients: the edge fit is needed
    plain, _, _ = strain_from_peaks(find_bragg_disks(data, probe, subpixel="parabolic"), origin, truth["labels"], ref)
    assert max(rmse(plain, want, nio)[k] for k in ("exx", "eyy")) > 2 * max(err["exx"], err["eyy"])


@pytest.mark.peer
def test_no_worse_than_py4dstem(scan):
    """py4DSTEM 0.14.16 find_Bragg_disks (cross-correlation, sigma_cc 2, multicorr x16) on the
    positions around the particle, same probe, same downstream lattice fit and calibration."""
    py4DSTEM = pytest.importorskip("py4DSTEM")
    data, truth, probe, origin, ref, want = scan
    labels = truth["labels"]
    nio = labels == 2
    rows, cols = np.nonzero(labels > 0)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    sub = py4DSTEM.DataCube(data=np.ascontiguousarray(data[y0:y1, x0:x1]))
    kernel = np.fft.ifftshift(probe)                            # probe centre (ky//2, kx//2) -> (0, 0)
    bv = sub.find_Bragg_disks(template=kernel, corrPower=1.0, sigma=2, subpixel="multicorr", upsample_factor=16,
                              minPeakSpacing=10, edgeBoundary=5, minRelativeIntensity=0.005, maxNumPeaks=70)
    sy, sx = labels.shape
    lists = [[] for _ in range(sy * sx)]
    for iy in range(y0, y1):
        for ix in range(x0, x1):
            d = bv._v_uncal[iy - y0, ix - x0].data
            lists[iy * sx + ix] = d[np.argsort(-d["intensity"])]
    flat = np.concatenate([lst for lst in lists if len(lst)])
    offsets = np.concatenate([[0], np.cumsum([len(lst) for lst in lists])])
    # py4DSTEM's "qx" is the first detector axis (our qy)
    theirs = BraggPeaks(flat["qx"], flat["qy"], flat["intensity"], offsets, (sy, sx))
    sm_theirs, _, _ = strain_from_peaks(theirs, origin, labels, ref)
    sm_ours, _, _ = strain_from_peaks(find_bragg_disks(data, probe), origin, labels, ref)
    ours, peer = rmse(sm_ours, want, nio), rmse(sm_theirs, want, nio)
    for k in ours:
        assert ours[k] <= peer[k], (ours, peer)
