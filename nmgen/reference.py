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
