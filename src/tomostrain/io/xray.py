"""Raw X-ray scans (DXchange HDF5): projections, flats before/after, darks, angles, energies.

No computation here: the flat/dark correction, zingers, rings, Paganin and the centre are in
``reconstruction.preprocess``. Layout read (DXchange, as TomoPy/dxchange and TXM beamlines write):

- ``/exchange/data``: (n_angles, rows, cols) for a tomography scan, or (n_energies, n_angles,
  rows, cols) for XANES tomography (``read_xanes``)
- ``/exchange/data_white``: flats (n, rows, cols); for XANES (n_energies, n, rows, cols) or one
  shared (n, rows, cols) stack. ``/exchange/data_white_post`` (optional): flats taken after the
  scan (tomostrain's name; the correction interpolates between the two in acquisition order)
- ``/exchange/data_dark``: (n, rows, cols), optional
- ``/exchange/theta``: degrees (radians when its ``units`` attribute says so)
- ``/exchange/energy``: eV (keV when its ``units`` attribute says ``keV``); XANES only.
  One file per energy is also read: each a tomography file with a scalar ``/exchange/energy``.
- pixel size: attribute ``pixel_size_nm`` of ``/exchange/data`` when present

Reference spectra: CSV files with a header ``energy_eV,mu`` (or any two numeric columns),
named by the file stem (``read_reference_spectra``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from . import _files

DATA = "/exchange/data"
WHITE = "/exchange/data_white"
WHITE_POST = "/exchange/data_white_post"
DARK = "/exchange/data_dark"
THETA = "/exchange/theta"
ENERGY = "/exchange/energy"


@dataclass
class XrayScan:
    """A raw X-ray scan as recorded.

    data : float32 (n_angles, rows, cols), or (n_energies, n_angles, rows, cols) for XANES
    flats, flats_after, darks : float32 stacks or None (see the module docstring for shapes)
    angles_deg : (n_angles,) degrees; energies_eV : (n_energies,) or None
    """

    data: np.ndarray
    angles_deg: np.ndarray
    flats: np.ndarray | None = None
    darks: np.ndarray | None = None
    flats_after: np.ndarray | None = None
    energies_eV: np.ndarray | None = None
    pixel_size_nm: float | None = None
    meta: dict = field(default_factory=dict)


def _units(ds) -> str:
    u = ds.attrs.get("units", "")
    return (u.decode() if isinstance(u, bytes) else str(u)).lower()


def _read_optional(h5, name, ndims, path):
    if name not in h5:
        return None
    arr = _files.read_h5(_files.h5_dataset(h5, name), np.float32)
    if arr.ndim == min(ndims) - 1:
        arr = arr[None]
    if arr.ndim not in ndims:
        raise FileFormatError(f"{path}:{name} must have {' or '.join(map(str, ndims))} dimensions, got {arr.shape}")
    return arr


def _read_one(path, want_ndim):
    path = _files.existing_file(path, "X-ray scan")
    with _files.open_h5(path) as h5:
        ds = _files.h5_dataset(h5, DATA)
        if ds.ndim not in want_ndim:
            raise FileFormatError(f"{path}:{DATA} must be {' or '.join(f'{n}-D' for n in want_ndim)}, got {ds.shape}")
        data = _files.read_h5(ds, np.float32)
        px = ds.attrs.get("pixel_size_nm")
        if THETA not in h5:
            raise FileFormatError(f"{path} has no {THETA} (projection angles)")
        th = _files.h5_dataset(h5, THETA)
        theta = np.ravel(_files.read_h5(th, np.float64))
        if _units(th) in ("rad", "radian", "radians"):
            theta = np.degrees(theta)
        energy = None
        if ENERGY in h5:
            en = _files.h5_dataset(h5, ENERGY)
            energy = np.ravel(_files.read_h5(en, np.float64))
            if _units(en) == "kev":
                energy = energy * 1000.0
        flat_dims = (3, 4) if data.ndim == 4 else (3,)
        flats = _read_optional(h5, WHITE, flat_dims, path)
        flats_after = _read_optional(h5, WHITE_POST, flat_dims, path)
        darks = _read_optional(h5, DARK, (3,), path)
    n_angles = data.shape[-3]
    if theta.size != n_angles:
        raise FileFormatError(f"{path}: {theta.size} angles in {THETA} for {n_angles} projections")
    frame = data.shape[-2:]
    for name, arr in ((WHITE, flats), (WHITE_POST, flats_after), (DARK, darks)):
        if arr is not None and (arr.shape[-2:] != frame or arr.shape[0] == 0):
            raise FileFormatError(f"{path}:{name} frames {arr.shape} do not match the projections' {frame}")
    if data.ndim == 4 and flats is not None and flats.ndim == 4 and flats.shape[0] != data.shape[0]:
        raise FileFormatError(f"{path}:{WHITE} has {flats.shape[0]} energies, the data {data.shape[0]}")
    for name, arr in (("data", data), ("flats", flats), ("darks", darks)):
        if arr is not None and not np.isfinite(arr).all():
            raise FileFormatError(f"{path}: {name} contain NaN or Inf")
    return XrayScan(data, theta, flats, darks, flats_after, energy, None if px is None else float(px),
                    {"source": str(path), "format": "dxchange"})


@_files.reader_errors("X-ray scan")
def read_xray_scan(path) -> XrayScan:
    """A raw tomography scan ``(n_angles, rows, cols)`` with its flats/darks (module docstring)."""
    return _read_one(path, (3,))


@_files.reader_errors("XANES scan")
def read_xanes(paths) -> XrayScan:
    """A raw XANES tomography scan ``(n_energies, n_angles, rows, cols)``: one 4-D DXchange
    file, or a list of 3-D files (one per energy, each with a scalar ``/exchange/energy``) that
    share angles and frame size. Energies come back in the files' order (the fit sorts them)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        scan = _read_one(paths[0], (3, 4))
        if scan.data.ndim == 3:
            scan.data = scan.data[None]
            if scan.flats is not None:
                scan.flats = scan.flats[None]
        if scan.energies_eV is None or scan.energies_eV.size != scan.data.shape[0]:
            got = None if scan.energies_eV is None else scan.energies_eV.size
            raise FileFormatError(f"{paths[0]}: need {ENERGY} with one energy (eV) per frame of {DATA} "
                                  f"({scan.data.shape[0]}), got {got}")
        return scan
    scans = [_read_one(p, (3,)) for p in paths]
    first = scans[0]
    for p, s in zip(paths, scans):
        if s.energies_eV is None or s.energies_eV.size != 1:
            raise FileFormatError(f"{p}: a per-energy file needs a scalar {ENERGY} (eV)")
        if s.data.shape != first.data.shape or not np.allclose(s.angles_deg, first.angles_deg):
            raise FileFormatError(f"{p}: shape {s.data.shape} / angles differ from {paths[0]}'s {first.data.shape}")
        if (s.flats is None) != (first.flats is None):
            raise FileFormatError(f"{p}: flats present in some per-energy files but not in others")
    flats = None if first.flats is None else _stack_same([s.flats for s in scans], paths, "flats")
    return XrayScan(np.stack([s.data for s in scans]), first.angles_deg, flats, first.darks, None,
                    np.array([float(s.energies_eV[0]) for s in scans]), first.pixel_size_nm,
                    {"source": [str(p) for p in paths], "format": "dxchange per energy"})


