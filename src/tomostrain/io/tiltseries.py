"""Tilt series: the TiltSeries container, lazy TiltSource readers, and writers.

Conventions (DESIGN.md §3): data ``float32 (n_angles, n_rows, n_cols)`` with the tilt axis along
the rows' direction, angles in degrees.

``open_tilt_series(path, angles=, log=, dataset=, offset=)`` returns a ``TiltSource``: the path
and options only (it pickles; no handle stays open), ``.shape``, ``.angles_deg``,
``.pixel_size_nm``, ``.meta``, ``.read(rows)`` (a block of detector rows, corrected exactly like
the full read) and ``.to_series()``. ``read_tilt_series(...)`` is ``open_tilt_series(...).to_series()``.

Formats, chosen by suffix (a folder or a list of files: one file per tilt):

- DXchange HDF5 (``.h5 .hdf5 .hdf .nxs``): ``/exchange/data`` (n, rows, cols) and
  ``/exchange/theta`` in degrees (radians only when its ``units`` attr says ``rad``/``radians``).
  Optional ``/exchange/data_white`` and ``/exchange/data_dark`` give the flat/dark correction
  ``(data - mean(dark)) / (mean(white) - mean(dark))`` (means over their first axis; dark
  defaults to 0; a dark field alone is only subtracted); the denominator and the result are
  clipped to at least ``FLOOR``, so ``-log`` stays finite. Pixel size: attribute
  ``pixel_size_nm`` of the data dataset. Read per row block (h5py slicing).
- MRC stacks (``.mrc .st .ali``) via mrcfile, memory-mapped, permissive for old FEI files; FEI
  extended headers and SerialEM ``.mdoc`` give angles and pixel size (see ``io.mrc``).
- TIFF stacks (``.tif .tiff``) via tifffile, one page per projection. Pixel size from ImageJ
  resolution tags when their unit is nm (as ``write_tilt_series`` writes them).
- Gatan ``.dm3 .dm4`` stacks or single images, HyperSpy/ETSpy ``.hspy``, Velox ``.emd`` via
  RosettaSciIO / h5py (see ``io.microscope``).
- A folder (or list) of one-file-per-tilt ``.dm3 .dm4 .mrc .st`` images: every file must carry
  its own angle (DM Stage Alpha, mdoc TiltAngle, FEI header) unless angles are given. A folder is
  read in natural file-name order (``BF_2`` before ``BF_10``: the acquisition order the
  microscope's numbering gives, which drift alignment wants); a list keeps its order. Angles are
  never sorted. A folder's own angle file is ``FOLDER/FOLDER.rawtlt`` (or ``.tlt``).

Multi-frame tilts: consecutive frames whose metadata angles agree within ``SAME_TILT_DEG``
(SerialEM dose-fractionated stacks: 2 frames at one tilt) are summed into one projection (HAADF
signal is linear in dose, so the sum is the full-dose image); ``meta['frames_summed']`` lists the
frames per projection. Angles given per frame (as many as frames) keep the frames apart.

Angles, precedence (first found wins): ``angles=`` (CLI ``--angles``), then a sibling angle file
with the same stem (``.rawtlt`` then ``.tlt``; ``.tlt`` first for an aligned ``.ali``, whose
refined angles IMOD writes there; looked for beside MRC, TIFF and HDF5 stacks only, since DM,
hspy and EMD files carry their own), then the file's own metadata (DXchange theta, FEI extended
header, mdoc, DM tags, ETSpy metadata). Every other source found is compared with the winner:
a difference above ``ANGLE_TOLERANCE_DEG`` (or a different count) is not an error, since the
user chose the winner, but is recorded in ``meta['angles_warning']`` and issued as a
UserWarning. ``meta['angles_source']`` names the winner. No angles anywhere is a FileFormatError
naming ``--angles``; angles are never guessed.

``log``: ``True`` takes ``-log`` of the (corrected) data, ``False`` does not, ``None`` takes it
exactly when flat (white) fields are present, i.e. for X-ray transmission data but not for
electron (HAADF) data, which are already linear in projected density. ``meta['log_taken']``
records what happened.

``offset`` (detector offset, electron data): ``"auto"`` estimates the vacuum level of data read
without flat fields and without ``-log`` (``io.offset``) and subtracts it from every raw image;
a number subtracts that value (file units, per raw image); None subtracts nothing.
``meta['detector_offset']`` is the value subtracted, ``meta['detector_offset_method']`` how it was
found. The file is never touched.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, GeometryError, InputError
from ..gpu_core import backend
from . import _files
from .mdoc import read_angle_file

#: smallest transmission kept by the flat/dark correction and before ``-log``
FLOOR = 1e-6

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
MRC_SUFFIXES = (".mrc", ".st", ".ali")
TIFF_SUFFIXES = (".tif", ".tiff")
DM_SUFFIXES = (".dm3", ".dm4")
HSPY_SUFFIXES = (".hspy",)
EMD_SUFFIXES = (".emd",)
SUFFIXES = HDF5_SUFFIXES + MRC_SUFFIXES + TIFF_SUFFIXES + DM_SUFFIXES + HSPY_SUFFIXES + EMD_SUFFIXES
FILE_SUFFIXES = DM_SUFFIXES + (".mrc", ".st")  # one-file-per-tilt folders
DEFAULT_DATASET = "/exchange/data"


@dataclass
class TiltSeries:
    """A tilt series and its angles.

    data : float32 (n_angles, n_rows, n_cols), NumPy or CuPy; other real dtypes are cast
    angles_deg : float64 (n_angles,) tilt angles in degrees (always NumPy)
    pixel_size_nm : detector pixel size in nm, or None when unknown
    meta : free-form metadata (source file, format, ``log_taken``, ...)
    """

    data: object
    angles_deg: np.ndarray
    pixel_size_nm: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        xp = backend.xp_of(self.data)
        data = xp.asarray(self.data)
        if data.ndim != 3:
            raise InputError(
                f"tilt series data must be 3D (n_angles, n_rows, n_cols), got shape {data.shape}"
            )
        if data.size == 0:
            raise InputError(f"tilt series data is empty: shape {data.shape}")
        if data.dtype.kind not in "uif":
            raise InputError(f"tilt series data must be real numbers, got dtype {data.dtype}")
        self.data = data.astype(xp.float32, copy=False)
        _check_finite(self.data, "tilt series data")

        angles = np.asarray(backend.to_host(self.angles_deg))
        if angles.dtype.kind not in "uif":
            raise InputError(f"tilt angles must be real numbers, got dtype {angles.dtype}")
        angles = angles.astype(np.float64)
        if angles.ndim != 1:
            raise GeometryError(f"tilt angles must be 1D (n_angles,), got shape {angles.shape}")
        if angles.shape[0] != data.shape[0]:
            raise GeometryError(
                f"{angles.shape[0]} tilt angles for {data.shape[0]} projections: "
                "need exactly one angle (degrees) per projection"
            )
        _check_finite(angles, "tilt angles")
        self.angles_deg = angles

        if self.pixel_size_nm is not None:
            px = float(self.pixel_size_nm)
            if not np.isfinite(px) or px <= 0:
                raise InputError(f"pixel_size_nm must be a positive number or None, got {px}")
            self.pixel_size_nm = px

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)


def _check_finite(array, what: str) -> None:
    xp = backend.xp_of(array)
    bad = ~xp.isfinite(array)
    count = int(bad.sum())
    if count:
        flat_index = int(xp.flatnonzero(bad.ravel())[0])
        first = tuple(int(i) for i in np.unravel_index(flat_index, array.shape))
        raise InputError(f"{what} contain {count} NaN/Inf value(s); first at index {first}")


# ------------------------------------------------------------------------------------ reading

#: two angle sources agree when no angle differs by more than this (degrees)
ANGLE_TOLERANCE_DEG = 0.05
#: consecutive frames whose metadata angles differ by less than this are frames of one tilt
SAME_TILT_DEG = 1e-3


@dataclass
class TiltSource:
    """A tilt series on disk, opened lazily: ``open_tilt_series(...)`` builds it, nothing is held
    open between calls (it pickles: path and options only) and pixels are read on demand.

    shape : (n_angles, n_rows, n_cols) of the projections ``read`` returns
    angles_deg : float64 (n_angles,) degrees
    pixel_size_nm : detector pixel size (nm) or None
    meta : what ``to_series().meta`` will hold (format, angles_source, detector_offset, ...)
    format, spec : the reader and its plain arguments (paths, dataset names)
    groups : raw image indices summed into each projection (multi-frame tilts)
    take_log, flat : whether ``-log`` is taken / flat-dark correction applies
    offset : detector offset subtracted from every raw image (file units, 0.0 = none)
    """

    path: str
    format: str
    spec: dict
    shape: tuple
    angles_deg: np.ndarray
    pixel_size_nm: float | None
    meta: dict
    groups: tuple
    take_log: bool = False
    flat: bool = False
    offset: float = 0.0

    def read(self, rows=slice(None)) -> np.ndarray:
        """float32 ``(n_angles, n_selected_rows, n_cols)`` projections of detector rows ``rows``
        (a slice), corrected exactly as ``to_series`` corrects them: flat/dark or offset, frames
        summed, ``-log``."""
        if not isinstance(rows, slice):
            raise InputError(f"rows must be a slice of detector rows, got {type(rows).__name__}")
        out = self._read(rows, self.offset, self.take_log)
        try:
            _check_finite(out, "tilt series data")
        except InputError as exc:
            raise FileFormatError(f"{self.path}: {exc}") from None
        return out

    def to_series(self) -> TiltSeries:
        """The whole series in memory as a TiltSeries (same corrections as ``read``)."""
        data = self.read()
        try:
            return TiltSeries(data, self.angles_deg, self.pixel_size_nm, dict(self.meta))
        except GeometryError:
            raise
        except InputError as exc:
            raise FileFormatError(f"{self.path}: {exc}") from exc

    def _raw(self, images, rows):
        images = np.asarray(images, dtype=np.int64)
        if self.format == "dxchange":
            return _dxchange_images(self.spec, images, rows)
        if self.format == "tiff":
            return _tiff_images(self.spec, images, rows)
        if self.format == "files":
            return _file_images(self.spec, images, rows)
        from . import microscope

        return microscope.read_images(self.format, self.spec, images, rows)

    def _read(self, rows, offset, take_log, projections=None):
        index = range(len(self.groups)) if projections is None else projections
        wanted = [self.groups[k] for k in index]
        flat_images = np.unique(np.concatenate([np.asarray(g) for g in wanted]))
        raw = self._raw(flat_images, rows)
        if self.flat or self.spec.get("dark"):
            raw = _flat_dark(self.spec, raw, rows, self.flat)
        elif offset:
            raw -= np.float32(offset)
        pos = {int(i): k for k, i in enumerate(flat_images)}
        if all(len(g) == 1 for g in wanted):
            out = raw[[pos[int(g[0])] for g in wanted]]
        else:
            out = np.stack([raw[[pos[int(i)] for i in g]].sum(axis=0) for g in wanted])
        if take_log:
            out = -np.log(np.maximum(out, np.float32(FLOOR)))
        return np.ascontiguousarray(out, dtype=np.float32)


def open_tilt_series(path, *, angles=None, log: bool | None = None, dataset: str | None = None,
                     offset="auto") -> TiltSource:
    """Open a tilt series lazily -> TiltSource (see the module docstring for formats and rules).

    path : a file, a folder of one-file-per-tilt images, or a list of such files
    angles : array of degrees or path of an angle file; wins over every other source
    log : take ``-log`` (True), do not (False), or only when flat fields exist (None)
    dataset : HDF5 path of the projections (DXchange default ``/exchange/data``)
    offset : ``"auto"`` (estimate the vacuum level of electron data), None (no offset) or a number
        (subtracted from every raw image, in the file's units)
    The inputs are opened read-only and never modified.
    """
    found = _probe(path, dataset)
    meta = dict(found["meta"])
    n_raw = found["shape"][0]
    embedded = found.get("angles")
    source_name = found["path"]
    groups = _frame_groups(embedded) if embedded is not None else tuple((i,) for i in range(n_raw))

    candidates = []  # (name, angles) of every source, in precedence order
    if angles is not None:
        ang = _angles_argument(angles)
        candidates.append((str(angles) if isinstance(angles, (str, os.PathLike)) else "argument", ang))
    sibling = _sibling_angle_file(found)
    if sibling is not None:
        candidates.append((str(sibling), read_angle_file(sibling)))
    if embedded is not None:
        group_angles = np.array([np.mean(embedded[list(g)]) for g in groups])
        candidates.append((found["angles_source"], group_angles))
    for name, alt in meta.pop("angles_alternatives", {}).items():
        candidates.append((name, np.array([np.mean(np.asarray(alt)[list(g)]) for g in groups])
                           if len(alt) == n_raw else np.asarray(alt)))
    if not candidates:
        tried = ", ".join(str(c) for c in found["angle_files"]) or "no angle file"
        raise FileFormatError(
            f"no tilt angles for {source_name}: the file holds none and none of {tried} exists; pass "
            "--angles FILE (CLI) or angles= (degrees, or an angle-file path)")
    name, ang = candidates[0]
    if ang.ndim == 1 and len(ang) != len(groups):
        if len(ang) == n_raw and len(groups) != n_raw:
            groups = tuple((i,) for i in range(n_raw))  # one angle per frame given: keep frames apart
        else:
            raise GeometryError(
                f"{len(ang)} tilt angles ({name}) for {len(groups)} projections in {source_name}: "
                "need exactly one angle per projection")
    meta["angles_source"] = name
    warnings_ = []
    for other, alt in candidates[1:]:
        if alt.shape != ang.shape:
            warnings_.append(f"{other} gives {alt.size} angles, {name} {ang.size}; {name} is used")
        else:
            worst = float(np.max(np.abs(alt - ang))) if ang.size else 0.0
            if worst > ANGLE_TOLERANCE_DEG:
                warnings_.append(f"{other} differs from {name} by up to {worst:.3g} deg; {name} is used")
    if warnings_:
        meta["angles_warning"] = "; ".join(warnings_)
        warnings.warn(f"{source_name}: " + meta["angles_warning"], UserWarning, stacklevel=2)
    frames = [len(g) for g in groups]
    if max(frames) > 1:
        meta["frames_summed"] = frames

    flat = bool(found.get("flat", False))
    take_log = flat if log is None else bool(log)
    rows, cols = found["shape"][1:]
    src = TiltSource(path=str(source_name), format=found["format"], spec=found["spec"],
                     shape=(len(groups), rows, cols), angles_deg=np.asarray(ang, np.float64),
                     pixel_size_nm=found.get("pixel_size_nm"), meta=meta, groups=groups,
                     take_log=take_log, flat=flat)
    src.offset, how, noise = _detector_offset(src, offset, found)
    meta.update(source=str(source_name), log_taken=take_log, flat_corrected=flat,
                detector_offset=float(src.offset), detector_offset_method=how)
    if noise is not None:
        meta["vacuum_noise"] = noise
    if src.pixel_size_nm is not None:
        px = float(src.pixel_size_nm)
        if not np.isfinite(px) or px <= 0:
            raise FileFormatError(f"{source_name}: pixel size {px} nm from the file is not positive")
    return src


def read_tilt_series(path, *, angles=None, log: bool | None = None, dataset: str | None = None,
                     offset="auto") -> TiltSeries:
    """Read a whole tilt series -> TiltSeries: ``open_tilt_series(...).to_series()``.

    angles : array of degrees or path of an angle file; overrides the file's own angles
    log : take ``-log`` (True), do not (False), or only when flat fields exist (None)
    dataset : HDF5 path of the projections (default ``/exchange/data``); HDF5 only
    offset : ``"auto"``, None or a number (see ``open_tilt_series``)
    The input file is opened read-only and never modified.
    """
    return open_tilt_series(path, angles=angles, log=log, dataset=dataset, offset=offset).to_series()


def _frame_groups(angles) -> tuple:
    """Runs of consecutive frames at the same tilt (|difference| < SAME_TILT_DEG) as index tuples."""
    angles = np.asarray(angles, np.float64)
    starts = np.flatnonzero(np.r_[True, np.abs(np.diff(angles)) >= SAME_TILT_DEG])
    ends = np.r_[starts[1:], angles.size]
    return tuple(tuple(range(a, b)) for a, b in zip(starts, ends))


def _detector_offset(src: TiltSource, offset, found):
    """(offset subtracted per raw image, how it was found, vacuum noise or None)."""
    from . import offset as vacuum

    if offset is None or (isinstance(offset, str) and offset.lower() == "none"):
        return 0.0, "none (switched off)", None
    if not isinstance(offset, str):
        value = float(offset)
        if not np.isfinite(value):
            raise InputError(f"offset must be 'auto', None or a finite number, got {offset!r}")
        if src.flat:
            raise InputError("offset= applies to data without flat fields; flat/dark correction "
                             "already removes the detector offset")
        return value, "given", None
    if offset.lower() != "auto":
        try:
            return _detector_offset(src, float(offset), found)
        except ValueError:
            raise InputError(f"offset must be 'auto', 'none' or a number, got {offset!r}") from None
    if src.flat or src.take_log or src.spec.get("dark"):
        return 0.0, "auto: not estimated (transmission data: flat/dark corrected, -log taken)", None
    n_raw = int(found["shape"][0])
    images, row_step, col_step = vacuum.sample_indices(n_raw, *found["shape"][1:])
    sample = src._raw(images, slice(None, None, row_step))[:, :, ::col_step]
    found_level = vacuum.vacuum_level(sample)
    return float(found_level["level"]), found_level["how"], found_level["noise"]


def _probe(path, dataset):
    """Find the format of ``path`` (file, folder or list of files) and read its header."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        return _probe_files(files, files[0].parent if files else Path("."), dataset, "as given")
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES),
                       key=_natural_key)
        if not files:
            raise FileFormatError(f"folder {path} holds no tilt images ({', '.join(FILE_SUFFIXES)})")
        return _probe_files(files, path, dataset, "file names in natural order")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FileFormatError(f"unknown tilt-series format {suffix!r} for {path}; expected one of "
                              f"{SUFFIXES} or a folder of one-file-per-tilt images")
    if dataset is not None and suffix not in HDF5_SUFFIXES + HSPY_SUFFIXES + EMD_SUFFIXES:
        raise InputError(f"dataset= applies to HDF5 files only, not {path.name}")
    if suffix in HDF5_SUFFIXES:
        found = _probe_dxchange(path, dataset or DEFAULT_DATASET)
    elif suffix in MRC_SUFFIXES:
        from . import mrc

        found = mrc.probe(path)
        found = {**found, "format": "files", "spec": {"files": [found["spec"]["path"]], "kinds": ["mrc"],
                                                       "images": [(0, i) for i in range(found["shape"][0])]}}
    elif suffix in TIFF_SUFFIXES:
        found = _probe_tiff(path)
    else:
        from . import microscope

        found = microscope.probe(path, dataset)
    found.setdefault("path", path)
    # IMOD-style sibling angle files belong to stacks without angles of their own (MRC, TIFF,
    # DXchange); DM/hspy/EMD files carry theirs (a same-stem .rawtlt beside them is another stack's)
    own = suffix in DM_SUFFIXES + HSPY_SUFFIXES + EMD_SUFFIXES
    found["angle_files"] = [] if own else _angle_file_candidates(path)
    return found


