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


def test_the_gpu_tier_is_skipped_with_a_short_whole_reason():
    """pytest -ra prints the reason as given: the driver's first clause, not a message cut mid-word."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                        os.path.join(here, "gpu", "test_timing_gpu.py")], capture_output=True, text=True,
                       cwd=os.path.dirname(here))
    lines = [x for x in r.stdout.splitlines() if x.startswith("SKIPPED")]
    assert lines, r.stdout
    for line in lines:
        reason = line.split(": ", 1)[1]
        assert reason.startswith("no CUDA GPU here (") and reason.endswith("); run the gpu tier on the device machine")
        assert len(reason) < 120 and reason.count("(") == reason.count(")"), reason
