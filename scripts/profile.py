"""Launch a few kernels once each, for `ncu` to profile (development tool).
Usage: ncu ... python scripts/profile.py"""
import numpy as np

from nmgen import NMMatrix, Schedule
from nmgen.api import compile, device_operands
from nmgen.bench import problem_of
from nmgen.runtime.memory import DeviceBuffer, synchronize

KERNELS = [
    ("16:32", Schedule()),
    ("16:32", Schedule(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=16, thread_n=8, k_windows=1, stages=3)),
    ("4:32", Schedule(k_windows=2, stages=3)),
    ("4:32", Schedule(k_windows=2, stages=3, a_load="rows")),
]
rng = np.random.default_rng(0)
A = DeviceBuffer.from_array(rng.standard_normal((4096, 4096), dtype=np.float32))
C = DeviceBuffer(4096 * 4096 * 4)
for pat, s in KERNELS:
    p = problem_of((4096, 4096, 4096), pat, 32)
    B = NMMatrix.from_dense(rng.standard_normal((4096, 4096), dtype=np.float32), p.pattern, prune_first=True)
    k = compile(p, schedule=s, B=B)
    ops = device_operands(B, p, k.schedule)
    print(pat, s.short(), k.name, flush=True)
    k.launch(A.ptr, ops, C.ptr)
    synchronize(0, k.name)