def _stack_same(arrays, paths, what):
    n = min(a.shape[0] for a in arrays)
    return np.stack([a[:n] for a in arrays])


def read_reference_spectra(paths) -> dict:
    """``{stem: (energy_eV, mu)}`` from CSV files ``energy_eV,mu`` (a header line is skipped)."""
    out = {}
    for p in paths:
        p = _files.existing_file(p, "reference spectrum")
        try:
            table = np.genfromtxt(p, delimiter=",", names=None, skip_header=0, dtype=np.float64, invalid_raise=True)
        except ValueError as exc:
            raise FileFormatError(f"{p}: not a CSV of 'energy_eV,mu' rows: {exc}") from None
        table = np.atleast_2d(table)
        table = table[np.isfinite(table).all(axis=1)] if table.ndim == 2 else table
        if table.ndim != 2 or table.shape[1] < 2 or table.shape[0] < 2:
            raise FileFormatError(f"{p}: need at least 2 rows of 'energy_eV,mu', got shape {table.shape}")
        if p.stem in out:
            raise FileFormatError(f"two reference files are named {p.stem!r}; names come from the file stems")
        out[p.stem] = (table[:, 0], table[:, 1])
    return out


def write_xray_scan(scan: XrayScan, path) -> None:
    """Write a raw scan as DXchange HDF5, atomically (3-D or 4-D ``data``)."""
    import h5py

    with _files.atomic_paths(Path(path)) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset(DATA, data=np.asarray(scan.data, np.float32))
            if scan.pixel_size_nm is not None:
                ds.attrs["pixel_size_nm"] = scan.pixel_size_nm
            h5.create_dataset(THETA, data=np.asarray(scan.angles_deg, np.float64)).attrs["units"] = "degrees"
            for name, arr in ((WHITE, scan.flats), (WHITE_POST, scan.flats_after), (DARK, scan.darks)):
                if arr is not None:
                    h5.create_dataset(name, data=np.asarray(arr, np.float32))
            if scan.energies_eV is not None:
                h5.create_dataset(ENERGY, data=np.asarray(scan.energies_eV, np.float64)).attrs["units"] = "eV"
