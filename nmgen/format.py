"""The N:M sparse format: pruning a dense weight matrix, the compressed NMMatrix, save/load.

B is K x N. In every window of m consecutive rows (along K), n rows are kept; the choice is shared
by each vector of V consecutive columns (the last vector may be partial). Compressed:

    values:  (W, N) float32, W = K*n/m    values[w, j] = B[window(w)*m + indices[w, j // V], j]
    indices: (W, ceil(N/V)) uint8/uint16  position of kept row w inside its window, ascending per window
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrays import host_matrix
from .errors import PatternError, ShapeError
from .ir.problem import Pattern, ceil_div, index_dtype_bits

FORMAT_VERSION = 1


def _pattern(pattern, vector) -> Pattern:
    if isinstance(pattern, Pattern):
        if vector is not None and vector != pattern.vector:
            raise PatternError(f"vector={vector} disagrees with the pattern's V={pattern.vector}")
        return pattern
    if isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        return Pattern(int(pattern[0]), int(pattern[1]), 1 if vector is None else int(vector))
    return Pattern.parse(str(pattern), 1 if vector is None else int(vector))


def _windows(B: np.ndarray, p: Pattern) -> np.ndarray:
    """Per-row scores grouped as (windows, m, vectors): the L1 norm of each row over each vector."""
    K, N = B.shape
    p.check_k(K)
    nv = ceil_div(N, p.vector)
    padded = np.zeros((K, nv * p.vector), np.float64)
    padded[:, :N] = np.abs(B)
    return padded.reshape(K // p.m, p.m, nv, p.vector).sum(axis=3)


def _select(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest scores along axis 1, ascending, ties to the lower row (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n, :]
    return np.sort(order, axis=1)


def prune(B, pattern, vector: int | None = None) -> np.ndarray:
    """Magnitude pruning of a dense K x N matrix to `pattern`: in each window and vector keep the n
    rows of largest L1 norm over the vector's columns, zero the rest. Returns a float32 copy."""
    p = _pattern(pattern, vector)
    B = host_matrix(B, "B")
    keep = _select(_windows(B, p), p.n)                      # (windows, n, nv)
    mask = np.zeros((B.shape[0] // p.m, p.m, keep.shape[2]), bool)
    np.put_along_axis(mask, keep, True, axis=1)
    cols = np.arange(B.shape[1]) // p.vector
    return np.where(mask.reshape(B.shape[0], -1)[:, cols], B, np.float32(0))


@dataclass(frozen=True, eq=False)
class NMMatrix:
    """A compressed n:m (vector V) sparse K x N matrix. Build it with `compress` or `NMMatrix.from_dense`."""
    values: np.ndarray
    indices: np.ndarray
    pattern: Pattern
    shape: tuple[int, int]

    def __post_init__(self):
        self.validate()

    @property
    def K(self) -> int: return self.shape[0]
    @property
    def N(self) -> int: return self.shape[1]

    def validate(self) -> None:
        p, (K, N) = self.pattern, self.shape
        if not isinstance(p, Pattern):
            raise PatternError(f"pattern must be a nmgen.Pattern, got {type(p).__name__}")
        if K < 1 or N < 1:
            raise ShapeError(f"shape {self.shape} must be positive")
        p.check_k(K)
        W, nv = K // p.m * p.n, ceil_div(N, p.vector)
        v, ix = self.values, self.indices
        if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.shape != (W, N):
            raise ShapeError(f"values must be float32 ({W}, {N}) for a {K}x{N} {p} matrix, "
                             f"got {getattr(v, 'dtype', type(v).__name__)} {getattr(v, 'shape', '')}")
        if not isinstance(ix, np.ndarray) or ix.dtype.kind not in "ui" or ix.shape != (W, nv):
            raise ShapeError(f"indices must be unsigned integers ({W}, {nv}), got "
                             f"{getattr(ix, 'dtype', type(ix).__name__)} {getattr(ix, 'shape', '')}")
        if ix.size and (ix.min() < 0 or ix.max() >= p.m):
            raise PatternError(f"indices must lie in [0, {p.m}) (positions inside a window), "
                               f"found {int(ix.min())}..{int(ix.max())}")
        if p.n > 1 and ix.size:
            per = ix.reshape(K // p.m, p.n, nv).astype(np.int64)
            if (np.diff(per, axis=1) <= 0).any():
                raise PatternError("indices inside each window must be strictly increasing (distinct kept rows)")
        if not np.isfinite(v).all():
            raise ShapeError("values contain NaN or infinity")

    @classmethod
    def from_dense(cls, B, pattern, vector: int | None = None, prune_first: bool = False) -> "NMMatrix":
        p = _pattern(pattern, vector)
        return compress(prune(B, p) if prune_first else B, p)

    def to_dense(self, dtype=np.float32) -> np.ndarray:
        K, N = self.shape
        out = np.zeros((K, N), dtype)
        rows = self._rows()                                  # (W, N) absolute K row of each value
        out[rows, np.broadcast_to(np.arange(N), rows.shape)] = self.values
        return out

    def _rows(self) -> np.ndarray:
        p = self.pattern
        window = np.arange(self.values.shape[0]) // p.n
        cols = np.arange(self.N) // p.vector
        return window[:, None] * p.m + self.indices[:, cols].astype(np.int64)

    @property
    def density(self) -> float:
        return self.pattern.density

    def nbytes(self) -> int:
        return self.values.nbytes + self.indices.nbytes

    def save(self, path) -> None:
        p = self.pattern
        with open(Path(path), "wb") as f:
            np.savez(f, values=self.values, indices=self.indices,
                     meta=np.array([FORMAT_VERSION, p.n, p.m, p.vector, self.K, self.N], np.int64))

    @classmethod
    def load(cls, path) -> "NMMatrix":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta, values, indices = z["meta"], z["values"], z["indices"]
        except (OSError, KeyError, ValueError) as e:
            raise ShapeError(f"{path} is not an nmgen matrix file ({e})") from None
        if int(meta[0]) != FORMAT_VERSION:
            raise ShapeError(f"{path} has format version {int(meta[0])}; this nmgen reads {FORMAT_VERSION}")
        _, n, m, v, K, N = (int(x) for x in meta)
        return cls(values, indices, Pattern(n, m, v), (K, N))

    def __repr__(self):
        return f"NMMatrix({self.K}x{self.N}, {self.pattern}, {self.nbytes()} bytes)"


def compress(B, pattern, vector: int | None = None) -> NMMatrix:
    """Compress a dense K x N matrix that already follows `pattern` (at most n non-zero rows in each
    window of each vector). Raises PatternError, naming the first offending window, otherwise;
    `prune` (or `NMMatrix.from_dense(..., prune_first=True)`) makes any matrix follow it."""
    p = _pattern(pattern, vector)
    B = host_matrix(B, "B")
    K, N = B.shape
    nz = _windows(B, p) > 0                                  # (windows, m, nv): row non-zero in vector
    count = nz.sum(axis=1)
    if (count > p.n).any():
        w, j = np.argwhere(count > p.n)[0]
        raise PatternError(
            f"B is not {p.n}:{p.m} sparse with vectors of {p.vector}: window {w} (rows {w * p.m}..{w * p.m + p.m - 1}),"
            f" columns {j * p.vector}..{min(N, (j + 1) * p.vector) - 1} have {int(count[w, j])} non-zero rows; "
            f"prune it first (nmgen.prune(B, '{p.n}:{p.m}', vector={p.vector}))")
    # Non-zero rows first (lower rows first), then zero rows fill the remaining kept slots.
    keep = _select(nz.astype(np.float64) + 1e-9 * (p.m - np.arange(p.m))[None, :, None], p.n)
    W, nv = K // p.m * p.n, keep.shape[2]
    dt = np.uint8 if index_dtype_bits(p.m - 1) == 8 else np.uint16
    indices = keep.reshape(W, nv).astype(dt)
    window = np.arange(W) // p.n
    cols = np.arange(N) // p.vector
    values = B[window[:, None] * p.m + indices[:, cols].astype(np.int64), np.arange(N)[None, :]]
    return NMMatrix(np.ascontiguousarray(values, np.float32), indices, p, (K, N))


def pad_k(A=None, B=None, m: int = 32):
    """Zero-pad K (A's columns, B's rows) up to a multiple of the window m; returns (A, B)."""
    out = []
    for x, axis, name in ((A, 1, "A"), (B, 0, "B")):
        if x is None:
            out.append(None)
            continue
        x = host_matrix(x, name)
        k = x.shape[axis]
        pad = ceil_div(k, m) * m - k
        widths = [(0, 0), (0, 0)]
        widths[axis] = (0, pad)
        out.append(np.pad(x, widths) if pad else x)
    return tuple(out)
