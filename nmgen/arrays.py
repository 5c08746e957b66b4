"""Turning whatever the user passed into a float32 numpy matrix, with errors that say what was wrong."""
from __future__ import annotations

import numpy as np

from .errors import ShapeError


def host_matrix(x, name: str) -> np.ndarray:
    """A C-contiguous float32 (rows, cols) numpy copy or view of `x` (numpy, torch, cupy, lists)."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    elif hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        x = x.get()
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot read
        raise ShapeError(f"{name} could not be read as a matrix ({e})") from None
    if a.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D matrix, got {a.ndim}-D shape {a.shape}")
    if a.dtype.kind not in "f":
        raise ShapeError(f"{name} has dtype {a.dtype}; nmgen computes in float32: pass a floating-point matrix "
                         f"(e.g. {name}.astype(numpy.float32))")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ShapeError(f"{name} contains NaN or infinity")
    return a
