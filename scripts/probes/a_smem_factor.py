"""Development probe: the model's pipeline factor for wgmma with A from shared memory (search/model.py,
PIPELINE_FACTOR kind 2), estimated from scripts/probe_mma.py's timings.

    python scripts/probes/a_smem_factor.py benchmarks/2026-12-02-h200-wgmma-a-smem/probe_wgmma_a_smem.json

The other kernels timed in the same calls (A in registers, mma.sync or wgmma) set the scale: their
geomean of measured / predicted time is what the model's other terms leave over on these problems. A
wgmma_a_smem kernel's factor is its measured / predicted time with its own pipeline factor taken as 1,
over that scale; the script prints the geomean per depth and over all (the number PIPELINE_FACTOR takes).
Rows that failed their check, carry a patch (convention experiments) or are smaller than 4096 x 2048
(launch-bound: the model's tile terms do not describe them) are left out.
"""
from __future__ import annotations

import argparse
import collections
import json
import math


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe_json", nargs="+", help="scripts/probe_mma.py --json outputs")
    args = ap.parse_args()
    from nmgen import Pattern, Problem, Schedule
    from nmgen.ir.device import for_arch
    from nmgen.search import model
    dev = for_arch("sm_90")         # as scripts/probes/fit_mma_model.py fits
    # predicted without the factor being estimated (dividing it out afterwards would be wrong where
    # it moves the bound from the SM to L2)
    for key in [k for k in model.PIPELINE_FACTOR if k[0] == 2]:
        model.PIPELINE_FACTOR[key] = 1.0
    others, a_smem = [], collections.defaultdict(list)
    for path in args.probe_json:
        for r in json.load(open(path))["rows"]:
            M, N, K = map(int, r["shape"].split("x"))
            if r.get("check") != "pass" or r.get("patch") or M * N < 4096 * 2048:
                continue
            n, m = map(int, r["pattern"].split(":"))
            p = Problem(M, N, K, Pattern(n, m, r["vector"]), dtype=r["dtype"], a_major=r["a_major"])
            s = Schedule(**r["schedule"])
            t = model.predict(p, s, dev).time_us
            if s.wgmma_a_smem:
                a_smem[s.stages].append(math.log(r["us"] / t))
            else:
                others.append(math.log(r["us"] / t))
    if not others or not a_smem:
        raise SystemExit("a_smem_factor.py: needs both wgmma_a_smem kernels and others in the same files")
    scale = sum(others) / len(others)
    print(f"scale (measured / predicted of {len(others)} other kernels): {math.exp(scale):.3f}")
    for stages, logs in sorted(a_smem.items()):
        print(f"  stages {stages}: {math.exp(sum(logs) / len(logs) - scale):.3f} ({len(logs)} kernels)")
    every = [x for logs in a_smem.values() for x in logs]
    print(f"factor, all depths: {math.exp(sum(every) / len(every) - scale):.3f} ({len(every)} kernels)")


if __name__ == "__main__":
    main()
