"""Chunk planning and the out-of-memory retry of ``run_chunked`` (no GPU needed: the errors are
stand-ins with the names and messages CuPy's, cuFFT's and Numba's errors carry)."""
import numpy as np
import pytest

from tomostrain.gpu_core import chunks


class OutOfMemoryError(Exception):  # cupy.cuda.memory.OutOfMemoryError
    pass


class CuFFTError(RuntimeError):  # cupy.cuda.cufft.CuFFTError
    pass


class CudaAPIError(Exception):  # numba.cuda.cudadrv.driver.CudaAPIError (Numba's allocations, launches)
    pass


@pytest.mark.parametrize("error", [OutOfMemoryError("Out of memory allocating 1,024 bytes"),
                                   CuFFTError("CUFFT_ALLOC_FAILED"),
                                   CudaAPIError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")],
                         ids=["pool", "cufft-plan", "numba-alloc"])
def test_gpu_out_of_memory_halves_the_chunk_and_retries(error):
    seen = []

    def process(sl):
        if sl.stop - sl.start > 3:
            raise error
        seen.append((sl.start, sl.stop))
        return np.arange(sl.start, sl.stop)

    out = chunks.run_chunked(process, 7, 1, 8, merge=np.concatenate)
    np.testing.assert_array_equal(out, np.arange(7))
    assert seen == [(0, 3), (3, 6), (6, 7)]  # 7 failed, halved to 3


def test_other_errors_are_not_retried():
    calls = []

    def process(sl):
        calls.append(sl)
        raise RuntimeError("CUFFT_INVALID_SIZE")

    with pytest.raises(RuntimeError, match="INVALID_SIZE"):
        chunks.run_chunked(process, 8, 1, 8)
    assert len(calls) == 1


def test_reconstruct_gives_each_chunk_its_slices_of_a_3d_support():
    from tomostrain.reconstruction import project, reconstruct

    angles = np.linspace(-60, 60, 13)
    vol = np.zeros((3, 12, 12), np.float32)
    vol[:, 3:9, 4:8] = np.array([1.0, 0.5, 2.0], np.float32)[:, None, None]
    support = np.zeros(vol.shape, bool)
    support[:, 2:10, 3:9] = True
    support[1, :, :6] = False  # differs between slices
    data = project(vol, angles)
    whole = reconstruct(data, "sirt", angles_deg=angles, backend="cpu", iterations=5, support=support)
    tiny = reconstruct(data, "sirt", angles_deg=angles, backend="cpu", iterations=5, support=support,
                       chunk_budget=1)  # one slice a chunk
    assert not whole[~support].any()
    np.testing.assert_allclose(tiny, whole, rtol=1e-5, atol=1e-6)
