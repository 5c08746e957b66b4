"""What is computed: C (M x N) = A (M x K, dense, row-major) x B (K x N, n:m sparse along K).

In every window of m consecutive K rows, n rows are kept; V consecutive columns (a "vector")
share one choice of rows. V=1 is element-wise n:m (2:4 and friends); V=32, m=32 is NM-SpMM's format.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from .errors import NMGenError, PatternError, ShapeError

# "n:m", or "n:mxV" as problems print (a sign: the range checks say what is wrong)
_PATTERN_RE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*(?:[xX]\s*(-?\d+)\s*)?$")
_SHAPE_RE = re.compile(r"^\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*$")

# Indices are stored as uint8 up to m=256 and uint16 beyond; a window larger than this is no
# longer "structured" sparsity in any useful sense.
MAX_WINDOW = 4096
# Columns sharing one choice of kept rows. Beyond B's N columns a longer vector is the same pattern
# as V = N; past this bound it only costs memory (the index arrays are sized by it) and keys.
MAX_VECTOR = 65536


def as_int(value, what: str, error: type = ShapeError) -> int:
    """`value` as a Python int. Python and numpy integers pass; bools, floats (even 64.0), strings
    and anything else are refused (`error`, naming `what` and the value) rather than truncated:
    a size of 2.5 or True is a mistake in the caller, not a request for 2 or 1."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise error(f"{what}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise error(f"{what}={value!r} must be an integer, got {type(value).__name__}") from None


