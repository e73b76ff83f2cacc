"""Phase maps against the simulator's true labels; ring sets pinned by hand."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.strain.datacube import DataCube
from tomostrain.strain.phases import PHASES, Phase, phase_map, resolve_phases
from tomostrain.synthetic.nanobeam import nanobeam_4dstem


@pytest.fixture(scope="module")
def synth():
    return nanobeam_4dstem((28, 28), (128, 128), seed=8, dose=1.5e4)


def test_ring_radii_follow_extinction_rules():
    a = 4.177
    np.testing.assert_allclose(PHASES["NiO"].ring_radii(1.0), np.sqrt([4, 8, 16]) / a)          # [001]: h, k even
    np.testing.assert_allclose(PHASES["NiO"].ring_radii(0.7, zone=None), np.sqrt([3, 4, 8]) / a)  # 111 appears
    np.testing.assert_allclose(Phase(3.0, "bcc").ring_radii(0.8, zone=None), np.sqrt([2, 4]) / 3.0)
    np.testing.assert_allclose(Phase(3.0, "sc").ring_radii(0.5), np.sqrt([1, 2]) / 3.0)
    with pytest.raises(InputError):
        Phase(3.0, "hcp")


def test_phase_names_resolve_and_unknown_raise():
    assert list(resolve_phases("NiO, Ni")) == ["NiO", "Ni"]
    assert resolve_phases({"X": Phase(4.0)})["X"].a == 4.0
    assert list(resolve_phases([Phase(4.0)])) == ["phase1"]
    with pytest.raises(InputError, match="unknown phase 'NiO2'"):
        resolve_phases(["NiO2"])
    with pytest.raises(InputError, match="unknown phase"):
        phase_map(np.ones((2, 2, 32, 32)), ["Cu"], 0.01)


@pytest.mark.parametrize("calibrated", [True, False], ids=["given-origin", "own-origin"])
def test_phase_map_matches_true_labels(synth, calibrated):
    data, truth = synth
    kw = {"origin": truth["origin"], "ellipse": truth["ellipse"]} if calibrated else {}
    pm = phase_map(DataCube(data), ["Na2O", "NiO", "Ni"], truth["q_pixel_size"], **kw)
    assert pm.names == ("vacuum", "Na2O", "NiO", "Ni") and pm.labels.dtype == np.uint8
    accuracy = (pm.labels == truth["labels"]).mean()
    assert accuracy >= 0.95, accuracy
    for label in range(4):                                   # every class, not only the big ones
        assert (pm.labels[truth["labels"] == label] == label).mean() > 0.9
    assert 0 <= pm.confidence.min() and pm.confidence.max() <= 1


def test_order_of_phases_sets_the_labels_and_wrong_lattice_loses(synth):
    data, truth = synth
    pm = phase_map(data, ["Ni", "NiO"], truth["q_pixel_size"], origin=truth["origin"])
    nio = truth["labels"] == 2
    assert (pm.labels[nio] == 2).mean() > 0.95 and (pm.labels[truth["labels"] == 3] == 1).mean() > 0.9
    # a lattice 8 % off NiO fits NiO positions worse than NiO itself
    pm2 = phase_map(data, {"NiO": PHASES["NiO"], "fake": Phase(4.177 * 1.08, "rocksalt")},
                    truth["q_pixel_size"], origin=truth["origin"])
    assert (pm2.labels[nio] == 1).mean() > 0.95


def test_phase_map_from_detected_bragg_peaks(synth):
    disks = pytest.importorskip("tomostrain.strain.disks")
    from tomostrain.strain.calibrate import fit_origin, probe_template

    data, truth = synth
    peaks = disks.find_bragg_disks(data, probe_template(data))
    with pytest.raises(InputError, match="disk_radius"):
        phase_map(peaks, ["Na2O", "NiO", "Ni"], truth["q_pixel_size"])
    pm = phase_map(peaks, ["Na2O", "NiO", "Ni"], truth["q_pixel_size"], origin=fit_origin(data),
                   disk_radius=truth["disk_radius"])
    assert (pm.labels == truth["labels"]).mean() >= 0.95
