"""Why a schedule cannot run: every reason, in words, with the numbers and what to change."""
from __future__ import annotations

from math import gcd

from .build import a_copy_elems, b_pad, reduce_buffer
from .device import Device
from .dtypes import dtype as dtype_of
from .errors import ScheduleError
from .instructions import for_dtype
from .layout import ComputeLayout
from .operands import geometry
from .problem import Problem
from .schedule import Schedule

MAX_STAGES = 8
MAX_ACCUMULATORS = 128   # thread_m * thread_n: beyond this the registers (255 per thread) spill
MMA_PREFETCH_REGISTERS = 6


def estimate_registers(s: Schedule, vector: int = 32, instr=None) -> int:
    """Registers per thread before ptxas says: accumulators, double-buffered fragments (one A
    fragment per index look-up group), addressing."""
    lay = ComputeLayout.of(s, vector, instr or for_dtype("f32"))
    if lay.instr.is_wgmma:   # A fragments of a whole K tile stay live until its group is issued
        return lay.acc_count + lay.tiles_m * lay.instr.a_regs * len(lay.groups) * 2 + 32
    groups = len(lay.groups)
    if lay.instr.is_mma:
        a = lay.tiles_m * lay.instr.a_regs * groups
        b = lay.tiles_n * lay.instr.b_regs
        # ptxas 13.0, sm_90: 113 for 64x32, 200 for 128x32; the rotated loop keeps a second step's
        # fragments live: +6 (median of 319 pairs on the H200, quartiles 3-19; NOTES.md 38)
        return lay.acc_count + a + b + groups + 28 + (MMA_PREFETCH_REGISTERS if s.prefetch else 0)
    return s.thread_m * s.thread_n + 2 * (s.thread_m * groups + s.thread_n) + 28


