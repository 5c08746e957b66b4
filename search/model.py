"""The analytic performance model: NM-SpMM's top-down analysis made executable.

For a schedule it counts, per level, what one K tile of one thread block needs, then scales by
the grid (occupancy, waves) and predicts the time as the slowest level. It ranks and prunes
schedules; it never replaces measuring (its quality is reported: rank correlation with measured
times). Symbols: BM x BN block tile, TM x TN thread tile, W warps per block, KR kept rows and BK
K rows per K tile, G index look-ups per kept row, S stages, bps blocks per SM.

1. Instruction issue (per warp and K tile; with sliced K a warp multiplies KR / warps_k rows):
     FFMA  = TM * TN * KR
     LDS   = KR * (G * ceil(TM / a_vec) + ceil(TN / b_vec) + G)       fragment and index loads
             (byte-offset indices: KR * G / 4 index loads, four rows per vector)
     IMAD  = KR * G                                                    gathered-row addresses
     COPY  = 1.5 * (A + B + index cp.async per thread)                 with their address arithmetic
     issue = FFMA + LDS + IMAD + COPY + 30                             (+ loop, wait, barrier)
   An SM has 4 schedulers: issue_c = issue * W / 4 cycles per block-tile.
2. L1 / shared memory returns 128 bytes per cycle per SM: one cycle per register a warp gets back.
     frag  = KR * (G * TM * pA + TN * pB + G)     pA, pB = 1/2 for vector reads that lane pairs share
     copy  = 4 per warp-wide cp.async of A or B (4 transposed 32-byte sectors, or 512 bytes), 1 for
             the index chunk
     l1_c = (frag + copy) * W cycles per block-tile.
3. The SM: cycles per block-tile = 0.722 issue_c / eff(w) + 0.389 l1_c + 270 / bps_used, where
   w = W * bps_used / 4 warps per scheduler and eff(w) = w / (w + 1.87) the fraction of issue slots
   they keep busy (sliced K's warps count once per warp tile: measured, splitting a tile's rows
   among more warps hid no more latency). Issue and L1 add rather than overlap (the loads feed the FFMAs that follow), and
   each K tile starts with a ramp (barrier, then the index -> address -> fragment chain) that other
   resident blocks hide. The constants are a least-squares fit (in log time) to 1445 schedules of
   three problems measured on an H100 (see NOTES.md); fitted on two problems and tested on the
   third, the model keeps Spearman >= 0.80.
     time_SM = ceil(blocks / SMs) * ceil(T / split) * cycles / clock   (the busiest SM's blocks, run
     bps_used at a time; an SM takes the next block when one ends, so a partial last wave costs its
     own blocks, not a whole wave), bps = blocks per SM allowed by registers (allocated in 8s),
     shared memory, threads, 32; bps_used = min(bps, blocks / SMs).
3b. 16-bit tensor-core kernels (mma.sync, wgmma; bf16, f16) use their own fit, made on the H200 (tf32's,
   whose gathers are scalar loads, were not measured for it and keep item 3): per K tile of a block
     tile_c = (hypot(tensor_c, issue_c + l1_c) + 950 / bps_used) * P[kind, stages, prefetch] * (0.899 for wgmma)
     (kind: mma.sync, wgmma with A in registers, wgmma with A from shared memory)
     issue_c = 3.29 * issue / bps_used    (a warp's instruction chain - with sliced K its share of the
                                           rows - a latency that only other resident blocks hide)
     l1_c = 0.663 * l1 * W,  tensor_c = 1.55 * tensor * W,  split-K's costs (item 6) x 1.80
   P (PIPELINE_FACTOR) is what the other terms cannot see: the pipeline depth and the loop form
   (prefetch), 1 at each kind's shallowest plain loop. It was estimated first, from contrasts inside
   families alone (log time = family + member effects over 230 families measured at two or more
   depths or forms: a family is a schedule but for those); then the other constants by least squares
   in log time, P fixed, over 1549 checked schedules of 18 bf16 problems (paper6 shapes at 16:32 ..
   4:32: per problem the model's best and a spread sample of its space, and every depth and form of
   the model's best 14 families for 12 of them; scripts/probes/model_sample.py, L2 flushed;
   scripts/probes/fit_mma_model.py fits). What model-topk 4 measures first (the best-predicted member
   of each of the 4 best-predicted families, ranked with the register estimate) then holds the measured
   best on 7 of the 18 problems and comes within 2% on 12, 10% on 14 (benchmarks/2026-11-30-h200-
   pipeline-fit/fit.txt; 1024x5120x5120 12:32 1.20: two stages, two blocks per SM, are predicted
   faster than the deeper pipelines that win). Its blind
   spot: the 128x256 mma.sync tile of 128x32 warp tiles, the best kernel at 16:32 on the large
   shapes, is predicted ~1.35x too slow and ranks 9th-10th there (1.14-1.17 at top 4).
4. L2 -> SM bytes per tile: A = rows(M) * BK * 4 (whole sectors; the "rows" strategy touches the
   32-byte sectors holding its listed columns), B = KR * BN * 4, index chunk; split-K adds the
   atomic read-modify-write of C. time_L2 = bytes / L2 bandwidth.
5. DRAM bytes: A once, B once per block-row group when B exceeds half of L2, C once (three times
   under split-K: memset, atomics). time_DRAM = bytes / memory bandwidth.
6. time = max(time_SM, time_L2, time_DRAM) + 3 us launch; split-K adds 2.3 us (the memset of C)
   and 7.5 us per million atomic adds (M * N * split), both fitted like item 3; into a 16-bit C,
   reduced in the kernel (no memset), 12.7 us and 2.5 us per million (fitted on the H200); a tail
   split (the last tail_tiles tiles in tail_split blocks each) the same per million of its partial
   sums, its blocks' time after the whole tiles' on the busiest SM. Sliced K adds, once
   per block, the shared-memory reduction: 2 * TM * TN / b_vec accesses per warp and a barrier,
   counted as one more K tile's ramp plus those accesses at the issue rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.build import copy_plans, reduces_in_kernel
from ..ir.device import Device
from ..ir.layout import ComputeLayout
from ..ir.nodes import DTYPE_BYTES
from ..ir.operands import colours_rows, geometry
from ..ir.problem import Problem, ceil_div
from ..ir.schedule import Schedule
from ..ir.validate import estimate_registers, shared_bytes

LAUNCH_US = 3.0
# fitted on the H100 (items 3 and 6)
ISSUE_WEIGHT, L1_WEIGHT, RAMP_CYCLES, ISSUE_HALF = 0.722, 0.389, 270.0, 1.866
SPLIT_US, ATOMIC_US_PER_MILLION = 2.3, 7.53
# tensor-core kernels, fitted on the H200 (item 3b): issue-chain, L1 and tensor-pipe weights, ramp cycles
MMA_ISSUE_LATENCY, MMA_L1_WEIGHT, MMA_TENSOR_WEIGHT, MMA_RAMP_CYCLES = 3.29, 0.663, 1.55, 950.0
MMA_SPLIT_FACTOR = 1.80     # split-K's zeroing and atomics cost this much more than FFMA's fit says
# split-K into a 16-bit C, reduced in the kernel (ir.nodes.SplitKReduce): a fixed cost and one per million
# partial sums (M * N * split), fitted in log time on the H200 to 26 split-K bf16 kernels against their
# measured split-K 1 times scaled by the model's split / no-split ratio (benchmarks/2026-12-01-h200-splitk/)
REDUCE16_US, REDUCE16_US_PER_MILLION = 12.7, 2.49
WGMMA_FACTOR = 0.899        # wgmma kernels' tiles against what the shared terms say (fitted with them)
# (kind, stages, prefetch) -> the pipeline's factor on a tile (item 3b; kind: pipeline_kind). Kinds 0 and 1
# measured inside families on the H200 (benchmarks/2026-11-30-h200-pipeline-fit/; the families each rests
# on, in order: mma.sync 149, 145, 130, 125, 113, 108; wgmma 53, 51, 41). Kind 2 (wgmma reading A from a
# swizzled shared tile, one group in flight) from 29 such kernels of 5 problems against the 8 others
# timed in the same calls (benchmarks/2026-12-02-h200-wgmma-a-smem/probe_wgmma_a_smem.json; geomean of
# measured / predicted over the others' geomean, scripts/probes/a_smem_factor.py): 0.854, depths 4, 5
# and 6 at 0.866, 0.882, 0.818 (not separable from their tiles in so few kernels, so one factor for all)
PIPELINE_FACTOR = {(0, 2, 0): 1.0, (0, 2, 1): 1.036, (0, 3, 0): 0.904, (0, 3, 1): 0.856, (0, 4, 0): 0.878,
                   (0, 4, 1): 0.846, (1, 3, 0): 1.0, (1, 4, 0): 1.003, (1, 6, 0): 1.158, (2, 4, 0): 0.854}
# what the fit measured: the 16-bit kernels (ldmatrix gathers); tf32's scalar gathers keep the FFMA form
# until measured (its paper6 choices, benchmarks/2026-11-30-h200-tensor-cores/, came from that form)
MMA_FIT_DTYPES = ("bf16", "f16")
# wgmma's rate over mma.sync's, measured on the H200 (benchmarks/2026-11-30-h200-colour-rows/mma_rate.txt:
# m64n32k16 with A from registers 1852 MAC/clk/SM, mma.sync m16n8k16 1151)
WGMMA_SPEEDUP = 1.6


@dataclass(frozen=True)
class Prediction:
    time_us: float
    sm_us: float
    l2_us: float
    dram_us: float
    bound: str              # which level decided: "issue", "L1", "latency", "L2", "DRAM"
    blocks_per_sm: int
    waves: int
    issue_cycles: float     # per K tile of one block
    l1_cycles: float
    l2_bytes: float         # whole kernel
    dram_bytes: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def blocks_per_sm(s: Schedule, device: Device, registers: int, smem: int) -> int:
    regs = ceil_div(registers, 8) * 8 * s.threads
    limits = [device.max_blocks_per_sm, device.max_threads_per_sm // s.threads,
              device.regs_per_sm // max(regs, 1), device.smem_per_sm // (smem + device.reserved_smem_per_block)]
    return max(0, min(limits))


def expected_sectors(listed: int, BK: int) -> float:
    """32-byte sectors (8 floats) of one A row touched by `listed` of its BK columns, chosen at random."""
    sectors = max(1, BK // 8)
    return sectors * (1.0 - (1.0 - 1.0 / sectors) ** listed)


def _ffma_costs(s: Schedule, g, lay) -> tuple[float, float, float]:
    """(issue, L1, tensor) per warp and K tile of the FFMA thread tile (items 1 and 2)."""
    TM, TN, KR = s.thread_m, s.thread_n, g.KR // s.warps_k   # KR: a warp's rows
    G = len(lay.groups)
    fma = TM * TN * KR
    idx_loads = KR * G / 4 if g.idx_bits == 32 else KR * G      # byte offsets: four rows per vector
    lds = KR * (G * ceil_div(TM, lay.a_vec) + ceil_div(TN, lay.b_vec)) + idx_loads
    issue = fma + lds + KR * G
    # L1: one cycle per register a warp gets back; lane pairs halve shared vector reads
    pairs = lay.lanes_m >= 2 and lay.lanes_n >= 2
    pa = 0.5 if pairs and lay.a_vec > 1 else 1.0
    pb = 0.5 if pairs and lay.b_vec > 1 else 1.0
    return issue, KR * (G * TM * pa + TN * pb + G), 0.0


# mma: passes an ldmatrix phase of 8 gathered K rows takes on average, by A strategy: "window" rows
# sit in the bank group their K position gives (1.8-2.1 for 16:32 .. 8:32 at two windows a tile on
# random weights; ncu on the H200 counted 34-42% of the shared wavefronts as conflicts); "rows" lists
# are coloured offline (ir.operands._colour_rows: 1.0-1.25, 1.5 for 16:32 at one window a tile; lists
# that cannot be coloured count as "window"); tests/test_mma.py::ldmatrix_passes computes it from the
# prepared indices (NOTES.md 36)
GATHER_CONFLICTS = {"window": 1.9, "rows": 1.15}
# scalar fragment loads (tf32, a row-major 16-bit A): rows neither coloured nor measured; the birthday
# bound for 8 rows in 8 bank groups is 2.0 at worst, 1.5 typical
SCALAR_GATHER_CONFLICTS = 1.5


def _mma_costs(s: Schedule, g, lay, ops_layout: str, device: Device, conflicts: float) -> tuple[float, float, float]:
    """(issue, L1 wavefronts, tensor cycles) per warp and K tile of the mma warp tile: per step
    (instr.k kept rows) the index loads, A fragments (ldmatrix.x4 per m-tile and look-up group, or
    scalar loads by the fragment table), B fragments (ldmatrix.x4 per n-tile pair, or scalar), and
    tiles_m x tiles_n mma.sync; the tensor pipes take instr MACs / tensor_macs_per_sm cycles each
    (tf32 at half the 16-bit rate). `conflicts`: passes a gathered ldmatrix phase takes (GATHER_CONFLICTS)."""
    gathered = g.gathered
    ins = lay.instr
    steps = g.KR // s.warps_k // ins.k     # "gather": consecutive rows, no conflicts, no index loads
    G, tm, tn = len(lay.groups), lay.tiles_m, lay.tiles_n
    mma = tm * tn
    if ins.a_from_smem:   # the tensor cores read each instruction's 64 x 16 A (2 KB: 16 wavefronts a warpgroup)
        a_lds, a_wave, idx, pack = 0, tm * tn * 4, 0, 0
    elif ins.per_reg == 2 and ops_layout == "km":
        a_lds, a_wave, idx = G * tm, G * tm * 4 * (1 if gathered else conflicts), 0 if gathered else G
        pack = 0
    else:
        n = ins.a_regs * ins.per_reg
        a_lds, a_wave, idx = G * tm * n, G * tm * n * SCALAR_GATHER_CONFLICTS, G * (4 if ins.k == 16 else 2)
        pack = G * tm * ins.a_regs * (3 if ins.per_reg == 2 else 1)       # pack halves, or cvt.rna
    if ins.is_wgmma:      # B read by the tensor cores from shared memory, once per warpgroup (4 warps)
        b_lds, b_wave = 0, tn * ins.k * ins.n * 2 / 128 / 4
        mma_per_warp = mma / 4 + 2      # one warpgroup instruction a tile, its descriptor; fence and commit
    elif ins.per_reg == 2:
        b_lds, b_wave = ceil_div(tn, 2), ceil_div(tn, 2) * 4
        mma_per_warp = mma
    else:
        b_lds = b_wave = tn * ins.b_regs
        mma_per_warp = mma
    issue = steps * (mma_per_warp + a_lds + b_lds + idx + pack + 2 * G)
    l1 = steps * (a_wave + b_wave + idx)
    rate = device.tensor_macs_per_sm * (0.5 if ins.dtype == "tf32" else WGMMA_SPEEDUP if ins.is_wgmma else 1.0)
    macs = ins.macs / (4 if ins.is_wgmma else 1)     # a warp's share of a warpgroup instruction
    return issue, l1, steps * mma * macs / rate


def pipeline_kind(s: Schedule) -> int:
    """The pipeline PIPELINE_FACTOR keys `s` by: 0 mma.sync (and FFMA), 1 wgmma with A in registers
    (each K tile's group retired before the next tile's fragments load), 2 wgmma with A read from
    shared memory (wgmma_a_smem: one group in flight across K tiles)."""
    return 2 if s.wgmma_a_smem else 1 if s.wgmma else 0


def pipeline_factor(s: Schedule) -> float:
    """PIPELINE_FACTOR of `s` (item 3b); a depth it does not list takes the nearest listed one of its
    kind and loop form (not measured: mma.sync levels off at 3-4 stages, wgmma turns up at 6), 1.0
    for a kind and form it does not list (wgmma has no rotated loop)."""
    kind = pipeline_kind(s)
    listed = [k for k in PIPELINE_FACTOR if k[0] == kind and k[2] == s.prefetch]
    if not listed:
        return 1.0
    return PIPELINE_FACTOR[min(listed, key=lambda k: (abs(k[1] - s.stages), k[1]))]


def predict(problem: Problem, s: Schedule, device: Device, registers: int | None = None,
            a_rows: int | None = None) -> Prediction:
    g = geometry(problem, s, a_rows)
    lay = ComputeLayout.for_problem(problem, s)
    regs = registers or estimate_registers(s, problem.pattern.vector, lay.instr)
    W, es = s.threads // 32, g.esize
    a_plan, b_plan, i_plan = copy_plans(problem, s, g)
    copies = a_plan.iterations + b_plan.iterations + i_plan.iterations

    # 1-2. issue and L1 per warp and K tile, and (mma) the tensor pipes' cycles
    conflicts = GATHER_CONFLICTS["rows" if colours_rows(problem, s, g) else "window"]
    issue, l1, tensor = (_mma_costs(s, g, lay, s.a_smem, device, conflicts) if lay.instr.is_mma
                         else _ffma_costs(s, g, lay))
    issue += 1.5 * copies + 30
    # a transposing copy touches 4 sectors per warp instruction; a plain one moves 32 x its width
    a_copy = 4 if a_plan.transpose else a_plan.width // 4
    l1 += a_copy * a_plan.iterations + 4 * b_plan.iterations + i_plan.iterations

    bps = blocks_per_sm(s, device, regs, shared_bytes(problem, s, a_rows))
    if bps == 0:
        return Prediction(math.inf, math.inf, math.inf, math.inf, "does not fit", 0, 0, issue, l1, 0, 0)
    whole = g.tiles_m * g.tiles_n - s.tail_tiles          # tiles a block computes over all of K
    blocks = whole * s.split_k + s.tail_tiles * s.tail_split
    waves = ceil_div(blocks, device.sms * bps)
    per_sm = min(bps, ceil_div(blocks, device.sms))            # blocks sharing an SM in practice
    # warps per scheduler with a tile of their own: measured on the H100 (NOTES.md, run 10), the
    # extra warps of sliced K hide about no more latency than the warps they split
    wps = W // s.warps_k * per_sm / 4
    issue_c = ISSUE_WEIGHT * issue * W / 4 / (wps / (wps + ISSUE_HALF))
    l1_c = L1_WEIGHT * l1 * W
    tensor_c = tensor * W
    fitted = lay.instr.is_mma and lay.instr.dtype in MMA_FIT_DTYPES
    if fitted:
        # fitted on the H200 (item 3b): one warp's instruction chain (its own share of a sliced K
        # tile's rows), hidden only by other blocks; the tensor pipes partly overlapped with the loads
        issue_c = MMA_ISSUE_LATENCY * issue / per_sm
        l1_c = MMA_L1_WEIGHT * l1 * W
        tensor_c = MMA_TENSOR_WEIGHT * tensor * W
        tile_c = ((math.hypot(tensor_c, issue_c + l1_c) + MMA_RAMP_CYCLES / per_sm) * pipeline_factor(s)
                  * (WGMMA_FACTOR if s.wgmma else 1.0))
    else:
        tile_c = max(tensor_c, issue_c + l1_c) + RAMP_CYCLES / per_sm
    bound = "tensor" if tensor_c > issue_c + l1_c else "issue" if issue_c >= l1_c else "L1"
    once = 0.0
    if s.warps_k > 1:   # the reduction through shared memory, once per block
        once = ISSUE_WEIGHT * 2 * lay.acc_count / lay.c_vec * W / 4 / (wps / (wps + ISSUE_HALF)) + RAMP_CYCLES / per_sm
    # An SM starts a block as soon as one of its slots frees, not in lockstep waves: the busiest SM
    # runs ceil(blocks / SMs) blocks, per_sm at a time (H100: 1280 blocks at 8 per SM took 1.06x
    # the time of 1056, not the 2x that whole waves predict; NOTES.md, run 21). A tail split's
    # blocks start after the whole tiles' (block order), so its busiest SM's share follows theirs.
    sm_c = ceil_div(whole * s.split_k, device.sms) * (ceil_div(g.T, s.split_k) * tile_c + once)
    if s.tail_tiles:
        sm_c += ceil_div(s.tail_tiles * s.tail_split, device.sms) * (ceil_div(g.T, s.tail_split) * tile_c + once)
    sm_us = sm_c / (device.clock_khz * 1e3) * 1e6

    # 3. L2 traffic of the whole kernel
    rows_m = min(s.block_m, problem.M)
    a_tile = rows_m * g.BK * es
    if s.a_load in ("rows", "gather") and problem.a_major == "col":   # listed K rows of A only
        a_tile = rows_m * g.a_rows * es
    elif s.a_load == "rows":                                 # only the sectors without a listed column
        a_tile = rows_m * 32 * expected_sectors(g.a_rows * es // 4, g.BK * es // 4)
    b_tile = g.KR * s.block_n * es + g.chunk_bytes
    l2_bytes = g.tiles_m * g.tiles_n * g.T * (a_tile + b_tile)
    c_bytes = problem.M * problem.N * (4 if s.split_k > 1 else DTYPE_BYTES[problem.c_dtype])
    l2_bytes += c_bytes * (1 if s.split_k == 1 else 2 * s.split_k)
    tail_sums = s.tail_tiles * s.block_m * s.block_n * s.tail_split     # fp32 partial sums of a tail split
    l2_bytes += 4 * 2 * tail_sums
    l2_us = l2_bytes / device.l2_bandwidth * 1e6

    # 4. DRAM traffic
    a_bytes = problem.M * problem.K * es
    b_bytes = g.T * g.KR * g.tiles_n * s.block_n * es + g.T * g.tiles_n * g.chunk_bytes
    re_b = ceil_div(g.tiles_m, max(1, s.raster)) if b_bytes > device.l2_bytes / 2 else 1
    dram_bytes = a_bytes + b_bytes * re_b + c_bytes * (1 if s.split_k == 1 else 3)
    dram_us = dram_bytes / device.mem_bandwidth * 1e6

    t = max(sm_us, l2_us, dram_us)
    if t == l2_us:
        bound = "L2"
    elif t == dram_us:
        bound = "DRAM"
    t += LAUNCH_US
    if s.tail_tiles:    # the same in-kernel reduction, over the tail's tiles
        t += REDUCE16_US + REDUCE16_US_PER_MILLION * tail_sums * 1e-6
    elif s.split_k > 1 and reduces_in_kernel(problem, s):
        t += REDUCE16_US + REDUCE16_US_PER_MILLION * problem.M * problem.N * s.split_k * 1e-6
    elif s.split_k > 1:
        t += ((SPLIT_US + ATOMIC_US_PER_MILLION * problem.M * problem.N * s.split_k * 1e-6)
              * (MMA_SPLIT_FACTOR if fitted else 1.0))
    return Prediction(t, sm_us, l2_us, dram_us, bound, bps, waves, issue, l1, l2_bytes, dram_bytes)


def rank(problem: Problem, schedules, device: Device, registers: dict | None = None,
         a_rows: int | None = None) -> list[tuple[Schedule, Prediction]]:
    """Schedules with their predictions, fastest first. `registers`: schedule -> ptxas's count."""
    registers = registers or {}
    scored = [(s, predict(problem, s, device, registers.get(s), a_rows if s.a_load == "rows" else None))
              for s in schedules]
    scored.sort(key=lambda x: x[1].time_us)
    return scored
