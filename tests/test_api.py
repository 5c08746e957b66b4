"""The Python API's reliability on the CPU: every schedule it can choose prepares and computes the
right product, and bad input is refused with an error that says what and how."""
import numpy as np
import pytest

import nmgen
from nmgen import spmm_reference
from nmgen.api import _layout_key
from nmgen.ir import for_arch
from nmgen.search.refine import refinements
from nmgen.search.space import enumerate_space
from helpers import TOL, random_problem, rel_err, run_interpreter

H100 = for_arch("sm_90")


@pytest.fixture(autouse=True)
def tmp_db(tmp_path, monkeypatch):
    """An empty tuning database: `compile` takes the model's choice, never a record of this machine."""
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))


# ---- 1. every schedule the model or the database can choose is one that prepares and computes -----
PATTERNS = [(2, 4, 1), (2, 8, 4), (8, 32, 32), (16, 32, 32), (2, 8, 64), (4, 16, 16)]
# (M, N, K in windows of m, A's order): K = m, 2m and odd window counts; M = 1, 16, 17; odd N.
# One K tile with one index unit per block made the index chunks a transposed view (issue: small K).
SMALL_K = [(1, 4096, 1, "row"), (16, 256, 1, "row"), (17, 255, 2, "col"), (1, 1001, 3, "col"),
           (17, 100, 5, "row"), (1, 77, 2, "row")]


def _pid(x):
    return "%d:%dx%d" % x if len(x) == 3 else "%dx%dxKw%d-%s" % x


@pytest.mark.parametrize("shape", SMALL_K, ids=_pid)
@pytest.mark.parametrize("pattern", PATTERNS, ids=_pid)
def test_model_choice_prepares_and_computes(rng, pattern, shape):
    """The schedule `compile` picks with no database (the model's), run by the CPU interpreter."""
    M, N, windows, a_major = shape
    n, m, v = pattern
    p, A, B = random_problem(rng, M, N, windows * m, n, m, v, a_major)
    k = nmgen.compile(p, B=B)
    ops = nmgen.api.host_operands(B, k.problem, k.schedule)
    assert ops.bi.flags.c_contiguous and ops.bi.dtype == np.uint8
    assert rel_err(run_interpreter(p, k.schedule, A, B), spmm_reference(A, B)) < TOL


@pytest.mark.parametrize("shape", [(1, 300, 1, "row"), (16, 256, 1, "row"), (17, 255, 2, "col"),
                                   (1, 1001, 3, "col"), (17, 100, 5, "row")], ids=_pid)
@pytest.mark.parametrize("pattern", PATTERNS, ids=_pid)
def test_every_searchable_layout_prepares_and_computes(rng, pattern, shape):
    """What the database can hold: the space and the tuner's one-step refinements. The prepared
    weights depend only on `_layout_key`, so one schedule per key is interpreted."""
    M, N, windows, a_major = shape
    n, m, v = pattern
    p, A, B = random_problem(rng, M, N, windows * m, n, m, v, a_major)
    layouts = {}
    for s in enumerate_space(p, H100):
        for c in [s] + refinements(p, s, H100, None):
            layouts.setdefault(_layout_key(p, c), c)
    assert layouts
    ref = spmm_reference(A, B)
    for s in layouts.values():
        assert rel_err(run_interpreter(p, s, A, B), ref) < TOL, s.short()
