"""The chunk store: a job's big arrays, written once, chunk by chunk, into the file that becomes
its result file; the chunk-level checkpoint of DESIGN.md §5.

``ChunkStore(path, key)`` is an HDF5 file next to the output (``OUT.h5.chunks.partial``) that
holds the job's large datasets (``/tomo/volume``), uncompressed and chunked by slice, allocated
in full when created (no fill values written), plus a done flag per item (slice, scan row) in
``/_progress``. ``array(name, shape, dtype)`` gives a ``Slab`` sink: ``write(rows, slab)`` writes
the data, flushes, then sets the flags of those rows and flushes again, so a job killed at any
moment leaves every flagged row complete; ``done(rows)`` tells a resumed job what to skip.
Because the datasets are allocated up front, a write touches only raw data, never the file's
metadata, so the file stays readable after a SIGKILL.

``key`` names the inputs and parameters the store was made for: a store whose key differs is
discarded with a message. ``finish(out, tree, provenance)`` writes the rest of the result tree
and ``/provenance`` into the store, drops ``/_progress`` and renames the store to ``out``: the
result file appears at its path only when complete, and the big arrays are never copied.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from ..errors import FileFormatError, InputError
from . import results as _results

PROGRESS = "_progress"
SUFFIX = ".chunks.partial"


def store_path(out) -> Path:
    """Where the chunk store of the result file ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


class Slab:
    """A dataset of the store with a done flag per item along axis 0 (a resumable sink)."""

    def __init__(self, store: "ChunkStore", name: str):
        self._store, self.name = store, name
        self.dataset = store.h5[name]
        self.flags = store.h5[f"{PROGRESS}/{name}"]

    @property
    def shape(self):
        return self.dataset.shape

    @property
    def dtype(self):
        return self.dataset.dtype

    def write(self, rows: slice, slab) -> None:
        self.dataset[rows] = np.asarray(slab, dtype=self.dataset.dtype)
        self._store.h5.flush()
        self.flags[rows] = 1
        self._store.h5.flush()

    def __setitem__(self, rows, slab) -> None:
        self.write(rows, slab)

    def done(self, rows: slice) -> bool:
        return bool(np.all(self.flags[rows]))

    def n_done(self) -> int:
        return int(np.count_nonzero(self.flags[()]))

    def complete(self) -> bool:
        return self.n_done() == self.flags.shape[0]

    def __getitem__(self, index):
        return self.dataset[index]

    def __array__(self, dtype=None, copy=None):
        out = self.dataset[()]
        return out if dtype is None else out.astype(dtype)


class ChunkStore:
    """See the module docstring. ``say`` prints messages (a discarded checkpoint, a resume)."""

    def __init__(self, path, key: str, say=print):
        self.path, self.key, self._say = Path(path), str(key), say
        self.h5 = None
        if self.path.exists():
            try:
                h5 = h5py.File(self.path, "r+")
                old = h5.attrs.get("key")
                old = old.decode() if isinstance(old, bytes) else old
            except OSError:
                h5, old = None, None
            if old == self.key:
                self.h5 = h5
            else:
                if h5 is not None:
                    h5.close()
                say(f"discarding the chunk checkpoint {self.path.name}: "
                    f"{'its inputs or parameters differ from this job' if old else 'unreadable'}")
                self.path.unlink()
        if self.h5 is None:
            if not self.path.parent.is_dir():
                raise FileFormatError(f"output directory does not exist: {self.path.parent}")
            self.h5 = h5py.File(self.path, "w")
            self.h5.attrs["key"] = self.key
            self.h5.flush()

    def array(self, name: str, shape, dtype=np.float32, chunk_rows: int = 1) -> Slab:
        """The resumable dataset ``name`` (e.g. ``tomo/volume``): reopened with its progress when it
        exists with this shape and dtype, else created (uncompressed, chunks of ``chunk_rows``
        items, allocated in full)."""
        name = name.strip("/")
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if name in self.h5:
            ds = self.h5[name]
            if ds.shape == shape and ds.dtype == dtype and f"{PROGRESS}/{name}" in self.h5:
                slab = Slab(self, name)
                if slab.n_done():
                    self._say(f"resuming {name}: {slab.n_done()} of {shape[0]} done")
                return slab
            del self.h5[name]
            with contextlib.suppress(KeyError):
                del self.h5[f"{PROGRESS}/{name}"]
        chunks = (max(1, min(int(chunk_rows), shape[0])),) + shape[1:]
        _allocated(self.h5, name, shape, dtype, chunks)
        _allocated(self.h5, f"{PROGRESS}/{name}", (shape[0],), np.uint8, None)
        self.h5.flush()
        return Slab(self, name)

    def finish(self, out, tree: Mapping, provenance: Mapping) -> Path:
        """Write ``tree`` (without its Slabs, which are already here) and ``/provenance``, then
        rename the store to ``out``. Every Slab must be complete."""
        for slab in _slabs(tree):
            if not slab.complete():
                raise InputError(f"{slab.name} is incomplete ({slab.n_done()} of {slab.shape[0]}); cannot finish")
        _results.fill(self.h5, without_slabs(tree), provenance)
        del self.h5[PROGRESS]
        del self.h5.attrs["key"]
        self.close()
        out = Path(out)
        os.replace(self.path, out)
        return out

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def without_slabs(tree: Mapping) -> dict:
    """``tree`` without its Slab values (they live in the store, not in the small checkpoint)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Slab):
            continue
        out[key] = without_slabs(value) if isinstance(value, Mapping) and key != "@attrs" else value
    return out


def _slabs(tree: Mapping):
    for key, value in tree.items():
        if isinstance(value, Slab):
            yield value
        elif isinstance(value, Mapping) and key != "@attrs":
            yield from _slabs(value)


def _allocated(h5: h5py.File, name: str, shape, dtype, chunks) -> h5py.Dataset:
    """A dataset whose storage is allocated at creation and never filled (writes touch raw data only)."""
    parent, _, leaf = name.rpartition("/")
    group = h5.require_group(parent) if parent else h5
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks is not None:
        dcpl.set_chunk(tuple(chunks))
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER if chunks is not None else h5py.h5d.FILL_TIME_ALLOC)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(tuple(shape))
    dsid = h5py.h5d.create(group.id, leaf.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)
    return h5py.Dataset(dsid)
