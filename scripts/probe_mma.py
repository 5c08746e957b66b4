"""Development probe: time tensor-core kernels of given schedules on the GPU, below the public API.

    python scripts/probe_mma.py CASES.json [--json OUT]

CASES.json: a list of {"shape": "MxNxK", "pattern": "n:m", "vector": 32, "dtype": "bf16",
"a_major": "col", "schedule": {...}, "label": "..."} ("schedule" missing: the model's choice);
"patch": {"NAME": value} sets nmgen.ir.operands.NAME for that case only (to try a convention).
Each kernel is built (ir.build), JIT-loaded, checked once against float64 on sampled rows (C
poisoned with NaN first), then timed L2 warm (runtime.timing); cuBLAS dense of the same dtype
(torch.matmul) is timed beside it in the same run.
"""
import argparse
import json
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases")
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch
    from nmgen import Pattern, Problem, Schedule
    from nmgen.api import DeviceOperands, Kernel
    from nmgen.checking import kernel_a, random_inputs
    from nmgen.ir.dtypes import DTYPES
    from nmgen.ir.operands import prepare
    from nmgen.ir.problem import parse_shape
    from nmgen.reference import check_rows, compare
    from nmgen.runtime.driver import device_info, init
    from nmgen.runtime.memory import DeviceBuffer, download, memset32, synchronize
    from nmgen.runtime.timing import time_gpu
    from nmgen.search.choose import model_best
    init()
    dev = device_info(0)
    rng = np.random.default_rng(0)
    out, dense = [], {}

    def one(case):     # one case, with its patch of nmgen.ir.operands in force
        M, N, K = parse_shape(case["shape"])
        n, m = (int(x) for x in case["pattern"].split(":"))
        p = Problem(M, N, K, Pattern(n, m, case.get("vector", 32)), case.get("dtype", "bf16"), case.get("a_major", "col"),
                    case.get("c_dtype"))
        A, B = random_inputs(p, rng)
        s = Schedule.from_dict(case["schedule"]) if "schedule" in case else model_best(p, dev, B)
        ops = prepare(p, s, B.values, B.indices)
        from nmgen.ir.validate import problems
        why = problems(p, s, dev, ops.geometry.a_rows if s.a_load == "rows" else None)
        if why:
            print(f"{str(p):48s} {s.short():46s} {case.get('label', ''):10s} skipped: {'; '.join(why)}", flush=True)
            return
        k = Kernel(p, s, dev.arch, ops.geometry.a_rows if s.a_load == "rows" else None)
        d = DeviceOperands(ops.geometry, DeviceBuffer.from_array(ops.bv),
                           DeviceBuffer.from_array(ops.bi) if ops.bi is not None else None,
                           DeviceBuffer.from_array(ops.arows) if ops.arows is not None else None)
        a = DeviceBuffer.from_array(kernel_a(p, A))
        c_dt = k.ir.param("C").dtype
        c_np = DTYPES[c_dt].storage
        c = DeviceBuffer(M * N * c_np.itemsize)
        memset32(c.ptr, M * N * c_np.itemsize // 4, 0, 0x7FC07FC0 if c_np.itemsize == 2 else 0x7FC00000)   # NaN
        k.launch(a.ptr, d, c.ptr)
        synchronize(0, k.name)
        C = download(np.empty((M, N), c_np), c.ptr)
        v = compare(C, A, B, check_rows(M, rng), compute=DTYPES[p.dtype].compute,
                    out_dtype=c_dt)
        t = time_gpu(lambda: k.launch(a.ptr, d, c.ptr), 0, 10, 30)
        key = (M, N, K, p.dtype)
        if key not in dense:
            tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "tf32": torch.float32, "f32": torch.float32}[p.dtype]
            torch.backends.cuda.matmul.allow_tf32 = p.dtype == "tf32"
            X = torch.randn(M, K, device="cuda", dtype=tdt)
            Y = torch.randn(K, N, device="cuda", dtype=tdt)
            Z = torch.empty(M, N, device="cuda", dtype=tdt)
            dense[key] = time_gpu(lambda: torch.matmul(X, Y, out=Z), torch.cuda.current_stream().cuda_stream, 10, 30).median_ms
        us = t.median_ms * 1e3
        eff = p.flops_done / (t.median_ms * 1e-3) / 1e12
        row = {**case, "schedule": s.to_dict(), "short": s.short(), "us": us, "tflops_eff": eff,
               "dense_us": dense[key] * 1e3, "speedup": dense[key] * 1e3 / us, "check": "pass" if v.ok else "FAIL",
               "rel_err": v.rel_err, "worst": v.worst}
        out.append(row)
        print(f"{str(p):48s} {s.short():46s} {case.get('label', ''):10s} {us:9.1f} us {eff:6.1f} TF/s eff "
              f"dense {dense[key] * 1e3:8.1f} us  x{row['speedup']:.2f}  {row['check']} ({v.worst:.2g})", flush=True)

    import nmgen.ir.operands as operands
    for case in json.load(open(args.cases)):
        saved = {name: getattr(operands, name) for name in case.get("patch", {})}
        for name, value in case.get("patch", {}).items():
            setattr(operands, name, value)
        try:
            one(case)
        finally:               # restored whether the case ran, was skipped or failed
            for name, value in saved.items():
                setattr(operands, name, value)
    print(f"device: {dev.name}")
    if args.json:
        json.dump({"device": dev.name, "rows": out}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
