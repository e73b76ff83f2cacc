"""Synthetic nano-beam 4D-STEM: ground-truth bookkeeping, rendered disk positions, scene, dose."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.synthetic.nanobeam import (
    LABEL_NAMES,
    deformation,
    ellipse_matrix,
    nanobeam_4dstem,
    reference_lattice,
    structure_factor,
)


def _strain_section3(G, G_ref):
    """DESIGN.md §3 written out independently of the simulator."""
    A = np.linalg.inv(G).transpose(0, 2, 1)
    F = A @ np.linalg.inv(np.linalg.inv(G_ref).T)
    return (F[:, 1, 1] - 1, F[:, 0, 0] - 1, (F[:, 0, 1] + F[:, 1, 0]) / 2,
            np.degrees(np.arctan2(F[:, 1, 0] - F[:, 0, 1], F[:, 0, 0] + F[:, 1, 1])))


@pytest.fixture(scope="module")
def clean():
    """Noise-free, uniform disks, no diffuse background: for exact geometry checks."""
    return nanobeam_4dstem((16, 16), (128, 128), noise=False, disk_gradient=0.0, diffuse_fraction=0.0, seed=3)


def test_deformation_read_out_is_exact_and_signs_are_pinned():
    F = deformation(0.01, -0.02, 0.005, 0.8)
    assert F[1, 1] - 1 == pytest.approx(0.01) and F[0, 0] - 1 == pytest.approx(-0.02)
    assert (F[0, 1] + F[1, 0]) / 2 == pytest.approx(0.005)
    assert np.degrees(np.arctan2(F[1, 0] - F[0, 1], F[0, 0] + F[1, 1])) == pytest.approx(0.8, abs=1e-12)
    # positive theta turns +y towards +x
    assert deformation(0, 0, 0, 5.0) @ np.array([1.0, 0.0]) @ np.array([0.0, 1.0]) > 0
    # tensile exx: real lattice longer along x, so the (200) spot along x moves inwards
    a = 4.177
    G = np.linalg.inv(deformation(0.02, 0, 0, 0)).T @ reference_lattice("NiO")
    assert G[1, 0] == pytest.approx(2 / a / 1.02) and G[0, 1] == pytest.approx(2 / a)
    # reference lattice: g1 = (200) along +x, turning by +90 degrees brings it to -y
    np.testing.assert_allclose(reference_lattice("NiO")[:, 0], [0, 2 / a])
    np.testing.assert_allclose(reference_lattice("NiO", 90.0)[:, 0], [-2 / a, 0], atol=1e-15)


def test_structure_factors_follow_the_extinction_rules():
    assert structure_factor("Ni", 1, 0, 0) == 0 and structure_factor("Ni", 2, 0, 0) == pytest.approx(4 * 28)
    assert structure_factor("NiO", 2, 2, 0) == pytest.approx(4 * (28 + 8))
    assert structure_factor("NiO", 1, 1, 1) == pytest.approx(4 * (28 - 8))
    assert structure_factor("Na2O", 2, 0, 0) == pytest.approx(4 * abs(8 - 22))  # Na out of phase
    assert structure_factor("Na2O", 2, 2, 0) == pytest.approx(4 * (8 + 22))


def test_truth_lattices_give_back_the_strain_field():
    _, truth = nanobeam_4dstem((24, 24), (64, 64), noise=False)
    nio = truth["labels"] == 2
    G = np.stack([truth["g1"][nio], truth["g2"][nio]], axis=-1)
    G_ref = np.stack([truth["g1_ref"], truth["g2_ref"]], axis=-1)
    exx, eyy, exy, theta = _strain_section3(G, G_ref)
    for got, key in ((exx, "exx"), (eyy, "eyy"), (exy, "exy"), (theta, "theta")):
        np.testing.assert_allclose(got, truth[key][nio], atol=1e-9, err_msg=key)
    # the default field really is a field: ±1-2 % strain and ±~1 degree over the core
    assert 0.015 < np.abs(truth["exx"]).max() <= 0.02 and 0.5 < np.abs(truth["theta"]).max() <= 1.0
    assert (truth["exx"][~nio] == 0).all() and np.isnan(truth["g1"][truth["labels"] == 0]).all()


def _centroid(frame, centre, half):
    y0, x0 = int(round(centre[0])) - half, int(round(centre[1])) - half
    win = frame[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].astype(np.float64)
    iy, ix = np.indices(win.shape)
    return np.array([(win * iy).sum() / win.sum() + y0, (win * ix).sum() / win.sum() + x0])


def test_rendered_disks_sit_at_origin_plus_distorted_g(clean):
    data, truth = clean
    E = ellipse_matrix(*truth["ellipse"])
    half = int(truth["disk_radius"]) + 3
    errors, n_spots = [], 0
    labels = truth["labels"]
    for (py, px) in [tuple(np.argwhere(labels == c)[0]) for c in (0, 1, 2, 3)]:
        frame, origin, label = data[py, px], truth["origin"][py, px], truth["labels"][py, px]
        errors.append(np.abs(_centroid(frame, origin, half) - origin).max())
        if label == 0:
            continue
        name = LABEL_NAMES[label]
        G = np.stack([truth["g1"][py, px], truth["g2"][py, px]], axis=-1)
        for h, k, _ in truth["reflections"][name]:
            want = origin + E @ (G @ [h / 2, k / 2]) / truth["q_pixel_size"]
            errors.append(np.abs(_centroid(frame, want, half) - want).max())
            n_spots += 1
    assert n_spots == sum(len(truth["reflections"][n]) for n in LABEL_NAMES[1:]) >= 16
    assert max(errors) < 0.05, errors


def test_disk_gradient_pulls_intensity_weighted_centres():
    data, truth = nanobeam_4dstem((16, 16), (128, 128), noise=False, diffuse_fraction=0.0, seed=3)
    py, px = 8, 8
    origin, r, s = truth["origin"][py, px], truth["disk_radius"], truth["disk_slope"][py, px]
    G = np.stack([truth["g1"][py, px], truth["g2"][py, px]], axis=-1)
    q = G @ [1.0, 0.0] / truth["q_pixel_size"]
    want = origin + ellipse_matrix(*truth["ellipse"]) @ q
    pull = _centroid(data[py, px], want, int(r) + 3) - want
    assert abs(s) > 0.05
    # a disk weighted 1 + s u / r moves its centroid by s r / 4 along g
    np.testing.assert_allclose(pull, s * r / 4 * q / np.linalg.norm(q), atol=0.05)


def test_scene_fractions_vacuum_and_probe(clean):
    data, truth = clean
    labels = truth["labels"]
    _, big = nanobeam_4dstem((48, 48), (32, 32), noise=False)
    frac = np.bincount(big["labels"].ravel(), minlength=4) / big["labels"].size
    r_p = 0.36 * 48
    np.testing.assert_allclose(frac[2], np.pi * (0.72 * r_p) ** 2 / 48**2, rtol=0.05)   # NiO core
    assert 0.08 < frac[3] < 0.14 and 0.10 < frac[1] < 0.20 and frac[0] > 0.45           # Ni, shell, vacuum
    # vacuum: nothing outside the central disk; the probe template is that disk
    vac = np.argwhere(labels == 0)[0]
    frame, origin = data[tuple(vac)], truth["origin"][tuple(vac)]
    r = np.hypot(*(np.indices(frame.shape) - origin[:, None, None]))
    assert frame[r > truth["disk_radius"] + 1.5].sum() == 0
    np.testing.assert_allclose(truth["probe"].sum(), truth["dose"], rtol=1e-5)
    np.testing.assert_allclose(_centroid(truth["probe"], (64, 64), 8), [64, 64], atol=1e-6)


def test_dose_is_the_total_count():
    data, truth = nanobeam_4dstem((12, 12), (64, 64), dose=2e4, dtype="uint16", seed=1)
    assert data.dtype == np.uint16
    per_pattern = data.reshape(144, -1).sum(1, dtype=np.float64)
    assert abs(per_pattern.mean() / 2e4 - 1) < 3 / np.sqrt(2e4 * 144)
    assert np.std(per_pattern) == pytest.approx(np.sqrt(2e4), rel=0.25)  # Poisson spread
    clean_data, _ = nanobeam_4dstem((12, 12), (64, 64), dose=2e4, noise=False, seed=1)
    np.testing.assert_allclose(clean_data.sum((2, 3)), 2e4, rtol=1e-4)


def test_descan_is_a_plane_plus_small_jitter():
    _, truth = nanobeam_4dstem((20, 20), (32, 32), noise=False, descan_px=(1.5, 3.0))
    plane = truth["origin_plane"]
    assert plane[:, -1, 1].mean() - plane[:, 0, 1].mean() == pytest.approx(3.0)
    assert plane[-1, :, 0].mean() - plane[0, :, 0].mean() == pytest.approx(1.5)
    assert np.std(truth["origin"] - plane) == pytest.approx(0.02, rel=0.2)


def test_bad_input_raises():
    with pytest.raises(InputError, match="phase_map"):
        nanobeam_4dstem((8, 8), (32, 32), phase_map=np.zeros((4, 4)))
    with pytest.raises(InputError, match="strain"):
        nanobeam_4dstem((8, 8), (32, 32), strain={"exx": 0.01})
    with pytest.raises(InputError, match="dtype"):
        nanobeam_4dstem((8, 8), (32, 32), dtype="int8")
