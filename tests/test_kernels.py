"""The two checks every kernel gets without a GPU (DESIGN.md §2).

    pytest tests/test_kernels.py                            # PTX for sm_80 and sm_90
    NUMBA_ENABLE_CUDASIM=1 pytest -m sim tests/             # simulator vs CPU twin (own process)

Every module in gpu_core/kernels registers its kernels; both checks walk that registry.
"""
import os
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from tomostrain.gpu_core import kernels

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ALL = kernels.all_kernels()
EXPECTED_MODULES = {"virtual_detector", "projector", "gridding", "disk_peaks"}


def test_every_kernel_module_is_registered():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(kernels.__path__) if not m.name.startswith("_")}
    registered = {k.gpu.py_func.__module__.rsplit(".", 1)[-1] for k in ALL}
    assert modules <= registered, f"kernel modules with no registered kernel: {modules - registered}"
    assert EXPECTED_MODULES <= modules


@pytest.mark.skipif(SIMULATED, reason="PTX is compiled in the normal process")
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm80", "sm90"])
@pytest.mark.parametrize("kernel", ALL, ids=[k.name for k in ALL])
def test_compiles_to_ptx(monkeypatch, kernel, cc):
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    # device functions called by a kernel compile for "the current device"; with no driver, name it
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(compute_capability=cc))
    for sig in kernel.signatures:
        ptx, _ = cuda.compile_ptx(kernel.gpu.py_func, sig, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx
        assert ".entry" in ptx


def _simulated_shfl_xor_sync(self, mask, value, lane_mask):
    """``cuda.shfl_xor_sync`` for Numba's simulator, which has no warp shuffles: each simulated
    thread is a Python thread, so the 32 lanes of a warp post their value under the call's number,
    meet at a barrier and read their partner's. Exact for warp-uniform calls (every lane makes the
    same calls, as the kernels do)."""
    t = threading.current_thread()
    key = (tuple(t.blockIdx), t.thread_id // 32)
    with _WARPS_LOCK:
        barrier, posted, calls = _WARPS.setdefault(key, (threading.Barrier(32), {}, {}))
    lane = t.thread_id % 32
    n = calls[lane] = calls.get(lane, 0) + 1
    posted[n, lane] = value
    barrier.wait(timeout=60)         # a lane that never comes is a failure, not a hang
    return posted[n, lane ^ lane_mask]


_WARPS: dict = {}
_WARPS_LOCK = threading.Lock()


def _locked_shared_array(original):
    """``cuda.shared.array`` for the simulator without its first-use race: it looks the array up by
    the calling line and creates it if missing, unlocked, so two simulated threads switching
    between the look-up and the store get two different "shared" arrays."""
    import traceback

    from numba.core import types
    from numba.np import numpy_support

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with _WARPS_LOCK:
            if caller not in self._allocations:
                self._allocations[caller] = np.empty(shape, dtype)
            return self._allocations[caller]

    return array


@pytest.mark.sim
@pytest.mark.skipif(not SIMULATED, reason="needs NUMBA_ENABLE_CUDASIM=1 before numba is imported")
@pytest.mark.parametrize("kernel", ALL, ids=[k.name for k in ALL])
def test_simulated_kernel_equals_cpu_twin(kernel, monkeypatch):
    from numba.cuda.simulator.kernelapi import FakeCUDAModule, FakeCUDAShared

    if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
        monkeypatch.setattr(FakeCUDAModule, "shfl_xor_sync", _simulated_shfl_xor_sync, raising=False)
        _WARPS.clear()
    monkeypatch.setattr(FakeCUDAShared, "array", _locked_shared_array(FakeCUDAShared.array))
    launch, want, rtol, atol = kernel.sim_case(np.random.default_rng(7))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)      # simulated threads hand over at every barrier: switch at once
    try:
        got = launch()
    finally:
        sys.setswitchinterval(interval)
    assert np.isfinite(want).any()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
