"""Exploration sweep (development tool): time schedule variants at 4096^3 for the four paper
sparsities next to cuBLAS FP32, to learn what the search space and the model must cover.
Usage: python scripts/explore.py OUT.json [time budget s] [plan: tiles | sparse | layout]"""
import json
import sys
import time

import numpy as np

from nmgen import NMMatrix, Schedule
from nmgen.bench import measure_cublas, measure_problem, problem_of
from nmgen.errors import NMGenError
from nmgen.reference import spmm_reference

out, budget = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 330
plan = sys.argv[3] if len(sys.argv) > 3 else "tiles"
t_end = time.time() + budget
rng = np.random.default_rng(1)
TILES = {
    "128x128/64x32/8x8": dict(block_m=128, block_n=128, warp_m=64, warp_n=32, thread_m=8, thread_n=8),
    "128x256/64x32/8x8": dict(block_m=128, block_n=256, warp_m=64, warp_n=32, thread_m=8, thread_n=8),
    "256x128/64x32/8x8": dict(block_m=256, block_n=128, warp_m=64, warp_n=32, thread_m=8, thread_n=8),
    "128x128/128x32/16x8": dict(block_m=128, block_n=128, warp_m=128, warp_n=32, thread_m=16, thread_n=8),
    "256x128/128x32/16x8": dict(block_m=256, block_n=128, warp_m=128, warp_n=32, thread_m=16, thread_n=8),
    "128x256/128x32/16x8": dict(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=16, thread_n=8),
    "64x128/64x32/8x8": dict(block_m=64, block_n=128, warp_m=64, warp_n=32, thread_m=8, thread_n=8),
    "128x64/64x32/8x8": dict(block_m=128, block_n=64, warp_m=64, warp_n=32, thread_m=8, thread_n=8),
}
rows = []
cublas_ms, lib = measure_cublas(4096, 4096, 4096, rng=rng)
print(f"cuBLAS 4096^3: {cublas_ms:.3f} ms ({lib}) = {2*4096**3/cublas_ms/1e9:.1f} TF/s")
W256 = dict(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=16, thread_n=8)


def candidates(p):
    kws = [1, 2] if p.pattern.n >= 8 else [2, 4]
    if plan == "tiles":
        cands = [Schedule(**t, k_windows=kw, stages=st) for t in TILES.values() for kw in kws for st in (3, 4)]
        for kw in kws:
            cands += [Schedule(k_windows=kw, a_load="rows"), Schedule(k_windows=kw, min_blocks=2),
                      Schedule(k_windows=kw, stages=2), Schedule(k_windows=kw, a_pad=0)]
        return cands
    if plan == "layout":   # shared A layout km / mk on the tiles that led so far
        cands = []
        for t in (TILES["128x128/64x32/8x8"], W256, TILES["128x256/64x32/8x8"]):
            for kw in kws:
                for st in (2, 3):
                    for sm in ("km", "mk"):
                        cands.append(Schedule(**t, k_windows=kw, stages=st, a_smem=sm))
        return cands
    # "sparse": the compacted-rows strategy with its prefetched lists, launch bounds, wide N tiles
    cands = []
    for kw in kws:
        for st in (2, 3, 4):
            for mb in (1, 2):
                cands.append(Schedule(k_windows=kw, stages=st, min_blocks=mb, a_load="rows"))
                cands.append(Schedule(k_windows=kw, stages=st, min_blocks=mb))
            cands.append(Schedule(**W256, k_windows=kw, stages=st, a_load="rows"))
            cands.append(Schedule(**W256, k_windows=kw, stages=st))
            cands.append(Schedule(**TILES["128x256/64x32/8x8"], k_windows=kw, stages=st, a_load="rows"))
    return cands


patterns = ["16:32", "8:32", "4:32", "12:32"] if plan in ("tiles", "layout") else ["4:32", "8:32", "16:32"]
for pat in patterns:
    p = problem_of((4096, 4096, 4096), pat, 32)
    B = NMMatrix.from_dense(rng.standard_normal((4096, 4096), dtype=np.float32), p.pattern, prune_first=True)
    cands = candidates(p)
    for s in cands:
        if time.time() > t_end:
            print("time budget reached"); break
        try:
            row, k = measure_problem(p, s, rng=rng, B=B, check=s is cands[0] or s.a_load == "rows", reps=20, warmup=5)
        except NMGenError as e:
            print(f"{pat} {s.short()}: {str(e).splitlines()[-1][:100]}"); continue
        row["cublas_ms"] = cublas_ms
        row["regs"] = k.resources.registers
        rows.append(row)
        print(f"{pat} {s.short():48s} mb{s.min_blocks} pad{s.a_pad} regs {row['regs']:3d}  {row['ms']:.3f} ms  eff {row['tflops_eff']:5.1f} TF/s  "
              f"x{cublas_ms/row['ms']:.2f}" + (f"  err {row['rel_err']:.1e}" if row['rel_err'] is not None else ""))
    json.dump({"cublas_ms": cublas_ms, "cublas": lib, "rows": rows}, open(out, "w"), indent=1)
best = {}
for r in rows:
    if r["pattern"] not in best or r["ms"] < best[r["pattern"]]["ms"]:
        best[r["pattern"]] = r
for pat, r in best.items():
    print(f"BEST {pat}: {r['ms']:.3f} ms eff {r['tflops_eff']:.1f} TF/s speedup {cublas_ms/r['ms']:.2f} {Schedule(**r['schedule']).short()}")
