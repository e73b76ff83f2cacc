"""CLI and pipeline: one-line errors with exit 2, backend selection, jobs, checkpoints, resume."""
import json

import h5py
import numpy as np
import pytest

from tomostrain import cli, io, pipeline
from tomostrain.errors import DeviceError
from tomostrain.gpu_core import backend
from tomostrain.synthetic import shepp_logan


def test_backend_selection_without_a_gpu():
    assert not backend.gpu_available()
    assert backend.resolve("auto") == "cpu"
    assert backend.resolve("cpu") == "cpu"
    with pytest.raises(DeviceError, match="no usable CUDA device"):
        backend.resolve("gpu")
    with pytest.raises(DeviceError, match="backend must be one of"):
        backend.resolve("tpu")
    a = np.arange(3.0)
    assert backend.xp_of(a) is np
    np.testing.assert_array_equal(backend.to_host(backend.to_device(a, "auto")), a)


def test_info_names_backend_and_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend: cpu" in out and "numpy:" in out and "tomostrain:" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tomo", "missing.h5", "-o", "out.h5"], "missing.h5"),
        (["stem", "missing.npy", "-o", "out.h5"], "missing.npy"),
        (["run", "missing.toml"], "missing.toml"),
        (["tomo", "{bad}", "-o", "out.h5", "--backend", "gpu"], "CUDA"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    if "{bad}" in argv:
        series = io.TiltSeries(np.ones((3, 4, 5), np.float32), np.array([-10.0, 0.0, 10.0]))
        io.write_tilt_series(series, tmp_path / "s.h5")
        argv = [a.replace("{bad}", "s.h5") for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tomostrain: error:") and message in err[0]


def _shepp_series(tmp_path, n=64, n_angles=90):
    from tomostrain.synthetic import tilt_series

    vol = np.repeat(shepp_logan(n)[None], 3, axis=0)
    angles = np.linspace(0, 180, n_angles, endpoint=False)
    data, _ = tilt_series(vol, angles, seed=0)
    path = tmp_path / "series.h5"
    io.write_tilt_series(io.TiltSeries(data, angles, pixel_size_nm=0.5), path)
    return vol, path


def test_tomo_command_writes_volume_and_provenance(tmp_path):
    vol, path = _shepp_series(tmp_path)
    before = path.read_bytes()
    out = tmp_path / "out.h5"
    assert cli.main(["tomo", str(path), "-o", str(out), "--method", "fbp", "--backend", "cpu"]) == 0
    assert path.read_bytes() == before                          # input untouched
    assert not (tmp_path / "out.h5.partial").exists()           # checkpoint removed on success
    with h5py.File(out) as f:
        rec = f["tomo/volume"][...]
        prov = f["provenance"].attrs
        assert json.loads(prov["parameters"])["tomo"]["method"] == "fbp"
        assert prov["backend"] == "cpu" and "reconstruct" in json.loads(prov["step_seconds"])
    inside = np.hypot(*np.indices(vol.shape[1:]) - (vol.shape[1] - 1) / 2) < vol.shape[1] * 0.45
    corr = np.corrcoef(rec[1][inside], vol[1][inside])[0, 1]
    assert corr > 0.9, corr                                      # a real reconstruction, not zeros


def test_nonnegative_is_an_explicit_choice_recorded_in_provenance(tmp_path, capsys):
    """SIRT runs unconstrained unless asked (as ASTRA, TomoPy and ETSpy run it); --nonnegative,
    --no-nonnegative and [tomo] nonnegative choose, and the value used lands in /provenance and
    the /tomo attrs; TV stays constrained by default; a method without the choice refuses it."""
    vol, path = _shepp_series(tmp_path, n=32, n_angles=20)

    def run(*extra):
        out = tmp_path / f"nn{len(list(tmp_path.glob('nn*.h5')))}.h5"
        assert cli.main(["tomo", str(path), "-o", str(out), "--iterations", "5", "--backend", "cpu", *extra]) == 0
        with h5py.File(out) as f:
            return (json.loads(f["provenance"].attrs["parameters"])["tomo"]["nonnegative"],
                    bool(f["tomo"].attrs["nonnegative"]), f["tomo/volume"][...])

    used, attr, plain = run("--method", "sirt")
    assert used is False and attr is False and plain.min() < 0      # Shepp-Logan's rim: negative ringing
    used, attr, clipped = run("--method", "sirt", "--nonnegative")
    assert used is True and attr is True and clipped.min() >= 0
    assert run("--method", "sirt", "--no-nonnegative")[0] is False
    assert run("--method", "tv")[0] is True
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'[job]\noutput = "job.h5"\nbackend = "cpu"\n[tomo]\ninput = "{path.name}"\n'
                        'method = "os_sart"\niterations = 2\nnonnegative = true\n')
    with h5py.File(pipeline.run_job(job_file)) as f:
        assert json.loads(f["provenance"].attrs["parameters"])["tomo"]["nonnegative"] is True
        assert f["tomo/volume"][...].min() >= 0
    job_file.write_text(job_file.read_text().replace("os_sart", "sirt").replace("true", "false"))
    with h5py.File(pipeline.run_job(job_file)) as f:
        assert json.loads(f["provenance"].attrs["parameters"])["tomo"]["nonnegative"] is False
    assert cli.main(["tomo", str(path), "-o", str(tmp_path / "x.h5"), "--method", "fbp", "--nonnegative"]) == 2
    assert "nonnegative" in capsys.readouterr().err
    job_file.write_text(job_file.read_text().replace("false", '"no"'))
    with pytest.raises(Exception, match=r"\[tomo\] nonnegative"):
        pipeline.run_job(job_file)


def test_tomo_align_writes_the_alignment_and_uses_it(tmp_path):
    from scipy import ndimage

    from tomostrain.reconstruction import align
    from tomostrain.synthetic import tilt_series

    rng = np.random.default_rng(4)
    vol = np.zeros((24, 48, 48), np.float32)
    vol[tuple(rng.integers([6, 12, 12], [18, 36, 36], (12, 3)).T)] = 1.0
    vol = ndimage.gaussian_filter(vol, 1.5)
    angles = np.arange(-70.0, 70.1, 4.0)
    shifts = rng.uniform(-2.0, 2.0, (angles.size, 2))
    data, _ = tilt_series(vol, angles, shifts=shifts, tilt_axis_deg=2.0, seed=0)
    path = tmp_path / "drift.h5"
    io.write_tilt_series(io.TiltSeries(data, angles), path)
    out = tmp_path / "out.h5"
    assert cli.main(["tomo", str(path), "-o", str(out), "--align", "--method", "sirt", "--backend", "cpu"]) == 0
    want = align(io.read_tilt_series(path))
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["tomo/alignment/shifts"][...], want.shifts)
        assert f["tomo/alignment"].attrs["center"] == want.center
        assert abs(f["tomo/alignment"].attrs["tilt_axis_deg"] - 2.0) < 0.3
        assert json.loads(f["provenance"].attrs["step_seconds"]).keys() >= {"align", "reconstruct"}
        aligned_volume = f["tomo/volume"][...]
    plain = tmp_path / "plain.h5"
    assert cli.main(["tomo", str(path), "-o", str(plain), "--method", "sirt", "--backend", "cpu"]) == 0
    with h5py.File(plain) as f:
        plain_volume = f["tomo/volume"][...]
    # the object may sit elsewhere in the aligned volume: compare sharpness (energy in the peaks)
    assert aligned_volume.max() > 1.3 * plain_volume.max(), (aligned_volume.max(), plain_volume.max())


