"""Battery numbers from labels: hand-made slabs and spheres, then the sodiated-particle ground truth."""
import numpy as np
import pytest

from tomostrain.analysis import quantify
from tomostrain.errors import InputError
from tomostrain.synthetic import sodiated_particle


def _slab(shell_layers=3):
    """A plate filling y and x, vacuum above and below in z: shell, core, shell along z."""
    lab = np.zeros((6, 32, 10), np.uint8)
    lab[:, 5:27] = 1
    lab[:, 5 + shell_layers : 27 - shell_layers] = 2
    return lab


def test_slab_thickness_fractions_and_depth_profile():
    lab = _slab(3)
    before = lab.copy()
    q = quantify(lab, voxel_size_nm=2.0)
    assert np.array_equal(lab, before)
    t = q["shell_thickness_nm"]
    assert t["mean"] == t["min"] == t["max"] == pytest.approx(6.0) and t["std"] == 0  # 3 layers of 2 nm
    assert t["n_surface_voxels"] == 2 * 6 * 10  # both faces, array edges are not surface
    assert np.array_equal(t["histogram"]["counts"], [0, 0, 0, 120]) and t["histogram"]["edges_nm"][-1] == 8.0
    n_shell, n_core = 6 * 6 * 10, 16 * 6 * 10
    assert q["n_voxels"] == {"shell": n_shell, "core": n_core, "particles": 0, "total": n_shell + n_core}
    assert q["fractions"]["shell"] == pytest.approx(6 / 22) and q["conversion"] == pytest.approx(6 / 22)
    assert q["volume_nm3"]["core"] == pytest.approx(n_core * 8.0)
    prof = q["depth_profile"]
    # depth bins from the surface inward: 11 layers per half, 2 voxels each bin's count
    np.testing.assert_allclose(prof["depth_nm"], 2.0 * (np.arange(11) + 0.5))
    assert np.all(prof["n_voxels"] == 2 * 60)
    np.testing.assert_allclose(prof["reacted_fraction"], [1, 1, 1] + [0] * 8)
    assert q["reaction_depth_nm"] == pytest.approx(6.0)  # 0.5 crossing halfway between 2.5 and 3.5 voxels
    assert q["particles"]["count"] == 0


def test_exposed_core_counts_zero_thickness():
    lab = _slab(3)
    lab[:, 5:8, :5] = 2  # strip the shell from half of one face
    t = quantify(lab)["shell_thickness_nm"]
    assert t["min"] == 0.0 and t["max"] == 3.0
    # per face 6 x 10 voxels; stripped face: x < 5 exposed core (0), x = 5, 6 see the core sideways (1, 2)
    assert t["mean"] == pytest.approx((30 * 0 + 6 * 1 + 6 * 2 + 18 * 3 + 60 * 3) / 120)


def test_fully_reacted_has_no_thickness():
    lab = _slab(3)
    lab[lab == 2] = 1
    q = quantify(lab)
    assert np.isnan(q["shell_thickness_nm"]["mean"]) and q["conversion"] == 1.0
    assert np.all(q["depth_profile"]["reacted_fraction"] == 1) and np.isnan(q["reaction_depth_nm"])


def test_particle_table_centroids_in_yzx_and_split():
    lab = np.zeros((30, 40, 50), np.uint8)
    g = np.indices(lab.shape)

    def ball(c, r):
        return np.sqrt(sum((g[i] - c[i]) ** 2 for i in range(3))) <= r

    lab[ball((5, 8, 40), 3.0)] = 3  # small, alone: (y, z, x) = (5, 8, 40)
    lab[ball((15, 20, 12), 5.0) | ball((15, 20, 20.5), 5.0)] = 3  # touching pair
    q = quantify(lab, voxel_size_nm=0.5)
    p = q["particles"]
    assert p["count"] == 3
    assert p["centroid_nm"].shape == (3, 3)
    small = np.argmin(p["volume_nm3"])
    assert small == 2  # sorted largest first
    np.testing.assert_allclose(p["centroid_nm"][small], 0.5 * np.array([5, 8, 40]), atol=1e-9)
    assert p["volume_nm3"][small] == pytest.approx(ball((5, 8, 40), 3.0).sum() * 0.125)
    d_pair = p["diameter_nm"][:2] / 0.5
    assert np.all(np.abs(d_pair / 10.0 - 1) < 0.1)  # each of the touching pair ~ 2 r
    assert q["fractions"]["particles"] == 1.0 and np.isnan(q["shell_thickness_nm"]["mean"])


