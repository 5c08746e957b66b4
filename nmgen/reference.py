"""The float64 reference product every kernel is checked against (CPU, numpy), and the error bound
that decides PASS or FAIL.

The bound is the classical one for a computed dot product (Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., 2002, eq. 3.5): summing k products in floating point, in any order
and with or without fused multiply-adds, gives

    |fl(x . y) - x . y|  <=  gamma_k * (|x| . |y|),      gamma_k = k u / (1 - k u)

with u the unit roundoff of the accumulation. It is applied to every element of C separately:
k is the number of kept rows summed into C[i, j] plus one (the zero, or the zeroed C that split-K
adds into), |x| . |y| is the product of the absolute values, and a C stored in a narrower dtype
adds its own rounding: u_out * |C|, plus half the spacing of its subnormals for a C that rounds
into that range (Higham section 2.1, the model with gradual underflow: fl(x) = x(1 + d) + e,
|e| <= u_out * smallest normal). A kernel that drops, repeats or misplaces products misses by
about the size of the products themselves, which for the sizes tested is far above the bound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import host_matrix
from .errors import ShapeError
from .format import NMMatrix

# Unit roundoff of the accumulation: FFMA rounds to nearest (2^-24). Tensor cores multiply exactly
# and add in fp32, but truncate inside the MMA (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior
# of NVIDIA tensor cores", PeerJ Computer Science 7:e330, 2021): one ulp, 2^-23.
ACCUMULATION_U = {"ffma": 2.0 ** -24, "mma": 2.0 ** -23}
# Unit roundoff of the stored output (rounding the fp32 sum once, to nearest).
OUTPUT_U = {"f32": 0.0, "bf16": 2.0 ** -8, "f16": 2.0 ** -11}
# Absolute error of that rounding where C falls below the smallest normal: half the subnormals'
# spacing, u_out * 2^emin (f16: 2^-11 * 2^-14; bf16: 2^-8 * 2^-126). An f16 C of |C| < 6.1e-5 is
# common: a product of two standard normal values lands there about one time in 10^4.
OUTPUT_UNDERFLOW = {"f32": 0.0, "bf16": 2.0 ** -134, "f16": 2.0 ** -25}
# Products of values near the bottom of fp32 may flush to zero (vector reductions flush denormals):
# at most the smallest normal float per operation.
FLUSH_ABS = 2.0 ** -126


def spmm_reference(A, B: NMMatrix) -> np.ndarray:
    """C = A @ B in float64 (M x N): the dense definition, kept deliberately simple. A: (M, K)
    numpy, torch or cupy array (read to the host) of float32, bfloat16 or float16 (float64 is
    rounded to float32 first, as spmm does); B: an NMMatrix (K x N). ShapeError for anything else
    or for K that differ."""
    if not isinstance(B, NMMatrix):
        raise ShapeError(f"B must be an nmgen.NMMatrix (build one with nmgen.compress or NMMatrix.from_dense), "
                         f"not {type(B).__name__}")
    A = host_matrix(A, "A")
    if A.shape[1] != B.K:
        raise ShapeError(f"A is {A.shape[0]}x{A.shape[1]} but B has K={B.K} rows; A's columns must equal B's rows")
    return A.astype(np.float64) @ B.to_dense(np.float64)


def gamma(k: int, u: float) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of a k-term sum."""
    if k * u >= 1:
        return float("inf")
    return k * u / (1 - k * u)


@dataclass(frozen=True)
class Verdict:
    """How a computed C compares with the float64 reference on the checked rows.

    `worst` is max |C - ref| / bound over the checked elements (<= 1 passes; NaN when an element
    was never written); `rel_err` = ||C - ref|| / ||ref|| (Frobenius), for information."""
    ok: bool
    worst: float
    rel_err: float
    bad: int                # elements over their bound (or not finite)
    checked: int            # elements compared
    where: tuple | None     # (row, column) of the worst element

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        if self.checked == 0:
            return "nothing to compare (empty C)"
        if not np.isfinite(self.worst):
            return f"{self.bad} of {self.checked} elements not finite (never written, or NaN)"
        return (f"max error {self.worst:.3g} x its bound (element {self.where}), {self.bad} of {self.checked} "
                f"elements over it; relative error {self.rel_err:.2e}")


