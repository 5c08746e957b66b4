"""Build the SpMM kernel IR from (Problem, Schedule).

The pipeline is expanded into explicit copies, commits, waits and barriers, so that the CPU
interpreter checks the very order the GPU will run:

    prologue:  for s in 0..S-2:  copy tile t0+s -> stage s;  commit
    main loop: for t in [t0, t1):
                   ready(t):  wait until tile t has landed (S-2 groups may stay in flight, S-3 with
                              wgmma_a_smem, which copies a tile less ahead); barrier
                   acc += rows [0, refill_row) of tile t (from stage (t-t0) % S)
                   refill(t): copy tile t+S-1 -> stage (t-t0+S-1) % S   # the stage read in iteration t-1:
                              commit                                    #   the barrier above freed it
                              ("rows": load the row list of tile t+S into registers, for the next iteration)
                   acc += the other rows of tile t
    with prefetch the loop is rotated so that no FMA waits on a fresh barrier (ptxas then keeps both
    rows' fragments live: more registers, which cost occupancy unless bounded by min_blocks):
               ready(t0); head <- fragments of tile t0's first row; refill(t0)
               for t in [t0, t1):
                   acc += rows 0 .. last-1 of tile t (row 0 from `head`)
                   last <- fragments of tile t's last row
                   if t+1 < t1: ready(t+1); head <- fragments of tile t+1's first row
                   acc += last
                   if t+1 < t1: refill(t+1), into tile t's stage (every thread is past its last read)
    wgmma (asynchronous warpgroup mma): the plain loop, its ready(t) with fence.proxy.async before
               the barrier (cp.async writes through the generic proxy, wgmma reads through the async
               one), and each tile's group retired (MmaWait 0) before the next tile's A fragments
               are loaded: the registers of an in-flight wgmma's A must not be overwritten (PTX ISA,
               wgmma.mma_async), and LLVM reuses them once the instruction is issued.
               With A read from shared memory too (wgmma_a_smem) there are no such registers: tile
               t's group stays in flight while tile t+1's is issued (MmaWait 1 after each commit),
               so the stage a refill may take is the one tile t-2 read (retired by every warpgroup
               before the barrier of iteration t): S-2 tiles are copied ahead, not S-1.
    epilogue:  sliced K (warps_k > 1): wait for every copy; barrier; add the slices' partial sums
               through shared memory (over the pipeline's buffers)
               store acc to C (atomic add under split-K); a 16-bit C under split-K: atomic adds into
               an fp32 workspace, then the block that finishes a tile last converts it into C and
               leaves the workspace zeroed (SplitKReduce: one launch, no memset, no conversion pass)
               tail split: blocks [0, whole) compute a tile each over all of K and store C; the
               tail's blocks (tail_split per tile, in a row) add their part into the workspace,
               which holds only the tail's tiles, and the last part of each stores C the same way
"""
from __future__ import annotations

import math

from .dtypes import dtype as dtype_of
from .expr import Var, binop, lt, min_, select
from .layout import ComputeLayout, CopyPlan
from .nodes import (AsyncProxyFence, Barrier, Commit, Copy, For, If, Kernel, Let, LoadFragments, LoadList, MmaWait,
                    Param, ReduceSlices, Shared, SparseMMA, SparseOperands, SplitKReduce, StoreAcc, Wait, ZeroAcc)
from .operands import geometry
from .problem import Problem
from .schedule import Schedule

CTAID_X, CTAID_Z = Var("ctaid_x"), Var("ctaid_z")


def kernel_name(problem: Problem, s: Schedule) -> str:
    p = problem.pattern
    dt = "" if problem.dtype == "f32" and problem.c_dtype == "f32" else f"{problem.dtype}_{problem.c_dtype}_"
    return f"nmspmm_{problem.M}x{problem.N}x{problem.K}_{p.n}_{p.m}_{p.vector}_{dt}{s.hash()[:10]}"


