import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/helpers.py, shared by both tiers


@pytest.fixture
def rng():
    """Fresh random data every run; the seed is printed, so a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed {seed}")
    return np.random.default_rng(seed)
