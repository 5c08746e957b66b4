"""Shared by the CPU and GPU tiers: random N:M problems and the error measure."""
import numpy as np

from nmgen import NMMatrix, Pattern, Problem
from nmgen.ir import build, interpret, prepare

TOL = 1e-5


def random_problem(rng, M, N, K, n, m, v, a_major="row"):
    p = Problem(M, N, K, Pattern(n, m, v), a_major=a_major)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = NMMatrix.from_dense(rng.standard_normal((K, N), dtype=np.float32), p.pattern, prune_first=True)
    return p, A, B


def rel_err(C, ref) -> float:
    C = np.asarray(C, np.float64)
    assert np.isfinite(C).all(), f"{np.count_nonzero(~np.isfinite(C))} output elements were not written (NaN)"
    return float(np.linalg.norm(C - ref) / np.linalg.norm(ref))


def run_interpreter(problem, schedule, A, B):
    ops = prepare(problem, schedule, B.values, B.indices)
    k = build(problem, schedule, ops.geometry.a_rows)
    arrays = {"A": np.ascontiguousarray(A.T) if problem.a_major == "col" else A, "Bv": ops.bv, "Bi": ops.bi}
    if ops.arows is not None:
        arrays["Arows"] = ops.arows
    return interpret(k, arrays)
