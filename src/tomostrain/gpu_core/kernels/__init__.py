"""GPU kernels (numba.cuda) and their CPU twins (numba.njit), one module per kernel.

Every module follows DESIGN.md §2: the per-element math is one ``register_jitable`` function
called by both the ``cuda.jit`` kernel and the ``njit(parallel=True)`` twin. Each module
registers its kernels here with ``register(...)``, naming:

- ``signatures``: the launch signatures compiled to PTX (sm_80, sm_90) by ``make test``;
- ``sim_case(rng) -> (launch, want, rtol, atol)``: small inputs for the CUDA-simulator check.
  ``launch()`` runs the GPU kernel (under ``NUMBA_ENABLE_CUDASIM=1``, on NumPy arrays, with a
  grid that does not divide the data evenly) and returns its output; ``want`` is the CPU twin's
  answer on the same inputs.

``tests/test_kernels.py`` walks this registry; a module that is not registered is not tested,
so every kernel module must call ``register``.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Kernel:
    name: str
    gpu: object  # numba.cuda dispatcher
    signatures: tuple[str, ...]
    sim_case: Callable[[np.random.Generator], tuple[Callable[[], np.ndarray], np.ndarray, float, float]]


_REGISTRY: dict[str, Kernel] = {}



class LazyKernel:
    """The GPU kernel ``name`` of the namespace ``build()`` returns, built when first touched
    (a launch ``k[grid, block]``, ``k.py_func``), so CPU runs never import numba.cuda."""

    def __init__(self, build: Callable, name: str):
        self.build = build
        self.name = name

    def __getattr__(self, attr):
        return getattr(getattr(self.build(), self.name), attr)

    def __getitem__(self, config):
        return getattr(self.build(), self.name)[config]


def register(name: str, gpu, signatures, sim_case) -> None:
    """Declare a GPU kernel for the PTX and simulator checks."""
    _REGISTRY[name] = Kernel(name, gpu, tuple(signatures), sim_case)


def all_kernels() -> list[Kernel]:
    """Import every kernel module of this package and return the registered kernels by name."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def cupy_stream():
    """CuPy's current stream as a Numba stream, so kernels run in order with CuPy's work."""
    import cupy
    from numba import cuda

    return cuda.external_stream(cupy.cuda.get_current_stream().ptr)


def blocks_for(n: int, threads: int) -> int:
    """Blocks of ``threads`` threads needed to cover ``n`` items (at least 1)."""
    return max(1, (n + threads - 1) // threads)
