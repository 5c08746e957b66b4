"""The float64 reference product every kernel is checked against (CPU, numpy)."""
from __future__ import annotations

import numpy as np

from .arrays import host_matrix
from .errors import ShapeError
from .format import NMMatrix


def spmm_reference(A, B: NMMatrix) -> np.ndarray:
    """C = A @ B in float64: the dense definition, kept deliberately simple."""
    A = host_matrix(A, "A")
    if A.shape[1] != B.K:
        raise ShapeError(f"A is {A.shape[0]}x{A.shape[1]} but B has K={B.K} rows; A's columns must equal B's rows")
    return A.astype(np.float64) @ B.to_dense(np.float64)


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
