"""EELS white-line maps against synthetic spectrum images with known L3/L2 and onsets (issue 13)."""
import h5py
import numpy as np
import pytest

from tomostrain.errors import InputError
from tomostrain.spectral import fit_power_law_background, resolve_edge, valence_map, white_line_maps
from tomostrain.spectral.eels import EDGES
from tomostrain.synthetic.eels import eels_spectrum_image


def test_power_law_background_exact():
    e = np.linspace(700, 850, 300)
    spectra = np.stack([3e9 * e ** -3.1, 5e8 * e ** -2.7])
    a, r = fit_power_law_background(spectra, e, (720, 840))
    assert np.allclose(r, [3.1, 2.7], atol=1e-6) and np.allclose(a, [3e9, 5e8], rtol=1e-5)


def test_edge_table_and_user_edges():
    assert resolve_edge("ni-l23").l3_eV == 855.0 and resolve_edge("O-K").l2_eV is None
    assert set(EDGES) >= {"Mn-L23", "Fe-L23", "Co-L23", "Ni-L23", "Cu-L23", "O-K"}
    assert resolve_edge("700:713").l2_eV == 713.0
    with pytest.raises(InputError):
        resolve_edge("Xx-L23")


def test_valence_interpolation_sign():
    assert np.allclose(valence_map([2.9, 2.2, 2.55], [(2.9, 2.0), (2.2, 0.0)]), [2.0, 0.0, 1.0])


@pytest.mark.parametrize("seed,ratios,counts", [(11, (2.0, 3.0), 3000.0), (12, (2.6, 3.6), 4000.0), (13, (1.8, 2.8), 4000.0)])
def test_ratio_and_onset_maps(seed, ratios, counts):
    s, e, tr = eels_spectrum_image((32, 32), seed=seed, ratio_range=ratios, counts=counts)
    m = white_line_maps(s, e, "Ni-L23")
    assert np.sqrt(np.mean((m.l3_l2 - tr["l3_l2"]) ** 2)) <= 0.08
    assert np.sqrt(np.mean((m.l3_onset_eV - tr["l3_onset_eV"]) ** 2)) <= 0.15


def test_other_edge_by_table_and_thickness():
    s, e, tr = eels_spectrum_image((24, 24), edge_eV=708.0, spin_orbit_eV=12.9, energy=(640.0, 770.0, 0.2), seed=4)
    m = white_line_maps(s, e, "Fe-L23")
    assert np.sqrt(np.mean((m.l3_l2 - tr["l3_l2"]) ** 2)) <= 0.12
    assert np.sqrt(np.mean((m.l3_onset_eV - tr["l3_onset_eV"]) ** 2)) <= 0.15
    from tomostrain.spectral import log_ratio_thickness

    t = log_ratio_thickness(tr["low_loss"], tr["low_loss_energy_eV"])
    assert np.sqrt(np.mean((t - tr["thickness"]) ** 2)) < 0.02


def test_cli_eels_writes_maps(tmp_path):
    from tomostrain import cli, io

    s, e, tr = eels_spectrum_image((16, 16), seed=9, plural_scattering=True)
    io.write_spectrum_image(tmp_path / "si.h5", s, e, low_loss=tr["low_loss"], low_loss_energy_eV=tr["low_loss_energy_eV"])
    out = tmp_path / "eels.h5"
    assert cli.main(["eels", str(tmp_path / "si.h5"), "-o", str(out), "--edge", "Ni-L23",
                     "--references", "3.4=2,2.2=0", "--deconvolve", "--backend", "cpu"]) == 0
    with h5py.File(out) as h5:
        for name in ("l3_l2", "l3_onset_eV", "valence", "thickness"):
            assert h5[f"eels/{name}"].shape == (16, 16)
        val = h5["eels/valence"][()]
        assert h5["eels"].attrs["energy_reference"] == "zero_loss" and h5["eels"].attrs["deconvolve"]
    assert np.sqrt(np.mean((val - valence_map(tr["l3_l2"], [(3.4, 2), (2.2, 0)])) ** 2)) < 0.3
    assert cli.main(["eels", str(tmp_path / "si.h5"), "-o", str(out), "--edge", "Zz"]) == 2


@pytest.mark.peer
def test_peer_exspy_model_fit_on_same_spectra():
    """exspy/hyperspy model (power law + 2 Gaussians + 2 arctan steps) on a few positions."""
    hs = pytest.importorskip("hyperspy.api")
    pytest.importorskip("exspy")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_eels import exspy_ratios

    s, e, tr = eels_spectrum_image((3, 3), seed=21)
    peer = exspy_ratios(s, e, hs)
    ours = white_line_maps(s, e, "Ni-L23", denoise=None).l3_l2
    assert np.sqrt(np.mean((peer - tr["l3_l2"]) ** 2)) < 0.4
    assert np.sqrt(np.mean((ours - tr["l3_l2"]) ** 2)) < 0.4


def test_cli_eels_thickness_from_the_core_loss(tmp_path):
    """No low loss in the file: /eels/thickness is the core-loss plural fit's t/lambda."""
    from tomostrain import cli, io
    from tomostrain.synthetic.eels import eels_variant

    s, e, tr = eels_variant("plural_medium_no_lowloss", (12, 12), seed=5)
    io.write_spectrum_image(tmp_path / "si.h5", s, e)
    out = tmp_path / "eels.h5"
    assert cli.main(["eels", str(tmp_path / "si.h5"), "-o", str(out), "--edge", "Ni-L23", "--backend", "cpu"]) == 0
    with h5py.File(out) as h5:
        t = h5["eels/thickness"][()]
        attrs = dict(h5["eels"].attrs)
    assert attrs["thickness_source"] == "core_loss" and abs(attrs["plasmon_eV"] - 22.0) <= 0.5
    assert np.sqrt(np.mean((t - tr["thickness"]) ** 2)) < 0.05