def _probe_files(files, folder, dataset, order):
    """One-file-per-tilt images (DM or MRC, each with its own angle): projections in list order."""
    from . import microscope, mrc

    if not files:
        raise FileFormatError("an empty list of tilt images was given")
    kinds = {f.suffix.lower() for f in files}
    if len(kinds & set(DM_SUFFIXES)) and len(kinds - set(DM_SUFFIXES)):
        raise FileFormatError(f"mixed image formats in {folder}: {sorted(kinds)}; give one kind")
    if dataset is not None:
        raise InputError("dataset= applies to HDF5 files only, not to a list of images")
    probes = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in MRC_SUFFIXES:
            probes.append(mrc.probe(f))
        elif suffix in DM_SUFFIXES:
            probes.append(microscope.probe(f, None))
        else:
            raise FileFormatError(f"{f}: one-file-per-tilt input takes {FILE_SUFFIXES}, not {suffix!r}")
    shapes = {p["shape"][1:] for p in probes}
    if len(shapes) != 1:
        raise FileFormatError(f"the tilt images in {folder} differ in size: {sorted(shapes)}")
    images, angles, missing = [], [], []
    for k, p in enumerate(probes):
        images += [(k, i) for i in range(p["shape"][0])]
        if p.get("angles") is None:
            missing.append(files[k].name)
        else:
            angles.append(np.asarray(p["angles"], np.float64))
    pxs = {round(p["pixel_size_nm"], 9) for p in probes if p.get("pixel_size_nm")}
    meta = {"format": "files", "files": [str(f) for f in files], "order": order,
            "pixel_size_source": probes[0]["meta"].get("pixel_size_source")}
    if len(pxs) > 1:
        meta["pixel_size_warning"] = f"pixel sizes differ between files: {sorted(pxs)}; the first is used"
    px = probes[0].get("pixel_size_nm")
    out = {"format": "files", "path": folder if len(files) > 1 else files[0],
           "spec": {"files": [str(f) for f in files],
                    "kinds": ["dm" if f.suffix.lower() in DM_SUFFIXES else "mrc" for f in files],
                    "images": images},
           "shape": (len(images),) + next(iter(shapes)), "pixel_size_nm": px, "meta": meta,
           "angles": np.concatenate(angles) if not missing else None,
           "angles_source": "each file's " + probes[0]["angles_source"].replace(files[0].name, "").strip()
           if not missing else None}
    if missing and len(missing) < len(files):
        out["meta"]["angles_missing"] = missing
    out["angle_files"] = [folder / f"{folder.name}{s}" for s in (".rawtlt", ".tlt")] if folder.is_dir() else []
    out["folder"] = folder
    return out


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _angle_file_candidates(path: Path) -> list:
    order = (".tlt", ".rawtlt") if path.suffix.lower() == ".ali" else (".rawtlt", ".tlt")
    return [path.with_suffix(s) for s in order]


