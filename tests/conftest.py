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


@pytest.fixture(autouse=True)
def private_tuning_db(tmp_path_factory, monkeypatch):
    """Every test, and every process it starts, uses its own tuning database and cache directory,
    never the user's ~/.cache/nmgen/tuning.db (nmgen ptx/compile open the default database)."""
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NMGEN_DB", str(home / "nmgen" / "tuning.db"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    yield home / "nmgen" / "tuning.db"
    from nmgen.search.choose import close_dbs
    close_dbs()             # the next test's path differs: no connection is left open behind it
