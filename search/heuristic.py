"""A sensible schedule for a shape without measuring: what `nmgen.spmm` uses when the tuning
database has nothing for the problem.

- Block tile by M: 16 / 32 / 64 / 128 rows, 128 columns; every warp 32 columns wide so that with
  V >= 32 all lanes of a warp gather the same A row (shared-memory broadcast). Narrow vectors
  (V < 8) take thinner thread tiles: each column needs its own index look-up.
- K tile: enough windows for >= 32 K rows and >= 8 kept rows per tile (fewer fixed costs per FMA).
- split-K when the block grid alone cannot fill the SMs (decode-like M), up to 16-way.
"""
from __future__ import annotations

from math import gcd

from ..ir.device import Device
from ..ir.instructions import for_dtype
from .space import SMALL_TILE_HINT, copyable_k_windows
from ..ir.operands import geometry
from ..ir.problem import Problem, ceil_div
from ..ir.schedule import Schedule
from ..ir.validate import problems

_TILES = (  # (max M, block/warp/thread tiles) for V >= 8: warps 32 columns wide
    (16, dict(block_m=16, block_n=128, warp_m=16, warp_n=32, thread_m=4, thread_n=4)),
    (32, dict(block_m=32, block_n=128, warp_m=32, warp_n=32, thread_m=4, thread_n=8)),
    (64, dict(block_m=64, block_n=128, warp_m=64, warp_n=32, thread_m=8, thread_n=8)),
    (None, dict(block_m=128, block_n=128, warp_m=64, warp_n=32, thread_m=8, thread_n=8)),
)
# V < 8: every column (or pair) needs its own index look-up and A fragment, so threads hold fewer
# columns (4) and the registers stay in budget
_TILES_NARROW = (
    (16, dict(block_m=16, block_n=64, warp_m=16, warp_n=16, thread_m=2, thread_n=4)),
    (32, dict(block_m=32, block_n=64, warp_m=32, warp_n=16, thread_m=4, thread_n=4)),
    (None, dict(block_m=128, block_n=64, warp_m=64, warp_n=16, thread_m=8, thread_n=4)),
)


# the tensor cores (bf16, f16, tf32): warp tiles of 16 x 8 mma tiles, 16 to 64 rows, 32 columns
# (one index look-up per step for V >= 32), A padded 16 bytes a row (ldmatrix without conflicts)
_TILES_MMA = (
    (16, dict(block_m=16, block_n=128, warp_m=16, warp_n=32)),
    (32, dict(block_m=32, block_n=128, warp_m=32, warp_n=32)),
    (64, dict(block_m=64, block_n=128, warp_m=64, warp_n=32)),
    (None, dict(block_m=128, block_n=128, warp_m=64, warp_n=32)),
)


