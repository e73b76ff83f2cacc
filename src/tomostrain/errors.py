"""Exceptions raised on bad input or an unusable device (DESIGN.md §5).

Messages name the file/dataset/argument and what was expected; the CLI prints them as one line
and exits with code 2.
"""


class TomostrainError(Exception):
    """Base of every tomostrain error."""


class InputError(TomostrainError, ValueError):
    """An array or argument is not what the function expects (rank, dtype, NaN/Inf, range)."""


class GeometryError(InputError):
    """Tilt/scan geometry is inconsistent (angles vs projections, centre off the detector, ...)."""


class FileFormatError(InputError):
    """A file is missing, empty, truncated, of the wrong format or lacks a required dataset."""


class CalibrationError(InputError):
    """Calibration cannot be determined (no vacuum/probe, no disks, reference outside the scan)."""


class DeviceError(TomostrainError, RuntimeError):
    """A GPU was requested but CuPy or a CUDA device is not usable."""
