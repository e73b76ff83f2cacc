"""Microscope tilt-series formats: Gatan DM3/DM4 (RosettaSciIO), HyperSpy/ETSpy ``.hspy`` and
Thermo Fisher Velox ``.emd`` (HDF5 through h5py). Used by ``tiltseries.open_tilt_series``.

- DM3/DM4: a 3D stack ``(n, y, x)`` or one 2D image per file (folders of one file per tilt).
  Angles, first found: per-image ``Tomography > Tracking data > Online tracking data >
  TagGroupN > stage angle (degree)`` (one per image), a 3D stack's first-axis calibration in
  degrees, the ``Tomography setup > Tilt angles`` minimum/step when they give exactly n angles,
  and for a single image ``Microscope Info > Stage Position > Stage Alpha``. Pixel size from
  the image calibration (nm, µm, Å). HT from ``Microscope Info > Voltage``.
- ``.hspy`` (HyperSpy HDF5, as ETSpy saves a TomoStack): ``/Experiments/<name>/data``
  ``(n, y, x)``; angles from ``metadata/Tomography/_sig_tilts/data`` (ETSpy >= 0.8) or
  ``metadata/Tomography/tilts`` (older ETSpy), pixel size from ``axis-1`` (nm, µm, Å).
- Velox ``.emd``: ``/Data/Image/<id>/Data`` ``(y, x, frames)`` with per-frame JSON metadata
  ``/Data/Image/<id>/Metadata``: angles ``Stage.AlphaTilt`` (radians), pixel size
  ``BinaryResult.PixelSize.width`` (m), HT ``Optics.AccelerationVoltage`` (V). Several image
  datasets (detectors): ``dataset=`` picks one by detector name or id.

Every failure of the libraries on a bad file becomes a FileFormatError that names the file.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from . import _files

_LENGTH_TO_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "μm": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3, "m": 1e9,
                 "mm": 1e6}


def probe(path, dataset=None) -> dict:
    """Header, angles and calibration of a DM, hspy or Velox EMD file (no pixels read)."""
    path = _files.existing_file(path, "tilt-series file")
    suffix = path.suffix.lower()
    if suffix in (".dm3", ".dm4"):
        if dataset is not None:
            raise FileFormatError(f"dataset= applies to HDF5 files, not {path.name}")
        return _probe_dm(path)
    if suffix == ".hspy":
        return _probe_hspy(path, dataset)
    return _probe_emd(path, dataset)


def read_images(fmt: str, spec: dict, images, rows) -> np.ndarray:
    """float32 ``(len(images), n_selected_rows, n_cols)`` of images ``images`` (index array)."""
    images = np.asarray(images, dtype=np.int64)
    if fmt == "dm":
        data = _dm_signal(Path(spec["path"]))["data"]
        data = data[None] if data.ndim == 2 else data
        try:
            block = np.asarray(data[images.tolist()][:, rows, :].compute()
                               if hasattr(data, "compute") else data[images][:, rows, :])
        except Exception as exc:  # noqa: BLE001 - the lazy DM reader fails in many ways on damage
            raise FileFormatError(f"cannot read the image data of {spec['path']} "
                                  f"(truncated or corrupt?): {type(exc).__name__}: {exc}") from None
        return block.astype(np.float32)
    with _files.open_h5(spec["path"]) as h5:
        ds = _files.h5_dataset(h5, spec["dataset"])
        try:
            if fmt == "emd":  # (y, x, frames)
                block = np.moveaxis(np.asarray(ds[rows, :, :]), -1, 0)[images]
            else:
                block = np.asarray(ds[images.tolist(), rows, :] if images.size < ds.shape[0]
                                   else ds[:, rows, :])
        except (OSError, ValueError, TypeError) as exc:
            raise FileFormatError(f"cannot read dataset {spec['dataset']!r} of {spec['path']} "
                                  f"(truncated or corrupt file?): {exc}") from exc
    return block.astype(np.float32)


# ------------------------------------------------------------------------------------ DM


def _dm_signal(path: Path) -> dict:
    from rsciio.digitalmicrograph import file_reader

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = file_reader(str(path), lazy=True)
    except Exception as exc:  # noqa: BLE001 - rsciio raises struct/Key/Value/Index/Unicode errors
        raise FileFormatError(f"cannot read Gatan DM file {path} (truncated or not DM?): "
                              f"{type(exc).__name__}: {exc}") from None
    images = [s for s in signals if getattr(s.get("data"), "ndim", 0) in (2, 3)]
    if not images:
        raise FileFormatError(f"{path}: no 2D image or 3D image stack in the DM file")
    sig = images[0]
    if np.dtype(sig["data"].dtype).kind not in "uif":
        raise FileFormatError(f"{path}: DM image data must be real numbers, got {sig['data'].dtype}")
    return sig


def _flatten(tree, prefix=""):
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _find(tags: dict, suffix: str):
    for key, value in tags.items():
        if key.endswith(suffix):
            return value
    return None


def _probe_dm(path: Path) -> dict:
    sig = _dm_signal(path)
    data = sig["data"]
    shape = (1,) + tuple(data.shape) if data.ndim == 2 else tuple(data.shape)
    tags = _flatten(sig.get("original_metadata"))
    axes = sig.get("axes", [])
    n = shape[0]
    angles, source = None, None
    tracking = {}
    for key, value in tags.items():
        if ".Online tracking data.TagGroup" in key and key.endswith("stage angle (degree)"):
            group = key.split(".Online tracking data.TagGroup", 1)[1].split(".", 1)[0]
            if group.isdigit():
                tracking[int(group)] = float(value)
    if data.ndim == 3 and sorted(tracking) == list(range(n)):
        angles = np.array([tracking[i] for i in range(n)])
        source = f"{path.name} DM tags (Tomography tracking data, stage angle per image)"
    elif data.ndim == 3 and axes and str(axes[0].get("units", "")).lower() in ("deg", "degree", "degrees", "°"):
        ax = axes[0]
        angles = float(ax.get("offset", 0.0)) + float(ax.get("scale", 1.0)) * np.arange(n)
        source = f"{path.name} DM calibration of the stack axis (degrees)"
    elif data.ndim == 3:
        lo = _find(tags, "Tomography setup.Tilt angles.Minimum tilt angle (deg)")
        step = _find(tags, "Tomography setup.Tilt angles.Tilt angle step (deg)")
        hi = _find(tags, "Tomography setup.Tilt angles.Maximum tilt angle (deg)")
        if None not in (lo, step, hi) and step and round((hi - lo) / step) + 1 == n:
            angles = lo + step * np.arange(n)
            source = f"{path.name} DM tags (Tomography setup min/step)"
    else:
        alpha = _find(tags, "Microscope Info.Stage Position.Stage Alpha")
        if alpha is not None and np.isfinite(float(alpha)):
            angles = np.array([float(alpha)])
            source = f"{path.name} DM tag Stage Alpha"
    px = None
    meta = {"format": "dm", "dtype": np.dtype(data.dtype).name}
    if len(axes) >= 2:
        ax = axes[-1]
        factor = _LENGTH_TO_NM.get(str(ax.get("units", "")).strip())
        scale = float(ax.get("scale", 0) or 0)
        if factor and scale > 0:
            px = scale * factor
            meta["pixel_size_source"] = "DM image calibration"
    volts = _find(tags, "Microscope Info.Voltage")
    if volts:
        meta["ht_kv"] = float(volts) / 1e3
    return {"format": "dm", "spec": {"path": str(path)}, "shape": shape, "angles": angles,
            "angles_source": source, "pixel_size_nm": px, "meta": meta}


# ------------------------------------------------------------------------------------ hspy


def _probe_hspy(path: Path, dataset) -> dict:
    with _files.open_h5(path) as h5:
        exp = h5.get("Experiments")
        names = list(exp.keys()) if exp is not None else []
        if dataset is None:
            if len(names) != 1:
                raise FileFormatError(f"{path}: expected one HyperSpy signal under /Experiments, found "
                                      f"{names or 'none'}; give dataset=/Experiments/<name>/data")
            dataset = f"/Experiments/{names[0]}/data"
        ds = _files.h5_dataset(h5, dataset)
        if ds.ndim != 3 or ds.dtype.kind not in "uif" or min(ds.shape) == 0:
            raise FileFormatError(f"{path}:{dataset} must be a real (n_angles, y, x) stack, "
                                  f"got {ds.dtype} {ds.shape}")
        group = ds.parent
        tomo = group.get("metadata/Tomography")
        angles, source = None, None
        try:
            if tomo is not None and "_sig_tilts/data" in tomo:
                angles = np.ravel(_files.read_h5(tomo["_sig_tilts/data"], np.float64))
                source = f"{path.name} metadata.Tomography tilts (ETSpy)"
            elif tomo is not None and isinstance(tomo.get("tilts"), type(ds)):
                angles = np.ravel(_files.read_h5(tomo["tilts"], np.float64))
                source = f"{path.name} metadata.Tomography.tilts (ETSpy)"
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: unreadable Tomography tilts: {exc}") from exc
        meta = {"format": "hspy", "dataset": dataset, "dtype": ds.dtype.name}
        if tomo is not None:
            for key in ("tiltaxis", "xshift", "yshift"):
                if key in tomo.attrs:
                    meta[f"etspy_{key}"] = float(tomo.attrs[key])
        px = None
        axis = group.get("axis-2")
        if axis is not None:
            units = axis.attrs.get("units", "")
            units = units.decode() if isinstance(units, bytes) else str(units)
            factor = _LENGTH_TO_NM.get(units.strip())
            scale = float(axis.attrs.get("scale", 0) or 0)
            if factor and scale > 0:
                px = scale * factor
                meta["pixel_size_source"] = "hspy axis calibration"
        shape = tuple(int(n) for n in ds.shape)
    if angles is not None and angles.size != shape[0]:
        raise FileFormatError(f"{path}: {angles.size} Tomography tilts for {shape[0]} images")
    return {"format": "hspy", "spec": {"path": str(path), "dataset": dataset}, "shape": shape,
            "angles": angles, "angles_source": source, "pixel_size_nm": px, "meta": meta}


# ------------------------------------------------------------------------------------ Velox EMD


def _frame_metadata(ds_meta, k: int) -> dict:
    raw = np.asarray(ds_meta[:, k], dtype=np.uint8).tobytes().rstrip(b"\x00")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{ds_meta.file.filename}: frame {k} metadata is not JSON ({exc})") from None


def _probe_emd(path: Path, dataset) -> dict:
    with _files.open_h5(path) as h5:
        images = h5.get("Data/Image")
        if images is None:
            raise FileFormatError(f"{path}: no /Data/Image group: not a Velox EMD image file")
        found = {}
        for key in images:
            group = images[key]
            if "Data" not in group or "Metadata" not in group:
                continue
            first = _frame_metadata(group["Metadata"], 0)
            detector = str(first.get("BinaryResult", {}).get("Detector", key))
            found[key] = (group, detector, first)
        if dataset is not None:
            pick = [k for k, (_, det, _) in found.items() if dataset in (k, det)]
        elif len(found) == 1:
            pick = list(found)
        else:
            pick = [k for k, (_, det, _) in found.items() if det.upper() == "HAADF"]
        if len(pick) != 1:
            listing = ", ".join(f"{det} ({k})" for k, (_, det, _) in found.items()) or "none"
            raise FileFormatError(f"{path}: choose one image dataset with dataset= (by detector name or "
                                  f"id); found {listing}")
        group, detector, first = found[pick[0]]
        ds = group["Data"]
        if ds.ndim != 3 or ds.dtype.kind not in "uif" or min(ds.shape) == 0:
            raise FileFormatError(f"{path}: image data must be real (y, x, frames), got {ds.dtype} {ds.shape}")
        ny, nx, n = (int(v) for v in ds.shape)
        alphas = []
        for k in range(n):
            meta_k = first if k == 0 else _frame_metadata(group["Metadata"], k)
            value = meta_k.get("Stage", {}).get("AlphaTilt")
            alphas.append(np.nan if value is None else float(value))
    alphas = np.degrees(np.asarray(alphas, np.float64))
    meta = {"format": "emd", "detector": detector, "dataset": f"/Data/Image/{pick[0]}/Data"}
    angles = alphas if np.isfinite(alphas).all() else None
    px = None
    size = first.get("BinaryResult", {}).get("PixelSize", {}).get("width")
    if size is not None and float(size) > 0:
        px = float(size) * 1e9
        meta["pixel_size_source"] = "Velox BinaryResult.PixelSize"
    volts = first.get("Optics", {}).get("AccelerationVoltage")
    if volts:
        meta["ht_kv"] = float(volts) / 1e3
    return {"format": "emd", "spec": {"path": str(path), "dataset": meta["dataset"]}, "shape": (n, ny, nx),
            "angles": angles, "angles_source": f"{path.name} Velox Stage.AlphaTilt per frame",
            "pixel_size_nm": px, "meta": meta}
