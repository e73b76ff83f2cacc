"""Result files (HDF5, DESIGN.md §4): written under a temporary name and renamed when complete.

A result tree is a nested mapping: keys are HDF5 group/dataset names (a key may hold ``/`` to
name a deeper path), values are arrays (NumPy or CuPy, copied to the host), scalars, strings or
nested mappings (groups). The key ``"@attrs"`` of a mapping holds that group's attributes:
numbers, booleans and strings are stored as they are, anything else (lists, dicts, arrays, None)
as a JSON string, which ``read_results`` returns as ``str`` (``json.loads`` it).

``/provenance`` attributes: ``version`` (filled in), ``command``, ``parameters`` (JSON),
``backend``, ``device``, ``started``, ``finished`` (ISO 8601 strings; datetimes are converted),
``step_seconds`` (JSON ``{step: seconds}``), plus any other key given.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import FileFormatError, InputError
from ..gpu_core import backend
from . import _files

ATTRS = "@attrs"
PROVENANCE = "provenance"
#: arrays larger than this many bytes are stored gzip-compressed (level 4) in chunks
COMPRESS_BYTES = 1 << 20
_JSON_PROVENANCE = ("parameters", "step_seconds")
#: provenance entries every new result file must carry (``version`` is filled in)
REQUIRED_PROVENANCE = (
    "command", "parameters", "backend", "device", "started", "finished", "step_seconds"
)


def write_results(path, tree: Mapping, provenance: Mapping) -> None:
    """Write a new result file atomically: ``tree`` plus the ``/provenance`` group.

    provenance : must hold every key of ``REQUIRED_PROVENANCE``; other keys are stored too.

    An existing file at ``path`` is replaced only once the new one is complete; if anything fails
    the old file (or no file) stays, and no temporary file is left behind.
    """
    _check_tree(tree)
    if PROVENANCE in tree:
        raise InputError("the result tree must not hold 'provenance'; pass it as provenance=")
    prov = _provenance_attrs(provenance, {})
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if missing:
        raise InputError(f"provenance lacks {missing}; a result file needs {REQUIRED_PROVENANCE}")
    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            h5.create_group(PROVENANCE).attrs.update(prov)
            _write_group(h5, tree)


def fill(h5: h5py.File, tree: Mapping, provenance: Mapping) -> None:
    """Write ``tree`` and ``/provenance`` into an open, writable HDF5 file that already holds
    some datasets (the chunk store, ``io.store``, which then becomes the result file)."""
    _check_tree(tree)
    if PROVENANCE in tree:
        raise InputError("the result tree must not hold 'provenance'; pass it as provenance=")
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if missing:
        raise InputError(f"provenance lacks {missing}; a result file needs {REQUIRED_PROVENANCE}")
    h5.require_group(PROVENANCE).attrs.update(_provenance_attrs(provenance, {}))
    _write_group(h5, tree)


def append_results(path, tree: Mapping, provenance: Mapping | None = None) -> None:
    """Add sections to an existing result file atomically (copy, add, rename over the original).

    Each top-level key of ``tree`` replaces the group/dataset of that name if it exists (so a
    re-run step overwrites its own section). ``provenance`` entries, if given, update the
    ``/provenance`` attributes; ``step_seconds`` is merged with the steps already recorded.
    """
    _check_tree(tree)
    if PROVENANCE in tree:
        raise InputError("the result tree must not hold 'provenance'; pass it as provenance=")
    path = Path(path)
    with _files.open_h5(path) as h5:
        if PROVENANCE not in h5:
            raise FileFormatError(f"{path} is not a tomostrain result file (no /provenance group)")
        old = {k: v for k, v in h5[PROVENANCE].attrs.items()}
    prov = _provenance_attrs(provenance, old) if provenance is not None else None
    with _files.atomic_paths(path) as (tmp,):
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as h5:
            for key in tree:
                if key != ATTRS and key.strip("/") in h5:
                    del h5[key.strip("/")]
            _write_group(h5, tree)
            if prov is not None:
                h5[PROVENANCE].attrs.update(prov)


def read_results(path) -> dict:
    """Read a whole result file into a nested dict of NumPy arrays, each group with "@attrs".

    Scalar datasets come back as NumPy scalars, string datasets and attributes as ``str``.
    """
    with _files.open_h5(path) as h5:
        try:
            return _read_group(h5)
        except OSError as exc:
            raise FileFormatError(f"cannot read result file {path} (truncated?): {exc}") from exc


# ------------------------------------------------------------------------------------ helpers


def _check_tree(tree) -> None:
    if not isinstance(tree, Mapping):
        raise InputError(f"a result tree must be a mapping, got {type(tree).__name__}")
    for key, value in tree.items():
        if not isinstance(key, str) or not key.strip("/"):
            raise InputError(f"result tree keys must be non-empty strings, got {key!r}")
        if key == ATTRS:
            if not isinstance(value, Mapping):
                raise InputError(f"'{ATTRS}' must be a mapping of attribute names to values")
        elif key.startswith("@"):
            raise InputError(f"unknown special key {key!r} in result tree; only '{ATTRS}' is allowed")
        elif isinstance(value, Mapping):
            _check_tree(value)


def _provenance_attrs(provenance, old) -> dict:
    if not isinstance(provenance, Mapping):
        raise InputError(f"provenance must be a mapping, got {type(provenance).__name__}")
    out = {}
    for key, value in provenance.items():
        if key == "version":
            continue
        if isinstance(value, (_dt.datetime, _dt.date)):
            value = value.isoformat()
        if key == "step_seconds":
            merged = json.loads(_text(old.get("step_seconds", "{}")))
            merged.update({str(k): float(v) for k, v in dict(value).items()})
            value = merged
        out[key] = _json(value, key) if key in _JSON_PROVENANCE else _attr_value(value, key)
    out["version"] = __version__
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(value, name: str) -> str:
    try:
        return json.dumps(value, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"attribute {name!r} cannot be stored as JSON: {exc}") from exc


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or backend.is_gpu_array(obj):
        return backend.to_host(obj).tolist()
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _attr_value(value, name: str):
    if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
        return value
    return _json(value, name)


def _write_group(group: h5py.Group, tree: Mapping) -> None:
    for key, value in tree.items():
        if key == ATTRS:
            group.attrs.update({str(k): _attr_value(v, str(k)) for k, v in value.items()})
        elif isinstance(value, Mapping):
            _write_group(group.require_group(key.strip("/")), value)
        else:
            _write_dataset(group, key.strip("/"), value)


def _write_dataset(group: h5py.Group, name: str, value) -> None:
    if name in group:
        raise InputError(f"{group.name.rstrip('/')}/{name} is given twice in the result tree")
    if isinstance(value, str):
        group.create_dataset(name, data=value, dtype=h5py.string_dtype())
        return
    array = np.asarray(backend.to_host(value))
    if array.dtype.kind == "U":
        array = array.astype(object)
        group.create_dataset(name, data=array, dtype=h5py.string_dtype())
        return
    if array.dtype.kind not in "biufc":
        raise InputError(
            f"cannot store {group.name.rstrip('/')}/{name}: {type(value).__name__} of dtype "
            f"{array.dtype} (expected an array, number, string or mapping)"
        )
    if array.ndim and array.nbytes > COMPRESS_BYTES:
        group.create_dataset(name, data=array, chunks=True, compression="gzip", compression_opts=4)
    else:
        group.create_dataset(name, data=array)


def _read_group(group: h5py.Group) -> dict:
    out = {ATTRS: {k: _read_attr(v) for k, v in group.attrs.items()}}
    for name, obj in group.items():
        if isinstance(obj, h5py.Group):
            out[name] = _read_group(obj)
        elif h5py.check_string_dtype(obj.dtype) is not None:
            out[name] = obj.asstr()[()]
            if isinstance(out[name], np.ndarray):
                out[name] = out[name].astype(str)
        else:
            out[name] = obj[()]
    return out


def _read_attr(value):
    if isinstance(value, bytes):
        return value.decode()
    return value
