"""DataCube: a 4D-STEM scan ``(scan_y, scan_x, ky, kx)`` plus its calibration, read in chunks.

``data`` may be a NumPy array, a ``numpy.memmap``, an ``h5py.Dataset`` or a CuPy array: nothing is
loaded until a chunk of scan rows is asked for, so cubes larger than host or GPU memory work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..gpu_core import backend, chunks


@dataclass
class DataCube:
    """4D-STEM data and calibration (DESIGN.md §3).

    data : (scan_y, scan_x, ky, kx), any real dtype; converted to float32 per chunk
    scan_step_nm : real-space step between probe positions (nm), or None
    q_pixel_size : diffraction pixel size (1/Å), or None until calibrated
    origin : (scan_y, scan_x, 2) diffraction origin (qy0, qx0) per position (pixels), or None
    ellipse : (a/b ratio, angle in degrees) of the elliptical distortion, or None
    meta : free-form metadata (energy, convergence angle, source file, ...)
    """

    data: object
    scan_step_nm: float | None = None
    q_pixel_size: float | None = None
    origin: np.ndarray | None = None
    ellipse: tuple[float, float] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        shape = tuple(getattr(self.data, "shape", ()))
        if len(shape) != 4:
            raise InputError(f"a DataCube needs 4D data (scan_y, scan_x, ky, kx), got shape {shape}")
        if min(shape) < 1:
            raise InputError(f"DataCube data is empty: shape {shape}")
        kind = np.dtype(self.data.dtype).kind
        if kind not in "uif":
            raise InputError(f"DataCube data must be real numbers, got dtype {self.data.dtype}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.data.shape)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2:]

    def rows(self, start: int, stop: int, xp=np) -> "np.ndarray":
        """Scan rows ``start:stop`` as a float32 array on ``xp`` (numpy or cupy)."""
        block = self.data[start:stop]
        if xp is np:  # a CuPy cube read on the CPU comes to the host (np.asarray refuses CuPy)
            return np.asarray(backend.to_host(block), dtype=np.float32)
        return xp.asarray(block, dtype=xp.float32)

    def iter_rows(self, budget_bytes: int, xp=np) -> Iterator[tuple[slice, "np.ndarray"]]:
        """Yield ``(row_slice, float32 chunk)`` over the scan, each chunk within ``budget_bytes``.

        The budget counts 4 float32 copies of a chunk (input, FFT work, output).
        """
        sy, sx, ky, kx = self.shape
        per_row = 4 * 4 * sx * ky * kx
        for sl in chunks.plan(sy, per_row, budget_bytes):
            yield sl, self.rows(sl.start, sl.stop, xp)
