"""Host time per call: what the CPU spends enqueueing one product, eager and under CUDA-graph replay,
for nmgen's op and for torch.mm of the same shape and dtype (what `nmgen bench --host-time` reports).

In decode a product's kernel runs for a few microseconds, so the host time of a call, not the
kernel, can set the speed: a call's host time above its GPU time leaves the GPU idle between
kernels. Measured here with time.perf_counter around `calls` back-to-back calls (none waits for
the GPU: `calls` launches fit in the driver's queue), after a warm-up that prepares the kernel,
the median of `rounds` rounds, the GPU drained before each round. Under CUDA-graph replay one
graph of `graph_calls` calls is replayed and its host time divided by `graph_calls`.
"""
from __future__ import annotations

import statistics
import time

import torch


def host_us(fn, calls: int = 200, rounds: int = 5) -> float:
    """Median over `rounds` of the host time of one call of `fn` (us), each round `calls` calls
    after the GPU has drained; 10 calls warm up first."""
    return host_us_interleaved({"fn": fn}, calls, rounds)["fn"]


def host_us_interleaved(fns: dict, calls: int = 200, rounds: int = 5) -> dict:
    """{name: host us per call} of each function of `fns` ({name: fn}), measured as host_us does
    but round-robin: each round times every function in turn, so a host whose speed drifts (its
    clock, other processes) slows them alike and the comparison holds. Median over `rounds`."""
    for fn in fns.values():
        for _ in range(10):
            fn()
    per_call = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            per_call[name].append((time.perf_counter() - t) / calls * 1e6)
    torch.cuda.synchronize()
    return {name: statistics.median(us) for name, us in per_call.items()}


def graph_of(fn, calls: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `calls` calls of `fn` (warmed up on a side stream first, as torch requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph


def eager_and_replayed(fn, graph_calls: int = 100, eager_us: float | None = None) -> dict:
    """{"eager_us", "graph_us", "gpu_us"}: host us per call of `fn` eager (host_us, unless the
    caller measured it: `eager_us`) and under replay of a graph of `graph_calls` calls, and the
    GPU us per call of that replay (CUDA events)."""
    eager = host_us(fn) if eager_us is None else eager_us
    graph = graph_of(fn, graph_calls)
    replay = host_us(graph.replay, calls=10) / graph_calls
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    end.synchronize()
    return {"eager_us": eager, "graph_us": replay, "gpu_us": start.elapsed_time(end) * 1e3 / (10 * graph_calls)}


def spmm_host_time(B, M: int, *, allow_tf32: bool = False, device: int = 0, graph_calls: int = 100) -> dict:
    """Host time per call of `torch.ops.nmgen.spmm_out` (the op NMLinear runs) for an (M, K) A of
    B's dtype times the NMMatrix `B` (K x N) on GPU `device`, beside torch.mm(A, W, out=C) of a
    dense (K, N) W of the same dtype; float32 with `allow_tf32` on TF32 tensor cores for both.

    Returns {"nmgen_op": {...}, "torch_mm": {...}, "schedule": the op's schedule (dict)}, each of
    the two {"eager_us", "graph_us", "gpu_us"} (eager_and_replayed; the two eager figures measured
    round-robin, 11 rounds of 200 calls: host_us_interleaved). The op's schedule is the one a
    user's call gets: the default tuning database's best ($NMGEN_DB), else the model's.
    Raises ShapeError for an M < 1."""
    from ..cublas import torch_fp32_precision
    from ..errors import ShapeError
    from .kernels import weights_for
    from .ops import to_tensors
    if M < 1:
        raise ShapeError(f"host time needs M >= 1 rows, got M={M}")
    dev = torch.device("cuda", device)
    values, indices = to_tensors(B, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn((M, B.K), generator=gen, device=dev).to(values.dtype)
    w = torch.randn((B.K, B.N), generator=gen, device=dev).to(values.dtype)
    c = torch.empty((M, B.N), device=dev, dtype=values.dtype)
    n, m, v = B.pattern.n, B.pattern.m, B.pattern.vector
    op = torch.ops.nmgen.spmm_out
    fns = {"nmgen_op": lambda: op(a, values, indices, n, m, v, allow_tf32, c), "torch_mm": lambda: torch.mm(a, w, out=c)}
    with torch.inference_mode(), torch.cuda.device(device), torch_fp32_precision(torch, allow_tf32)():
        eager = host_us_interleaved(fns, rounds=11)
        times = {name: eager_and_replayed(fn, graph_calls, eager[name]) for name, fn in fns.items()}
        prepared = weights_for(values, indices, n, m, v).prepare(M, allow_tf32, c.dtype)
    return {**times, "schedule": prepared.core.kernel.schedule.to_dict(),
            "launches_per_call": prepared.core.launches}
