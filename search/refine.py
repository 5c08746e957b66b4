"""One step from a measured schedule, along choices the model cannot rank: the tuner's local search.

The space (search.space) is what the model ranks; some choices depend on what ptxas makes of the
code, which the model does not know, so they are decided by measuring them next to the winners:

  stages       one stage fewer and one more, of the depths the space offers (for FFMA and tf32 the
               model sees the depth only through the blocks per SM shared memory allows, so it ties
               them; for 16-bit tensor cores it ranks them by measured factors; either way the
               model-topk tuner measures one depth per family, search.tuner.best_families)
  prefetch     the other loop form (H100, NOTES.md run 18: the rotated loop wins by 1-3% where its
               extra registers cost no occupancy, and loses up to 15% elsewhere)
  min_blocks   with prefetch, ptxas takes more registers (FFMA on the H100: ~30; 16-bit mma.sync on
               the H200: median 6, quartiles 3-19); the bound that keeps the blocks per SM
               of the measured kernel (from its recorded registers) asks it to fit them. And where
               registers alone keep out another block (64x256 at 130 registers: one block of 8
               warps per SM), the bound that lets it in
  refill_row   the copies issued after the first one or two kept rows of a tile instead of right
               after its barrier, held to the measured blocks per SM (NOTES.md run 22: -3..-8% at
               12:32, where the first row's loads otherwise wait behind ~35 copy instructions;
               ptxas then takes 0-20 more registers)
  block tile   twice the warps along M or along N, the warp tile kept (512x4096x11008 at 12:32:
               128x256 blocks took 399 us warm where the space's best 64x256 took 427, run 14; 418.8
               against 416.5 us flushed in run 19: close enough that only measuring decides)
  K tile       (tensor cores) twice the windows, at the deepest of the space's depths up to the
               measured one that fits: fewer barriers and index loads a kept row, against fewer
               stages and more registers. The space stops at 32 kept rows a tile at 16:32; measured
               on the H200, 64 were 4-6% slower for the 128x256 winners of the large shapes and 9%
               faster for 512x4096x11008's 64x256 tile (NOTES.md 41), so only measuring decides
               (FFMA: every larger K tile was slower on the H100, NOTES.md 13)
  waves        block_n less whole warp columns where the grid's last wave is then fuller: the
               space's block tiles are powers of two, and 1024x5120x5120 in 128x256 tiles is 160
               blocks on 132 SMs, two waves for 1.2 waves of work; 128x160 tiles are 256 blocks in
               the same two waves, each block 5/8 of the work (wave_balanced_block_n). Fewer warps
               a block hide less latency, so the model cannot rank it (H200, 2026-12-01: 128x160
               and 128x192 took 8-10% less time than 128x256 at 1024x5120x5120)
  tail split   the tiles of a short last wave split along K over the slots it leaves idle
               (tail_split): the data-parallel plus split-K form of stream-K
"""
from __future__ import annotations

from ..ir.device import Device
from ..ir.instructions import for_dtype
from ..ir.problem import Problem, ceil_div
from ..ir.schedule import Schedule
from ..ir.validate import problems, shared_bytes
from .model import blocks_per_sm
from .space import copyable_k_windows, per_sm_estimate, stage_choices, tail_split

MAX_REFINE_THREADS = 512   # beyond 16 warps a block the FFMA tiles hold too few blocks per SM


def refinements(problem: Problem, s: Schedule, device: Device, registers: int | None,
                a_rows=lambda s: None) -> list[Schedule]:
    """Valid schedules one step from `s` (measured with `registers` per thread), distinct, `s` excluded.
    `a_rows(schedule)` gives the compacted A list length of a "rows" schedule."""
    out = [s.replace(prefetch=1 - s.prefetch, refill_row=0, min_blocks=1)]
    held = 0
    if registers:
        smem = shared_bytes(problem, s, a_rows(s))
        held = blocks_per_sm(s, device, registers, smem)
        if not s.prefetch and held > 1:
            out.append(s.replace(prefetch=1, refill_row=0, min_blocks=held))
        if 0 < held < blocks_per_sm(s, device, 1, smem):      # registers are what keeps the next block out
            out.append(s.replace(min_blocks=held + 1))
    for r in (1, 2):
        if r != s.refill_row:
            out.append(s.replace(prefetch=0, refill_row=r, min_blocks=max(held, 1)))
    depths = stage_choices(problem, s)
    if s.stages in depths:
        i = depths.index(s.stages)
        out += [s.replace(stages=d) for d in depths[max(0, i - 1):i] + depths[i + 1:i + 2]]
    if for_dtype(problem.dtype).is_mma:
        kw = copyable_k_windows(problem, min(2 * s.k_windows, problem.windows))
        deeper = [s.replace(k_windows=kw, stages=d) for d in reversed(depths) if d <= s.stages]
        out += [c for c in deeper if kw > s.k_windows and not problems(problem, c, device, a_rows(c))][:1]
    # the grid's shape: the tail split (re-derived for the measured blocks per SM, or dropped) and
    # block tiles, each from `s` without its tail (a tail counts tiles of s's grid), with their own
    plain = s.replace(tail_tiles=0, tail_split=1)
    per_sm = held or per_sm_estimate(problem, plain, device, a_rows(plain))
    tail = tail_split(problem, plain, device, per_sm)
    out += [c for c in (plain, tail) if c is not None]
    balanced = wave_balanced_block_n(problem, plain, device, per_sm)
    shapes = [plain.replace(block_n=balanced)] if balanced else []
    for field in ("block_m", "block_n"):
        bigger = plain.replace(**{field: 2 * getattr(s, field)})
        if bigger.threads <= MAX_REFINE_THREADS and getattr(bigger, field) <= 256:
            shapes.append(bigger)
    for c in shapes:
        out.append(c)
        c_tail = tail_split(problem, c, device, per_sm_estimate(problem, c, device, a_rows(c)))
        if c_tail:
            out.append(c_tail)
    seen, keep = {s.hash()}, []
    for c in out:
        if c.hash() not in seen and not problems(problem, c, device, a_rows(c)):
            seen.add(c.hash())
            keep.append(c)
    return keep


def wave_balanced_block_n(problem: Problem, s: Schedule, device: Device, per_sm: int) -> int | None:
    """The block_n between half `s`'s (the space has that one) and its own, whole warp columns less,
    whose grid takes the least time in whole waves of `per_sm` blocks per SM, counting a block's time
    as its share of columns: (waves) x (block_n). None where none beats `s`'s own by 10% (the margin:
    fewer warps hide less latency; per_sm is held, though fewer threads may let more blocks in)."""
    if per_sm < 1:
        return None
    tiles_m, slots = ceil_div(problem.M, s.block_m), device.sms * per_sm

    def cost(bn: int) -> int:
        return ceil_div(tiles_m * ceil_div(problem.N, bn) * s.split_k, slots) * bn

    narrower = [bn for bn in range(s.block_n - s.warp_n, 0, -s.warp_n) if 2 * bn > s.block_n]
    best = min(narrower, key=cost, default=None)
    return best if best and cost(best) < 0.9 * cost(s.block_n) else None