def _sibling_angle_file(found) -> Path | None:
    for cand in found.get("angle_files", []):
        if Path(cand).is_file():
            return Path(cand)
    return None


def _probe_dxchange(path: Path, name: str) -> dict:
    with _files.open_h5(path) as h5:
        ds = _files.h5_dataset(h5, name)
        if ds.ndim != 3:
            raise FileFormatError(
                f"{path}:{name} must be 3D (n_angles, n_rows, n_cols), got shape {ds.shape}"
            )
        if ds.dtype.kind not in "uif" or min(ds.shape) == 0:
            raise FileFormatError(f"{path}:{name} must be a non-empty real array, got {ds.dtype} {ds.shape}")
        px = ds.attrs.get("pixel_size_nm")
        px = None if px is None else float(px)
        theta = None
        if "/exchange/theta" in h5:
            th = _files.h5_dataset(h5, "/exchange/theta")
            theta = np.ravel(_files.read_h5(th, np.float64))
            units = th.attrs.get("units", "degrees")
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units.lower() in ("rad", "radian", "radians"):
                theta = np.degrees(theta)
        fields = {}
        for key, field_name in (("white", "/exchange/data_white"), ("dark", "/exchange/data_dark")):
            if field_name in h5:
                _mean_field(h5, field_name, ds.shape[1:], slice(None))  # checks shape and values now
                fields[key] = field_name
        shape = tuple(int(n) for n in ds.shape)
    spec = {"path": str(path), "dataset": name, **fields}
    meta = {"format": "dxchange", "dataset": name}
    found = {"format": "dxchange", "spec": spec, "shape": shape, "pixel_size_nm": px, "meta": meta,
             "flat": "white" in fields}
    if theta is not None:
        if theta.size != shape[0]:
            raise GeometryError(f"{theta.size} tilt angles (file) for {shape[0]} projections in {path}: "
                                "need exactly one angle per projection")
        found.update(angles=theta, angles_source="file")
    return found


