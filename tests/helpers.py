"""Shared by the CPU and GPU tiers: random N:M problems and the check against float64."""
import numpy as np

from nmgen import NMMatrix, Pattern, Problem
from nmgen.checking import run_interpreter  # noqa: F401 - the tests' way to run a kernel on the CPU
from nmgen.reference import compare


def random_problem(rng, M, N, K, n, m, v, a_major="row"):
    p = Problem(M, N, K, Pattern(n, m, v), a_major=a_major)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = NMMatrix.from_dense(rng.standard_normal((K, N), dtype=np.float32), p.pattern, prune_first=True)
    return p, A, B


def assert_product(C, A, B, rows=None):
    """C == A @ B: every element finite and within the error bound of its fp32 sum (nmgen.reference)."""
    v = compare(C, A, B, rows)
    assert v.ok, v.summary()
