"""Turning whatever the user passed into a numpy matrix of a floating-point dtype nmgen computes
with (float32, bfloat16, float16), with errors that say what was wrong."""
from __future__ import annotations

import numpy as np

from .errors import ShapeError
from .ir.dtypes import DTYPES, cast_finite, storage_name


def to_numpy(x):
    """A host numpy array of `x` (numpy, torch incl. bfloat16, cupy, lists); numpy may raise."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:           # numpy has no bfloat16: through the raw 16 bits
            return x.view(torch.int16).numpy().view(DTYPES["bf16"].storage)
        return x.numpy()
    if hasattr(x, "get") and mod.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def host_matrix(x, name: str, dtype: str | None = None) -> np.ndarray:
    """A C-contiguous (rows, cols) numpy copy or view of `x` (numpy, torch, cupy, lists) holding
    float32, bfloat16 (ml_dtypes) or float16 values: `dtype` ("f32", "bf16", "f16") when given,
    else x's own where it is one of those, else float32 (float64 is rounded to float32).

    Raises ShapeError for anything that is not a finite 2-D floating-point matrix."""
    try:
        a = to_numpy(x)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot read
        raise ShapeError(f"{name} could not be read as a matrix ({e})") from None
    if a.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D matrix, got {a.ndim}-D shape {a.shape}")
    if a.dtype.kind != "f" and storage_name(a.dtype) is None:
        raise ShapeError(f"{name} has dtype {a.dtype}; nmgen computes with float32, bfloat16 or float16: pass a "
                         f"floating-point matrix (e.g. {name}.astype(numpy.float32))")
    target = DTYPES[dtype].storage if dtype else (a.dtype if storage_name(a.dtype) else np.dtype(np.float32))
    a = np.ascontiguousarray(cast_finite(a, target, name))      # ShapeError for values beyond target's range
    finite = np.isfinite(a.astype(np.float32) if a.dtype != np.float32 else a)
    if not finite.all():
        bad = np.argwhere(~finite)
        i, j = (int(x) for x in bad[0])
        raise ShapeError(f"{name} contains NaN or infinity: {len(bad)} element(s), the first {name}[{i}, {j}] = "
                         f"{a[i, j]}; replace them (e.g. numpy.nan_to_num) before the product")
    return a