def _dxchange_images(spec, images, rows):
    with _files.open_h5(spec["path"]) as h5:
        ds = _files.h5_dataset(h5, spec["dataset"])
        try:
            if images.size == ds.shape[0]:
                out = ds[:, rows, :]
            else:
                out = ds[images.tolist(), rows, :]
        except (OSError, ValueError, TypeError) as exc:
            raise FileFormatError(f"cannot read dataset {spec['dataset']!r} of {spec['path']} "
                                  f"(truncated or corrupt file?): {exc}") from exc
    return np.asarray(out, dtype=np.float32)


def _flat_dark(spec, raw, rows, flat):
    with _files.open_h5(spec["path"]) as h5:
        shape = raw.shape[1:]
        white = _mean_field(h5, spec["white"], shape, rows) if spec.get("white") else None
        dark = _mean_field(h5, spec["dark"], shape, rows) if spec.get("dark") else None
    if flat:
        dark = np.float32(0) if dark is None else dark
        den = np.maximum(white - dark, np.float32(FLOOR))
        return np.maximum((raw - dark) / den, np.float32(FLOOR))
    return raw - dark


def _mean_field(h5, name: str, frame_shape, rows):
    """Mean over the first axis of a white/dark field stack (rows ``rows`` only)."""
    ds = _files.h5_dataset(h5, name)
    full = (ds.shape[1:] if ds.ndim == 3 else ds.shape) if ds.ndim in (2, 3) else None
    want = frame_shape if rows == slice(None) else None
    if full is None or ds.shape[0] == 0 or (want is not None and tuple(full) != tuple(want)):
        raise FileFormatError(
            f"{h5.filename}:{name} must be (n, {frame_shape[0]}, {frame_shape[1]}) to match the "
            f"projections, got shape {ds.shape}"
        )
    try:
        field_ = ds[rows] if ds.ndim == 2 else ds[:, rows, :]
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"cannot read {name} of {h5.filename} (truncated?): {exc}") from exc
    field_ = np.asarray(field_, np.float32)
    if field_.ndim == 2:
        field_ = field_[None]
    mean = field_.mean(axis=0, dtype=np.float64).astype(np.float32)
    _check_finite(mean, f"{name} of {h5.filename}")
    return mean


