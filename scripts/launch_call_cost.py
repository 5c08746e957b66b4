"""Host us of one cuLaunchKernel of a packed nmgen kernel, called three ways (a developer's tool;
needs a GPU and torch): the PackedLaunch nmgen uses (cuda-python, the parameter block's address
as an int), the same driver call through ctypes with the argument types declared (nmgen's launch
path before 2026-11-30) and without, beside an empty ctypes call and an empty Python call.

    python scripts/launch_call_cost.py [--shape 1x4096x4096] [--pattern 8:32] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import ctypes

import numpy as np
import torch

from nmgen.bench import problem_of, random_nm
from nmgen.ir.problem import parse_shape
from nmgen.runtime.launch import CUDA_SUCCESS
from nmgen.torch import kernels, ops
from nmgen.torch.overhead import host_us

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x4096x4096")
    ap.add_argument("--pattern", default="8:32")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DT))
    args = ap.parse_args()
    M, N, K = parse_shape(args.shape)
    p = problem_of((M, N, K), args.pattern, 32, "row", args.dtype)
    B = random_nm(p, np.random.default_rng(0)).astype(args.dtype)
    dev = torch.device("cuda", 0)
    v, i = ops.to_tensors(B, dev)
    a = torch.randn(M, K, device=dev).to(DT[args.dtype])
    c = torch.empty(M, N, device=dev, dtype=DT[args.dtype])
    with torch.inference_mode():
        w = kernels.weights_for(v, i, p.pattern.n, p.pattern.m, 32)
        prep = w.prepare(M, False, c.dtype)
        stream = kernels.current_stream(0)
        ws = kernels.workspace(0, stream, prep.workspace_bytes)[0].data_ptr() if prep.workspace_bytes else 0
        prep.core.launch(a.data_ptr(), c.data_ptr(), stream, ws)      # A, C (and the workspace) now packed
        packed = prep.core._main
        f, gx, gy, gz, bx, by, bz, smem = packed._shape
        u, vp = ctypes.c_uint, ctypes.c_void_p
        fixed = (vp(int(f)), u(gx), u(gy), u(gz), u(bx), u(by), u(bz), u(smem), vp(stream), vp(packed._params), None)
        typed = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
        typed.argtypes, typed.restype = [vp, u, u, u, u, u, u, u, vp, vp, vp], ctypes.c_int
        untyped = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
        untyped.restype = ctypes.c_int
        assert packed(stream) == CUDA_SUCCESS and typed(*fixed) == CUDA_SUCCESS and untyped(*fixed) == CUDA_SUCCESS
        libc = ctypes.CDLL(None)
        labs = libc.labs
        labs.argtypes, labs.restype = [ctypes.c_long], ctypes.c_long
        rows = {
            "PackedLaunch (cuda-python, nmgen's)": lambda: packed(stream),
            "ctypes, argtypes declared (before)": lambda: typed(*fixed),
            "ctypes, no argtypes": lambda: untyped(*fixed),
            "ctypes: labs(3) (an empty C call)": lambda: labs(3),
            "Python: an empty lambda": lambda: None,
        }
        print(f"{M}x{N}x{K} {args.pattern} {args.dtype} on {torch.cuda.get_device_name()}, "
              f"schedule {prep.core.kernel.schedule.short()}; host us per call (3 passes, each the median "
              f"of 5 rounds of 200 calls)")
        results = {what: [] for what in rows}
        for _ in range(3):                  # interleaved: each pass sees the host in the same state for every row
            for what, fn in rows.items():
                results[what].append(host_us(fn))
        for what, us in results.items():
            print(f"  {what:<40} " + "  ".join(f"{x:6.2f}" for x in us))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
