"""Development tool: run a list of (problem, schedule) cases on the GPU, to compare variants in one
device call or to give `ncu` one launch of each.

    python scripts/cases.py CASES.json time [--json OUT]    # warm median of 30, checked vs float64
    ncu ... python scripts/cases.py CASES.json launch       # one launch each (name printed first)

CASES.json: a list of {"shape": "MxNxK", "pattern": "n:m", "vector": 32, "a_major": "row"|"col",
"schedule": {...}, "label": "..."}; a missing schedule means the one nmgen would choose.
"""
import argparse
import json
import sys

import numpy as np

from nmgen import Schedule
from nmgen.api import compile, device_operands
from nmgen.bench import measure_kernel, problem_of, random_nm
from nmgen.ir.problem import parse_shape


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases")
    ap.add_argument("mode", choices=("time", "launch"))
    ap.add_argument("--json", help="write the timings here")
    args = ap.parse_args()
    from nmgen.runtime.memory import DeviceBuffer, synchronize
    rng = np.random.default_rng(0)
    out, weights = [], {}
    for case in json.load(open(args.cases)):
        p = problem_of(parse_shape(case["shape"]), case["pattern"], case.get("vector", 32), case.get("a_major", "row"))
        key = (p.K, p.N, case["pattern"], case.get("vector", 32))
        if key not in weights:
            weights[key] = random_nm(p, rng)
        B = weights[key]
        s = Schedule.from_dict(case["schedule"]) if "schedule" in case else None
        k = compile(p, schedule=s, B=B)
        label = case.get("label", "")
        if args.mode == "launch":
            print(p, k.schedule.short(), label, k.name, flush=True)
            A = DeviceBuffer.from_array(rng.standard_normal((p.M * p.K,), dtype=np.float32))
            C = DeviceBuffer(p.M * p.N * 4)
            k.launch(A.ptr, device_operands(B, p, k.schedule), C.ptr)
            synchronize(0, k.name)
            continue
        A = rng.standard_normal((p.M, p.K), dtype=np.float32)
        t, v = measure_kernel(k, A, B, rng=rng)
        err = v.rel_err
        eff = p.flops_done / (t.median_ms * 1e-3) / 1e12
        r = k.resources
        print(f"{str(p):44s} {k.schedule.short():44s} {label:14s} {t.median_ms * 1e3:9.1f} us "
              f"{eff:5.1f} TF/s  regs {r.registers:3d}  err {err:.1e} {'pass' if v.ok else 'FAIL'}", flush=True)
        out.append({**case, "schedule": k.schedule.to_dict(), "median_us": t.median_ms * 1e3, "tflops_eff": eff,
                    "rel_err": err, "check": "pass" if v.ok else "FAIL", "registers": r.registers})
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