def default_schedule(problem: Problem, device: Device) -> Schedule:
    p = problem.pattern
    ins = for_dtype(problem.dtype)
    if ins.is_mma:
        tiles = next(t for limit, t in _TILES_MMA if limit is None or problem.M <= limit)
        wn = min(32, max(8, gcd(p.vector, 32)))       # 8-column mma tiles inside one vector
        tiles = dict(tiles, warp_n=wn, block_n=4 * wn, thread_m=0, thread_n=0, a_pad=8,
                     a_smem="mk" if problem.a_major == "row" and ins.per_reg == 2 else "km")
        kw = copyable_k_windows(problem, max(1, min(problem.windows, ins.k // gcd(ins.k, p.n) if p.n * p.m <= 256
                                                   else ceil_div(ins.k, p.n))))
    else:
        table = _TILES if p.vector >= 8 else _TILES_NARROW
        tiles = next(t for limit, t in table if limit is None or problem.M <= limit)
        kw = max(1, min(problem.windows, max(ceil_div(32, p.m), ceil_div(8, p.n))))
    s = Schedule(**tiles, k_windows=kw, stages=3)
    g = geometry(problem, s)
    blocks = g.tiles_m * g.tiles_n
    if blocks < device.sms:
        s = s.replace(split_k=max(1, min(g.T, 16, ceil_div(2 * device.sms, blocks))))
    # shrink until it fits this device (shared memory, K tiles for the split)
    for _ in range(16):
        why = problems(problem, s, device)
        if not why:
            return s
        if s.stages > 2:
            s = s.replace(stages=s.stages - 1)
        elif s.k_windows > 1:
            s = s.replace(k_windows=copyable_k_windows(problem, max(1, s.k_windows // 2)))
        elif s.split_k > 1:
            s = s.replace(split_k=max(1, s.split_k // 2))
        elif ins.is_mma and s.block_m > 16:           # windows of thousands of rows: fewer rows of A a stage
            s = s.replace(block_m=s.block_m // 2, warp_m=min(s.warp_m, s.block_m // 2))
        else:
            break
    from ..ir.errors import ScheduleError
    why = "; ".join(problems(problem, s, device))
    if s.a_smem == "mk" and ins.is_mma and ins.per_reg == 2:      # the one copy a row-major 16-bit A has
        raise ScheduleError(f"no schedule fits {problem} on {device.name}: a row-major 16-bit A is copied a whole "
                            f"window ({p.m} columns) at a time, and even a 16-row tile of one window does not fit "
                            f"({why}); "
                            f"store A column-major (--a-major col, a_major=\"col\"), whose copies take only the "
                            f"kept rows, or use a smaller window m")
    try:        # suggest copying only the kept rows of A where that alone makes the tile fit
        rows_fits = s.a_load != "rows" and not problems(problem, s.replace(a_load="rows"), device)
    except ScheduleError:
        rows_fits = False
    hint = ('e.g. {"a_load": "rows"} to copy only the kept rows of A' if rows_fits
            else SMALL_TILE_HINT)
    raise ScheduleError(f"no default schedule fits {problem} on {device.name} ({why}); give a schedule that does "
                        f"(--schedule / schedule=, {hint})")


def schedule_fields(given) -> "Schedule | dict":
    """A `schedule=` argument checked on its own: a Schedule as it is, else the dict of fields that
    a dict or a JSON object (text) gives, each field known and of a valid value. ScheduleError for
    unknown fields (listing the valid ones), bad values, or any other type."""
    from collections.abc import Mapping
    from ..ir.errors import ScheduleError
    if isinstance(given, Schedule):
        return given
    if isinstance(given, str):
        fields = Schedule.fields_of_json(given)
    elif isinstance(given, Mapping):
        fields = dict(given)
    else:
        raise ScheduleError(f"schedule must be a nmgen.Schedule, a dict of schedule fields or a JSON object of them "
                            f"(e.g. {{'split_k': 2}}: fields left out take the default schedule's), got "
                            f"{type(given).__name__} {given!r:.80}")
    Schedule.from_dict({**Schedule().to_dict(), **fields})     # each field checks alone: refuse before any work
    return fields


def as_schedule(given, problem: Problem, device: Device) -> Schedule:
    """The schedule a `schedule=` argument (or the command line's --schedule) asks for: a Schedule
    as it is; a dict of schedule fields, or a JSON object of them (text), laid over the default
    schedule for `problem` on `device` (the plain Schedule()'s fields where no default fits; a
    tail split asked for without split_k replaces the default's split-K).
    ScheduleError as `schedule_fields` says. Whether the result can run `problem` is for
    ir.validate to say."""
    from ..ir.errors import ScheduleError
    fields = schedule_fields(given)
    if isinstance(fields, Schedule):
        return fields
    try:
        base = default_schedule(problem, device)
    except ScheduleError:
        base = Schedule()
    if (fields.get("tail_tiles", 0) or fields.get("tail_split", 1) != 1) and "split_k" not in fields:
        base = base.replace(split_k=1)     # the default's split-K for a small grid gives way to the asked tail
    return Schedule.from_dict({**base.to_dict(), **fields})