def _probe_tiff(path: Path) -> dict:
    import tifffile

    path = _files.existing_file(path, "TIFF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = tuple(int(n) for n in series.shape)
                dtype = np.dtype(series.dtype)
                px = _tiff_pixel_size_nm(tif)
                images = (tif.imagej_metadata or {}).get("images")
                offset = series.dataoffset
                if offset is None:  # compressed or scattered pages: read whole (checks every page)
                    n_read = np.asarray(series.asarray()).reshape((-1,) + shape[-2:]).shape[0]
                else:
                    n_read = None
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError, KeyError) as exc:
        raise FileFormatError(f"cannot read TIFF file {path} (truncated or not TIFF?): {exc}") from exc
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or dtype.kind not in "uif":
        raise FileFormatError(f"TIFF file {path}: expected a stack of gray images, got {shape} {dtype}")
    n = shape[0]
    if images is not None and images != n:
        raise FileFormatError(f"TIFF file {path} is truncated: its ImageJ header announces {images} "
                              f"images, {n} could be read")
    if offset is not None:
        have = path.stat().st_size
        need = int(offset) + int(np.prod(shape)) * dtype.itemsize
        if have < need:
            raise FileFormatError(f"TIFF file {path} is truncated: its header announces {images or n} "
                                  f"images of {shape[1]}x{shape[2]} ({need} bytes), the file has {have}")
    elif n_read != n or (images is not None and images != n):
        raise FileFormatError(f"TIFF file {path} is truncated: its header announces {images or n} images, "
                              f"{n_read} could be read")
    spec = {"path": str(path), "offset": None if offset is None else int(offset), "dtype": dtype.str,
            "shape": shape}
    return {"format": "tiff", "spec": spec, "shape": shape, "pixel_size_nm": px,
            "meta": {"format": "tiff", "dtype": dtype.name}}


