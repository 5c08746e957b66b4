"""Shared by the CPU and GPU tiers: random N:M problems and the check against float64."""
import os

import numpy as np

from nmgen import NMMatrix, Pattern, Problem
from nmgen.checking import run_interpreter  # noqa: F401 - the tests' way to run a kernel on the CPU
from nmgen.reference import compare


def random_problem(rng, M, N, K, n, m, v, a_major="row"):
    p = Problem(M, N, K, Pattern(n, m, v), a_major=a_major)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = NMMatrix.from_dense(rng.standard_normal((K, N), dtype=np.float32), p.pattern, prune_first=True)
    return p, A, B


def ok(C, A, B, rows=None, *, compute="ffma", out_dtype="f32"):
    """The Verdict (nmgen.reference) of C against A @ B: true when every element is finite and within
    the error bound of its fp32 sum; `assert ok(C, A, B)` shows the summary when it fails."""
    return compare(C, A, B, rows, compute=compute, out_dtype=out_dtype)


def assert_product(C, A, B, rows=None, **kw):
    v = ok(C, A, B, rows, **kw)
    assert v, v.summary()


def assert_golden_ptx(name: str, ptx: str) -> None:
    """`ptx` equals tests/golden/NAME, which records the LLVM version that made it; with
    NMGEN_UPDATE_GOLDEN=1 the file is written anew first (then review its diff)."""
    from nmgen.codegen import llvm_version
    path = os.path.join(os.path.dirname(__file__), "golden", name)
    header = f"// golden: LLVM {llvm_version()}\n"
    if os.environ.get("NMGEN_UPDATE_GOLDEN") == "1":
        with open(path, "w") as f:
            f.write(header + ptx)
    with open(path) as f:
        golden = f.read()
    assert golden.startswith(header), f"golden PTX was made with {golden.splitlines()[0]}, this is LLVM {llvm_version()}"
    assert golden == header + ptx
