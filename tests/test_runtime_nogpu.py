"""Without a GPU, nmgen still imports and generates code, and running says so clearly."""
import numpy as np
import pytest

import nmgen
from nmgen.runtime import driver

pytestmark = pytest.mark.skipif(driver.available(), reason="a GPU is present: the no-GPU behaviour cannot be seen")


def test_spmm_without_gpu_says_so():
    B = nmgen.NMMatrix.from_dense(np.ones((32, 8), np.float32), "8:32", vector=32, prune_first=True)
    with pytest.raises(nmgen.CudaUnavailable, match="no CUDA driver|no usable GPU|sees no GPU"):
        nmgen.spmm(np.ones((4, 32), np.float32), B)