@dataclass(frozen=True)
class Pattern:
    """n of every m consecutive K rows kept, the choice shared by `vector` consecutive columns.

    n, m and vector must be integers (numpy integers are converted; floats and bools raise
    PatternError)."""
    n: int
    m: int
    vector: int = 1

    def __post_init__(self):
        for name, what in (("n", "pattern n"), ("m", "pattern m"), ("vector", "vector length V")):
            object.__setattr__(self, name, as_int(getattr(self, name), what, PatternError))
        if self.m < 1 or self.m > MAX_WINDOW:
            raise PatternError(f"pattern window m={self.m} must be between 1 and {MAX_WINDOW}")
        if not 1 <= self.n <= self.m:
            raise PatternError(f"pattern n={self.n} must be between 1 and m={self.m} (n of every m rows are kept)")
        if self.vector < 1:
            raise PatternError(f"vector length V={self.vector} must be at least 1 (1 = element-wise n:m)")
        if self.vector > MAX_VECTOR:
            raise PatternError(f"vector length V={self.vector} must be at most {MAX_VECTOR} (a vector of more "
                               f"columns than B has shares one choice across all of them, as any wider one would)")

    @classmethod
    def parse(cls, text: str, vector: int | None = None, default: int = 1) -> "Pattern":
        """"n:m" with `vector` (None: `default`), or "n:mxV" (`vector` None or V). PatternError otherwise."""
        mt = _PATTERN_RE.match(str(text))
        if not mt:
            raise PatternError(f"pattern {text!r} is not of the form n:m (or n:mxV), e.g. 2:4, 8:32 or 8:32x32")
        if mt.group(3) is not None:
            V = _int(mt.group(3), "V", PatternError)
            if vector is not None and vector != V:
                raise PatternError(f"pattern {text!r} has vector length V={V} but vector={vector} was given: "
                                   f"give one of them")
            vector = V
        # Pattern refuses a vector that is no integer
        return cls(_int(mt.group(1), "n", PatternError), _int(mt.group(2), "m", PatternError),
                   default if vector is None else vector)

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self):
        return f"{self.n}:{self.m}x{self.vector}"

    def check_k(self, K: int) -> None:
        """K (B's rows, A's columns) must be a positive multiple of m; the error shows the call that pads it."""
        if K < 1:
            raise ShapeError(f"K={K}: B needs at least one window of m={self.m} rows (and A as many columns); "
                             f"an empty K has nothing to multiply")
        if K % self.m:
            pad = -(-K // self.m) * self.m
            raise ShapeError(f"K={K} is not a multiple of the pattern window m={self.m}; pad K to {pad} with "
                             f"zero rows: A, B = nmgen.pad_k(A, B, m={self.m})")


def _int(digits: str, what: str, error) -> int:
    """int() of a regex's digits, refusing (with `error`) more than 18 of them: no size or pattern
    needs more, and Python itself refuses over 4300 with a ValueError."""
    if len(digits.lstrip("-")) > 18:
        raise error(f"{what}={digits[:12]}... ({len(digits)} digits) is far too large")
    return int(digits)


def parse_shape(text: str) -> tuple[int, int, int]:
    mt = _SHAPE_RE.match(str(text))
    if not mt:
        raise ShapeError(f"shape {text!r} is not of the form MxNxK, e.g. 4096x4096x4096")
    M, N, K = (_int(g, name, ShapeError) for g, name in zip(mt.groups(), "MNK"))
    if min(M, N, K) < 1:
        raise ShapeError(f"shape {text!r}: M, N and K must all be at least 1")
    return M, N, K


A_MAJORS = ("row", "col")
_WHY_POSITIVE = {
    "M": "a kernel needs at least one row of A (nmgen.spmm returns an empty (0, N) result for an empty "
         "A without compiling a kernel)",
    "N": "B needs at least one column",
    "K": "B needs at least one window of m rows",
}


@dataclass(frozen=True)
class Problem:
    """One SpMM instance. Sizes are compile-time constants of the generated kernel.

    `a_major` is A's memory order: "row" (M x K row-major, the usual activations) or "col"
    (column-major: K x M row-major in memory, e.g. a transposed view, as NM-SpMM stores A).
    `dtype` is what A and B hold and how they are multiplied (ir.dtypes: f32, tf32, bf16, f16);
    `c_dtype` what C holds (f32, bf16, f16; by default A's storage type).
    M, N and K are integers >= 1 (numpy integers are converted; floats and bools raise ShapeError)."""
    M: int
    N: int
    K: int
    pattern: Pattern
    dtype: str = "f32"
    a_major: str = "row"
    c_dtype: str | None = None

    def __post_init__(self):
        if not isinstance(self.pattern, Pattern):
            raise PatternError(f"pattern must be a nmgen.Pattern (e.g. Pattern(8, 32, 32)), got {self.pattern!r}")
        if self.a_major not in A_MAJORS:
            raise ShapeError(f"a_major={self.a_major!r} must be 'row' (A row-major) or 'col' (column-major)")
        for name in ("M", "N", "K"):
            v = as_int(getattr(self, name), name)
            object.__setattr__(self, name, v)
            if v < 1:
                raise ShapeError(f"{name}={v} must be a positive integer: " + _WHY_POSITIVE[name])
        from .dtypes import dtype as dtype_of, output_dtype
        object.__setattr__(self, "dtype", dtype_of(self.dtype).name)      # any spelling: "float16", np.float16, ...
        object.__setattr__(self, "c_dtype", output_dtype("f32" if self.dtype == "tf32" else self.dtype)
                           if self.c_dtype is None else output_dtype(self.c_dtype))
        self.pattern.check_k(self.K)
        if self.M * max(self.K, self.N) >= 2**40 or self.K * self.N >= 2**40:
            raise ShapeError(f"{self.M}x{self.N}x{self.K} is too large: M * max(K, N) and K * N must stay below 2^40 "
                             f"(the kernels' 40-bit element offsets); split the product into smaller ones")

    @property
    def windows(self) -> int:
        return self.K // self.pattern.m

    @property
    def kept_rows(self) -> int:
        """W: rows of the compressed value matrix (K * n / m)."""
        return self.windows * self.pattern.n

    @property
    def vectors(self) -> int:
        return -(-self.N // self.pattern.vector)

    @property
    def flops_dense(self) -> int:
        return 2 * self.M * self.N * self.K

    @property
    def flops_done(self) -> int:
        return 2 * self.M * self.N * self.kept_rows

    def key(self) -> str:
        """Stable text key (tuning database, caches)."""
        p = self.pattern
        return f"{self.M}x{self.N}x{self.K}:{p.n}:{p.m}:{p.vector}:{self.dtype}" + (
            ":Acol" if self.a_major == "col" else "") + ("" if self.c_dtype == self.default_c_dtype else f":C{self.c_dtype}")

    @property
    def default_c_dtype(self) -> str:
        return "f32" if self.dtype == "tf32" else self.dtype

    def __str__(self):
        return (f"{self.M}x{self.N}x{self.K} {self.pattern}" + ("" if self.dtype == "f32" else f" {self.dtype}")
                + ("" if self.c_dtype == self.default_c_dtype else f" -> {self.c_dtype}")
                + (" (A column-major)" if self.a_major == "col" else ""))

    def to_dict(self) -> dict:
        p = self.pattern
        return {"M": self.M, "N": self.N, "K": self.K, "n": p.n, "m": p.m, "vector": p.vector, "dtype": self.dtype,
                "a_major": self.a_major, "c_dtype": self.c_dtype}

    @classmethod
    def from_key(cls, key: str) -> "Problem":
        """The Problem whose `key()` is `key` (`MxNxK:n:m:V:dtype`, then `:Acol` for a column-major A
        and `:C<dtype>` for a C dtype other than the default). ShapeError if `key` is no such text:
        only the exact text `key()` writes is accepted, so two spellings never name one problem."""
        parts = str(key).split(":")
        try:
            if len(parts) < 5:
                raise ValueError
            M, N, K = parse_shape(parts[0])
            n, m, vector = (int(x) for x in parts[1:4])
            rest = parts[5:]
            a_major = "col" if rest[:1] == ["Acol"] else "row"
            rest = rest[1:] if a_major == "col" else rest
            c_dtype = rest[0][1:] if rest[:1] and rest[0].startswith("C") else None
            if rest[1 if c_dtype else 0:]:
                raise ValueError
            p = cls(M, N, K, Pattern(n, m, vector), parts[4], a_major, c_dtype)
        except (ValueError, NMGenError):
            raise ShapeError(f"{key!r} is not a problem key (MxNxK:n:m:V:dtype[:Acol][:Cdtype], e.g. "
                             f"4096x4096x4096:8:32:32:f32 or 4096x4096x4096:8:32:32:bf16:Acol:Cf32)") from None
        if p.key() != key:
            raise ShapeError(f"{key!r} is not a problem key (written {p.key()!r})")
        return p

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(int(d["M"]), int(d["N"]), int(d["K"]), Pattern(int(d["n"]), int(d["m"]), int(d["vector"])),
                   d.get("dtype", "f32"), d.get("a_major", "row"), d.get("c_dtype"))


def index_dtype_bits(max_value: int) -> int:
    """Smallest of 8/16 bits that holds indices up to `max_value`."""
    return 8 if max_value < 256 else 16


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gcd(a: int, b: int) -> int:
    return math.gcd(a, b)