@pytest.fixture(scope="module")
def phantom():
    return sodiated_particle((48, 96, 96), seed=1, shell_thickness=3.0, particle_radius=(2.5, 3.5), n_particles=6)


def test_quantify_matches_phantom_truth(phantom):
    _, labels, truth = phantom
    vs = 0.8
    q = quantify(labels, voxel_size_nm=vs)
    for k in ("shell", "core", "particles"):
        assert abs(q["fractions"][k] - truth.fractions[k]) < 0.01
    # local shell thickness within one voxel of the drawn one
    assert abs(q["shell_thickness_nm"]["mean"] / vs - truth.shell_thickness["mean"]) < 1.0
    assert q["shell_thickness_nm"]["max"] / vs > truth.shell_thickness["mean"] + 0.5  # variation is seen
    # Ni particles: exact count, diameters within 10 % of the drawn spheres
    p = q["particles"]
    assert p["count"] == truth.n_particles
    order = np.argsort(-truth.particle_voxels, kind="stable")
    np.testing.assert_allclose(p["diameter_nm"] / vs, truth.particle_diameters[order], rtol=1e-9)
    nominal = np.sort(2 * truth.particle_radii)[::-1]
    assert np.all(np.abs(np.sort(p["diameter_nm"] / vs)[::-1] / nominal - 1) < 0.1)
    # centroids land on the drawn centres (within a voxel: the cap cut by the shell moves them slightly)
    dist = np.linalg.norm(p["centroid_nm"][:, None] / vs - truth.particle_centres[None], axis=2)
    assert np.all(dist.min(axis=1) < 1.0)
    # depth profile: fully reacted at the surface, unreacted beyond the thickest shell
    prof = q["depth_profile"]
    depth = prof["depth_nm"] / vs
    assert prof["reacted_fraction"][depth < truth.shell_thickness["min"] - 0.5].min() > 0.97
    assert prof["reacted_fraction"][depth > truth.shell_thickness["max"] + 1].max() < 0.02
    assert abs(q["reaction_depth_nm"] / vs - truth.shell_thickness["mean"]) < 1.0
    assert prof["n_voxels"].sum() == truth.voxels["shell"] + truth.voxels["core"]


def test_quantify_bad_input():
    lab = _slab(3)
    with pytest.raises(InputError, match="integer"):
        quantify(lab.astype(np.float32))
    with pytest.raises(InputError, match="voxel_size_nm"):
        quantify(lab, voxel_size_nm=0)
    with pytest.raises(InputError, match="only vacuum"):
        quantify(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="must differ"):
        quantify(lab, core_label=1)
    with pytest.raises(InputError, match="surface is undefined"):
        quantify(np.full((4, 4, 4), 2, np.uint8))


@pytest.mark.gpu
def test_quantify_gpu_matches_cpu(phantom):
    import cupy as cp

    labels = phantom[1]
    cpu, gpu = quantify(labels, 0.8), quantify(cp.asarray(labels), 0.8)
    assert gpu["fractions"] == pytest.approx(cpu["fractions"])
    assert gpu["shell_thickness_nm"]["mean"] == pytest.approx(cpu["shell_thickness_nm"]["mean"], rel=1e-6)
    np.testing.assert_allclose(gpu["depth_profile"]["reacted_fraction"], cpu["depth_profile"]["reacted_fraction"])
    np.testing.assert_allclose(gpu["particles"]["diameter_nm"], cpu["particles"]["diameter_nm"])
