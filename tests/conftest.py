import os

import numpy as np
import pytest

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _has_gpu():
    if SIMULATED:
        return False
    from tomostrain.gpu_core.backend import gpu_available

    return gpu_available()


def pytest_collection_modifyitems(config, items):
    gpu = _has_gpu()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
