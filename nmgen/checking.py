"""Checking one kernel on fresh random inputs: the inputs, the run (GPU or CPU interpreter), the
verdict against the float64 reference, and the one-line command that reproduces it.

`nmgen check` checks one problem this way and `nmgen fuzz` many: a case is fully determined by
(problem, schedule, seed, array library), so every failure can be replayed exactly.
"""
from __future__ import annotations

import json
import shlex

import numpy as np

from .format import NMMatrix
from .ir.problem import Problem
from .ir.schedule import Schedule
from .reference import Verdict, check_rows, compare

ARRAYS = ("numpy", "torch")


def random_inputs(problem: Problem, rng) -> tuple[np.ndarray, NMMatrix]:
    """A (M x K) and a B of the problem's pattern, standard normal values (B's at random kept rows,
    drawn directly in compressed form: no dense K x N matrix), both holding values of the problem's
    dtype (float32 arrays of bf16/f16/tf32-rounded values for the tensor-core dtypes: exactly what
    the kernel multiplies). B is drawn first, so that random_inputs(p, default_rng(seed))[1] equals
    random_weights(p, seed)."""
    from .ir.dtypes import as_computed
    B = random_weights(problem, rng)
    A = rng.standard_normal((problem.M, problem.K), dtype=np.float32)
    return as_computed(A, problem.dtype).astype(np.float32), B


def random_weights(problem: Problem, rng) -> NMMatrix:
    """The B of `random_inputs` alone (rng: a numpy Generator or a seed)."""
    from .bench import random_nm
    from .ir.dtypes import as_computed
    B = random_nm(problem, np.random.default_rng(rng))
    if problem.dtype == "f32":
        return B
    return NMMatrix(as_computed(B.values, problem.dtype).astype(np.float32), B.indices, B.pattern, B.shape)


def kernel_a(problem: Problem, A: np.ndarray) -> np.ndarray:
    """A (M x K) as the kernel reads it: in its storage dtype, (K, M) for a column-major A, each row
    of its leading dimension (ir.build.a_leading_dim: 16-bit rows padded to an even length)."""
    from .ir.build import a_leading_dim, storage
    from .ir.dtypes import DTYPES
    X = np.asarray(A).astype(DTYPES[storage(problem)].storage)
    X = X.T if problem.a_major == "col" else X
    out = np.zeros((X.shape[0], a_leading_dim(problem)), X.dtype)
    out[:, :X.shape[1]] = X
    return out


def run_interpreter(problem: Problem, schedule: Schedule, A: np.ndarray, B: NMMatrix) -> np.ndarray:
    """C (M x N, of the problem's C dtype) from the kernel IR of (problem, schedule) executed by the
    CPU interpreter. A and B hold values of the problem's dtype, in its storage or in float32
    (random_inputs'): both are converted to the storage as the GPU path converts them."""
    from .ir import build, interpret, prepare
    ops = prepare(problem, schedule, B.values, B.indices)
    kernel = build(problem, schedule, ops.geometry.a_rows)
    arrays = {"A": kernel_a(problem, A), "Bv": ops.bv}
    if ops.bi is not None:
        arrays["Bi"] = ops.bi
    if ops.arows is not None:
        arrays["Arows"] = ops.arows
    return interpret(kernel, arrays)


def stored(problem: Problem, A: np.ndarray, B: NMMatrix) -> tuple[np.ndarray, NMMatrix]:
    """A and B as nmgen.spmm takes them for `problem`: values in its dtype's storage (float32 for
    f32 and tf32, ml_dtypes.bfloat16, float16), rounded to nearest (exact for random_inputs' values)."""
    from .ir.build import storage
    from .ir.dtypes import DTYPES
    return np.asarray(A).astype(DTYPES[storage(problem)].storage), stored_weights(problem, B)


def stored_weights(problem: Problem, B: NMMatrix) -> NMMatrix:
    """B of `stored` alone (B itself where it is already in the storage dtype)."""
    from .ir.build import storage
    return B.astype(storage(problem))


