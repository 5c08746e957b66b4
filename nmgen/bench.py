"""Benchmarks: nmgen's kernel next to cuBLAS FP32 dense GEMM of the same shape, in the same run.

Times are CUDA-event medians after warm-up with L2 warm (the same buffers every run, as the
NM-SpMM paper and ../shared/anchors measure). Each kernel's result is checked once against the
float64 reference before it is timed.
"""
from __future__ import annotations

import numpy as np

from .ir.problem import Pattern, Problem, parse_shape

SUITES = {
    # the six LLM shapes of the H100 anchors (shared/anchors/h100_peers.csv)
    "paper6": [(256, 2048, 2048), (512, 4096, 11008), (1024, 5120, 5120), (2048, 11008, 4096),
               (4096, 4096, 4096), (4096, 8192, 8192)],
    # memory-bound decode: M = 1, 16, 64 on three weight shapes
    "decode": [(M, N, K) for M in (1, 16, 64) for N, K in ((4096, 4096), (28672, 8192), (8192, 28672))],
    # shapes no tile divides, each followed by its nearest tile-aligned neighbour
    "odd": [(1000, 3000, 4096), (1024, 3072, 4096), (4095, 4100, 1024), (4096, 4096, 1024)],
}
PAPER_PATTERNS = ["16:32", "12:32", "8:32", "4:32"]


def read_suite(name_or_file: str) -> list[tuple[int, int, int]]:
    if name_or_file in SUITES:
        return SUITES[name_or_file]
    shapes = []
    with open(name_or_file) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                shapes.append(parse_shape(line.split()[0]))
    return shapes


def measure_problem(problem: Problem, schedule=None, *, reps: int = 30, warmup: int = 10, rng=None,
                    check: bool = True, kernel=None, B=None):
    """Time nmgen's kernel for `problem` (given or default schedule); returns (row dict, kernel)."""
    from .api import compile, device_operands
    from .format import NMMatrix
    from .reference import spmm_reference
    from .runtime.memory import DeviceBuffer, download, synchronize
    from .runtime.timing import time_gpu
    rng = rng or np.random.default_rng()
    if B is None:
        B = NMMatrix.from_dense(rng.standard_normal((problem.K, problem.N), dtype=np.float32), problem.pattern,
                                prune_first=True)
    A = rng.standard_normal((problem.M, problem.K), dtype=np.float32)
    k = kernel or compile(problem, schedule=schedule, B=B)
    ops = device_operands(B, problem, k.schedule)
    a, c = DeviceBuffer.from_array(A), DeviceBuffer(problem.M * problem.N * 4)
    err = None
    if check:
        from .runtime.memory import memset32
        memset32(c.ptr, problem.M * problem.N, 0, 0x7FC00000)   # NaN: unwritten elements fail
        k.launch(a.ptr, ops, c.ptr)
        synchronize(0, k.name)
        C = download(np.empty((problem.M, problem.N), np.float32), c.ptr)
        ref = spmm_reference(A, B)
        err = float(np.linalg.norm(C - ref) / np.linalg.norm(ref)) if np.isfinite(C).all() else float("nan")
    t = time_gpu(lambda: k.launch(a.ptr, ops, c.ptr), 0, warmup, reps)
    row = {"M": problem.M, "N": problem.N, "K": problem.K, "pattern": f"{problem.pattern.n}:{problem.pattern.m}",
           "vector": problem.pattern.vector, "sparsity": problem.pattern.sparsity, "ms": t.median_ms,
           "tflops_dense": problem.flops_dense / (t.median_ms * 1e-3) / 1e12,
           "tflops_eff": problem.flops_done / (t.median_ms * 1e-3) / 1e12,
           "schedule": k.schedule.to_dict(), "rel_err": err, "timing": t.to_dict()}
    return row, k


def measure_cublas(M: int, N: int, K: int, *, reps: int = 30, warmup: int = 10, rng=None):
    """cuBLAS FP32 time (ms, library) for the dense M x N x K product, or (None, reason)."""
    from .cublas import dense_gemm
    from .runtime.timing import time_gpu
    g = dense_gemm(M, N, K, rng or np.random.default_rng())
    if g is None:
        return None, "neither torch nor cupy is installed: no cuBLAS baseline"
    return time_gpu(g.run, g.stream, warmup, reps).median_ms, g.library


def add_baseline(row: dict, cublas_ms: float | None) -> dict:
    s = row["sparsity"]
    row["cublas_ms"] = cublas_ms
    row["speedup_vs_cublas"] = cublas_ms / row["ms"] if cublas_ms else None
    row["ideal_speedup"] = 1.0 / (1.0 - s)
    row["fraction_of_ideal"] = row["speedup_vs_cublas"] / row["ideal_speedup"] if cublas_ms else None
    return row


def problem_of(shape, pattern: str, vector: int) -> Problem:
    M, N, K = shape
    return Problem(M, N, K, Pattern.parse(pattern, vector))
