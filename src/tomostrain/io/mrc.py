"""MRC stacks (IMOD ``.mrc .st .ali``, FEI/Thermo, SerialEM) through mrcfile, memory-mapped.

- Old FEI/Xplore3D files have no ``"MAP "`` ID and no machine stamp: mrcfile reads them with
  ``permissive=True``; what that tolerates is recorded in ``meta["mrc_warnings"]``. Real damage
  is still refused: a header whose sizes are not positive, an unknown mode, or a file shorter than
  ``1024 + extended header + nx*ny*nz*itemsize`` bytes (truncated) is a FileFormatError.
- Extended headers: ``FEI1``/``FEI2`` (EPU, Velox; mrcfile's ``indexed_extended_header``) and the
  legacy FEI/Xplore3D layout (no ``exttyp``; 128 bytes = 32 float32 per image: alpha tilt (deg),
  beta tilt, stage x, y, z, image shift x, y, defocus, exposure time, mean intensity, tilt axis,
  pixel size (m), magnification, HT (V)). They give a per-image alpha tilt, pixel size and HT.
  The legacy layout is only trusted when every image's alpha is within +-90 deg and its pixel
  size is 0 or between 1 pm and 1 mm.
- SerialEM: the ``.mdoc`` beside the stack (``X.mrc.mdoc``, SerialEM's own name, first; else
  ``X.mdoc``) gives TiltAngle per frame and PixelSpacing (see ``io.mdoc``).
- Pixel size: extended header, then mdoc, then the header's voxel size unless it is 0 or the
  unset 1 Å that IMOD writes when cell = grid size.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from . import _files, mdoc

_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_LEGACY_FEI_BYTES = 128


def probe(path) -> dict:
    """Header, angles and calibration of one MRC file (no pixel data read). See ``tiltsource``."""
    import mrcfile

    path = _files.existing_file(path, "MRC file")
    if path.stat().st_size < 1024:
        raise FileFormatError(f"{path} is truncated or not MRC: {path.stat().st_size} bytes, "
                              "shorter than the 1024-byte MRC header")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
        except (ValueError, OSError, EOFError, TypeError) as exc:
            raise FileFormatError(f"cannot read MRC header of {path} (truncated or not MRC?): {exc}") from exc
    tolerated = sorted({str(w.message) for w in caught})
    nx, ny, nz = (int(header[k]) for k in ("nx", "ny", "nz"))
    mode, nsymbt = int(header["mode"]), int(header["nsymbt"])
    if min(nx, ny, nz) < 1 or nsymbt < 0:
        raise FileFormatError(f"{path}: not a usable MRC file (header sizes nx={nx}, ny={ny}, nz={nz}, "
                              f"extended header {nsymbt} bytes)")
    if mode not in _MODES:
        raise FileFormatError(f"{path}: MRC mode {mode} is not a real-valued image mode "
                              f"(supported: {sorted(_MODES)})")
    itemsize = np.dtype(_MODES[mode]).itemsize
    need = 1024 + nsymbt + nx * ny * nz * itemsize
    have = path.stat().st_size
    if have < need:
        raise FileFormatError(f"{path} is truncated: its MRC header announces {nz} images of "
                              f"{ny}x{nx} (mode {mode}), {need} bytes, the file has {have}")

    exttyp = bytes(header["exttyp"]).strip(b"\x00 ").decode("ascii", "replace")
    meta = {"format": "mrc", "mrc_mode": mode, "dtype": np.dtype(_MODES[mode]).name}
    if tolerated:
        meta["mrc_warnings"] = tolerated
    ext = _extended_header(path, header, nz, exttyp)
    angles, angles_source, px, px_source = None, None, None, None
    if ext is not None:
        meta["extended_header"] = ext["kind"]
        if ext.get("ht_v"):
            meta["ht_kv"] = ext["ht_v"] / 1e3
        angles, angles_source = ext["alpha_deg"], f"{path.name} {ext['kind']} extended header (alpha tilt)"
        if ext.get("pixel_m"):
            px, px_source = ext["pixel_m"] * 1e9, f"{ext['kind']} extended header"

    doc_path = mdoc.sibling(path)
    if doc_path is not None:
        doc = mdoc.read_mdoc(doc_path)
        meta["mdoc"] = str(doc_path)
        if doc.angles_deg.size != nz:
            raise FileFormatError(f"{doc_path} describes {doc.angles_deg.size} frames ([ZValue] "
                                  f"sections with TiltAngle) but {path} holds {nz}")
        if doc.voltage_kv is not None:
            meta.setdefault("ht_kv", doc.voltage_kv)
        if angles is None:
            angles, angles_source = doc.angles_deg, f"{doc_path.name} (TiltAngle)"
        else:
            meta.setdefault("angles_alternatives", {})[f"{doc_path.name} (TiltAngle)"] = doc.angles_deg
        if px is None and doc.pixel_spacing_a:
            px, px_source = doc.pixel_spacing_a / 10.0, f"{doc_path.name} (PixelSpacing)"

    voxel = float(header["cella"]["x"]) / nx if nx else 0.0
    unset = voxel <= 0 or (abs(voxel - 1.0) < 1e-6)
    if not unset:
        if px is None:
            px, px_source = voxel / 10.0, "MRC header voxel size"
        elif abs(voxel / 10.0 - px) > 0.01 * px:
            meta["pixel_size_warning"] = (f"MRC header voxel size {voxel / 10:.6g} nm differs from the "
                                          f"{px_source} {px:.6g} nm; the latter is used")
    if px_source:
        meta["pixel_size_source"] = px_source
    spec = {"path": str(path)}
    return {"format": "mrc", "spec": spec, "shape": (nz, ny, nx), "angles": angles,
            "angles_source": angles_source, "pixel_size_nm": px, "meta": meta}


def _extended_header(path: Path, header, nz: int, exttyp: str):
    """Per-image alpha (deg), pixel size (m), HT (V) from an FEI1/FEI2 or legacy FEI header."""
    import mrcfile

    nsymbt = int(header["nsymbt"])
    if nsymbt == 0:
        return None
    if exttyp in ("FEI1", "FEI2"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                    mrc._read_extended_header()  # header_only skips it; the indexed view needs it
                    table = mrc.indexed_extended_header
                    table = None if table is None else np.array(table)
        except (ValueError, OSError, EOFError, TypeError, KeyError) as exc:
            raise FileFormatError(f"{path}: unreadable {exttyp} extended header: {exc}") from exc
        if table is None or table.shape[0] < nz:
            raise FileFormatError(f"{path}: its {exttyp} extended header describes "
                                  f"{0 if table is None else table.shape[0]} images, the stack holds {nz}")
        table = table[:nz]
        alpha = np.asarray(table["Alpha tilt"], np.float64)
        px = np.asarray(table["Pixel size X"], np.float64)
        ht = np.asarray(table["HT"], np.float64)
        return {"kind": exttyp, "alpha_deg": alpha, "pixel_m": float(px[0]) if px[0] > 0 else None,
                "ht_v": float(ht[0]) if ht[0] > 0 else None}
    if exttyp == "" and nsymbt >= _LEGACY_FEI_BYTES * nz and nsymbt % _LEGACY_FEI_BYTES == 0:
        with open(path, "rb") as fh:
            fh.seek(1024)
            raw = fh.read(_LEGACY_FEI_BYTES * nz)
        order = "<" if header.dtype.byteorder in ("<", "=", "|") else ">"
        table = np.frombuffer(raw, dtype=order + "f4").reshape(nz, 32).astype(np.float64)
        alpha, px, ht = table[:, 0], table[:, 11], table[:, 13]
        sane = (np.isfinite(table[:, [0, 11, 13]]).all() and np.all(np.abs(alpha) <= 90.0)
                and np.all((px == 0) | ((px > 1e-12) & (px < 1e-3))) and np.any(alpha != 0))
        if not sane:
            return None
        return {"kind": "FEI legacy", "alpha_deg": alpha, "pixel_m": float(px[0]) if px[0] > 0 else None,
                "ht_v": float(ht[0]) if 1e3 < ht[0] < 1e7 else None}
    return None


def read_images(spec: dict, images, rows: slice) -> np.ndarray:
    """float32 ``(len(images), n_selected_rows, nx)`` of the images ``images`` (index array),
    memory-mapped: only the requested rows are read from disk."""
    import mrcfile

    path = spec["path"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                data = mrc.data
                if data is None:
                    raise FileFormatError(f"{path}: mrcfile could not map its data block")
                if data.ndim == 2:
                    data = data[None]
                return np.asarray(data[np.asarray(images)][:, rows, :], dtype=np.float32)
    except FileFormatError:
        raise
    except (ValueError, OSError, EOFError, TypeError, IndexError) as exc:
        raise FileFormatError(f"cannot read MRC data of {path} (truncated or corrupt?): {exc}") from exc
