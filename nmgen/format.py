"""The N:M sparse format: pruning a dense weight matrix, the compressed NMMatrix, save/load.

B is K x N. In every window of m consecutive rows (along K), n rows are kept; the choice is shared
by each vector of V consecutive columns (the last vector may be partial). Compressed:

    values:  (W, N) float32, bfloat16 (ml_dtypes) or float16, W = K*n/m
                                          values[w, j] = B[window(w)*m + indices[w, j // V], j]
    indices: (W, ceil(N/V)) uint8/uint16  position of kept row w inside its window, ascending per window
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrays import host_matrix
from .errors import FileError, NMGenError, PatternError, ShapeError
from .files import file_name, writing
from .ir.dtypes import DTYPES, OUTPUT_DTYPES, cast_finite, dtype as dtype_of, storage_name
from .ir.problem import Pattern, as_int, ceil_div, index_dtype_bits

FORMAT_VERSION = 2          # 2: a seventh meta entry, the values' dtype (DTYPE_CODES); 1: float32 only
DTYPE_CODES = {"f32": 0, "bf16": 1, "f16": 2}


def _pattern(pattern, vector) -> Pattern:
    """A Pattern from a Pattern, "n:m", "n:mxV" or (n, m), and `vector` (None: the pattern's, or 1).
    Sizes must be integers: Pattern refuses 2.5 or True instead of truncating them (PatternError)."""
    if isinstance(pattern, Pattern):
        if vector is not None and as_int(vector, "vector length V", PatternError) != pattern.vector:
            hint = (f" (nmgen.Pattern({pattern.n}, {pattern.m}) is element-wise, V=1); pass "
                    f"Pattern({pattern.n}, {pattern.m}, {vector}), or '{pattern.n}:{pattern.m}' with vector={vector}"
                    if pattern.vector == 1 else "; give one of them")
            raise PatternError(f"vector={vector} disagrees with the pattern's V={pattern.vector}{hint}")
        return pattern
    if isinstance(pattern, str):
        return Pattern.parse(pattern, vector)
    if isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        return Pattern(pattern[0], pattern[1], 1 if vector is None else vector)
    raise PatternError(f"pattern {pattern!r} must be a string 'n:m' (e.g. '8:32'), a tuple (n, m) or a nmgen.Pattern")


def _window(m) -> int:
    """pad_k's window: an int, a pattern "n:m" or a Pattern (its m)."""
    if isinstance(m, Pattern):
        return m.m
    if isinstance(m, str):
        return Pattern.parse(m).m
    w = as_int(m, "m (the pattern window)")
    if w < 1:
        raise ShapeError(f"m={w} must be a window of at least 1 row: pass the pattern's m, e.g. "
                         f"nmgen.pad_k(A, B, m=32) or m='8:32'")
    return w


# Elements of B a pass over it handles at once: the temporaries of pruning and compressing (absolute
# values, masks, gather indices) stay this size instead of growing with B (a 28672 x 8192 float32 matrix
# needed ~5 GB at once for its 0.94 GB)
CHUNK_ELEMENTS = 1 << 22


def _window_chunks(windows: int, m: int, N: int):
    """slices of whole windows (of m rows of N columns) holding about CHUNK_ELEMENTS elements each."""
    step = max(1, CHUNK_ELEMENTS // max(1, m * N))
    return (slice(w, min(w + step, windows)) for w in range(0, windows, step))


def _windows(B: np.ndarray, p: Pattern) -> np.ndarray:
    """Per-row scores grouped as (windows, m, vectors): the L1 norm of each row over each vector,
    summed in float64."""
    K, N = B.shape
    p.check_k(K)
    if N < 1:
        raise ShapeError(f"B is {K}x{N}: it needs at least one column")
    nv, whole = ceil_div(N, p.vector), N // p.vector
    out = np.empty((K // p.m, p.m, nv), np.float64)
    for w in _window_chunks(K // p.m, p.m, N):
        a = np.abs(B[w.start * p.m:w.stop * p.m]).astype(np.float64).reshape(-1, p.m, N)
        if whole:
            out[w, :, :whole] = a[:, :, :whole * p.vector].reshape(-1, p.m, whole, p.vector).sum(axis=3)
        if whole < nv:      # the last vector, cut short by N: summed zero-padded to V, in the order it always was
            tail = np.zeros((a.shape[0], p.m, p.vector))
            tail[:, :, :N - whole * p.vector] = a[:, :, whole * p.vector:]
            out[w, :, whole] = tail.sum(axis=2)
    return out


def _select(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest scores along axis 1, ascending, ties to the lower row (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n, :]
    return np.sort(order, axis=1)


def prune(B, pattern, vector: int | None = None) -> np.ndarray:
    """Magnitude pruning of a dense K x N matrix to `pattern`: in each window and vector keep the n
    rows of largest L1 norm over the vector's columns, zero the rest. Returns a copy in B's dtype
    (float32, bfloat16 or float16; other floats become float32)."""
    p = _pattern(pattern, vector)
    B = host_matrix(B, "B")
    keep = _select(_windows(B, p), p.n)                      # (windows, n, nv)
    mask = np.zeros((B.shape[0] // p.m, p.m, keep.shape[2]), bool)
    np.put_along_axis(mask, keep, True, axis=1)
    cols = np.arange(B.shape[1]) // p.vector
    out = np.empty_like(B)
    for w in _window_chunks(mask.shape[0], p.m, B.shape[1]):
        rows = slice(w.start * p.m, w.stop * p.m)
        out[rows] = np.where(mask[w].reshape(-1, mask.shape[2])[:, cols], B[rows], B.dtype.type(0))
    return out


def _frozen_copy(x):
    """A read-only C-ordered copy of an ndarray (anything else is left for `validate` to refuse).

    It is a view of a read-only private copy, so `setflags(write=True)` on it fails too. The
    caller's array is never frozen or changed: it stays theirs, writable."""
    if not isinstance(x, np.ndarray):
        return x
    owned = np.array(x, order="C", copy=True)
    owned.flags.writeable = False
    return owned.view()


def _shape(shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ShapeError(f"shape {shape!r} must be (K, N)")
    return as_int(shape[0], "K"), as_int(shape[1], "N")


@dataclass(frozen=True, eq=False)
class NMMatrix:
    """A compressed n:m (vector V) sparse K x N matrix. Build it with `compress` or `NMMatrix.from_dense`.

    values (W, N) float32, bfloat16 (ml_dtypes.bfloat16) or float16 - the dtype the products run in
    (`dtype`; `astype` converts) - and indices (W, ceil(N/V)) unsigned are read-only copies of the arrays
    given: the kernels' weight layouts and device copies are cached per NMMatrix, so its arrays
    never change (`B.values[0, 0] = 1` raises numpy's "assignment destination is read-only"). To
    change the weights, build a new NMMatrix (compress, from_dense, or NMMatrix(values, indices,
    pattern, shape) from edited copies). The arrays passed in stay the caller's, writable.

    Raises ShapeError / PatternError for arrays that do not fit the pattern and shape."""
    values: np.ndarray
    indices: np.ndarray
    pattern: Pattern
    shape: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "shape", _shape(self.shape))
        object.__setattr__(self, "values", _frozen_copy(self.values))
        object.__setattr__(self, "indices", _frozen_copy(self.indices))
        self.validate()

    @property
    def K(self) -> int: return self.shape[0]
    @property
    def N(self) -> int: return self.shape[1]

    @property
    def dtype(self) -> str:
        """The values' dtype: "f32", "bf16" or "f16"."""
        return storage_name(self.values.dtype)

    def astype(self, dtype) -> "NMMatrix":
        """The same matrix with its values rounded (to nearest) to `dtype` ("f32", "bf16", "f16", or
        numpy / torch spellings); itself when they already are."""
        name = dtype_of(dtype).name
        if name not in OUTPUT_DTYPES:
            raise ShapeError(f"weights are stored as {', '.join(OUTPUT_DTYPES)}; {name!r} is a way of multiplying "
                             f"float32 values (pass allow_tf32=True to spmm instead)")
        if name == self.dtype:
            return self
        return NMMatrix(cast_finite(self.values, DTYPES[name].storage, "the weights"), self.indices, self.pattern,
                        self.shape)

    def validate(self) -> None:
        p, (K, N) = self.pattern, self.shape
        if not isinstance(p, Pattern):
            raise PatternError(f"pattern must be a nmgen.Pattern, got {type(p).__name__}")
        if N < 1:
            raise ShapeError(f"shape {self.shape}: B needs at least one column (N >= 1)")
        p.check_k(K)        # K >= 1, a multiple of m (the message says how to pad)
        W, nv = K // p.m * p.n, ceil_div(N, p.vector)
        v, ix = self.values, self.indices
        if not isinstance(v, np.ndarray) or storage_name(v.dtype) is None or v.shape != (W, N):
            raise ShapeError(f"values must be float32, bfloat16 or float16 ({W}, {N}) for a {K}x{N} {p} matrix, "
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
        if not np.isfinite(v.astype(np.float32)).all():
            raise ShapeError("values contain NaN or infinity")

    @classmethod
    def from_dense(cls, B, pattern, vector: int | None = None, prune_first: bool = False,
                   dtype=None) -> "NMMatrix":
        """Compress a dense K x N matrix (pruned to the pattern first with `prune_first`), its values
        kept in B's dtype (float32, bfloat16 or float16; other floats, float64 included, are stored as
        float32) or rounded to `dtype` ("f32", "bf16", "f16")."""
        p = _pattern(pattern, vector)
        nm = compress(prune(B, p) if prune_first else B, p)
        return nm if dtype is None else nm.astype(dtype)

    def to_dense(self, dtype=np.float32) -> np.ndarray:
        """The (K, N) dense matrix, zeros where the pattern drops a row, in `dtype`: nmgen's names
        ("f32", "bf16", "f16"; `self.dtype` keeps the stored one), their numpy / torch spellings
        (ml_dtypes.bfloat16 for 16 bits), or any numpy float type (float64 for a reference).
        Default (and None) float32, which holds bf16 and f16 values exactly. ShapeError otherwise."""
        K, N = self.shape
        out = np.zeros((K, N), _dense_dtype(dtype))
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

    def save(self, path, *, overwrite: bool = False) -> None:
        """Write the matrix to `path` (numpy .npz: values as their raw bits, indices, meta). An
        existing file is replaced only with overwrite=True. A path that exists (without it) or
        cannot be written (a directory, a missing directory, a device or pipe, no permission, an OS
        error) raises one FileError (an OSError) naming the file and why."""
        p = self.pattern
        file_name(path, "write")
        if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
            raise FileError(f"cannot write {path}: NMMatrix.save writes a regular file (an .npz archive seeks back "
                             f"to finish it), and {path} is a device or a pipe; give a file name")
        raw = self.values.view(np.uint16) if self.dtype == "bf16" else self.values    # npz has no bfloat16
        with writing(path, overwrite=overwrite), open(Path(path), "wb") as f:
            np.savez(f, values=raw, indices=self.indices,
                     meta=np.array([FORMAT_VERSION, p.n, p.m, p.vector, self.K, self.N, DTYPE_CODES[self.dtype]],
                                   np.int64))

    @classmethod
    def load(cls, path) -> "NMMatrix":
        """The matrix `save` wrote to `path`. Anything else (a missing, empty, truncated or corrupted
        file, a missing array, a meta record that is not 6 integers, arrays that do not fit it)
        raises one ShapeError naming the file and what is wrong; FileError (an OSError) where it
        cannot be read at all."""
        file_name(path, "read")
        try:
            meta, values, indices = _read_npz(Path(path))
            if meta.dtype.kind not in "iu" or meta.ndim != 1 or not meta.size:
                raise ShapeError(f"its meta record must be integers (version, n, m, V, K, N[, dtype]), got "
                                 f"{meta.dtype} {meta.shape}: {meta.ravel()[:8].tolist()}")
            version = int(meta[0])
            if version not in (1, 2) or meta.shape != ((6,) if version == 1 else (7,)):
                raise ShapeError(f"it has format version {version} with {meta.size} meta entries; this nmgen reads "
                                 f"versions 1 (6 entries) and 2 (7)")
            _, n, m, v, K, N = (int(x) for x in meta[:6])
            codes = {c: name for name, c in DTYPE_CODES.items()}
            dt = codes.get(int(meta[6]), None) if version == 2 else "f32"
            if dt is None:
                raise ShapeError(f"its dtype code {int(meta[6])} is not one of {DTYPE_CODES}")
            if dt == "bf16" and values.dtype == np.uint16:
                values = values.view(DTYPES["bf16"].storage)
            if storage_name(values.dtype) != dt:
                raise ShapeError(f"its values are {values.dtype}, but its meta record says {dt}")
            return cls(values, indices, Pattern(n, m, v), (K, N))
        except NMGenError as e:
            raise ShapeError(f"{path} is not a valid nmgen matrix file: {e}") from None
        except OSError as e:
            raise FileError(f"cannot read {path}: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001 - zipfile, numpy and the OS raise a dozen kinds for a bad file
            # numpy's own text can advise loading pickles: name the kind of failure, not that advice
            # (numpy takes any file that is neither .npy nor .npz for a pickle: look at its first byte)
            why = f"{type(e).__name__}: {e}"
            if "pickle" in str(e):
                why = {b"\x80": "it holds pickled objects",
                       b"P": "it is an .npz archive of object (pickled) arrays"}.get(_first_byte(path),
                                                                                     "it is not an .npz archive")
            raise ShapeError(f"{path} is not an nmgen matrix file (written by NMMatrix.save): {why}") from None

    def __repr__(self):
        return f"NMMatrix({self.K}x{self.N}, {self.pattern}, {self.dtype}, {self.nbytes()} bytes)"


_FLOAT64_NAMES = {"f64", "fp64", "float64", "double", "torch.float64", "torch.double"}


def _dense_dtype(dtype) -> np.dtype:
    """The numpy dtype `to_dense` writes for `dtype`: nmgen's names first (numpy reads "f16" as a
    16-byte float), float64's usual names, then numpy's floating types (exact for every stored
    value: ml_dtypes' narrower floats, which round them or cannot hold the zeros, are refused)."""
    if dtype is None:
        return np.dtype(np.float32)
    name = str(dtype).strip().lower() if isinstance(dtype, str) or type(dtype).__module__ == "torch" else None
    if name in _FLOAT64_NAMES:
        return np.dtype(np.float64)
    if not isinstance(dtype, bytes):
        try:
            return np.dtype(dtype_of(dtype).storage)
        except ShapeError:
            pass
        try:
            np_dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            np_dtype = None
        if np_dtype is not None and np_dtype.kind == "f":
            return np_dtype
    shown = dtype.__name__ if isinstance(dtype, type) else repr(dtype)
    raise ShapeError(f"to_dense writes float32, float64, float16 or bfloat16 values; dtype {shown} is none of them "
                     f"(pass 'f32', 'bf16', 'f16', 'f64', a numpy float type, or leave it out for float32)")


def _first_byte(path) -> bytes:
    """The file's first byte (a pickle's is 0x80), or b"" where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(1)
    except OSError:
        return b""


def _read_npz(path: Path):
    """(meta, values, indices) from an .npz file; library errors propagate for `load` to word."""
    with open(path, "rb") as f:
        z = np.load(f, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ShapeError(f"it holds one {type(z).__name__}, not the values, indices and meta arrays "
                             f"of NMMatrix.save")
        with z:
            missing = sorted({"meta", "values", "indices"} - set(z.files))
            if missing:
                raise ShapeError(f"it has no {', '.join(missing)} array (it holds {', '.join(z.files) or 'none'})")
            return z["meta"], z["values"], z["indices"]


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
    cols = np.arange(N) // p.vector
    values = np.empty((W, N), B.dtype)
    for w in _window_chunks(K // p.m, p.m, N):          # each kept row's value in every column
        kept = slice(w.start * p.n, w.stop * p.n)
        window = np.arange(kept.start, kept.stop) // p.n
        values[kept] = B[window[:, None] * p.m + indices[kept][:, cols].astype(np.int64), np.arange(N)[None, :]]
    return NMMatrix(values, indices, p, (K, N))


def pad_k(A=None, B=None, m=32):
    """Zero-pad K (A's columns, B's rows) up to a multiple of the window; returns (A, B) in their dtypes
    numpy matrices (None where not given). `m` is the window: an int, or the pattern ("1:3", a
    Pattern), so `nmgen.pad_k(A, B, m=3)` and `nmgen.pad_k(A, B, m="1:3")` pad K=10 to 12.
    The inputs are not changed. Raises ShapeError for K=0, or an A and B whose K differ."""
    m = _window(m)
    out, ks = [], {}
    for x, axis, name in ((A, 1, "A"), (B, 0, "B")):
        if x is None:
            out.append(None)
            continue
        if isinstance(x, NMMatrix):
            raise ShapeError(f"pad_k pads dense matrices; {name} is an NMMatrix ({x.K}x{x.N}, compressed, K a multiple "
                             f"of m={x.pattern.m} already): pad the dense weights before NMMatrix.from_dense, and "
                             f"A with A, _ = pad_k(A, m={x.pattern.m})")
        x = host_matrix(x, name)
        k = ks[name] = x.shape[axis]
        if k < 1:
            raise ShapeError(f"{name} has K=0 {'columns' if axis else 'rows'}: there is nothing to pad or multiply")
        pad = ceil_div(k, m) * m - k
        widths = [(0, 0), (0, 0)]
        widths[axis] = (0, pad)
        out.append(np.pad(x, widths) if pad else x)
    if len(ks) == 2 and ks["A"] != ks["B"]:
        raise ShapeError(f"A has {ks['A']} columns but B has {ks['B']} rows: A's columns must equal B's rows")
    return tuple(out)
