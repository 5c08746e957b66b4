"""Where the host time of one nmgen call goes, layer by layer (a developer's tool; needs a GPU and torch).

    python scripts/host_time_breakdown.py [--shape 1x4096x4096] [--pattern 8:32] [--dtypes bf16,f32]

Each line: host us per call (median of 7 rounds of 200 calls, every line timed in each round in
turn: nmgen.torch.overhead.host_us_interleaved) of one layer of the launch path, from the raw
driver call up to NMLinear, beside torch's own costs.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import nmgen
import nmgen.torch as nmt
from nmgen.bench import problem_of, random_nm
from nmgen.ir.problem import parse_shape
from nmgen.torch import kernels, ops
from nmgen.torch.overhead import eager_and_replayed, host_us_interleaved

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def breakdown(shape, pattern, dtype):
    M, N, K = shape
    p = problem_of(shape, pattern, 32, "row", dtype)
    B = random_nm(p, np.random.default_rng(0)).astype(dtype)
    dev = torch.device("cuda", 0)
    v, i = ops.to_tensors(B, dev)
    n, m, V = p.pattern.n, p.pattern.m, p.pattern.vector
    a = torch.randn(M, K, device=dev).to(DT[dtype])
    c = torch.empty(M, N, device=dev, dtype=DT[dtype])
    w = torch.randn(K, N, device=dev).to(DT[dtype])
    wt = w.t().contiguous()
    dense = torch.nn.Linear(K, N, bias=False, device=dev, dtype=DT[dtype])
    layer = nmt.NMLinear.from_linear(dense, pattern, 32)
    with torch.inference_mode():
        weights = kernels.weights_for(v, i, n, m, V)
        prep = weights.prepare(M, False, c.dtype)
        core = prep.core
        stream = kernels.current_stream(0)
        ws = kernels.workspace(0, stream, prep.workspace_bytes)[0].data_ptr() if prep.workspace_bytes else 0
        ap, cp = a.data_ptr(), c.data_ptr()
        core.launch(ap, cp, stream, ws)            # the packed arguments now address a, c (or ws)
        rows = {
            "driver: cuLaunchKernel (packed)": lambda: core._main(stream),
            "PreparedSpMM.launch": lambda: core.launch(ap, cp, stream, ws, True),
            "kernels.Weights.run": lambda: weights.run(a, c),
            "kernels.weights_for": lambda: kernels.weights_for(v, i, n, m, V),
            "ops.spmm_out_cuda (no dispatcher)": lambda: ops.spmm_out_cuda(a, v, i, n, m, V, False, c),
            "torch.ops.nmgen.spmm_out": lambda: torch.ops.nmgen.spmm_out(a, v, i, n, m, V, False, c),
            "torch.ops.nmgen.spmm": lambda: torch.ops.nmgen.spmm(a, v, i, n, m, V, False),
            "ops.linear_eager": lambda: ops.linear_eager(a, v, i, n, m, V, False, K),
            "NMLinear(a) (its own weights)": lambda: layer(a),
            "nmgen.spmm(A, B, out=C)": lambda: nmgen.spmm(a, B, out=c),
            "torch: current raw stream": lambda: kernels.current_stream(0),
            "torch: a.data_ptr()": lambda: a.data_ptr(),
            "torch: a.new_empty((M, N))": lambda: a.new_empty((M, N)),
            "torch.mm(a, w, out=c)": lambda: torch.mm(a, w, out=c),
            "F.linear(a, w^T)": lambda: F.linear(a, wt),
        }
        rows = host_us_interleaved(rows, rounds=7)
        replay = eager_and_replayed(lambda: torch.ops.nmgen.spmm_out(a, v, i, n, m, V, False, c))
    print(f"\n{M}x{N}x{K} {pattern} V=32 {dtype} on {torch.cuda.get_device_name()} (torch {torch.__version__}): "
          f"schedule {core.kernel.schedule.short()}, {core.launches} driver call(s) per product; "
          f"GPU {replay['gpu_us']:.1f} us per call, replayed host {replay['graph_us']:.2f} us")
    for what, us in rows.items():
        print(f"  {what:<42} {us:7.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x4096x4096")
    ap.add_argument("--pattern", default="8:32")
    ap.add_argument("--dtypes", default="bf16,f32")
    args = ap.parse_args()
    for dt in args.dtypes.split(","):
        breakdown(parse_shape(args.shape), args.pattern, dt)


if __name__ == "__main__":
    main()
