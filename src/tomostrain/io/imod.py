"""IMOD alignment files: ``.xf`` (per-image 2x3 linear transforms) and ``.tlt`` (angles).

``.xf``: one line per image, ``A11 A12 A21 A22 DX DY``. IMOD (xf2rotmagstr, newstack) defines the
transform from a raw image position ``(x, y)`` to the aligned (transformed) position ``(x', y')``:
``x' = A11 (x - xc) + A12 (y - yc) + DX + xc``, ``y' = A21 (x - xc) + A22 (y - yc) + DY + yc``,
``(xc, yc)`` the image centre, x along columns, y along rows (IMOD draws row 0 at the bottom, so
y points up on screen). ``reconstruction.xf`` converts these to and from tomostrain's alignment.

``read_xf`` returns float64 ``(n, 2, 3)`` rows ``[[A11, A12, DX], [A21, A22, DY]]``;
``write_xf`` writes them back with 17 significant digits, so a write/read round trip is exact.
``.tlt`` files are one angle (degrees) per line (``write_tlt``, ``read_tlt``); 17 significant
digits again, so their round trip is exact too. Writes are atomic (``_files.atomic_paths``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FileFormatError, InputError
from . import _files
from .mdoc import read_angle_file


def read_xf(path) -> np.ndarray:
    """float64 ``(n, 2, 3)`` transforms ``[[A11, A12, DX], [A21, A22, DY]]`` from an IMOD ``.xf``."""
    path = _files.existing_file(path, "IMOD .xf file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(f"{path}: not a text .xf file (undecodable bytes)") from None
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        item = line.split()
        if not item:
            continue
        if len(item) != 6:
            raise FileFormatError(f"{path} line {lineno}: expected 6 numbers (A11 A12 A21 A22 DX DY), "
                                  f"got {len(item)}")
        try:
            values = [float(v) for v in item]
        except ValueError:
            raise FileFormatError(f"{path} line {lineno}: not numbers: {line.strip()[:60]!r}") from None
        if not np.isfinite(values).all():
            raise FileFormatError(f"{path} line {lineno}: NaN or Inf in the transform")
        rows.append(values)
    if not rows:
        raise FileFormatError(f"{path} holds no transforms")
    a = np.asarray(rows, np.float64)
    return np.stack([np.stack([a[:, 0], a[:, 1], a[:, 4]], 1), np.stack([a[:, 2], a[:, 3], a[:, 5]], 1)], 1)


def write_xf(path, xf) -> None:
    """Write ``(n, 2, 3)`` transforms as an IMOD ``.xf`` (atomically, exact round trip)."""
    xf = np.asarray(xf, np.float64)
    if xf.ndim != 3 or xf.shape[1:] != (2, 3) or xf.shape[0] == 0 or not np.isfinite(xf).all():
        raise InputError(f"xf must be a finite (n, 2, 3) array of transforms, got shape {xf.shape}")
    cols = xf[:, [0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 2, 2]]
    text = "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in cols)
    with _files.atomic_paths(Path(path)) as (tmp,):
        tmp.write_text(text)


def read_tlt(path) -> np.ndarray:
    """Angles (degrees) of an IMOD ``.tlt``/``.rawtlt`` file."""
    return read_angle_file(path)


def write_tlt(path, angles_deg) -> None:
    """Write angles (degrees) one per line (atomically, exact round trip)."""
    angles = np.asarray(angles_deg, np.float64)
    if angles.ndim != 1 or angles.size == 0 or not np.isfinite(angles).all():
        raise InputError(f"angles must be a finite 1D array of degrees, got shape {angles.shape}")
    with _files.atomic_paths(Path(path)) as (tmp,):
        tmp.write_text("".join(f"{a:.17g}\n" for a in angles))