def shared_bytes(problem: Problem, s: Schedule, a_rows: int | None = None) -> int:
    g = geometry(problem, s, a_rows)
    es = g.esize
    a = s.stages * (s.block_m * (g.a_rows + s.a_pad) if s.a_smem == "mk" else g.a_rows * (s.block_m + s.a_pad)) * es
    b = s.stages * g.KR * (s.block_n + (0 if s.wgmma else b_pad(problem))) * es
    i = s.stages * g.chunk_bytes
    pipeline = sum(-(-x // 16) * 16 for x in (a, b, i))
    return max(pipeline, reduce_buffer(s).nbytes) if s.warps_k > 1 else pipeline


def problems(problem: Problem, s: Schedule, device: Device, a_rows: int | None = None) -> list[str]:
    """Empty when `s` can run `problem` on `device`; else one sentence per reason."""
    why = []
    if s.block_m % s.warp_m or s.block_n % s.warp_n:
        why.append(f"warp tile {s.warp_m}x{s.warp_n} does not divide block tile {s.block_m}x{s.block_n}")
        return why
    if s.wgmma_a_smem and not s.wgmma:
        why.append(f"wgmma_a_smem={s.wgmma_a_smem} is a choice of the warpgroup mma: give wgmma=1 with it, or "
                   f"wgmma_a_smem=0")
        return why
    instr = ComputeLayout.for_problem(problem, s).instr
    if s.wgmma:
        why += _wgmma_problems(problem, s, device)
        if why:
            return why
    if instr.is_mma:
        why += _mma_problems(problem, s, instr)
        if why:
            return why
    elif s.mma or not (s.thread_m and s.thread_n):
        why.append(f"float32 problems run on the CUDA cores (FFMA): give a thread tile (thread_m, thread_n >= 1), "
                   f"not {s.thread_m}x{s.thread_n}")
        return why
    elif s.warp_m % s.thread_m or s.warp_n % s.thread_n:
        why.append(f"thread tile {s.thread_m}x{s.thread_n} does not divide warp tile {s.warp_m}x{s.warp_n}")
        return why
    elif s.lanes_m * s.lanes_n != 32:
        why.append(f"warp tile {s.warp_m}x{s.warp_n} / thread tile {s.thread_m}x{s.thread_n} gives "
                   f"{s.lanes_m}x{s.lanes_n}={s.lanes_m * s.lanes_n} threads per warp, not 32")
    if s.threads > device.max_threads_per_block:
        why.append(f"{s.threads} threads per block exceed the device's {device.max_threads_per_block}")
    accs = ComputeLayout.of(s, problem.pattern.vector, instr).acc_count
    if accs > MAX_ACCUMULATORS:
        tile = f"warp tile {s.warp_m}x{s.warp_n}" if instr.is_mma else f"thread tile {s.thread_m}x{s.thread_n}"
        why.append(f"{tile} holds {accs} accumulators per thread; more than {MAX_ACCUMULATORS} spill out of the "
                   f"255 registers a thread has")
    regs = estimate_registers(s, problem.pattern.vector, instr)
    if s.wgmma:
        regs = min(regs, 255)
    if regs * s.threads > device.regs_per_sm:
        why.append(f"about {regs} registers x {s.threads} threads exceed the {device.regs_per_sm} registers of an SM")
    g = geometry(problem, s, a_rows)
    if not 2 <= s.stages <= MAX_STAGES:
        why.append(f"stages={s.stages} must be between 2 and {MAX_STAGES}")
    if s.prefetch not in (0, 1):
        why.append(f"prefetch={s.prefetch} must be 0 (fragments load after each tile's barrier) or 1 (before it)")
    unit = "kept rows" if instr.k == 1 else f"mma steps of {instr.k} kept rows"
    if (g.KR // instr.k) % s.warps_k:
        why.append(f"warps_k={s.warps_k} does not divide the {g.KR // instr.k} {unit} of a K tile "
                   f"({s.k_windows} window(s) x {problem.pattern.n}); choose a warps_k that does")
    share = g.KR // s.warps_k // instr.k
    if s.refill_row and s.prefetch:
        why.append(f"refill_row={s.refill_row} needs prefetch=0: the rotated loop already issues its copies "
                   f"after the tile's FMAs")
    elif share and s.refill_row >= share:
        why.append(f"refill_row={s.refill_row} must be below the {share} {unit} a warp multiplies per K tile")
    if s.b_copy_bytes not in (4, 8, 16):
        why.append(f"b_copy_bytes={s.b_copy_bytes} must be 4, 8 or 16 (cp.async sizes)")
    elif (s.block_n * g.esize) % s.b_copy_bytes:
        why.append(f"block_n={s.block_n} elements of {g.esize} bytes is not a whole number of {s.b_copy_bytes}-byte copies")
    # shared A rows must start aligned to the widest access into them: the fragment reads ("km")
    # or the vector copies ("mk")
    mk = s.a_smem == "mk"
    pitch = (g.a_rows if mk else s.block_m) + s.a_pad
    copy = a_copy_elems(problem, s)
    if copy is None:
        why.append(f"a K tile of {s.k_windows} window(s) of {problem.pattern.m} is an odd number of 16-bit elements: "
                   f"cp.async copies at least 4 bytes; use an even k_windows")
        return why
    if instr.is_mma:          # ldmatrix reads 16-byte rows of [k][m]; scalar reads need the copies' alignment
        need = 16 // g.esize if not mk and g.esize == 2 else copy
    else:
        need = copy if mk else ComputeLayout.of(s, problem.pattern.vector).a_vec
    if problem.a_major == "col":
        need = max(need, copy)
        if mk:
            why.append("A is column-major: its K rows are copied as they are, into a_smem='km': set a_smem to 'km' "
                       "or leave it out")
    if pitch % need:
        why.append(f"shared A rows of {pitch} elements (with a_pad={s.a_pad}) are not {g.esize * need}-byte aligned "
                   f"for {need}-element accesses; make a_pad a multiple of {need}")
    if s.a_smem == "mk" and s.a_load != "window":
        why.append(_row_major_16_bit(s) if _copied_whole(problem) else
                   f"a_smem='mk' copies whole A rows; the {s.a_load!r} strategy needs a_smem='km'")
    if s.a_load == "gather" and not instr.is_mma:
        why.append("a_load='gather' is a tensor-core strategy (bf16, f16, tf32); float32 uses 'window' or 'rows'")
    if s.split_k > g.T:
        why.append(f"split_k={s.split_k} exceeds the {g.T} K tiles of this problem (K={problem.K}, "
                   f"{s.k_windows} window(s) of {problem.pattern.m} per tile); use split_k <= {g.T}"
                   + (f", or k_windows=1 for {problem.windows} K tiles" if s.k_windows > 1
                      and s.split_k <= problem.windows and a_copy_elems(problem, s.replace(k_windows=1)) is not None
                      else ""))   # (only where one window a tile gives enough tiles, and can be copied)
    if s.split_k > 65535:
        why.append(f"split_k={s.split_k} exceeds gridDim.z's limit of 65535")
    why += _tail_problems(s, g.tiles_m * g.tiles_n, g.T, problem.windows)
    grid_x = g.tiles_m * g.tiles_n + s.tail_tiles * (s.tail_split - 1)
    if grid_x >= 2**31:
        why.append(f"{grid_x} blocks exceed gridDim.x's limit of 2^31 - 1")
    smem = shared_bytes(problem, s, a_rows)
    if smem > device.smem_per_block:
        why.append(f"needs {smem / 1024:.1f} KB of shared memory per block ({s.stages} stages); "
                   f"{device.name} allows {device.smem_per_block / 1024:.1f} KB: use fewer stages, fewer "
                   f"windows per K tile or a smaller block tile")
    if g.a_rows > 65536:
        why.append(f"{g.a_rows} shared A rows per stage do not fit 16-bit indices")
    most = min(device.max_blocks_per_sm, device.max_threads_per_sm // s.threads)
    if s.min_blocks > most:
        why.append(f"min_blocks={s.min_blocks} asks for that many blocks of {s.threads} threads on one SM; "
                   f"{device.name} holds at most {most}: use min_blocks <= {most} (0 for no bound)")
    return why


def _mma_problems(problem: Problem, s: Schedule, instr) -> list[str]:
    """What keeps `s` off the tensor cores for `problem` (an empty list when nothing does)."""
    why = []
    V = problem.pattern.vector
    if not s.mma:
        why.append(f"{problem.dtype} problems run on the tensor cores, whose warp tiles are tiled by the "
                   f"{instr.m}x{instr.n} mma instruction: set thread_m = thread_n = 0 (got {s.thread_m}x{s.thread_n})")
        return why
    if s.warp_m % instr.m or s.warp_n % instr.n:
        why.append(f"warp tile {s.warp_m}x{s.warp_n} is not a whole number of {instr.m}x{instr.n} mma tiles")
        return why
    unit = ComputeLayout.of(s, V, instr).unit
    if unit % instr.n:
        why.append(f"V={V}: every {instr.n}-column mma tile must lie inside one vector of columns that share kept "
                   f"rows, so V (and warp_n) must be multiples of {instr.n} on the tensor cores; for V={V} use "
                   f"float32 (dtype f32, the FFMA path)")
    if _copied_whole(problem) and s.a_smem == "km":
        why.append("a row-major 16-bit A is copied as it is (cp.async moves at least 4 bytes, two elements of "
                   "a row): use a_smem='mk'" if s.a_load == "window" else _row_major_16_bit(s))
    return why


def _copied_whole(problem: Problem) -> bool:
    """A 16-bit A stored row-major: only copied as it is, [m][k] (a_smem 'mk')."""
    return problem.a_major == "row" and dtype_of(problem.dtype).itemsize == 2


def _row_major_16_bit(s: Schedule) -> str:
    """Why a row-major 16-bit A cannot take `s.a_load` (anything but "window"), and the two ways out."""
    return (f"a row-major 16-bit A is copied as it is (a_smem='mk'), which only a_load='window' reads; "
            f"a_load={s.a_load!r} needs A column-major: use a_load='window' with a_smem='mk', or store A "
            f"column-major (a_major='col')")


def _wgmma_problems(problem: Problem, s: Schedule, device: Device) -> list[str]:
    """What keeps `s` off Hopper's warpgroup mma (wgmma) for `problem`."""
    why = []
    if s.wgmma != 1:
        return [f"wgmma={s.wgmma} must be 0 (mma.sync) or 1 (warpgroup mma)"]
    if problem.dtype not in ("bf16", "f16"):
        how = "FFMA on the CUDA cores" if dtype_of(problem.dtype).compute == "ffma" else "mma.sync"
        why.append(f"wgmma runs bf16 and f16 here; {problem.dtype} uses {how} (wgmma=0)")
    if device.cc < (9, 0):
        why.append(f"wgmma needs a Hopper GPU (compute capability 9.0); {device.name} is {device.arch}")
    if s.warp_m % 64:
        why.append(f"a wgmma warpgroup tile is whole 64-row instructions: warp_m={s.warp_m} is not a multiple of 64")
    unit = gcd(problem.pattern.vector, s.warp_n)
    if unit > 256 or unit % 8:
        why.append(f"wgmma's N is one index unit (gcd(V, warp_n) = {unit}): it must be a multiple of 8 up to 256")
    if s.warps_k != 1 or s.prefetch or s.refill_row:
        why.append("wgmma schedules issue each K tile's products as one asynchronous group: warps_k=1, prefetch=0, "
                   "refill_row=0")
    if s.wgmma_a_smem:
        why += _wgmma_a_smem_problems(problem, s)
    if s.min_blocks and s.warp_m % 64 == 0:
        # wgmma's accumulators cannot spill: ptxas refuses a register bound below them plus ~30
        # (13.0, sm_90a: 94 asked for a 64x128 warpgroup tile's 64 under min_blocks=3 of 256 threads)
        cap = min(255, device.regs_per_sm // (s.min_blocks * s.threads) // 8 * 8)
        acc = s.warp_m * s.warp_n // 128
        if cap < acc + 30:
            fits = max(0, device.regs_per_sm // (s.threads * (acc + 30 + 7) // 8 * 8))
            if fits == 0:    # not even one block: no bound helps
                why.append(f"{s.threads} threads of a {s.warp_m}x{s.warp_n} warpgroup tile need about "
                           f"{acc + 30} registers each ({acc} fp32 accumulators plus ~30), more than the "
                           f"{device.regs_per_sm} of an SM hold: use a smaller block tile (fewer warpgroups)")
            else:
                why.append(f"min_blocks={s.min_blocks} bounds {s.threads} threads to {cap} registers, fewer than "
                           f"the {acc} fp32 accumulators of a {s.warp_m}x{s.warp_n} warpgroup tile need plus ~30: "
                           f"use min_blocks <= {fits} (0 for no bound)")
    return why


def _wgmma_a_smem_problems(problem: Problem, s: Schedule) -> list[str]:
    """What keeps wgmma from reading A out of shared memory (wgmma_a_smem=1) under `s`: the A tile
    must hold each index unit's kept rows in order (the "gather" copy of a column-major A), unpadded
    in the 128-byte swizzled layout wgmma reads (nodes.Shared.swizzled), and the pipeline one stage
    more than the tile multiplied and the one being filled (a group stays in flight)."""
    if s.wgmma_a_smem != 1:
        return [f"wgmma_a_smem={s.wgmma_a_smem} must be 0 (A fragments from registers) or 1 (A from shared memory)"]
    why = []
    wrong = [f"{name}={value!r} (needs {need!r})" for name, value, need in
             (("a_load", s.a_load, "gather"), ("a_smem", s.a_smem, "km"), ("a_major", problem.a_major, "col"))
             if value != need]
    if wrong:
        why.append(f"wgmma_a_smem=1 reads each index unit's kept rows of a column-major A in order: "
                   f"{', '.join(wrong)}; or use wgmma_a_smem=0")
    if s.a_pad:
        why.append(f"wgmma_a_smem=1 lays A out in core matrices, which take no padding: give a_pad=0, not {s.a_pad}")
    if s.stages < 3:
        why.append(f"wgmma_a_smem=1 keeps a K tile's group in flight while the next is issued, so a pipeline needs "
                   f"a stage for each besides the one being filled: stages >= 3, not {s.stages}")
    return why


def validate(problem: Problem, s: Schedule, device: Device, a_rows: int | None = None) -> None:
    why = problems(problem, s, device, a_rows)
    if why:
        raise ScheduleError(f"schedule {s.short()} cannot run {problem} on {device.name}:\n  - "
                            + "\n  - ".join(why))


def _tail_problems(s: Schedule, tiles: int, T: int, windows: int) -> list[str]:
    """A tail split (tail_tiles, tail_split) names tiles the grid has and K tiles each part gets."""
    if (s.tail_tiles > 0) != (s.tail_split > 1):
        return [f"tail_tiles={s.tail_tiles} and tail_split={s.tail_split} go together: give both (tail_tiles >= 1 "
                f"and tail_split >= 2) or neither"]
    why = []
    if s.tail_tiles > tiles:
        why.append(f"tail_tiles={s.tail_tiles} exceeds the grid's {tiles} output tiles; use tail_tiles <= {tiles}")
    if s.tail_split > T:
        more = windows if s.k_windows > 1 and windows >= 2 else 0     # K tiles of one window each
        why.append(f"tail_split={s.tail_split} exceeds the {T} K tile(s) of this problem ({s.k_windows} window(s) "
                   f"a tile), which the parts share out; "
                   + (f"use tail_split <= {T}" if T >= 2 else "a tail split needs 2 or more")
                   + (f", or k_windows=1 for {more} K tiles" if more else ""))
    if s.tail_tiles and s.split_k > 1:
        why.append(f"tail_tiles={s.tail_tiles} with split_k={s.split_k}: split every tile (split_k) or the last ones "
                   f"(tail_tiles, tail_split), not both")
    return why
