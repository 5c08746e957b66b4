"""Every schedule worth measuring for a problem on a device.

Dimensions (each a choice the H100 measurements showed to matter; see NOTES.md):
  warp tile     128x32 (16x8 per thread), 64x32 (8x8), 32x32 (4x8), 16x32 (4x4), 16 columns wide
                (8x4, 4x4, 2x4) for V < 32, and for M <= 16 tiles of 1-2 rows per thread (8x32,
                4x32, 2x64, 1x128); with V >= 16 a thread does one index look-up per kept row
  warps         2..8 per block (64..256 threads), the block no larger than the problem needs
  K tile        the smallest number of windows giving >= 32 K rows and >= 8 kept rows, and twice it
  stages        2, 3
  A             window+km, window+mk, and rows+km when at most a quarter of the rows are kept;
                with A column-major window+km, and rows+km when at most half are kept
  split-K       1, plus up to two values that bring a grid too small for the GPU to ~1 and ~2 waves
  tail split    for a grid of more than one wave whose last is at most half full, also the last
                wave's tiles split along K over the slots it leaves idle (tail_split)
  sliced K      for such a grid, without split-K, also 2 and 4 warps per warp tile (warps_k), up to
                512 threads a block: the other way to give a small grid more warps
On the tensor cores (bf16, f16, tf32) the warp tile is a grid of 16 x 8 mma tiles instead
(MMA_WARP_TILES, no thread tile, up to 128 accumulators a thread), every 8-column tile inside one
vector (V a multiple of 8); the K tile holds whole mma steps where few windows allow it; stages
2-4; a 16-bit row-major A is copied as it is ("mk"), a column-major one by K rows ("km", read
with ldmatrix).
Every schedule is checked by ir.validate (shared memory, registers, threads, split-K <= K tiles).
"""
from __future__ import annotations

from math import gcd

from ..ir.device import Device
from ..ir.dtypes import dtype as dtype_of
from ..ir.instructions import for_dtype
from ..ir.layout import ComputeLayout
from ..ir.operands import colours_rows, geometry, rows_length, vector_rows
from ..ir.problem import Problem, ceil_div
from ..ir.schedule import Schedule
from ..ir.validate import estimate_registers, problems, shared_bytes
from .model import MMA_FIT_DTYPES, blocks_per_sm

# (warp_m, warp_n, thread_m, thread_n); lanes follow (warp / thread), 32 per warp. The last four
# hold 1-2 rows per thread: for M <= 16 (decode) a taller tile multiplies mostly padding.
WARP_TILES = ((128, 32, 16, 8), (64, 32, 8, 8), (32, 32, 4, 8), (16, 32, 4, 4),
              (64, 16, 8, 4), (32, 16, 4, 4), (16, 16, 2, 4),
              (8, 32, 2, 4), (4, 32, 1, 4), (2, 64, 1, 4), (1, 128, 1, 4))
WARP_GRIDS = ((1, 2), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4), (4, 2), (1, 8))
SPLITS = (2, 3, 4, 6, 8, 12, 16)
STAGES = (2, 3)
# (warp_m, warp_n) of the mma path
MMA_WARP_TILES = ((64, 32), (32, 32), (128, 32), (64, 64), (32, 64), (16, 32), (16, 64), (64, 16), (32, 16),
                  (16, 16), (16, 8), (32, 8), (64, 8))
MMA_STAGES = (2, 3, 4)
MMA_PAD = 8          # elements a shared A row is padded by: 16 bytes, ldmatrix rows on distinct banks
# wgmma (sm_90, bf16/f16): (block_m, block_n, warpgroup tile m, n): one or two warpgroups a block
WGMMA_TILES = ((64, 256, 64, 128), (64, 256, 64, 256), (128, 128, 64, 128), (64, 128, 64, 128), (128, 256, 64, 256),
               (128, 128, 128, 128), (128, 64, 64, 64))
WGMMA_STAGES = (3, 4, 6)


