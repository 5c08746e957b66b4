"""Compressing a dense nn.Linear weight to the n:m format with torch, on the weight's device.

The same choices as nmgen.prune / nmgen.compress (numpy, on the host), without leaving the GPU:
B = W.T is K x N (K = in_features); in every window of m rows (input features) and every vector
of V columns (output features), n rows are kept, by magnitude (the n largest L1 norms over the
vector's columns, ties to the lower row) or as a given mask says.

    values  (K*n/m, N)        values[w, j] = B[window(w)*m + indices[w, j // V], j]
    indices (K*n/m, ceil(N/V)) int64, ascending in each window
"""
from __future__ import annotations

import torch

from ..errors import PatternError, ShapeError
from ..ir.problem import Pattern, ceil_div


def _per_vector(x: torch.Tensor, p: Pattern) -> torch.Tensor:
    """(K, N) -> (windows, m, vectors): the sum over each vector's columns (zero-padded)."""
    K, N = x.shape
    nv = ceil_div(N, p.vector)
    if nv * p.vector != N:
        x = torch.nn.functional.pad(x, (0, nv * p.vector - N))
    return x.reshape(K // p.m, p.m, nv, p.vector).sum(dim=3)


def _first_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Rows (along dim 1) of the n largest scores, ties to the lower row, in ascending order:
    numpy's stable argsort of -scores, as nmgen.format._select."""
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :n, :]
    return torch.sort(order, dim=1).values


def magnitude_rows(BT: torch.Tensor, p: Pattern) -> torch.Tensor:
    """Kept rows (windows, n, vectors) of B (K x N) by magnitude (float64 scores, as nmgen.prune)."""
    return _first_n(_per_vector(BT.abs().to(torch.float64), p), p.n)


def mask_rows(keep: torch.Tensor, p: Pattern) -> torch.Tensor:
    """Kept rows (windows, n, vectors) for a checked keep-mask of B (K x N): the rows the mask keeps
    in each window and vector, then (where it keeps fewer than n) the lowest others."""
    return _first_n(_per_vector(keep.to(torch.int32), p).gt(0).to(torch.int32), p.n)


def gather(BT: torch.Tensor, rows: torch.Tensor, p: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (W, N) of BT's dtype, indices (W, ceil(N/V)) int64) for kept `rows` (windows, n, nv)."""
    windows, n, nv = rows.shape
    indices = rows.reshape(windows * n, nv)
    window = torch.arange(windows * n, device=BT.device) // n
    absolute = window[:, None] * p.m + indices                                  # (W, nv) rows of B
    cols = torch.arange(BT.shape[1], device=BT.device) // p.vector
    values = BT.gather(0, absolute[:, cols])
    return values, indices


def check_mask(mask, shape: tuple[int, int], p: Pattern, device) -> torch.Tensor:
    """A keep-mask of an nn.Linear weight (out_features, in_features), True = kept, checked to be
    n:m with vectors of V output features; returned transposed, (in, out) = (K, N) bool on `device`.

    The rows a group of V outputs keeps in a window of m inputs are those any of them keeps; there
    may be at most n. PatternError names the first window that keeps more."""
    if isinstance(mask, torch.Tensor) and mask.device.type == "meta":
        raise ShapeError("mask is on the meta device and holds no values: pass a real boolean tensor "
                         "(e.g. mask = weight != 0)")
    try:
        keep = torch.as_tensor(mask, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ShapeError(f"mask must be a boolean tensor or array of the weight's shape {tuple(shape)}, got "
                         f"{type(mask).__name__} ({e})") from None
    if tuple(keep.shape) != tuple(shape):
        raise ShapeError(f"mask has shape {tuple(keep.shape)} but the weight is {tuple(shape)} (out_features, "
                         f"in_features)")
    if keep.dtype != torch.bool:
        raise ShapeError(f"mask must be boolean (True = keep), got {keep.dtype}; e.g. mask = weight != 0")
    keepT = keep.t()
    count = _per_vector(keepT.to(torch.int32), p).gt(0).sum(dim=1)               # (windows, vectors)
    over = torch.nonzero(count > p.n)
    if over.numel():
        w, j = (int(i) for i in over[0])
        out_f = shape[0]
        raise PatternError(
            f"mask is not {p.n}:{p.m} with vectors of {p.vector}: output features {j * p.vector}.."
            f"{min(out_f, (j + 1) * p.vector) - 1} keep {int(count[w, j])} of the input features "
            f"{w * p.m}..{w * p.m + p.m - 1} (window {w}); at most {p.n} per window, the same for the {p.vector} "
            f"outputs of a group")
    return keepT


def compress_weight(W: torch.Tensor, p: Pattern, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of B = W.T for an nn.Linear weight W (out_features, in_features), pruned
    by magnitude or to `mask` (see check_mask), on W's device; values in W's dtype."""
    BT = W.t()
    if mask is None:
        rows = magnitude_rows(BT, p)
    else:
        keep = check_mask(mask, tuple(W.shape), p, W.device)
        rows = mask_rows(keep, p)
        BT = BT * keep
    values, indices = gather(BT, rows, p)
    if not bool(torch.isfinite(values).all()):
        raise ShapeError("the weight's kept values contain NaN or infinity")
    return values, indices


def compressed_problem(values: torch.Tensor, indices: torch.Tensor, p: Pattern) -> str | None:
    """What is wrong with compressed tensors (values (W, N), indices (W, ceil(N/V))) of shapes that
    fit `p`, or None: positions outside [0, m), positions not increasing within a window (a row
    kept twice), non-finite values. On their device; one reduction each."""
    ix = indices.long()
    bad = (ix < 0) | (ix >= p.m)
    if bool(bad.any()):
        w, j = (int(i) for i in torch.nonzero(bad)[0])
        return f"indices[{w}, {j}] = {int(ix[w, j])} is outside [0, {p.m}) (a position in a window of m={p.m})"
    if p.n > 1:
        steps = ix.reshape(-1, p.n, ix.shape[1]).diff(dim=1)
        if bool((steps <= 0).any()):
            w, k, j = (int(i) for i in torch.nonzero(steps <= 0)[0])
            return (f"the indices of window {w}, vector {j} are not increasing (rows {w * p.n + k} and "
                    f"{w * p.n + k + 1}): each kept row appears once, in order")
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        return "values hold NaN or infinity"
    return None