def error_bound(A64: np.ndarray, B64: np.ndarray, ref: np.ndarray, terms: int, compute: str = "ffma",
                out_dtype: str = "f32") -> np.ndarray:
    """Per-element bound (float64, shape of `ref`) on |C - ref| for C = A @ B computed with fp32
    accumulation by `compute` ("ffma" or "mma") over `terms` additions, stored as `out_dtype`.

    A64 (M x K) and B64 (K x N) are the inputs as the kernel multiplies them (already rounded to
    their dtype), in float64."""
    absprod = np.abs(A64) @ np.abs(B64)
    g = gamma(terms, ACCUMULATION_U[compute])
    u_out = OUTPUT_U[out_dtype]
    return (g * absprod * (1 + u_out) + u_out * np.abs(ref) + OUTPUT_UNDERFLOW[out_dtype] + terms * FLUSH_ABS
            + 2.0 ** -50 * absprod)


class Expected:
    """The float64 product of A's `rows` (all rows when None) with B, and each element's error
    bound, computed once; `check(C)` then judges any number of computed C's (the tuner checks
    every candidate schedule against one Expected). A and B hold the values the kernel multiplies
    (rounded to their dtype); `compute` is "ffma" or "mma", `out_dtype` C's dtype."""

    def __init__(self, A, B: NMMatrix, rows=None, *, compute: str = "ffma", out_dtype: str = "f32"):
        A = np.asarray(A)
        self.rows = None if rows is None else np.asarray(rows)
        A64 = (A if rows is None else A[self.rows]).astype(np.float64)
        B64 = B.to_dense(np.float64)
        self.ref = A64 @ B64
        terms = B.K // B.pattern.m * B.pattern.n + 1       # kept rows summed, and the zero they start from
        self.bound = error_bound(A64, B64, self.ref, terms, compute, out_dtype)

    def check(self, C) -> Verdict:
        """Verdict of C (M x N, any float dtype; its `rows` are compared)."""
        C = np.asarray(C)
        C = np.asarray(C if self.rows is None else C[self.rows], np.float64)
        if C.size == 0:
            return Verdict(True, 0.0, 0.0, 0, 0, None)
        finite = np.isfinite(C)
        ratio = np.where(finite, np.abs(C - self.ref), np.inf) / self.bound
        i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        where = (int(self.rows[i[0]]) if self.rows is not None else int(i[0]), int(i[1]))
        bad = int(np.count_nonzero(~(ratio <= 1.0)))
        return Verdict(bad == 0, float(ratio[i]) if finite.all() else float("nan"), relative_error(C, self.ref),
                       bad, int(C.size), where)


def compare(C, A, B: NMMatrix, rows=None, *, compute: str = "ffma", out_dtype: str = "f32") -> Verdict:
    """Check C (M x N) = A @ B element by element against float64 within `error_bound`, on `rows`
    of C (all when None): `Expected(A, B, rows, ...).check(C)`."""
    return Expected(A, B, rows, compute=compute, out_dtype=out_dtype).check(C)


CHECK_ROWS = 512


def check_rows(M: int, rng, limit: int = CHECK_ROWS) -> np.ndarray:
    """Rows of C to compare with float64: all of them, or for large M the first, the last and
    random others (`limit` in all) - the float64 product of every row would dominate a search."""
    if M <= limit:
        return np.arange(M)
    inner = 1 + rng.choice(M - 2, limit - 2, replace=False)          # distinct from the first and last
    return np.unique(np.concatenate([[0, M - 1], inner]))


def relative_error(C, ref) -> float:
    """||C - ref|| / ||ref|| in float64; NaN if any element of C is not finite (never written,
    when C was poisoned with NaN before the launch)."""
    C = np.asarray(C, np.float64)
    if not np.isfinite(C).all():
        return float("nan")
    return float(np.linalg.norm(C - ref) / max(np.linalg.norm(ref), 1e-300))