def test_job_resumes_from_checkpoint(tmp_path, monkeypatch):
    vol, path = _shepp_series(tmp_path)
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'[job]\noutput = "res.h5"\nbackend = "cpu"\n[tomo]\ninput = "{path.name}"\nmethod = "sirt"\niterations = 20\n')

    # first run: stop right after the reconstruction checkpoint (as a killed job would)
    real_finish = pipeline.Job.finish
    monkeypatch.setattr(pipeline.Job, "finish", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_job(job_file)
    assert (tmp_path / "res.h5.partial").exists() and not (tmp_path / "res.h5").exists()

    # second run resumes: the reconstruction is not computed again
    monkeypatch.setattr(pipeline.Job, "finish", real_finish)
    import tomostrain.reconstruction as rec

    monkeypatch.setattr(rec, "reconstruct", lambda *a, **k: pytest.fail("reconstructed again instead of resuming"))
    out = pipeline.run_job(job_file)
    with h5py.File(out) as f:
        assert f["tomo/volume"].shape == vol.shape
        assert f["provenance"].attrs["finished"]


def test_job_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[job]\noutput = 'x.h5'\n")
    with pytest.raises(Exception, match=r"one or more of \[tomo\], \[stem\], \[xanes\], \[kinetics\], \[eels\]"):
        pipeline.run_job(bad)
    bad.write_text("[job\n")
    with pytest.raises(Exception, match="not valid TOML"):
        pipeline.run_job(bad)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    from tomostrain.synthetic import nanobeam_4dstem

    data, truth = nanobeam_4dstem((40, 40), (128, 128), seed=3)
    path = tmp_path_factory.mktemp("scan") / "scan.h5"
    io.write_datacube(data, path, q_pixel_size=truth["q_pixel_size"], scan_step_nm=2.0)
    return path, truth


def test_stem_command_maps_strain_and_phases(scan_file, tmp_path):
    path, truth = scan_file
    out = tmp_path / "stem.h5"
    assert cli.main(["stem", str(path), "-o", str(out), "--backend", "cpu"]) == 0
    r = io.read_results(out)
    st = r["stem"]
    names = list(st["phase"]["@attrs"]["names"]) if not isinstance(st["phase"]["@attrs"]["names"], str) \
        else json.loads(st["phase"]["@attrs"]["names"])
    # phases: simulator labels 0 vacuum, 1 Na2O, 2 NiO, 3 Ni mapped through the names
    want = np.array(truth["label_names"])[truth["labels"]]
    got = np.array(names)[st["phase"]["labels"]]
    assert (got == want).mean() > 0.95
    nio = (truth["labels"] == 2) & st["strain"]["mask"].astype(bool)
    assert nio.sum() > 0.9 * (truth["labels"] == 2).sum()
    for key, tol in (("exx", 2e-3), ("eyy", 2e-3), ("exy", 2e-3), ("theta", 0.1)):
        err = st["strain"][key][nio] - truth[key][nio]
        assert np.sqrt(np.mean((err - np.median(err)) ** 2)) < tol, key   # up to the reference's offset
    assert st["calibration"]["origin"].shape == (40, 40, 2)
    assert np.abs(st["calibration"]["origin"] - truth["origin"]).max() < 0.2
    assert st["virtual"]["adf"].shape == (40, 40)


def test_stem_reference_outside_scan_is_a_clear_error(scan_file, tmp_path, capsys):
    path, _ = scan_file
    assert cli.main(["stem", str(path), "-o", str(tmp_path / "x.h5"), "--reference", "30:50,0:10"]) == 2
    assert "outside the 40x40 scan" in capsys.readouterr().err


def test_bench_hands_its_options_to_the_suite_runner(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert cli.main(["bench", "--only", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite(s): nosuch; have " in err and all(n in err for n in ("disks", "projector", "tomo", "virtual"))
    monkeypatch.chdir(tmp_path)                                  # not a checkout: one clear line
    assert cli.main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_malformed_options_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["stem", "x.raw", "-o", "y.h5", "--shape", "a,b"])
    assert exc.value.code == 2 and "4 positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["stem", "x.h5", "-o", "y.h5", "--reference", "1:2"])
    assert exc.value.code == 2 and "y0:y1,x0:x1" in capsys.readouterr().err


def test_job_file_reference_and_phases_are_checked(scan_file, tmp_path):
    path, _ = scan_file
    job = tmp_path / "job.toml"
    job.write_text(f'[job]\noutput = "r.h5"\n[stem]\ninput = "{path}"\nreference = [0, 8, 0]\n')
    with pytest.raises(Exception, match=r"reference.*must be \(y0, y1, x0, x1\)"):
        pipeline.run_job(job)
    job.write_text(f'[job]\noutput = "r.h5"\n[stem]\ninput = "{path}"\nphases = "NiO,Unobtainium"\n')
    with pytest.raises(Exception, match="Unobtainium"):
        pipeline.run_job(job)
