"""Bad input at public entry points raises a tomostrain error, not a NumPy traceback."""
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.reconstruction import sirt
from tomostrain.strain.disks import BraggPeaks
from tomostrain.strain.lattice import fit_lattice
from tomostrain.strain.phases import phase_map


def _disk_scan():
    iy, ix = np.indices((32, 32))
    disk = (np.hypot(iy - 15.5, ix - 15.5) < 3.0).astype(np.float32)
    return np.broadcast_to(disk, (2, 2, 32, 32)).copy()


def test_phase_map_rejects_missing_q_pixel_size_and_a_misshapen_origin():
    data = _disk_scan()
    with pytest.raises(InputError, match="q_pixel_size"):
        phase_map(data, ["NiO"], None)
    with pytest.raises(InputError, match="origin"):
        phase_map(data, ["NiO"], 0.02, origin=np.zeros(3))
    peaks = BraggPeaks(np.array([16.0]), np.array([16.0]), np.array([1.0]), np.array([0, 1, 1, 1, 1]), (2, 2))
    with pytest.raises(InputError, match="origin"):
        phase_map(peaks, ["NiO"], 0.02, origin=np.zeros((3, 2, 2)), disk_radius=3.0)


def test_iterative_methods_reject_an_empty_volume():
    with pytest.raises(InputError, match="n_x"):
        sirt(np.ones((3, 2, 8), np.float32), angles_deg=[0.0, 30.0, 60.0], n_x=0)


def test_fit_lattice_needs_bragg_peaks():
    with pytest.raises(InputError, match="BraggPeaks"):
        fit_lattice({"qy": np.zeros(3)}, None, np.array([0.0, 10.0]), np.array([10.0, 0.0]))