def _tiff_images(spec, images, rows):
    """Contiguous uncompressed TIFF data are memory-mapped; other TIFFs are read whole."""
    import tifffile

    try:
        if spec["offset"] is not None:
            data = np.memmap(spec["path"], dtype=np.dtype(spec["dtype"]), mode="r", offset=spec["offset"],
                             shape=tuple(spec["shape"]))
            out = np.array(data[images][:, rows, :], dtype=np.float32)
            del data
            return out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(spec["path"]) as tif:
                data = np.asarray(tif.series[0].asarray()).reshape(tuple(spec["shape"]))
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError) as exc:
        raise FileFormatError(f"cannot read TIFF file {spec['path']} (truncated or corrupt?): {exc}") from exc
    return np.asarray(data[images][:, rows, :], dtype=np.float32)


def _file_images(spec, images, rows):
    """Images from one or more MRC/DM files: ``spec['images'][i] = (file index, frame index)``."""
    from . import microscope, mrc

    pairs = [spec["images"][int(i)] for i in images]
    out = [None] * len(pairs)
    by_file = {}
    for k, (f, frame) in enumerate(pairs):
        by_file.setdefault(f, []).append((k, frame))
    for f, items in by_file.items():
        frames = np.array([frame for _, frame in items])
        if spec["kinds"][f] == "mrc":
            block = mrc.read_images({"path": spec["files"][f]}, frames, rows)
        else:
            block = microscope.read_images("dm", {"path": spec["files"][f]}, frames, rows)
        for (k, _), img in zip(items, block):
            out[k] = img
    return np.asarray(out, dtype=np.float32)


