"""Why a schedule cannot run: every reason, in words, with the numbers and what to change."""
from __future__ import annotations

from .build import a_copy_elems, reduce_buffer
from .device import Device
from .errors import ScheduleError
from .layout import ComputeLayout
from .operands import geometry
from .problem import Problem
from .schedule import Schedule

MAX_STAGES = 8
MAX_ACCUMULATORS = 128   # thread_m * thread_n: beyond this the registers (255 per thread) spill


def estimate_registers(s: Schedule, vector: int = 32) -> int:
    """Registers per thread before ptxas says: accumulators, double-buffered fragments (one A
    fragment per index look-up group), addressing."""
    groups = len(ComputeLayout.of(s, vector).groups)
    return s.thread_m * s.thread_n + 2 * (s.thread_m * groups + s.thread_n) + 28


def shared_bytes(problem: Problem, s: Schedule, a_rows: int | None = None) -> int:
    g = geometry(problem, s, a_rows)
    a = s.stages * (s.block_m * (g.a_rows + s.a_pad) if s.a_smem == "mk" else g.a_rows * (s.block_m + s.a_pad)) * 4
    b = s.stages * g.KR * s.block_n * 4
    i = s.stages * g.chunk_bytes
    pipeline = sum(-(-x // 16) * 16 for x in (a, b, i))
    return max(pipeline, reduce_buffer(s).nbytes) if s.warps_k > 1 else pipeline


def problems(problem: Problem, s: Schedule, device: Device, a_rows: int | None = None) -> list[str]:
    """Empty when `s` can run `problem` on `device`; else one sentence per reason."""
    why = []
    if s.block_m % s.warp_m or s.block_n % s.warp_n:
        why.append(f"warp tile {s.warp_m}x{s.warp_n} does not divide block tile {s.block_m}x{s.block_n}")
        return why
    if s.warp_m % s.thread_m or s.warp_n % s.thread_n:
        why.append(f"thread tile {s.thread_m}x{s.thread_n} does not divide warp tile {s.warp_m}x{s.warp_n}")
        return why
    if s.lanes_m * s.lanes_n != 32:
        why.append(f"warp tile {s.warp_m}x{s.warp_n} / thread tile {s.thread_m}x{s.thread_n} gives "
                   f"{s.lanes_m}x{s.lanes_n}={s.lanes_m * s.lanes_n} threads per warp, not 32")
    if s.threads > device.max_threads_per_block:
        why.append(f"{s.threads} threads per block exceed the device's {device.max_threads_per_block}")
    if s.thread_m * s.thread_n > MAX_ACCUMULATORS:
        why.append(f"thread tile {s.thread_m}x{s.thread_n} holds {s.thread_m * s.thread_n} accumulators; "
                   f"more than {MAX_ACCUMULATORS} spill out of the 255 registers a thread has")
    regs = estimate_registers(s, problem.pattern.vector)
    if regs * s.threads > device.regs_per_sm:
        why.append(f"about {regs} registers x {s.threads} threads exceed the {device.regs_per_sm} registers of an SM")
    g = geometry(problem, s, a_rows)
    if g.KR % s.warps_k:
        why.append(f"warps_k={s.warps_k} does not divide the {g.KR} kept rows of a K tile "
                   f"({s.k_windows} window(s) x {problem.pattern.n}); choose a warps_k that does")
    if not 2 <= s.stages <= MAX_STAGES:
        why.append(f"stages={s.stages} must be between 2 and {MAX_STAGES}")
    if s.prefetch not in (0, 1):
        why.append(f"prefetch={s.prefetch} must be 0 (fragments load after each tile's barrier) or 1 (before it)")
    share = g.KR // s.warps_k
    if s.refill_row and s.prefetch:
        why.append(f"refill_row={s.refill_row} needs prefetch=0: the rotated loop already issues its copies "
                   f"after the tile's FMAs")
    elif s.refill_row >= share:
        why.append(f"refill_row={s.refill_row} must be below the {share} kept rows a warp multiplies per K tile")
    if s.b_copy_bytes not in (4, 8, 16):
        why.append(f"b_copy_bytes={s.b_copy_bytes} must be 4, 8 or 16 (cp.async sizes)")
    elif (s.block_n * 4) % s.b_copy_bytes:
        why.append(f"block_n={s.block_n} floats is not a whole number of {s.b_copy_bytes}-byte copies")
    # shared A rows must start aligned to the widest access into them: the fragment reads ("km")
    # or the vector copies ("mk")
    mk = s.a_smem == "mk"
    pitch = (g.a_rows if mk else s.block_m) + s.a_pad
    need = a_copy_elems(problem, s) if mk else ComputeLayout.of(s, problem.pattern.vector).a_vec
    if problem.a_major == "col":
        need = max(need, a_copy_elems(problem, s))
        if mk:
            why.append("A is column-major: its K rows are copied as they are, into a_smem='km'")
    if pitch % need:
        why.append(f"shared A rows of {pitch} floats (with a_pad={s.a_pad}) are not {4 * need}-byte aligned "
                   f"for {need}-float accesses; make a_pad a multiple of 4")
    if s.a_smem == "mk" and s.a_load != "window":
        why.append("a_smem='mk' copies whole A rows; the compacted 'rows' strategy needs a_smem='km'")
    if s.split_k > g.T:
        why.append(f"split_k={s.split_k} exceeds the {g.T} K tiles of this problem (K={problem.K}, "
                   f"{s.k_windows} window(s) of {problem.pattern.m} per tile); use split_k <= {g.T}")
    if s.split_k > 65535:
        why.append(f"split_k={s.split_k} exceeds gridDim.z's limit of 65535")
    if g.tiles_m * g.tiles_n >= 2**31:
        why.append(f"{g.tiles_m * g.tiles_n} blocks exceed gridDim.x's limit")
    smem = shared_bytes(problem, s, a_rows)
    if smem > device.smem_per_block:
        why.append(f"needs {smem / 1024:.1f} KB of shared memory per block ({s.stages} stages); "
                   f"{device.name} allows {device.smem_per_block / 1024:.1f} KB: use fewer stages, fewer "
                   f"windows per K tile or a smaller block tile")
    if g.a_rows > 65536:
        why.append(f"{g.a_rows} shared A rows per stage do not fit 16-bit indices")
    return why


def validate(problem: Problem, s: Schedule, device: Device, a_rows: int | None = None) -> None:
    why = problems(problem, s, device, a_rows)
    if why:
        raise ScheduleError(f"schedule {s.short()} cannot run {problem} on {device.name}:\n  - "
                            + "\n  - ".join(why))