def storage(problem: Problem) -> str:
    """The element type A and B are stored as in global and shared memory: f32, bf16 or f16."""
    return "f32" if problem.dtype == "tf32" else problem.dtype


def reduces_in_kernel(problem: Problem, s: Schedule) -> bool:
    """Whether the kernel sums split-K partials in an fp32 workspace and stores them into C itself
    (SplitKReduce): atomic adds of fp32 partial sums cannot go into a 16-bit C, and a tail split
    stores its whole tiles plainly, so C is not zeroed for the split ones."""
    return s.split_k > 1 and problem.c_dtype != "f32" or s.tail_tiles > 0


def b_pad(problem: Problem) -> int:
    """Elements of padding per shared B row: the mma path reads B rows 8 at a time (ldmatrix, or
    4 rows x 8 columns for tf32), so each row starts 16 bytes (4 banks) on (conflict-free); FFMA
    reads B as vectors along a row and needs none."""
    return 8 if dtype_of(problem.dtype).compute == "mma" else 0


def _align16(x: int) -> int:
    return -(-x // 16) * 16


def build(problem: Problem, s: Schedule, a_rows: int | None = None) -> Kernel:
    """Kernel IR for `problem` under schedule `s` (assumed valid: see `ir.validate`).
    `a_rows` is the compacted A list length of the "rows" strategy (from the prepared weights)."""
    g = geometry(problem, s, a_rows)
    lay = ComputeLayout.for_problem(problem, s)
    M, N, K = problem.M, problem.N, problem.K
    S, BM, BN, threads = s.stages, s.block_m, s.block_n, s.threads
    rows_strategy = s.a_load in ("rows", "gather")     # A's rows copied from a list, a tile ahead
    idx_dtype = "u8"  # the index blob is bytes; entries are idx_bits wide inside it
    el = storage(problem)

    col = problem.a_major == "col"
    params = [
        Param("A", el, K, a_leading_dim(problem), doc="activations, column-major: (K, M) in memory") if col else
        Param("A", el, M, a_leading_dim(problem), doc="activations (M, K), row-major"),
        Param("Bv", el, g.T * g.tiles_n, g.KR * BN, doc="kept values, one chunk per (K tile, block column) in "
              "wgmma's core-matrix order") if s.wgmma else
        Param("Bv", el, g.T * g.KR, g.tiles_n * BN, doc="kept values (T*KR, tiles_n*BN), zero-padded"),
    ]
    if not g.gathered:
        params.append(Param("Bi", idx_dtype, g.T * g.tiles_n, g.chunk_bytes,
                            doc=f"shared-A-row indices, one {g.chunk_bytes}-byte chunk per (K tile, block column)"))
    if rows_strategy:
        params.append(Param("Arows", "i32", g.T * g.tiles_n, g.a_rows,
                            doc="K columns of A each (K tile, block column) uses" if not g.gathered else
                            "K columns of each index unit's kept rows, per (K tile, block column)"))
    params.append(Param("C", problem.c_dtype, M, N, readonly=False, doc="output (M, N), row-major"))
    reduce16 = reduces_in_kernel(problem, s)
    if s.tail_tiles:    # the tail's tiles only, one after another: a few MB where (M, N) may be a GB
        params += [Param("Work", "f32", s.tail_tiles * BM, BN, readonly=False,
                         doc="fp32 partial sums of the tail's tiles (tail_tiles * BM, BN), zero before and after"),
                   Param("Counts", "i32", 1, s.tail_tiles, readonly=False,
                         doc="parts done per tail tile, zero before and after")]
    elif reduce16:
        params += [Param("Work", "f32", M, N, readonly=False, doc="fp32 partial sums (M, N), zero before and after"),
                   Param("Counts", "i32", 1, g.tiles_m * g.tiles_n, readonly=False,
                         doc="splits done per output tile, zero before and after")]

    mk = s.a_smem == "mk"
    if mk:   # A tile as in global memory: (stages, BM, BK+pad), copied in a_elems-element vectors
        a_buf = Shared("As", el, S, BM, g.a_rows + s.a_pad, 0, doc="(stages, BM, BK+pad): A as in global")
    elif s.wgmma_a_smem:   # read by the tensor cores: M-major, 128-byte swizzle (no padding: a_pad is 0)
        a_buf = Shared("As", el, S, g.a_rows, BM, 0, doc="(stages, A rows, BM): A with K rows, swizzled as "
                       "wgmma reads an M-major operand", swizzled=True)
    else:
        a_buf = Shared("As", el, S, g.a_rows, BM + s.a_pad, 0, doc="(stages, A rows, BM+pad): A with K rows")
    if s.wgmma:   # read by the tensor cores through descriptors: canonical core matrices (operands.wgmma_b_order)
        b_buf = Shared("Bs", el, S, 1, g.KR * BN, _align16(a_buf.nbytes),
                       doc="(stages, KR*BN): kept values as 8x8 core matrices (wgmma's K-major B)")
    else:
        b_buf = Shared("Bs", el, S, g.KR, BN + b_pad(problem), _align16(a_buf.nbytes),
                       doc="(stages, KR, BN+pad): kept values")
    shared = (a_buf, b_buf)
    if not g.gathered:
        shared += (Shared("Is", idx_dtype, S, 1, g.chunk_bytes, _align16(b_buf.offset + b_buf.nbytes),
                          doc="(stages, chunk): index chunk"),)
    if s.warps_k > 1:   # partial sums of slices 1.., over the pipeline buffers once they are done
        shared += (reduce_buffer(s),)

    a_elems = a_copy_elems(problem, s)
    a_plan, b_plan, i_plan = copy_plans(problem, s, g)

    bm, bn, t0, t1 = Var("bm"), Var("bn"), Var("t0"), Var("t1")
    bound_m = M if M % BM else None

    def load_list(tile):   # "rows": the K columns this block column copies in `tile`, into registers
        return LoadList("rows", "Arows", (tile * g.tiles_n + bn) * g.a_rows, a_plan)

    def load(tile, stage):
        chunk = tile * g.tiles_n + bn
        bound_k = K if K % g.BK else None
        if col and rows_strategy:
            a = Copy("As", stage, "A", 0, bm * BM, a_plan, None, bound_m, "rows")
        elif col:
            a = Copy("As", stage, "A", tile * g.BK, bm * BM, a_plan, bound_k, bound_m)
        elif rows_strategy:
            a = Copy("As", stage, "A", bm * BM, 0, a_plan, bound_m, None, "rows")
        else:
            a = Copy("As", stage, "A", bm * BM, tile * g.BK, a_plan, bound_m, bound_k)
        b = Copy("Bs", stage, "Bv", chunk, 0, b_plan) if s.wgmma else Copy("Bs", stage, "Bv", tile * g.KR, bn * BN, b_plan)
        return (a, b) + (() if g.gathered else (Copy("Is", stage, "Bi", chunk, 0, i_plan),))

    tiles = g.tiles_m * g.tiles_n
    whole = tiles - s.tail_tiles       # output tiles one block computes over all of K
    tail = s.tail_split                # blocks each of the other tiles is split over (1: none)
    part = Var("part")
    if s.tail_tiles:    # blocks [0, whole): tile = block; then `tail` blocks per tile, its parts in a row
        in_tail = binop("<=", whole, CTAID_X)             # (whole may be 0: no "whole - 1 <" here, which
                                                            #  would wrap around as the GPU compares unsigned)
        past = binop("max", CTAID_X, whole) - whole        # blocks into the tail (0 before it): no wrap-around
        body = [Let("tile", min_(CTAID_X, whole) + past // tail), Let("part", past % tail)]
    else:
        body = [Let("tile", CTAID_X)]
    body += _raster(g.tiles_m, g.tiles_n, s.raster, Var("tile"))
    if s.tail_tiles:    # uneven parts allowed: part p gets K tiles [p*T/tail, (p+1)*T/tail)
        body += [Let("t0", part * g.T // tail), Let("t1", select(in_tail, (part + 1) * g.T // tail, g.T))]
    elif s.split_k == 1:
        body += [Let("t0", 0), Let("t1", g.T)]
    else:  # uneven splits allowed: split z gets tiles [z*T/S, (z+1)*T/S)
        body += [Let("t0", CTAID_Z * g.T // s.split_k), Let("t1", (CTAID_Z + 1) * g.T // s.split_k)]
    body.append(ZeroAcc())
    ahead = S - 2 if s.wgmma_a_smem else S - 1      # tiles copied ahead of the one multiplied
    # "rows": the list for a tile is loaded one iteration before its copies are issued
    pre = (lambda tile: (load_list(tile),)) if rows_strategy else (lambda tile: ())
    for st in range(ahead):
        body += [If(lt(t0 + st, t1), pre(t0 + st) + load(t0 + st, st)), Commit()]
    if rows_strategy:
        body.append(If(lt(t0 + ahead, t1), pre(t0 + ahead)))
    ops = SparseOperands("As", "Bs", "" if g.gathered else "Is", g.KR, g.a_rows, s.a_smem, s.warps_k,
                         g.scale if g.idx_bits == 32 and not g.gathered else 0, lay.instr.k)
    share = ops.steps       # instruction steps a warp multiplies per K tile

    # the oldest tile in flight landed (younger groups may stay), visible; for wgmma, which reads B
    # through the async proxy, what cp.async wrote is fenced into it first
    ready = (Wait(ahead - 1),) + ((AsyncProxyFence(),) if s.wgmma else ()) + (Barrier(),)

    def refill(u, free):    # copy tile u+ahead into stage `free`, which no thread reads any more
        out = (If(lt(u + ahead, t1), load(u + ahead, free)), Commit())
        return out + ((If(lt(u + ahead + 1, t1), pre(u + ahead + 1)),) if rows_strategy else ())

    t, it = Var("t"), Var("it")
    if s.wgmma:
        in_flight = 1 if s.wgmma_a_smem else 0
        loop = ready + refill(t, (it + ahead) % S) + (SparseMMA(it % S, ops), MmaWait(in_flight))
    elif not s.prefetch:
        # with refill_row, the first rows' fragment loads go out before the copies' address
        # arithmetic and cp.async issue, which then hide their latency instead of delaying them
        r = s.refill_row
        head = (SparseMMA(it % S, ops, 0, r),) if r else ()
        loop = ready + head + refill(t, (it + (S - 1)) % S) + (SparseMMA(it % S, ops, r),)
    else:
        # The last row's fragments are in registers before the barrier, so the stage of tile t is
        # free after it and takes tile t+S. The next tile's first fragments load before the last
        # row's FMAs, which hide their latency; the copies follow those FMAs, so that their
        # addresses are not live beside two rows of fragments.
        def head(stage):
            return (LoadFragments("head", stage, ops, 0),) if share > 1 else ()
        body.append(If(lt(t0, t1), ready + head(0) + refill(t0, S - 1)))
        loop = ((SparseMMA(it % S, ops, 0, share - 1, "head"),) if share > 1 else ()) + (
            LoadFragments("last", it % S, ops, share - 1),
            If(lt(t + 1, t1), ready + head((it + 1) % S)),
            SparseMMA(it % S, ops, share - 1, share, "last"),
            If(lt(t + 1, t1), refill(t + 1, it % S)))
    body.append(For("t", t0, t1, (Let("it", t - t0),) + loop))
    if s.wgmma_a_smem:      # the last tile's group: retired before anything reads the accumulators
        body.append(MmaWait(0))
    if s.warps_k > 1:
        body += [Wait(0), Barrier(), ReduceSlices("Rs")]
    # whole tiles are stored plainly without split-K, and by the whole-tile blocks of a tail split
    plain = s.split_k == 1 or s.tail_tiles > 0
    stage_c = c_stage(problem, s, lay, max(x.offset + x.nbytes for x in shared)) if plain else None
    if stage_c:
        shared += (stage_c[0],)

    def store_c():      # the plain store of a whole tile into C: staged through shared memory where it fits
        if not stage_c:
            return (StoreAcc("C", bm * BM, bn * BN, atomic=False),)
        return (Wait(0), Barrier(), StoreAcc("C", bm * BM, bn * BN, atomic=False, via="Cs"))
    tile = Var("tile")
    if s.tail_tiles:    # the whole tiles' blocks store C; the tail's parts add up in the workspace
        at = ((tile - whole) * BM, 0)       # the tail tile's place in it (tile >= whole there)
        reduce = (StoreAcc("Work", bm * BM, bn * BN, atomic=True, at=at),
                  SplitKReduce("C", "Work", "Counts", bm * BM, bn * BN, BM, BN, tail, tile - whole, at))
        body += [If(lt(CTAID_X, whole), store_c()), If(in_tail, reduce)]
    elif reduce16:
        body += [StoreAcc("Work", bm * BM, bn * BN, atomic=True),
                 SplitKReduce("C", "Work", "Counts", bm * BM, bn * BN, BM, BN, s.split_k, tile)]
    elif s.split_k > 1:
        body.append(StoreAcc("C", bm * BM, bn * BN, atomic=True))
    else:
        body += store_c()

    return Kernel(name=kernel_name(problem, s), params=tuple(params), shared=shared,
                  threads=threads, grid=(whole + s.tail_tiles * tail, 1, s.split_k), layout=lay, idx_bits=g.idx_bits,
                  M=M, N=N, body=tuple(body), zero_output=s.split_k > 1 and not reduce16, min_blocks=s.min_blocks,
                  a_alignment=g.esize * a_elems, c_staged=stage_c[1] if stage_c else 0,
                  notes={"problem": str(problem), "schedule": s.short(), "a_rows": g.a_rows})


def c_stage(problem: Problem, s: Schedule, lay: ComputeLayout, pipeline_bytes: int) -> tuple[Shared, int] | None:
    """(buffer, elements a row vector) to stage a tensor-core tile of a 16-bit C through shared
    memory before it is stored, or None. An mma fragment holds 2 adjacent columns of a row, so
    direct stores of a 16-bit C write 4 bytes a thread and 16 bytes a row per warp instruction: on
    the H200 the epilogue of a 128x256 bf16 tile took 5-12% of the kernel (2026-12-01: with C's
    stores skipped, 4096^3 16:32 246.8 -> 224.9 us, 8:32 176.4 -> 154.5); staged, each warp writes
    whole rows in 16-byte vectors (2026-12-02: 1.4-6.2% less time, NOTES 48). Only where that widens
    the stores (row vectors of at least 8 bytes: N and BN multiples of 4; an fp32 C already goes out
    in 8-byte pairs, whole 32-byte sectors, and was not measured staged), where the buffer fits in
    the pipeline's shared memory (which it overlays: no change to the blocks an SM holds) and the
    block has one slice (sliced K reduces through the same memory)."""
    es = dtype_of(problem.c_dtype).itemsize
    if not lay.instr.is_mma or s.warps_k > 1 or es != 2:
        return None
    vec = math.gcd(16 // es, problem.N, s.block_n)     # a power of two: 8, 4, 2 or 1 elements
    if vec * es < 8:
        return None
    pitch = c_stage_pitch(s.block_n, es)
    buf = Shared("Cs", problem.c_dtype, 1, s.block_m, pitch, 0, doc="(BM, BN+pad): C's tile on its way out")
    if buf.nbytes > pipeline_bytes:
        return None
    return buf, vec


def c_stage_pitch(block_n: int, es: int) -> int:
    """Elements a row of the staged tile takes: block_n, padded by 16 bytes where needed so that a
    row takes an odd number of 16-byte units. A warp's fragment writes (8 rows x 4 lanes x 4 bytes,
    16 contiguous bytes a row) then fall in 8 distinct 16-byte bank groups: no conflict. Rows stay
    16-byte aligned for the row-vector reads (block_n is a multiple of 8 for mma tiles)."""
    step = 16 // es
    pitch = -(-block_n // step) * step
    return pitch if (pitch // step) % 2 else pitch + step


def reduce_buffer(s: Schedule) -> Shared:
    """Sliced K: (slices - 1, BM, BN + 4) floats at offset 0; the padding keeps rows 16-byte aligned
    and moves each row 4 banks on."""
    return Shared("Rs", "f32", s.warps_k - 1, s.block_m, s.block_n + 4, 0,
                  doc="(slices-1, BM, BN+pad): partial sums of slices 1.., over the pipeline buffers")


def copy_plans(problem: Problem, s: Schedule, g) -> tuple[CopyPlan, CopyPlan, CopyPlan]:
    """How the block's threads copy one K tile of A, of the B values and of the index chunk."""
    e, es = a_copy_elems(problem, s), g.esize
    if problem.a_major == "col":   # A's K rows are contiguous runs of M: plain copies into [k][m]
        a = CopyPlan(g.a_rows, s.block_m, es, es * e, False, s.threads)
    else:                          # [m][k] as in memory ("mk"), or transposed element by element
        a = CopyPlan(s.block_m, g.a_rows, es, es * e, s.a_smem != "mk", s.threads)
    b = (CopyPlan(1, g.KR * s.block_n, es, s.b_copy_bytes, False, s.threads) if s.wgmma else
         CopyPlan(g.KR, s.block_n, es, s.b_copy_bytes, False, s.threads))
    return a, b, CopyPlan(1, g.chunk_bytes, 1, s.b_copy_bytes, False, s.threads)


def a_leading_dim(problem: Problem) -> int:
    """Elements from one row of A to the next as the kernel reads A: its contiguous extent (K for
    a row-major A, M for a column-major one), rounded up to even for 16-bit elements so that every
    row starts on the 4-byte boundary cp.async copies from. The caller passes an A of another
    leading dimension as a copy with this one (nmgen.api does)."""
    extent = problem.M if problem.a_major == "col" else problem.K
    return extent + extent % 2 if dtype_of(problem.dtype).itemsize == 2 else extent


def a_copy_elems(problem: Problem, s: Schedule) -> int:
    """Elements per A copy (cp.async moves 4, 8 or 16 bytes). A row-major: 1 when the copy
    transposes ("km", 4-byte elements only); for "mk" the widest dividing K (A's rows start
    aligned) and the K tile. A column-major: the widest dividing its leading dimension (its K rows
    start aligned) and the block's M extent. None when no width fits (a 16-bit K tile of an odd
    number of rows: see ir.validate)."""
    es = dtype_of(problem.dtype).itemsize
    widths = [w // es for w in (16, 8, 4) if w >= es]
    extent = a_leading_dim(problem)
    if problem.a_major == "col":
        tile = s.block_m
    elif s.a_smem != "mk":
        return 1
    else:
        tile = s.k_windows * problem.pattern.m
    return next((e for e in widths if extent % e == 0 and tile % e == 0), None)


def _raster(tiles_m: int, tiles_n: int, group: int, bid):
    """Output tile index `bid` -> (bm, bn). Consecutive tiles walk down `group` block rows of one
    block column before moving right, so the A rows and B columns they share are still in L2."""
    if group <= 1:
        return [Let("bm", bid // tiles_n), Let("bn", bid % tiles_n)]
    group = min(group, tiles_m)
    width = group * tiles_n
    first = (bid // width) * group
    size = min_(tiles_m - first, group) if tiles_m % group else group
    local = bid % width
    return [Let("bm", first + local % size), Let("bn", local // size)]