def _tiff_pixel_size_nm(tif) -> float | None:
    meta = tif.imagej_metadata or {}
    tag = tif.pages[0].tags.get("XResolution")
    if meta.get("unit") != "nm" or tag is None:
        return None
    num, den = tag.value
    return float(den) / float(num) if num else None


def _angles_argument(angles) -> np.ndarray:
    if isinstance(angles, (str, os.PathLike)):
        return read_angle_file(angles)
    ang = np.asarray(backend.to_host(angles))
    if ang.dtype.kind not in "uif" or ang.ndim != 1:
        raise GeometryError(
            f"angles= must be a 1D array of degrees or an angle-file path, got {ang.dtype} "
            f"array of shape {ang.shape}"
        )
    return ang.astype(np.float64)


# ------------------------------------------------------------------------------------ writing


def write_tilt_series(series: TiltSeries, path) -> None:
    """Write ``series`` atomically; the format comes from the suffix of ``path``.

    HDF5: DXchange ``/exchange/data`` (float32), ``/exchange/theta`` (degrees, attr units),
    data attr ``pixel_size_nm``. MRC/TIFF: the stack plus a sibling ``.rawtlt`` angle file.
    """
    if not isinstance(series, TiltSeries):
        raise InputError(f"write_tilt_series needs a TiltSeries, got {type(series).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    data = backend.to_host(series.data)
    if suffix in HDF5_SUFFIXES:
        _write_dxchange(series, data, path)
    elif suffix in MRC_SUFFIXES or suffix in TIFF_SUFFIXES:
        rawtlt = path.with_suffix(".rawtlt")
        with _files.atomic_paths(path, rawtlt) as (tmp, tmp_tlt):
            if suffix in MRC_SUFFIXES:
                _write_mrc(series, data, tmp)
            else:
                _write_tiff(series, data, tmp)
            tmp_tlt.write_text("".join(f"{a:.10g}\n" for a in series.angles_deg))
    else:
        raise FileFormatError(
            f"unknown tilt-series format {suffix!r} for {path}; expected one of "
            f"{HDF5_SUFFIXES + MRC_SUFFIXES + TIFF_SUFFIXES}"
        )


def _write_dxchange(series, data, path):
    import h5py

    with _files.atomic_paths(path) as (tmp,):
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset("/exchange/data", data=data)
            if series.pixel_size_nm is not None:
                ds.attrs["pixel_size_nm"] = series.pixel_size_nm
            th = h5.create_dataset("/exchange/theta", data=series.angles_deg)
            th.attrs["units"] = "degrees"


def _write_mrc(series, data, tmp):
    import mrcfile

    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        if series.pixel_size_nm is not None:
            mrc.voxel_size = series.pixel_size_nm * 10.0  # nm -> Å


def _write_tiff(series, data, tmp):
    import tifffile

    kwargs = {"metadata": {"axes": "ZYX"}}
    if series.pixel_size_nm is not None:
        px = 1.0 / series.pixel_size_nm
        kwargs = {"resolution": (px, px), "metadata": {"unit": "nm", "axes": "ZYX"}}
    tifffile.imwrite(tmp, data, imagej=True, **kwargs)
