"""SerialEM ``.mdoc`` autodoc files and IMOD angle files (``.rawtlt``/``.tlt``).

An mdoc is ``key = value`` lines: global keys first (``PixelSpacing`` in Å, ``Voltage`` in kV,
...), then one ``[ZValue = k]`` section per frame with its ``TiltAngle`` (degrees). ``[T = ...]``
lines are titles. The frames' sections must be numbered 0, 1, 2, ... with no gap, each with a
TiltAngle; anything else is a FileFormatError naming the file and line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from . import _files

_SECTION = re.compile(r"^\[\s*(\w+)\s*=\s*(.*?)\s*\]$")


@dataclass
class Mdoc:
    """What tomostrain uses of a SerialEM mdoc: angles per frame (deg), pixel spacing (Å), kV."""

    path: Path
    angles_deg: np.ndarray
    pixel_spacing_a: float | None
    voltage_kv: float | None


def sibling(path) -> Path | None:
    """The mdoc of a stack: ``X.mrc.mdoc`` (SerialEM's name) else ``X.mdoc``, or None."""
    path = Path(path)
    for cand in (path.with_name(path.name + ".mdoc"), path.with_suffix(".mdoc")):
        if cand.is_file():
            return cand
    return None


def _text(path: Path, what: str) -> str:
    path = _files.existing_file(path, what)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        try:
            return path.read_bytes().decode("latin-1")
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
            raise FileFormatError(f"{path}: not a text {what} ({exc})") from None
    except OSError as exc:
        raise FileFormatError(f"cannot read {what} {path}: {exc}") from exc


def _number(path, lineno, key, value) -> float:
    try:
        out = float(value.split()[0])
    except (ValueError, IndexError):
        raise FileFormatError(f"{path} line {lineno}: {key} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise FileFormatError(f"{path} line {lineno}: {key} is not finite ({value!r})")
    return out


def read_mdoc(path) -> Mdoc:
    """Parse a SerialEM mdoc (see the module docstring)."""
    path = Path(path)
    text = _text(path, "mdoc file")
    if "\x00" in text:
        raise FileFormatError(f"{path}: not a text mdoc file (binary content)")
    glob: dict[str, tuple[int, str]] = {}
    frames: dict[int, dict[str, tuple[int, str]]] = {}
    current = glob
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        sec = _SECTION.match(line)
        if sec:
            kind, value = sec.groups()
            if kind == "ZValue":
                z = _number(path, lineno, "ZValue", value)
                if z != int(z) or z < 0 or int(z) in frames:
                    raise FileFormatError(f"{path} line {lineno}: bad or repeated [ZValue = {value}]")
                current = frames.setdefault(int(z), {})
            else:
                current = {}  # [T = ...] titles and other sections: not used
            continue
        if "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            current[key] = (lineno, value)
    if not frames:
        raise FileFormatError(f"{path}: no [ZValue = ...] frame sections: not a SerialEM mdoc")
    if sorted(frames) != list(range(len(frames))):
        raise FileFormatError(f"{path}: frame sections must be ZValue 0..{len(frames) - 1} without gaps, "
                              f"got {sorted(frames)[:10]}")
    angles = []
    for z in range(len(frames)):
        if "TiltAngle" not in frames[z]:
            raise FileFormatError(f"{path}: [ZValue = {z}] has no TiltAngle; pass --angles")
        lineno, value = frames[z]["TiltAngle"]
        angles.append(_number(path, lineno, "TiltAngle", value))
    pixel = voltage = None
    source = glob if "PixelSpacing" in glob else frames[0]
    if "PixelSpacing" in source:
        lineno, value = source["PixelSpacing"]
        pixel = _number(path, lineno, "PixelSpacing", value)
        pixel = pixel if pixel > 0 else None
    if "Voltage" in glob:
        voltage = _number(path, glob["Voltage"][0], "Voltage", glob["Voltage"][1])
        voltage = voltage if voltage > 0 else None
    return Mdoc(path, np.asarray(angles, np.float64), pixel, voltage)


def read_angle_file(path) -> np.ndarray:
    """Angles (degrees, float64) from a text file with one angle per line (IMOD .rawtlt/.tlt)."""
    path = Path(path)
    text = _text(path, "angle file")
    values = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        try:
            value = float(item.split()[0])
        except ValueError:
            raise FileFormatError(
                f"{path} line {lineno}: expected one angle in degrees, got {item[:60]!r}"
            ) from None
        values.append(value)
    if not values:
        raise FileFormatError(f"angle file {path} holds no angles")
    return np.asarray(values, dtype=np.float64)
