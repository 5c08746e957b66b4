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
    """A (M x K, float32, standard normal) and a B of the problem's pattern with standard normal
    values at random kept rows (drawn directly in compressed form: no dense K x N matrix). B is
    drawn first, so that `random_inputs(p, default_rng(seed))[1] == random_weights(p, seed)`."""
    B = random_weights(problem, rng)
    return rng.standard_normal((problem.M, problem.K), dtype=np.float32), B


def random_weights(problem: Problem, rng) -> NMMatrix:
    """The B of `random_inputs` alone (rng: a numpy Generator or a seed)."""
    from .bench import random_nm
    return random_nm(problem, np.random.default_rng(rng))


def run_interpreter(problem: Problem, schedule: Schedule, A: np.ndarray, B: NMMatrix) -> np.ndarray:
    """C from the kernel IR of (problem, schedule) executed by the CPU interpreter."""
    from .ir import build, interpret, prepare
    ops = prepare(problem, schedule, B.values, B.indices)
    kernel = build(problem, schedule, ops.geometry.a_rows)
    arrays = {"A": np.ascontiguousarray(A.T) if problem.a_major == "col" else A, "Bv": ops.bv, "Bi": ops.bi}
    if ops.arows is not None:
        arrays["Arows"] = ops.arows
    return interpret(kernel, arrays)


def run_gpu(kernel, A: np.ndarray, B: NMMatrix, array: str = "numpy") -> np.ndarray:
    """C (numpy) of `nmgen.spmm` with `kernel` (nmgen.Kernel) on numpy arrays (copied in and out) or
    on torch CUDA tensors used in place, A in the kernel's layout, C poisoned with NaN first."""
    from .api import spmm
    k, problem = kernel, kernel.problem
    if array == "torch":
        import torch
        At = torch.from_numpy(np.ascontiguousarray(A.T) if problem.a_major == "col" else A).cuda()
        if problem.a_major == "col":
            At = At.t()
        out = torch.full((problem.M, problem.N), float("nan"), dtype=torch.float32, device="cuda")
        spmm(At, B, out=out, kernel=k)
        return out.cpu().numpy()
    X = np.asfortranarray(A) if problem.a_major == "col" else A
    return spmm(X, B, kernel=k)


def verdict(problem: Problem, C: np.ndarray, A: np.ndarray, B: NMMatrix, rng) -> Verdict:
    """C against float64 on up to 512 rows (all of them for M <= 512), element by element within
    the error bound of its K-long sum (nmgen.reference)."""
    rows = check_rows(problem.M, rng)
    return compare(C, A, B, rows)


def command(problem: Problem, schedule: Schedule | None, seed: int, array: str = "numpy",
            interpret: bool = False) -> str:
    """The `nmgen check` line that runs this case again on the same inputs."""
    p = problem.pattern
    args = ["nmgen", "check", "--shape", f"{problem.M}x{problem.N}x{problem.K}", "--pattern", f"{p.n}:{p.m}",
            "--vector", str(p.vector), "--a-major", problem.a_major, "--seed", str(seed)]
    if schedule is not None:
        args += ["--schedule", json.dumps(schedule.to_dict(), separators=(",", ":"))]
    if interpret:
        args.append("--interpret")
    elif array != "numpy":
        args += ["--array", array]
    return " ".join(shlex.quote(a) for a in args)
