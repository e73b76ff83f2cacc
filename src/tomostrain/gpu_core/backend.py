"""Array backend: choose CPU or GPU, move arrays, report the device and its memory budget.

Functions run where their input lives (DESIGN.md §2): use ``xp_of(array)`` to get ``numpy`` or
``cupy``. Only the entry points that read data (pipeline, CLI) call ``resolve``. Importing this
module never imports CuPy; CuPy is imported lazily the first time it is needed.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from ..errors import DeviceError

BACKENDS = ("auto", "cpu", "gpu")


@functools.lru_cache(maxsize=1)
def _cupy():
    """The cupy module when CuPy imports and a CUDA device answers, else None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None  # the simulator is a CPU run: never mix it with a real device
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        cupy.cuda.Device(0).compute_capability  # touches the driver
        return cupy
    except Exception:  # ImportError, CUDARuntimeError, missing driver ...
        return None


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is usable."""
    return _cupy() is not None


def resolve(backend: str = "auto") -> str:
    """Map ``"auto" | "cpu" | "gpu"`` to ``"cpu"`` or ``"gpu"``.

    ``auto`` picks the GPU when one is usable. Asking for ``gpu`` without one raises DeviceError.
    """
    if backend not in BACKENDS:
        raise DeviceError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if backend == "gpu":
        raise DeviceError(
            "backend='gpu' was requested but no usable CUDA device was found "
            "(install the 'gpu' extra: pip install 'tomostrain[gpu]', and check the driver)"
        )
    return "cpu"


def is_gpu_array(array) -> bool:
    """True for CuPy (or any CUDA Array Interface) arrays."""
    return hasattr(array, "__cuda_array_interface__")


def xp_of(array):
    """The array module (numpy or cupy) that owns ``array``."""
    if is_gpu_array(array):
        import cupy

        return cupy
    return np


def to_device(array, backend: str = "auto", dtype=None):
    """Return ``array`` on the resolved backend (a copy only if it has to move or convert)."""
    where = resolve(backend)
    if where == "gpu":
        cp = _cupy()
        return cp.asarray(array, dtype=dtype)
    return to_host(array) if dtype is None else np.asarray(to_host(array), dtype=dtype)


def to_host(array) -> np.ndarray:
    """Return ``array`` as a NumPy array (device-to-host copy for CuPy arrays)."""
    if is_gpu_array(array):
        return xp_of(array).asnumpy(array)
    return np.asarray(array)


def device_name(backend: str = "auto") -> str:
    """Human-readable name of the device the backend runs on."""
    if resolve(backend) == "gpu":
        cp = _cupy()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def free_memory_bytes(backend: str = "auto") -> int:
    """Free memory (bytes) of the device: GPU free memory plus CuPy's cached pool, or host RAM."""
    if resolve(backend) == "gpu":
        cp = _cupy()
        free, _total = cp.cuda.runtime.memGetInfo()
        pool = cp.get_default_memory_pool()
        return int(free + pool.free_bytes())
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))


def memory_budget(backend: str = "auto", fraction: float = 0.5) -> int:
    """Bytes a chunked step may use: ``fraction`` of free memory, overridable with the
    environment variable ``TOMOSTRAIN_MEMORY_BUDGET`` (bytes, or with a K/M/G suffix)."""
    env = os.environ.get("TOMOSTRAIN_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    return int(free_memory_bytes(backend) * fraction)


def parse_bytes(text: str) -> int:
    """'512M' -> 536870912; plain integers are bytes."""
    text = text.strip().upper().rstrip("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def bincount(x, weights=None, minlength: int = 0):
    """``xp.bincount`` that also takes an empty ``x`` on the GPU (CuPy's needs a maximum)."""
    xp = xp_of(x)
    if x.size == 0:
        return xp.zeros(minlength, xp.int64 if weights is None else xp.float64)
    return xp.bincount(x, weights=weights, minlength=minlength)