def computed(problem: Problem, A: np.ndarray, B: NMMatrix) -> tuple[np.ndarray, NMMatrix]:
    """A and B as `problem`'s kernel multiplies them (ir.dtypes.as_computed: rounded to the dtype,
    for tf32 to TF32 as the kernel rounds its float32 operands): what the float64 reference takes.
    The same values for inputs already of the dtype (random_inputs'); B is returned as it is for f32."""
    from .ir.dtypes import as_computed
    if problem.dtype == "f32":
        return np.asarray(A), B
    Bc = NMMatrix(as_computed(B.values, problem.dtype), B.indices, B.pattern, B.shape)
    return as_computed(A, problem.dtype), Bc


def run_gpu(kernel, A: np.ndarray, B: NMMatrix, array: str = "numpy") -> np.ndarray:
    """C (numpy, of the problem's C dtype; float32 for torch) of `nmgen.spmm` with `kernel`
    (nmgen.Kernel) on numpy arrays (copied in and out) or on torch CUDA tensors used in place: A
    (M x K) and B converted to the problem's dtype (`stored`), A in the kernel's layout, C of its
    C dtype, poisoned with NaN first; a tf32 problem runs with allow_tf32."""
    from .api import spmm
    from .ir.dtypes import DTYPES
    k, problem = kernel, kernel.problem
    A, B = stored(problem, A, B)
    tf32 = problem.dtype == "tf32"
    c_dtype = DTYPES[problem.c_dtype]
    if array == "torch":
        import torch
        At = _torch_matrix(torch, A, problem.a_major)
        out = torch.full((problem.M, problem.N), float("nan"), dtype=getattr(torch, c_dtype.torch), device="cuda")
        spmm(At, B, out=out, kernel=k, allow_tf32=tf32)
        return out.float().cpu().numpy()
    X = np.asfortranarray(A) if problem.a_major == "col" else A
    return spmm(X, B, out=np.empty((problem.M, problem.N), c_dtype.storage), kernel=k, allow_tf32=tf32)


def _torch_matrix(torch, A: np.ndarray, a_major: str):
    """A CUDA tensor of A's values and dtype (torch reads no ml_dtypes bfloat16: through float32,
    exact), column-major (a transposed view) for a_major "col"."""
    X = np.ascontiguousarray(A.T if a_major == "col" else A)
    dt = getattr(torch, str(X.dtype))                           # float32, bfloat16, float16
    T = torch.from_numpy(X.astype(np.float32)).to(dt).cuda()
    return T.t() if a_major == "col" else T


def verdict(problem: Problem, C: np.ndarray, A: np.ndarray, B: NMMatrix, rng) -> Verdict:
    """C against float64 on up to 512 rows (all of them for M <= 512), element by element within
    the error bound of its K-long sum (nmgen.reference) for the problem's instruction and C dtype."""
    from .ir.dtypes import dtype
    rows = check_rows(problem.M, rng)
    return compare(C, A, B, rows, compute=dtype(problem.dtype).compute, out_dtype=problem.c_dtype)


def command(problem: Problem, schedule: Schedule | None, seed: int | None, array: str = "numpy",
            interpret: bool = False) -> str:
    """The `nmgen check` line that runs this case again on the same inputs (dtype included; without
    a seed, on fresh ones)."""
    from .cli.common import option_name
    p = problem.pattern
    args = ["nmgen", "check", "--shape", f"{problem.M}x{problem.N}x{problem.K}", "--pattern", f"{p.n}:{p.m}",
            "--vector", str(p.vector), "--a-major", problem.a_major, "--dtype", option_name(problem.dtype)]
    if problem.c_dtype != problem.default_c_dtype:
        args += ["--out-dtype", option_name(problem.c_dtype)]
    if seed is not None:
        args += ["--seed", str(seed)]
    if schedule is not None:
        args += ["--schedule", json.dumps(schedule.to_dict(), separators=(",", ":"))]
    if interpret:
        args.append("--interpret")
    elif array != "numpy":
        args += ["--array", array]
    return " ".join(shlex.quote(a) for a in args)