def _pow2_at_least(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


def _mma_warp_tiles(problem: Problem):
    ins = for_dtype(problem.dtype)
    for wm_, wn_ in MMA_WARP_TILES:
        lay = ComputeLayout(wm_, wn_, wm_, wn_, 0, 0, gcd(problem.pattern.vector, wn_), instr=ins)
        if lay.unit % ins.n or lay.acc_count > 128 or wm_ > max(16, _pow2_at_least(problem.M)):
            continue
        yield wm_, wn_, 0, 0


def tile_shapes(problem: Problem):
    """(block_m, block_n, warp_m, warp_n, thread_m, thread_n) that fit the problem and the vector."""
    V = problem.pattern.vector
    max_bm = max(16, _pow2_at_least(problem.M))
    max_bn = max(32, _pow2_at_least(problem.N))
    if for_dtype(problem.dtype).is_mma:
        for wm_, wn_, tm, tn in _mma_warp_tiles(problem):
            for gm, gn in WARP_GRIDS:
                bm, bn = wm_ * gm, wn_ * gn
                if bm <= min(max_bm, 256) and bn <= min(max_bn, 256):
                    yield bm, bn, wm_, wn_, tm, tn
        return
    for wm_, wn_, tm, tn in WARP_TILES:
        lay = ComputeLayout(wm_, wn_, wm_, wn_, tm, tn, gcd(V, wn_))
        if V >= 16 and len(lay.groups) > 1:             # one index look-up per kept row
            continue
        if tm * len(lay.groups) > 32:                   # an A fragment per look-up: registers
            continue
        if V >= 16 and wn_ == 16 and V % 32 == 0:       # 32-wide warps do the same with more reuse
            continue
        if tm <= 2 and problem.M > 16 or tm >= 4 and wm_ < 16:
            continue
        for gm, gn in WARP_GRIDS:
            bm, bn = wm_ * gm, wn_ * gn
            if bm <= min(max_bm, 256) and bn <= min(max_bn, 256):
                yield bm, bn, wm_, wn_, tm, tn


def split_choices(blocks: int, T: int, sms: int) -> list[int]:
    """1, and for a grid under two waves of one block per SM, the splits nearest one and two waves."""
    out = [1]
    if blocks < 2 * sms:
        for waves in (1, 2):
            want = waves * sms / blocks
            fits = [s for s in SPLITS if s <= T]
            if fits:
                out.append(min(fits, key=lambda s: abs(s - want)))
    return sorted(set(out))


def warps_k_choices(blocks: int, warps: int, sms: int) -> list[int]:
    """1, and for a grid under two waves of one block per SM, 2 and 4 warps per warp tile: more
    warps for each SM to switch between, without split-K's memset and atomics."""
    if blocks >= 2 * sms:
        return [1]
    return [w for w in (1, 2, 4) if warps * w <= 16]


def k_windows_choices(problem: Problem) -> list[int]:
    """FFMA: the fewest windows giving >= 32 K rows and >= 8 kept rows a tile, and twice that. mma:
    the fewest giving one step of k kept rows, the fewest giving whole steps (no padding), and twice
    the first, while a stage of 128 rows of A stays within 64 KB; where none does, the first and the
    most windows that do (at least one)."""
    p = problem.pattern
    ins = for_dtype(problem.dtype)
    if ins.is_mma:
        first, exact = ceil_div(ins.k, p.n), ins.k // gcd(ins.k, p.n)
        per_window = p.m * 128 * dtype_of(problem.dtype).itemsize
        fits = [kw for kw in (first, exact, 2 * first) if kw * per_window <= 65536]
        # none within 64 KB (windows of hundreds of rows): the step's windows, and the most that do fit
        # (down to one window: a K tile whose kept rows pad the mma step, but the only one smaller tiles hold)
        fits = fits or [first, max(1, min(first, 65536 // per_window))]
        return sorted({copyable_k_windows(problem, min(kw, problem.windows)) for kw in fits})
    kw = max(1, ceil_div(32, p.m), ceil_div(8, p.n))
    return sorted({min(kw, problem.windows), min(2 * kw, problem.windows)})


def copyable_k_windows(problem: Problem, kw: int) -> int:
    """`kw`, or the next even number where a row-major 16-bit A is copied whole (cp.async moves pairs
    of its elements, so a K tile of an odd window m needs an even number of windows; a K tile may
    reach past K: its missing rows are zero-filled)."""
    if problem.a_major == "row" and dtype_of(problem.dtype).itemsize == 2 and problem.pattern.m % 2:
        return kw + kw % 2
    return kw


def a_choices(problem: Problem) -> list[tuple[str, str]]:
    """(a_load, a_smem). A column-major copies K rows as they are (km); skipping unused ones then
    saves real traffic, so "rows" is tried from half the rows kept down. A 16-bit row-major A can
    only be copied as it is ("mk", whole windows)."""
    mma = for_dtype(problem.dtype).is_mma
    gather = [("gather", "km")] if mma else []       # tensor cores: each unit's kept rows, copied in order
    if problem.a_major == "col":
        return [("window", "km")] + gather + ([("rows", "km")] if problem.pattern.n * 2 <= problem.pattern.m else [])
    if dtype_of(problem.dtype).itemsize == 2:
        return [("window", "mk")]
    out = [("window", "km"), ("window", "mk")] + gather
    if problem.pattern.n * 4 <= problem.pattern.m:
        out.append(("rows", "km"))
    return out


def stage_choices(problem: Problem, s: Schedule) -> tuple[int, ...]:
    """The pipeline depths the space offers a schedule of `s`'s kind (FFMA, mma.sync, wgmma)."""
    return WGMMA_STAGES if s.wgmma else MMA_STAGES if for_dtype(problem.dtype).is_mma else STAGES


def loop_forms(problem: Problem) -> tuple[int, ...]:
    """The loop forms (prefetch) the space offers a problem's mma.sync or FFMA schedules: both where
    the model ranks them (16-bit mma.sync: search.model.PIPELINE_FACTOR, measured on the H200), else
    the plain loop only (FFMA, tf32: the refinements try the rotated loop next to the winners)."""
    return (0, 1) if problem.dtype in MMA_FIT_DTYPES else (0,)


# What the model cannot rank, decided by measuring next to the winners (search.refine): the pipeline
# depth and the loop form (for FFMA and tf32 the model sees the depth only through the blocks per SM
# that shared memory allows; for 16-bit tensor-core schedules it ranks both by measured factors,
# search.model.PIPELINE_FACTOR, so a family's best-predicted member is its best-predicted depth and
# form), the copies' place in a tile, the register bound, and whether the last wave is split (the
# model ranks it, H200 2026-12-01: its ratio to the plain schedule within 2-8% of the measured one
# for mma.sync 128x256, but not the sign for wgmma, so the refinements measure the other choice
# beside a family's best)
MEASURED_FIELDS = ("stages", "prefetch", "refill_row", "min_blocks", "tail_tiles", "tail_split")


def family(s: Schedule) -> str:
    """`s` without its MEASURED_FIELDS: schedules of one family differ only where the model cannot
    tell them apart, or (16-bit tensor cores) tells them apart by measured factors alone."""
    return Schedule.from_dict({**s.to_dict(), **{f: getattr(Schedule(), f) for f in MEASURED_FIELDS}}).hash()


# what to change in a schedule whose tile does not fit (said by search and by the default schedule)
SMALL_TILE_HINT = "a smaller block tile: block_m, k_windows 1, stages 2"


def space_to_search(problem: Problem, device: Device) -> list[Schedule]:
    """enumerate_space, for a search: ScheduleError, saying so, where it holds nothing (a search
    of an empty space would otherwise measure nothing and report success)."""
    space = enumerate_space(problem, device)
    if not space:
        from ..ir.errors import ScheduleError
        raise ScheduleError(f"no schedule of the search space fits {problem} on {device.name} (none of its block "
                            f"tiles passes the checks here; windows of m = {problem.pattern.m} rows are copied whole, "
                            f"so a large m needs a small tile); nothing to search. Give a schedule with "
                            f"{SMALL_TILE_HINT} (--schedule / schedule=) or use a smaller window m")
    return space


def enumerate_space(problem: Problem, device: Device, a_rows: int | None = None) -> list[Schedule]:
    """All valid schedules of the space for `problem` on `device`, in a deterministic order."""
    out = []
    mma = for_dtype(problem.dtype).is_mma
    for bm, bn, wm_, wn_, tm, tn in tile_shapes(problem):
        base = Schedule(block_m=bm, block_n=bn, warp_m=wm_, warp_n=wn_, thread_m=tm, thread_n=tn,
                        **({"a_pad": MMA_PAD} if mma else {}))
        g = geometry(problem, base)
        blocks = g.tiles_m * g.tiles_n
        for kw in k_windows_choices(problem):
            T = ceil_div(problem.windows, kw)
            for stages in MMA_STAGES if mma else STAGES:
                for a_load, a_smem in a_choices(problem):
                    for split in split_choices(blocks, T, device.sms):
                        for wk in warps_k_choices(blocks, base.warps, device.sms) if split == 1 else (1,):
                            for pf in loop_forms(problem):
                                s = base.replace(k_windows=kw, stages=stages, a_load=a_load, a_smem=a_smem,
                                                 split_k=split, warps_k=wk, prefetch=pf)
                                if not problems(problem, s, device, a_rows if a_load == "rows" else None):
                                    out += [s] + _tail_of(problem, s, device, blocks, a_rows)
    return out + wgmma_space(problem, device, a_rows)


def _tail_of(problem: Problem, s: Schedule, device: Device, blocks: int, a_rows: int | None) -> list[Schedule]:
    """[`s` with its short last wave split along K] where that applies (tail_split), else []; the
    blocks per SM from the register estimate (the tuner's refinement uses ptxas's count)."""
    if blocks <= device.sms or s.split_k > 1 or s.warps_k > 1:
        return []
    rows = a_rows if s.a_load == "rows" else None
    t = tail_split(problem, s, device, per_sm_estimate(problem, s, device, rows))
    return [t] if t and not problems(problem, t, device, rows) else []


def per_sm_estimate(problem: Problem, s: Schedule, device: Device, a_rows: int | None) -> int:
    """Blocks of `s` per SM with the register estimate (before ptxas has counted); `a_rows` the
    "rows" lists' length, where s has them."""
    regs = estimate_registers(s, problem.pattern.vector, for_dtype(problem.dtype))
    return blocks_per_sm(s, device, regs, shared_bytes(problem, s, a_rows))


def wgmma_space(problem: Problem, device: Device, a_rows: int | None = None) -> list[Schedule]:
    """The warpgroup-mma schedules (Hopper, bf16/f16): WGMMA_TILES x K tiles x stages x A loads x
    split-K for small grids, the "gather" ones also with A read from shared memory (wgmma_a_smem).
    Warpgroup tiles span whole vectors (each wgmma's N is one index unit)."""
    if device.cc != (9, 0) or problem.dtype not in ("bf16", "f16"):
        return []
    out = []
    for bm, bn, wm_, wn_ in WGMMA_TILES:
        if bm > max(64, _pow2_at_least(problem.M)) or bn > max(128, _pow2_at_least(problem.N)):
            continue
        base = Schedule(block_m=bm, block_n=bn, warp_m=wm_, warp_n=wn_, thread_m=0, thread_n=0, a_pad=MMA_PAD,
                        wgmma=1)
        g = geometry(problem, base)
        for kw in k_windows_choices(problem):
            T = ceil_div(problem.windows, kw)
            for stages in WGMMA_STAGES:
                for a_load, a_smem in a_choices(problem):
                    for split in split_choices(g.tiles_m * g.tiles_n, T, device.sms):
                        s = base.replace(k_windows=kw, stages=stages, a_load=a_load, a_smem=a_smem, split_k=split)
                        for x in (s, _a_from_smem(s)) if a_load == "gather" and stages >= 4 else (s,):
                            if not problems(problem, x, device, a_rows if a_load == "rows" else None):
                                out += [x] + _tail_of(problem, x, device, g.tiles_m * g.tiles_n, a_rows)
    return out


def _a_from_smem(s: Schedule) -> Schedule:
    """A "gather" wgmma schedule with A read from shared memory instead (unpadded, swizzled). The space
    offers it at 4 stages and more: with a group in flight the refill runs stages - 2 tiles ahead, one
    at 3 stages; 4 to 6 were measured (benchmarks/2026-12-02-h200-wgmma-a-smem/), 3 was not."""
    return s.replace(wgmma_a_smem=1, a_pad=0)


def sample_space(problem: Problem, device: Device, rng, tries: int = 300) -> Schedule | None:
    """One schedule of `enumerate_space` drawn at random (None when the space is empty), without
    enumerating it: each axis drawn independently and the combination kept when it validates (the
    fuzzer draws thousands; enumerating validates ~2000 schedules a problem). Warpgroup tiles make
    about a third of the draws where they exist."""
    def pick(xs):
        return xs[int(rng.integers(len(xs)))]
    mma = for_dtype(problem.dtype).is_mma
    tiles = list(tile_shapes(problem))
    wg = [t for t in WGMMA_TILES if device.cc == (9, 0) and problem.dtype in ("bf16", "f16")
          and t[0] <= max(64, _pow2_at_least(problem.M)) and t[1] <= max(128, _pow2_at_least(problem.N))]
    for _ in range(tries):
        if wg and (not tiles or rng.random() < 0.33):
            bm, bn, wm_, wn_ = pick(wg)
            base = Schedule(block_m=bm, block_n=bn, warp_m=wm_, warp_n=wn_, thread_m=0, thread_n=0, a_pad=MMA_PAD,
                            wgmma=1)
            stages = WGMMA_STAGES
        elif tiles:
            bm, bn, wm_, wn_, tm, tn = pick(tiles)
            base = Schedule(block_m=bm, block_n=bn, warp_m=wm_, warp_n=wn_, thread_m=tm, thread_n=tn,
                            **({"a_pad": MMA_PAD} if mma else {}))
            stages = MMA_STAGES if mma else STAGES
        else:
            break
        g = geometry(problem, base)
        kw = pick(k_windows_choices(problem))
        a_load, a_smem = pick(a_choices(problem))
        split = pick(split_choices(g.tiles_m * g.tiles_n, ceil_div(problem.windows, kw), device.sms))
        wk = 1 if split > 1 or base.wgmma else pick(warps_k_choices(g.tiles_m * g.tiles_n, base.warps, device.sms))
        forms = () if base.wgmma else loop_forms(problem)
        pf = pick(forms) if len(forms) > 1 else 0    # no draw for one form: f32 and tf32 seeds keep their cases
        s = base.replace(k_windows=kw, stages=pick(stages), a_load=a_load, a_smem=a_smem, split_k=split, warps_k=wk,
                         prefetch=pf)
        if base.wgmma and a_load == "gather" and rng.random() < 0.5:
            s = _a_from_smem(s)
        if not problems(problem, s, device):
            return s
    space = enumerate_space(problem, device)
    return pick(space) if space else None


def rows_lengths(problem: Problem, B):
    """A function schedule -> compacted A-list length of the "rows" strategy for the weights B
    (None for other strategies, or without B), computed once per layout that decides it: a list
    holds the K rows any column of its block column reads (however the columns split into index
    units), plus row 0 where the uncoloured lists' padding reads it (ir.operands.rows_length)."""
    cache, by_vector = {}, {}

    def a_rows(s: Schedule) -> int | None:
        if s.a_load != "rows" or B is None:
            return None
        key = (s.block_n, s.k_windows, colours_rows(problem, s))
        if key not in cache:
            if s.k_windows not in by_vector:            # each vector's rows: one pass over B's indices a K tile
                by_vector[s.k_windows] = vector_rows(problem, s.k_windows, B.indices)
            cache[key] = rows_length(problem, s, B.indices, by_vector[s.k_windows])
        return cache[key]

    return a_rows


# Most blocks a tail tile is split over: each part keeps at least this many K tiles (a pipeline's
# worth), and the sums a tile adds up grow with the parts (search.model: REDUCE16_US_PER_MILLION)
MAX_TAIL_SPLIT = 8
MIN_TAIL_PART_TILES = 4


def tail_split(problem: Problem, s: Schedule, device: Device, per_sm: int) -> Schedule | None:
    """`s` with the tiles of its grid's short last wave split along K (tail_tiles, tail_split), so
    that their parts fill that wave: a grid of `tiles` output tiles on slots = SMs x per_sm runs
    floor(tiles / slots) full waves and then tiles % slots tiles, which take a whole wave's time on
    a fraction of the GPU. Split `tail_split` ways, the last wave takes about 1 / tail_split of it
    (plus the reduction). None where the last wave is full or more than half full, where the grid
    is one partial wave (that is split_k), or where no split of 2 or more fits the wave and K."""
    tiles, slots = ceil_div(problem.M, s.block_m) * ceil_div(problem.N, s.block_n), device.sms * per_sm
    if per_sm < 1 or s.split_k > 1 or s.tail_tiles or tiles <= slots:
        return None
    tail = tiles % slots
    if not tail or 2 * tail > slots:
        return None
    k_tiles = ceil_div(problem.windows, s.k_windows)
    split = min(slots // tail, MAX_TAIL_SPLIT, k_tiles // MIN_TAIL_PART_TILES)
    return s.replace(tail_tiles=tail, tail_split=split) if split >= 2 else None
