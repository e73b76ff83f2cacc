"""File helpers shared by the readers and writers: existence checks, HDF5 opening, atomic writes."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import h5py

from ..errors import FileFormatError


def existing_file(path, what: str = "file") -> Path:
    """``path`` as a Path after checking it is a non-empty regular file (FileFormatError if not)."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{what} not found: {path}")
    if not path.is_file():
        raise FileFormatError(f"{what} is not a regular file: {path}")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{what} is empty (0 bytes): {path}")
    return path


def open_h5(path) -> h5py.File:
    """Open an existing HDF5 file read-only, with clear errors for non-HDF5 or truncated content."""
    path = existing_file(path, "HDF5 file")
    if not h5py.is_hdf5(path):
        raise FileFormatError(f"{path} is not an HDF5 file (no HDF5 signature found)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(f"cannot open HDF5 file {path} (truncated or corrupt?): {exc}") from exc


def h5_dataset(h5: h5py.File, name: str) -> h5py.Dataset:
    """The dataset ``name`` of an open file; FileFormatError naming it and the datasets present."""
    obj = h5.get(name)
    if not isinstance(obj, h5py.Dataset):
        present = ", ".join(list_datasets(h5)) or "none"
        raise FileFormatError(
            f"{h5.filename} has no dataset {name!r} (datasets present: {present})"
        )
    return obj


def list_datasets(h5: h5py.File) -> list[str]:
    """Absolute paths of every dataset in an open HDF5 file."""
    names: list[str] = []
    h5.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
    return names


def read_h5(dataset: h5py.Dataset, dtype=None):
    """Read a whole dataset into memory; a truncated file becomes a FileFormatError."""
    try:
        out = dataset[()]
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"cannot read dataset {dataset.name!r} of {dataset.file.filename} "
            f"(truncated or corrupt file?): {exc}"
        ) from exc
    return out if dtype is None else out.astype(dtype, copy=False)


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield temporary paths next to each final path; rename them all into place on success.

    On any exception the temporary files are removed and the final paths are left untouched, so a
    crash never leaves a half-written file under a final name.
    """
    finals = [Path(p) for p in paths]
    temps = []
    try:
        for final in finals:
            if not final.parent.is_dir():
                raise FileFormatError(f"output directory does not exist: {final.parent}")
            temps.append(final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
        yield temps
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def foreign_errors(path, what: str = "file"):
    """Turn what a reader library raises on a damaged file (h5py's OSError/RuntimeError/KeyError,
    ValueError, TypeError, ...) into a one-line FileFormatError that names the file and cause."""
    from ..errors import TomostrainError

    try:
        yield
    except TomostrainError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, EOFError,
            AttributeError, UnicodeDecodeError) as exc:
        cause = " ".join(str(exc).split())[:200]
        raise FileFormatError(f"cannot read {what} {path} (truncated or corrupt?): "
                              f"{type(exc).__name__}: {cause}") from None
