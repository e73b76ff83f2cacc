"""File helpers shared by the readers and writers: existence checks, HDF5 opening, atomic writes."""
from __future__ import annotations

import contextlib
import functools
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from ..errors import FileFormatError, TomostrainError


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
    """Absolute paths of every dataset in an open HDF5 file (those reachable when the file's
    structure is damaged: a corrupt object ends the walk instead of raising)."""
    return [name for name, _obj in walk_datasets(h5)]


def walk_datasets(h5: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    """``(absolute name, dataset)`` of every dataset that can be opened; damaged objects skipped."""
    found: list = []

    def visit(group, prefix):
        try:
            names = list(group.keys())
        except (OSError, RuntimeError, KeyError, ValueError):
            return
        for name in names:
            try:
                obj = group[name]
            except (OSError, RuntimeError, KeyError, ValueError):
                continue
            if isinstance(obj, h5py.Dataset):
                found.append((f"{prefix}/{name}", obj))
            elif isinstance(obj, h5py.Group) and len(found) < 10_000 and prefix.count("/") < 32:
                visit(obj, f"{prefix}/{name}")

    visit(h5, "")
    return found


def h5_attr(obj, name: str, default=None):
    """An attribute of an HDF5 object; a damaged attribute becomes a FileFormatError naming it."""
    try:
        return obj.attrs.get(name, default)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"cannot read attribute {name!r} of {obj.name!r} in {obj.file.filename} "
                              f"(corrupt file?): {exc}") from None


def real_dtype(dtype, where: str) -> np.dtype:
    """``dtype`` when it holds real numbers (ints or floats); FileFormatError for complex, bool,
    strings or compound types (no silent loss of an imaginary part)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        rule = " (complex data: store the magnitude or the real part yourself)" if dtype.kind == "c" else ""
        raise FileFormatError(f"{where} holds {dtype} values; tomostrain reads real numbers "
                              f"(integer or float){rule}")
    return dtype


def check_npy_size(path) -> None:
    """FileFormatError when a .npy file's size disagrees with the shape and dtype in its header."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, _fortran, dtype = np.lib.format._read_array_header(f, version)
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TokenError...
            raise FileFormatError(f"{path} is not a readable .npy file (bad header: {exc})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise FileFormatError(f"{path} holds Python objects, not numbers")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise FileFormatError(f".npy file {path} is {state}: {size} bytes, but its header ({shape} of "
                              f"{dtype}) needs {expected} bytes")


def reader_errors(what: str):
    """Decorate a reader ``f(path, ...)``: its body runs inside ``foreign_errors(path, what)``, so
    a damaged file never gives a traceback from inside a library."""

    def wrap(func):
        @functools.wraps(func)
        def reader(path, *args, **kwargs):
            with foreign_errors(path, what):
                return func(path, *args, **kwargs)

        return reader

    return wrap


def read_h5(dataset: h5py.Dataset, dtype=None):
    """Read a whole dataset into memory; a truncated file becomes a FileFormatError. The memory it
    needs is checked first against what this process may use (``safety.preflight``)."""
    from ..safety import preflight

    target = np.dtype(dtype) if dtype is not None else dataset.dtype
    preflight(int(dataset.size) * max(target.itemsize, dataset.dtype.itemsize),
              f"reading {dataset.name!r} of {dataset.file.filename} ({dataset.shape} {dataset.dtype})",
              "crop or bin the data into a smaller file, or run it on a bigger machine")
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
    """Turn any failure that is not a tomostrain error (h5py, mrcfile, tifffile, numpy, rsciio,
    the OS, memory) into a one-line FileFormatError that names the file and the cause."""
    try:
        yield
    except TomostrainError:
        raise
    except MemoryError:
        raise FileFormatError(f"cannot read {what} {path}: it needs more memory than is available "
                              "(a damaged header can claim a huge size)") from None
    except Exception as exc:  # noqa: BLE001 - the point: no foreign exception escapes a reader
        cause = " ".join(str(exc).split())[:200] or "no details"
        raise FileFormatError(f"cannot read {what} {path} (truncated, damaged or not this format?): "
                              f"{type(exc).__name__}: {cause}") from exc
