"""Issue 12: nothing lost, nothing silently wrong.

Output paths that name an input are refused for every command and input kind (input bytes
unchanged); options and job files are checked before compute; checkpoints are keyed on content;
one writer per output; SIGTERM keeps the checkpoint; memory preflight; 4D-STEM value checks.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tomostrain import cli, io, pipeline, safety, validation
from tomostrain.errors import FileFormatError, GeometryError, InputError

N_ROWS, N_COLS = 6, 24
ANGLES = np.arange(-60.0, 60.1, 6.0)


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    vol = np.zeros((N_ROWS, N_COLS, N_COLS), np.float32)
    iy, ix = np.indices((N_COLS, N_COLS)) - (N_COLS - 1) / 2
    for _ in range(3):
        cy, cx, r = rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(2, 4)
        vol[:, (iy - cy) ** 2 + (ix - cx) ** 2 < r * r] += rng.uniform(0.5, 1.5)
    return vol


def _series(seed=0, angles=ANGLES):
    from tomostrain.synthetic import tilt_series

    data, _ = tilt_series(_volume(seed), angles, seed=seed, supersample=1)
    return io.TiltSeries(data, angles, pixel_size_nm=0.5)


def _cube(seed=0, shape=(4, 3, 16, 16)):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) + 0.1).astype(np.float32)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.fixture
def no_compute(monkeypatch):
    """Any job step started fails the test: the error must come before compute."""
    def step(self, name):
        pytest.fail(f"step {name!r} started before the bad input was refused")
    monkeypatch.setattr(pipeline.Job, "step", step)


@pytest.fixture
def inputs(tmp_path):
    """One file of every input kind the commands read, plus a job file."""
    s = _series()
    io.write_tilt_series(s, tmp_path / "tilt.h5")
    io.write_tilt_series(s, tmp_path / "tilt.mrc")                 # + tilt.rawtlt
    io.write_tilt_series(s, tmp_path / "stack.tif")                # + stack.rawtlt
    (tmp_path / "angles.txt").write_text("".join(f"{a}\n" for a in ANGLES))
    c = _cube()
    io.write_datacube(c, tmp_path / "scan.h5", q_pixel_size=0.02)
    np.save(tmp_path / "scan.npy", c)
    c.tofile(tmp_path / "scan.raw")
    np.save(tmp_path / "probe.npy", c[0, 0])
    with h5py.File(tmp_path / "scan.emd", "w") as h5:
        g = h5.create_group("root/datacube")
        g.attrs["python_class"] = "DataCube"
        g["data"] = c
    (tmp_path / "job.toml").write_text('[job]\noutput = "job.toml"\n[tomo]\ninput = "tilt.h5"\n')
    (tmp_path / "job2.toml").write_text('[job]\noutput = "tilt.h5"\n[tomo]\ninput = "tilt.h5"\n')
    (tmp_path / "job3.toml").write_text('[job]\noutput = "scan.raw"\n[stem]\ninput = "scan.raw"\n'
                                        'shape = [4, 3, 16, 16]\ndtype = "float32"\n')
    os.link(tmp_path / "tilt.h5", tmp_path / "hardlink.h5")
    return tmp_path


RAW = ["--shape", "4,3,16,16", "--dtype", "float32"]
OVERWRITES = [
    ["tomo", "tilt.h5", "-o", "tilt.h5"],
    ["tomo", "tilt.h5", "-o", "hardlink.h5"],                     # same inode, other name
    ["tomo", "tilt.mrc", "-o", "tilt.mrc"],
    ["tomo", "tilt.mrc", "-o", "tilt.rawtlt"],                    # the angle file read beside it
    ["tomo", "tilt.mrc", "-o", "tilt.tlt"],                       # a sibling the reader would open
    ["tomo", "stack.tif", "-o", "stack.tif"],
    ["tomo", "stack.tif", "--angles", "angles.txt", "-o", "angles.txt"],
    ["stem", "scan.h5", "-o", "scan.h5"],
    ["stem", "scan.npy", "-o", "scan.npy"],
    ["stem", "scan.raw", "-o", "scan.raw", *RAW],
    ["stem", "scan.emd", "-o", "scan.emd"],
    ["stem", "scan.h5", "--probe", "probe.npy", "-o", "probe.npy"],
    ["run", "job.toml"],                                          # output = the job file
    ["run", "job2.toml"],                                         # output = its input
    ["run", "job3.toml"],
]


@pytest.mark.parametrize("argv", OVERWRITES, ids=["-".join(a[1::2][:3]) for a in OVERWRITES])
def test_output_naming_an_input_is_refused_and_inputs_stay(inputs, monkeypatch, capsys, no_compute, argv):
    monkeypatch.chdir(inputs)
    before = _digest(inputs)
    rc, err = _run(capsys, argv)
    assert rc == 2 and len(err) == 1 and "would overwrite" in err[0], err
    assert _digest(inputs) == before                              # sha256 of every input unchanged
    assert not list(inputs.glob("*.lock")) and not list(inputs.glob("*.partial"))


@pytest.mark.parametrize("out, message", [(".", "is a folder"), ("sub", "is a folder"),
                                          ("missing/r.h5", "does not exist")])
def test_output_folder_checked_before_compute(inputs, monkeypatch, capsys, no_compute, out, message):
    monkeypatch.chdir(inputs)
    (inputs / "sub").mkdir()
    rc, err = _run(capsys, ["tomo", "tilt.h5", "-o", out])
    assert rc == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder(inputs, monkeypatch, capsys, no_compute):
    ro = inputs / "ro"
    ro.mkdir(mode=0o555)
    rc, err = _run(capsys, ["tomo", inputs / "tilt.h5", "-o", ro / "r.h5"])
    assert rc == 2 and "not writable" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["tomo", "tilt.h5", "-o", "r.h5", "--iterations", "0", "--method", "sirt"], "iterations = 0"),
    (["tomo", "tilt.h5", "-o", "r.h5", "--iterations", "-5", "--method", "sirt"], "iterations = -5"),
    (["tomo", "tilt.h5", "-o", "r.h5", "--voxel-size", "0"], "option --voxel-size"),
    (["tomo", "tilt.h5", "-o", "r.h5", "--segment", "1"], "at least 2 classes"),
    (["tomo", "tilt.h5", "-o", "r.h5", "--tilt-axis", "nan"], "option --tilt-axis"),
    (["tomo", "tilt.h5", "-o", "r.h5", "--align", "--center", "3"], "either align"),
    (["stem", "scan.h5", "-o", "r.h5", "--q-pixel-size", "0"], "option --q-pixel-size"),
    (["stem", "scan.h5", "-o", "r.h5", "--energy-kev", "-300"], "option --energy-kev"),
    (["stem", "scan.h5", "-o", "r.h5", "--probe", "nosuch.npy"], "nosuch.npy not found"),
    (["stem", "scan.raw", "-o", "r.h5", "--shape", "4,3,16,16", "--dtype", "complex64"], "real integer or float"),
])
def test_option_ranges_are_refused_before_compute(inputs, monkeypatch, capsys, no_compute, argv, message):
    monkeypatch.chdir(inputs)
    rc, err = _run(capsys, argv)
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_tilt_axis_without_align_is_applied(inputs):
    from tomostrain.reconstruction import reconstruct

    out20, out0 = inputs / "a20.h5", inputs / "a0.h5"
    assert cli.main(["tomo", str(inputs / "tilt.h5"), "-o", str(out20), "--tilt-axis", "20"]) == 0
    assert cli.main(["tomo", str(inputs / "tilt.h5"), "-o", str(out0)]) == 0
    v20, v0 = io.read_results(out20)["tomo"]["volume"], io.read_results(out0)["tomo"]["volume"]
    want = reconstruct(io.read_tilt_series(inputs / "tilt.h5"), tilt_axis_deg=20.0, backend="cpu")
    np.testing.assert_allclose(v20, want, atol=1e-5)
    assert np.abs(v20 - v0).max() > 0.1 * np.abs(v0).max()


# ------------------------------------------------------------------------------ data on reading


def test_radian_angles_complex_data_and_odd_files(tmp_path):
    s = _series()
    io.write_tilt_series(s, tmp_path / "t.mrc")
    (tmp_path / "t.rawtlt").write_text("".join(f"{a}\n" for a in np.radians(ANGLES)))
    with pytest.raises(GeometryError, match="look like radians"):
        io.read_tilt_series(tmp_path / "t.mrc")
    (tmp_path / "t.rawtlt").write_bytes(b"\xff\xfe0\n\x80\x81\n")
    with pytest.raises(FileFormatError, match="not text"):
        io.read_tilt_series(tmp_path / "t.mrc")
    # DXchange theta stored in radians *with* units='rad' is fine (tests/test_io_tilt.py)
    with h5py.File(tmp_path / "c.h5", "w") as h5:
        h5["/exchange/data"] = s.data.astype(np.complex64)
        h5["/exchange/theta"] = ANGLES
    with pytest.raises(FileFormatError, match="complex64.*real numbers"):
        io.read_tilt_series(tmp_path / "c.h5")
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5["/exchange/data"] = s.data > 1
        h5["/exchange/theta"] = ANGLES
    with pytest.raises(FileFormatError, match="bool"):
        io.read_tilt_series(tmp_path / "b.h5")


def test_mrc_and_npy_size_must_match_their_header(tmp_path):
    io.write_tilt_series(_series(), tmp_path / "t.mrc")
    with open(tmp_path / "t.mrc", "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(FileFormatError, match="longer than its header says"):
        io.read_tilt_series(tmp_path / "t.mrc")
    np.save(tmp_path / "c.npy", _cube())
    with open(tmp_path / "c.npy", "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(FileFormatError, match="longer than its header says"):
        io.read_datacube(tmp_path / "c.npy")
    with pytest.raises(FileFormatError, match="longer than its header says"):
        io.read_image(tmp_path / "c.npy")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.__setitem__((1, 2, 3, 4), np.nan), r"1 NaN/Inf.*\(1, 2, 3, 4\)"),
    (lambda c: c.__setitem__((0, 0, 0, 0), np.inf), r"1 NaN/Inf.*\(0, 0, 0, 0\)"),
    (lambda c: c.__imul__(0), "every value .* is zero"),
    (lambda c: c.__imul__(-1), "no positive value"),
])
def test_4dstem_values_are_checked(tmp_path, monkeypatch, capsys, edit, message):
    c = _cube()
    edit(c)
    np.save(tmp_path / "c.npy", c)
    with pytest.raises(InputError, match=message):
        io.read_datacube(tmp_path / "c.npy")
    monkeypatch.setattr(pipeline.Job, "step", lambda self, name: pytest.fail("computed on bad data"))
    rc, err = _run(capsys, ["stem", tmp_path / "c.npy", "-o", tmp_path / "r.h5", "--q-pixel-size", "0.02"])
    assert rc == 2 and len(err) == 1 and "cannot convert" not in err[0]


def test_corrupt_gzip_chunk_in_a_lazy_cube(tmp_path):
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("/d", data=_cube(), chunks=(1, 3, 16, 16), compression="gzip")
        info = h5["/d"].id.get_chunk_info(2)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 10: info.byte_offset + 40] = b"\x55" * 30
    path.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="z.h5"):
        io.read_datacube(path)


def test_damaged_hdf5_structure_is_a_file_error(tmp_path):
    from tomostrain.io import _files

    class Broken:  # h5py raises RuntimeError "Object visitation failed" on damaged B-trees
        filename = "x.h5"

        def get(self, name):
            return None

        def keys(self):
            raise RuntimeError("Object visitation failed")

    assert _files.list_datasets(Broken()) == []
    with pytest.raises(FileFormatError, match="no dataset '/exchange/data'.*none"):
        _files.h5_dataset(Broken(), "/exchange/data")


# ---------------------------------------------------------------------------------- job files

GOOD_JOB = {"job": {"output": "r.h5", "backend": "cpu"},
            "tomo": {"input": "tilt.h5", "method": "fbp", "iterations": 5, "center": 11.5, "segment": 0,
                     "angles": "angles.txt", "voxel_size_nm": 0.5, "align": False, "tilt_axis_deg": 0.0,
                     "offset": "auto", "xf": "a.xf", "center_method": "vo", "rings": "sort", "zingers": 0.5,
                     "beam_background": 2},
            "stem": {"input": "scan.h5", "phases": ["NiO"], "reference": [0, 2, 0, 2], "probe": [0, 1, 0, 1],
                     "q_pixel_size": 0.02, "energy_kev": 300.0, "convergence_mrad": 1.0,
                     "shape": [4, 3, 16, 16], "dtype": "uint16", "scan_shape": [4, 3]},
            "xanes": {"input": "x.h5", "references": ["Ni.csv", "NiO.csv"], "center": "auto", "center_method": "vo",
                      "rings": "sort", "zingers": 0.5, "beam_background": 2, "method": "cgls", "iterations": 12,
                      "fit": "projection"},
            "kinetics": {"input": "m.h5", "pixel_size_nm": 0.5, "frame_interval_s": 1.0, "vacuum": "auto"},
            "eels": {"input": "s.h5", "edge": "Ni-L23", "references": [[3.4, 2.0], [2.2, 0.0]], "valence_from": "ratio",
                     "low_loss": "ll.h5", "denoise": "pca"},
            "cluster": {"address": "local", "workers": 2}}


def _toml(spec):
    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    return "".join(f"[{s}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) for s, keys in spec.items())


def _line_of(text, key, section):
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    return next(i for i, line in enumerate(lines, 1) if i > start and line.startswith(f"{key} ="))


def test_the_good_job_passes_the_schema(tmp_path):
    (tmp_path / "j.toml").write_text(_toml(GOOD_JOB))
    assert validation.read_job_file(tmp_path / "j.toml") == GOOD_JOB


TYPOS = [(s, k) for s in GOOD_JOB for k in GOOD_JOB[s]]


@pytest.mark.parametrize("section, key", TYPOS, ids=[f"{s}.{k}" for s, k in TYPOS])
def test_every_key_typo_is_named_with_its_line(tmp_path, section, key):
    spec = json.loads(json.dumps(GOOD_JOB))
    typo = key[:2] + key[3:] if len(key) > 3 else key + "s"        # metod, outut, ...
    spec[section][typo] = spec[section].pop(key)
    text = _toml(spec)
    (tmp_path / "j.toml").write_text(text)
    with pytest.raises(InputError) as exc:
        validation.read_job_file(tmp_path / "j.toml")
    msg = str(exc.value)
    assert "\n" not in msg and f"[{section}] unknown key {typo!r}" in msg
    assert f"line {_line_of(text, typo, section)}:" in msg


WRONG_TYPES = [
    ("job", "output", 5), ("job", "backend", "tpu"), ("job", "backend", True),
    ("tomo", "input", 3), ("tomo", "method", "art"), ("tomo", "iterations", "100"), ("tomo", "iterations", 2.5),
    ("tomo", "iterations", 0), ("tomo", "center", "middle"), ("tomo", "segment", True), ("tomo", "segment", 1),
    ("tomo", "angles", 30), ("tomo", "voxel_size_nm", "0.5"), ("tomo", "voxel_size_nm", 0),
    ("tomo", "align", "no"), ("tomo", "align", 1), ("tomo", "tilt_axis_deg", "3"), ("tomo", "tilt_axis_deg", 200),
    ("stem", "phases", 5), ("stem", "phases", []), ("stem", "reference", "0:8,0:8"), ("stem", "reference", [0, 8, 0]),
    ("stem", "reference", [8, 0, 0, 8]), ("stem", "probe", 7), ("stem", "q_pixel_size", "0.02"),
    ("stem", "q_pixel_size", 0), ("stem", "energy_kev", [300]), ("stem", "convergence_mrad", -1.0),
    ("stem", "shape", [4, 3]), ("stem", "shape", [4, 3, 16, 0]), ("stem", "dtype", "complex64"), ("stem", "dtype", "nosuch"),
]


@pytest.mark.parametrize("section, key, value", WRONG_TYPES, ids=[f"{s}.{k}={v!r}" for s, k, v in WRONG_TYPES])
def test_every_wrong_type_is_named_in_one_line_exit_2_before_compute(tmp_path, monkeypatch, capsys, no_compute,
                                                                     section, key, value):
    spec = json.loads(json.dumps(GOOD_JOB))
    spec[section][key] = value
    text = _toml(spec)
    (tmp_path / "j.toml").write_text(text)
    rc, err = _run(capsys, ["run", tmp_path / "j.toml"])
    assert rc == 2 and len(err) == 1, err
    assert f"line {_line_of(text, key, section)}: [{section}] {key} = " in err[0], err


@pytest.mark.parametrize("text, message", [
    ('[job]\noutput = "r.h5"\nbackend = "cpu"\nthreads = 4\n[tomo]\ninput = "t.h5"\n', "line 4: [job] unknown key 'threads'"),
    ('[job]\noutput = "r.h5"\n[tomo]\ninput = "t.h5"\nbackend = "cpu"\n', "line 5: [tomo] unknown key 'backend'"),
    ('[job]\noutput = "r.h5"\n[tomography]\ninput = "t.h5"\n', "line 3: unknown section [tomography]"),
    ('[job]\noutput = "r.h5"\n[tomo]\nmethod = "fbp"\n', "[tomo] input is required"),
    ('[tomo]\ninput = "t.h5"\n', "[job] output = 'RESULT.h5' is required"),
])
def test_job_file_structure(tmp_path, text, message):
    (tmp_path / "j.toml").write_text(text)
    with pytest.raises(InputError) as exc:
        validation.read_job_file(tmp_path / "j.toml")
    assert message in str(exc.value)


def test_binary_job_file(tmp_path, capsys):
    (tmp_path / "j.toml").write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    rc, err = _run(capsys, ["run", tmp_path / "j.toml"])
    assert rc == 2 and "not UTF-8 text" in err[0]


# --------------------------------------------------------------------- checkpoints keyed on content


def _kill_after(monkeypatch, step_name):
    """Make the job stop (as a killed run would) right after ``step_name`` is checkpointed."""
    real = pipeline.Job.step

    from contextlib import contextmanager

    @contextmanager
    def step(self, name):
        with real(self, name):
            yield
        if name == step_name:
            raise KeyboardInterrupt(f"killed after {name}")
    monkeypatch.setattr(pipeline.Job, "step", step)
    return real


def _tomo_job(folder, angle_file=None):
    lines = ['[job]\noutput = "res.h5"\nbackend = "cpu"\n[tomo]\ninput = "tilt.mrc"\nalign = true\nsegment = 3\n']
    if angle_file:
        lines.append(f'angles = "{angle_file}"\n')
    (folder / "job.toml").write_text("".join(lines))
    return folder / "job.toml"


@pytest.mark.parametrize("step", ["align", "reconstruct", "segment"])
@pytest.mark.parametrize("change", ["content", "angles"])
def test_killed_tomo_job_rerun_on_changed_input_equals_a_clean_run(tmp_path, monkeypatch, capsys, step, change):
    io.write_tilt_series(_series(0), tmp_path / "tilt.mrc")
    job = _tomo_job(tmp_path)
    real = _kill_after(monkeypatch, step)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_job(job)
    assert (tmp_path / "res.h5.partial").exists() and not (tmp_path / "res.h5.lock").exists()
    if change == "content":
        io.write_tilt_series(_series(1), tmp_path / "tilt.mrc")
    else:  # the same stack, angles of another (reversed) tilt scheme: same size file
        (tmp_path / "tilt.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES[::-1]))
    monkeypatch.setattr(pipeline.Job, "step", real)
    resumed = io.read_results(pipeline.run_job(job))
    assert "discarding checkpoint" in capsys.readouterr().err
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    for name in ("tilt.mrc", "tilt.rawtlt"):
        (clean_dir / name).write_bytes((tmp_path / name).read_bytes())
    clean = io.read_results(pipeline.run_job(_tomo_job(clean_dir)))
    for key in ("volume", "labels"):
        np.testing.assert_array_equal(resumed["tomo"][key], clean["tomo"][key])
    np.testing.assert_array_equal(resumed["tomo"]["alignment"]["shifts"], clean["tomo"]["alignment"]["shifts"])


def test_changed_angle_file_discards_the_checkpoint(tmp_path, monkeypatch, capsys):
    io.write_tilt_series(_series(0), tmp_path / "tilt.h5")
    (tmp_path / "a.txt").write_text("".join(f"{a}\n" for a in ANGLES))
    job = tmp_path / "job.toml"
    job.write_text('[job]\noutput = "res.h5"\nbackend = "cpu"\n[tomo]\ninput = "tilt.h5"\nangles = "a.txt"\n')
    real = _kill_after(monkeypatch, "reconstruct")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_job(job)
    (tmp_path / "a.txt").write_text("".join(f"{a + 1.0}\n" for a in ANGLES))
    monkeypatch.setattr(pipeline.Job, "step", real)
    pipeline.run_job(job)
    assert "discarding checkpoint res.h5.partial: the input a.txt changed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scan_raw(tmp_path_factory):
    from tomostrain.synthetic import nanobeam_4dstem

    data, truth = nanobeam_4dstem((8, 6), (96, 96), seed=2)
    folder = tmp_path_factory.mktemp("rawscan")
    np.asarray(data, np.float32).tofile(folder / "scan.raw")
    return folder, truth["q_pixel_size"]


def _stem_job(folder, q, shape):
    (folder / "job.toml").write_text(
        f'[job]\noutput = "res.h5"\nbackend = "cpu"\n[stem]\ninput = "scan.raw"\nq_pixel_size = {q}\n'
        f'shape = {list(shape)}\ndtype = "float32"\nphases = ["NiO", "Na2O"]\n')
    return folder / "job.toml"


SAME, OTHER = (8, 6, 96, 96), (6, 8, 96, 96)  # the same raw bytes read with another scan shape
_CLEAN: dict = {}


def _clean_stem(src, q, shape, tmp_path):
    if shape not in _CLEAN:
        folder = tmp_path / f"clean{shape[0]}"
        folder.mkdir()
        (folder / "scan.raw").write_bytes((src / "scan.raw").read_bytes())
        _CLEAN[shape] = io.read_results(pipeline.run_job(_stem_job(folder, q, shape)))
    return _CLEAN[shape]


@pytest.mark.parametrize("step, shape", [("calibrate", OTHER), ("scan", SAME), ("scan", OTHER),
                                         ("lattice", SAME), ("lattice", OTHER), ("strain", OTHER)])
def test_killed_stem_job_resumes_with_types_and_layout_change_restarts(scan_raw, tmp_path, monkeypatch, capsys,
                                                                       step, shape):
    src, q = scan_raw
    (tmp_path / "scan.raw").write_bytes((src / "scan.raw").read_bytes())
    real = _kill_after(monkeypatch, step)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_job(_stem_job(tmp_path, q, SAME))
    monkeypatch.setattr(pipeline.Job, "step", real)
    resumed = io.read_results(pipeline.run_job(_stem_job(tmp_path, q, shape)))  # shape: the raw layout
    err = capsys.readouterr().err
    assert ("discarding checkpoint" in err) == (shape != SAME)
    assert ("resuming from" in err) == (shape == SAME)
    clean = _clean_stem(src, q, shape, tmp_path)
    assert resumed["stem"]["lattice"]["@attrs"]["main_phase"] == clean["stem"]["lattice"]["@attrs"]["main_phase"]
    assert clean["stem"]["lattice"]["@attrs"]["main_phase"] in ("NiO", "Na2O")       # not '"'
    for key in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_array_equal(resumed["stem"]["strain"][key], clean["stem"]["strain"][key])
    np.testing.assert_array_equal(resumed["stem"]["phase"]["labels"], clean["stem"]["phase"]["labels"])


def test_checkpoint_attrs_round_trip_with_their_types(tmp_path):
    job = pipeline.Job(tmp_path / "r.h5", "test", {"p": 1}, "cpu")
    attrs = {"names": ["vacuum", "NiO"], "d": {"a": 1}, "none": None, "s": '["not json"]', "f": 1.5, "b": True}
    with job.step("one"):
        job.results["g"] = {"x": np.arange(3), "@attrs": dict(attrs)}
    job.lock.release()
    again = pipeline.Job(tmp_path / "r.h5", "test", {"p": 1}, "cpu")
    assert again.done("one") and again.results["g"]["@attrs"] == attrs
    again.lock.release()


def test_file_identity_samples_large_files(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    a = safety.file_identity(big)
    with open(big, "r+b") as f:  # a change in one sampled block, size and mtime kept
        f.seek(safety.HEADER_BYTES // 2)
        f.write(b"x")
    os.utime(big, ns=(a["mtime_ns"], a["mtime_ns"]))
    b = safety.file_identity(big)
    assert a["size"] == b["size"] and a["mtime_ns"] == b["mtime_ns"] and a["sha256"] != b["sha256"]


# ------------------------------------------------------------------- lock, temps, signals, memory


def test_a_second_writer_fails_at_once_and_a_stale_lock_is_taken_over(inputs, capsys, monkeypatch):
    out = inputs / "r.h5"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (inputs / "r.h5.lock").write_text(f"{sleeper.pid} {safety.socket.gethostname()}\n")
        rc, err = _run(capsys, ["tomo", inputs / "tilt.h5", "-o", out])
        assert rc == 2 and len(err) == 1 and f"being written by another tomostrain run (pid {sleeper.pid}" in err[0]
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the writer is gone: its lock is stale and taken over; old temp files of killed runs go too
    (inputs / ".r.h5.0123456789ab.tmp").write_bytes(b"half")
    (inputs / ".r.h5.partial.0123456789ab.tmp").write_bytes(b"half")
    assert cli.main(["tomo", str(inputs / "tilt.h5"), "-o", str(out)]) == 0
    assert out.exists() and not list(inputs.glob("*.tmp")) and not (inputs / "r.h5.lock").exists()


def test_sigterm_stops_with_one_line_and_keeps_the_checkpoint(inputs, monkeypatch, capsys):
    import tomostrain.reconstruction as rec

    real = rec.reconstruct

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(rec, "reconstruct", killed)
    out = inputs / "r.h5"
    rc, err = _run(capsys, ["tomo", inputs / "tilt.h5", "-o", out, "--align"])
    assert rc == 143 and [e for e in err if e.startswith("tomostrain:")] == err[-1:] and "stopped by SIGTERM" in err[-1]
    assert io.read_results(inputs / "r.h5.partial")["provenance"]["@attrs"]["steps_done"] == '["align"]'
    assert not out.exists() and not (inputs / "r.h5.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    monkeypatch.setattr(rec, "reconstruct", real)
    assert cli.main(["tomo", str(inputs / "tilt.h5"), "-o", str(out), "--align"]) == 0
    assert "resuming from r.h5.partial: align already done" in capsys.readouterr().err


def test_memory_preflight_refuses_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOMOSTRAIN_MEMORY_LIMIT", "4G")
    with h5py.File(tmp_path / "huge.h5", "w") as h5:  # 180 GiB declared, nothing written
        h5.create_dataset("/exchange/data", shape=(1500, 4096, 7864), dtype=np.float32, chunks=(1, 256, 256))
        h5["/exchange/theta"] = np.linspace(-70, 70, 1500)
    monkeypatch.setattr(safety, "disk_free_bytes", lambda folder: 100 << 30)
    rc, err = _run(capsys, ["tomo", tmp_path / "huge.h5", "-o", tmp_path / "r.h5", "--align"])
    assert rc == 2 and len(err) == 1 and "needs about 180.0 GiB" in err[0] and "4.0 GiB" in err[0], err
    # read lazily (no --align), it is reconstructed slice by slice into the result: the disk is the limit
    rc, err = _run(capsys, ["tomo", tmp_path / "huge.h5", "-o", tmp_path / "r.h5"])
    assert rc == 2 and len(err) == 1 and "GiB of disk" in err[0] and "100.0 GiB free" in err[0], err
    raw = tmp_path / "huge.raw"  # a sparse 180 GiB raw scan
    with open(raw, "wb") as f:
        f.truncate(3000 * 3000 * 64 * 84 * 4)
    rc, err = _run(capsys, ["stem", raw, "-o", tmp_path / "s.h5", "--shape", "3000,3000,64,84",
                            "--dtype", "float32", "--q-pixel-size", "0.02"])
    assert rc == 2 and "3000x3000 scan" in err[0] and "split the scan" in err[0], err
    limit, source = safety.memory_limit_bytes()
    assert limit == 4 << 30 and source == "TOMOSTRAIN_MEMORY_LIMIT"
    monkeypatch.delenv("TOMOSTRAIN_MEMORY_LIMIT")
    limit, source = safety.memory_limit_bytes()
    assert 0 < limit <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------ messages in user terms


def test_messages_name_causes_not_internals(tmp_path, capsys):
    zero = io.TiltSeries(np.zeros((len(ANGLES), N_ROWS, N_COLS), np.float32), ANGLES)
    io.write_tilt_series(zero, tmp_path / "zero.h5")
    rc, err = _run(capsys, ["tomo", tmp_path / "zero.h5", "-o", tmp_path / "z.h5", "--segment", "3"])
    assert rc == 2 and "no positive density" in err[-1] and "weight" not in err[-1]
    np.save(tmp_path / "flat.npy", np.ones((2, 2, 32, 32), np.float32))
    rc, err = _run(capsys, ["stem", tmp_path / "flat.npy", "-o", tmp_path / "f.h5", "--q-pixel-size", "0.02"])
    assert rc == 2 and "annulus" not in err[-1] and (
        "too large for the 32x32 detector" in err[-1] or "no central disk" in err[-1]), err


def _commands_with_input_and_output():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        dests = {a.dest for a in p._actions}
        if {"input", "output"} <= dests:
            out.append(name)
    return out


@pytest.mark.parametrize("command", _commands_with_input_and_output())
def test_every_command_refuses_to_overwrite_its_input(inputs, monkeypatch, capsys, command):
    """Generic over the CLI's commands (kinetics, xanes, ... included once they exist): the check
    lives in pipeline.Job, which finds the inputs in the job's parameters."""
    monkeypatch.chdir(inputs)
    for name in ("tilt.h5", "scan.npy"):
        before = _digest(inputs)
        try:
            rc, err = _run(capsys, [command, name, "-o", name])
        except SystemExit as exc:  # a required option of that command is missing: nothing ran
            rc = exc.code
        assert rc == 2
        assert _digest(inputs) == before


def test_a_real_sigterm_to_a_running_cli_keeps_the_checkpoint(inputs):
    import time

    out = inputs / "r.h5"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "tomostrain.cli", "tomo", str(inputs / "tilt.h5"), "-o", str(out),
                             "--align", "--method", "sirt", "--iterations", "1000000", "--backend", "cpu"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (inputs / "r.h5.partial").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (inputs / "r.h5.partial").exists() and (inputs / "r.h5.lock").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("tomostrain: stopped by SIGTERM; completed steps are checkpointed in")
    assert "Traceback" not in err and not out.exists() and not (inputs / "r.h5.lock").exists()
    assert (inputs / "r.h5.partial").exists() and not list(inputs.glob(".*.tmp"))


def test_ctrl_c_is_one_line_exit_130(inputs, monkeypatch, capsys):
    import tomostrain.reconstruction as rec

    monkeypatch.setattr(rec, "reconstruct", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc, err = _run(capsys, ["tomo", inputs / "tilt.h5", "-o", inputs / "r.h5"])
    assert rc == 130 and err[-1].startswith("tomostrain: stopped by SIGINT") and not (inputs / "r.h5.lock").exists()
