"""The weights laid out for one schedule (done once per weight matrix and layout, offline).

From the compressed format (values: W x N, indices: W x ceil(N/V), each the kept row's position
inside its window) to what the kernel reads:

  bv:    (T*KR, tiles_n*block_n)          values in the problem's storage dtype (tf32: rounded to
                                          TF32 here, once), zero-padded to whole K tiles and block
                                          columns so the B copies need no bounds checks. A K tile's
                                          k_windows * n kept rows are followed by zero rows up to KR,
                                          a whole number of the instruction's k (16 for bf16/f16
                                          mma, 8 for tf32, 1 for FFMA); their index is 0
  bi:    (T*tiles_n, chunk) uint8         per (K tile, block column) one contiguous chunk holding, for
                                          each kept row of the tile and each index unit of the block,
                                          the *shared-memory A row* to gather, padded to 16 bytes so one
                                          cp.async stream copies it. Small chunks (<= 1 KB) of the
                                          "window" strategy hold the 32-bit byte offset of that row in
                                          an A stage, unit-major: a thread loads four rows' offsets in
                                          one vector and adds them to its base address (no byte
                                          extraction, no multiply per row); the others row-major u8/u16
                                          positions (little endian)
  arows: (T*tiles_n, L) int32             "rows" strategy: the K columns of A that this block column
                                          uses in this K tile (the compacted list; As row j holds
                                          A[:, arows[.., j]]), padded by repeating entries; for the
                                          ldmatrix gather ordered by bank group (_colour_rows)
                                          "gather": L = units x KR, unit-major: the K column of every
                                          kept row of every index unit (no bi then: nothing to look up)

T = K tiles, KR = k_windows*n kept rows per tile (padded as above), BK = k_windows*m K rows per tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from .dtypes import as_computed, dtype as dtype_of
from .instructions import for_dtype
from .layout import ComputeLayout
from .problem import Problem, ceil_div, index_dtype_bits
from .schedule import Schedule


@dataclass(frozen=True)
class Geometry:
    """Sizes every layer derives from (Problem, Schedule); `a_rows` is the shared A rows per stage."""
    T: int            # K tiles
    KR: int           # kept rows per K tile, padded to a whole number of instruction steps
    kept: int         # of which real (k_windows * n)
    BK: int           # K rows per K tile
    tiles_m: int
    tiles_n: int
    unit: int         # index granularity in columns
    upb: int          # index units per block column (block_n / unit)
    a_rows: int       # BK ("window"), the compacted list length L ("rows"), units x KR ("gather")
    idx_bits: int     # 8 or 16: row-major K positions; 32: unit-major byte offsets
    scale: int        # bytes per shared A row position (the offsets' unit)
    esize: int        # bytes per A and B element

    gathered: bool = False   # "gather": shared A holds each unit's kept rows in order, nothing is looked up

    @property
    def chunk_entries(self) -> int:
        return 0 if self.gathered else self.KR * self.upb

    @property
    def chunk_bytes(self) -> int:
        return ceil_div(self.chunk_entries * self.idx_bits // 8, 16) * 16


INDEX_DTYPES = {8: np.dtype(np.uint8), 16: np.dtype("<u2"), 32: np.dtype("<u4")}   # by Geometry.idx_bits
MAX_OFFSET_CHUNK = 1024   # bytes of 32-bit offsets per (K tile, block column) beyond which u8/u16 is kept
# "rows" lists coloured for ldmatrix (_colour_rows); False gives the sorted lists, for same-run
# comparisons below the API (scripts/probe_mma.py's "patch")
COLOUR_ROWS = True
SWAP_ROWS = 16       # rows a colouring step tries to swap from (those whose leaving lowers the excess most)


def geometry(problem: Problem, s: Schedule, a_rows: int | None = None) -> Geometry:
    """`a_rows` is the compacted list length for the "rows" strategy (from `prepare`); without it
    the bound that holds for any weights is used."""
    p = problem.pattern
    lay = ComputeLayout.for_problem(problem, s)
    step = for_dtype(problem.dtype).k
    BK, kept = s.k_windows * p.m, s.k_windows * p.n
    KR = ceil_div(kept, step) * step
    esize = dtype_of(problem.dtype).itemsize
    upb = s.block_n // lay.unit
    if s.a_load == "window":
        a_rows = BK
    elif s.a_load == "gather":
        a_rows = upb * KR
    elif a_rows is None:
        vectors_per_block = ceil_div(s.block_n, p.vector) + 1
        a_rows = min(ceil_div(BK, 8) * 8, ceil_div(kept * vectors_per_block, 8) * 8)
    # Byte offsets measured on the H100 (NOTES.md, run 11): +1.5..2% for "window" kernels, -2..3% for
    # "rows" ones (whose compacted lists fit u8 and whose registers hold the prefetched row list too)
    offsets = s.a_load == "window" and KR * upb * 4 <= MAX_OFFSET_CHUNK
    g = Geometry(T=ceil_div(problem.windows, s.k_windows), KR=KR, kept=kept, BK=BK,
                 tiles_m=ceil_div(problem.M, s.block_m), tiles_n=ceil_div(problem.N, s.block_n),
                 unit=lay.unit, upb=upb, a_rows=a_rows,
                 idx_bits=32 if offsets else index_dtype_bits(a_rows - 1),
                 scale=esize if s.a_smem == "mk" else (s.block_m + s.a_pad) * esize, esize=esize,
                 gathered=s.a_load == "gather")
    return g


@dataclass(frozen=True)
class Operands:
    geometry: Geometry
    bv: np.ndarray
    bi: np.ndarray | None      # None for "gather" (no index to look up)
    arows: np.ndarray | None


def _tile_rows(problem: Problem, s: Schedule, indices: np.ndarray, g0: Geometry):
    """(at, chunks, real) of B's kept rows under `s`: at (W,) the row of its tile's KR each kept row
    sits at (a tile's last KR - kept rows stay zero padding); chunks (T*tn, KR*upb) the shared A row
    (window offset in the tile + position) each tile row reads for each index unit, one chunk per
    (K tile, block column), padding rows reading row 0; real (T, KR) the tile rows holding a kept row."""
    p = problem.pattern
    W = problem.kept_rows
    T, KR, tn, upb = g0.T, g0.KR, g0.tiles_n, g0.upb
    Np, Wp = tn * s.block_n, T * KR
    at = np.arange(W) // g0.kept * KR + np.arange(W) % g0.kept
    unit_vec = np.minimum(np.arange(Np // g0.unit) * g0.unit // p.vector, problem.vectors - 1)
    window_in_tile = (np.arange(W) // p.n) % s.k_windows
    asrow = np.zeros((Wp, Np // g0.unit), np.int64)
    asrow[at] = window_in_tile[:, None] * p.m + indices[:, unit_vec].astype(np.int64)
    # (T, KR, tn, upb) -> one chunk per (tile, block column): (T*tn, KR*upb)
    chunks = asrow.reshape(T, KR, tn, upb).transpose(0, 2, 1, 3).reshape(T * tn, KR * upb)
    real = np.zeros(Wp, bool)
    real[at] = True
    return at, chunks, real.reshape(T, KR)


def vector_rows(problem: Problem, k_windows: int, indices: np.ndarray) -> np.ndarray:
    """(T, vectors, BK) bool: the K rows of each K tile of `k_windows` windows that each vector's kept
    rows read (B's `indices`). What a "rows" list holds is its block column's vectors' union."""
    p = problem.pattern
    W, BK, kept = problem.kept_rows, k_windows * p.m, k_windows * p.n
    w = np.arange(W)
    nv = indices.shape[1]
    flat = ((w // kept) * nv)[:, None] + np.arange(nv)[None, :]                 # (tile, vector) of each entry
    flat = flat * BK + (((w // p.n) % k_windows) * p.m)[:, None] + indices.astype(np.int64)
    out = np.zeros(ceil_div(problem.windows, k_windows) * nv * BK, bool)
    out[flat.ravel()] = True
    return out.reshape(-1, nv, BK)


def rows_length(problem: Problem, s: Schedule, indices: np.ndarray,
                by_vector: np.ndarray | None = None) -> int | None:
    """The length of the "rows" strategy's A lists (geometry.a_rows) that `prepare` gives B's
    `indices` under `s` (None for the other A loads, which have no lists), without building or
    ordering the lists: what the model needs to rank a
    "rows" schedule, at a small part of prepare's cost. The longest chunk's distinct K rows, in whole
    groups of 8, at least 8. A chunk (K tile, block column) reads the rows its columns' vectors keep
    (`by_vector`: vector_rows for s.k_windows, where the caller has it); the sorted lists
    (`_compact_rows`) also row 0 where the tile has zero padding rows (they read it), the coloured
    ones (`_colour_rows`) only rows that kept rows read."""
    if s.a_load != "rows":
        return None
    g0 = geometry(problem, s)
    p = problem.pattern
    T, tn, BK = g0.T, g0.tiles_n, g0.BK
    if by_vector is None:
        by_vector = vector_rows(problem, s.k_windows, indices)
    nv = by_vector.shape[1]
    if s.block_n % p.vector == 0:                       # whole vectors a block column: their union
        per = s.block_n // p.vector
        padded = np.zeros((T, tn * per, BK), bool)
        padded[:, :nv] = by_vector
        used = padded.reshape(T, tn, per, BK).any(axis=2)
    else:                                               # column groups of one vector and one block column
        step = gcd(s.block_n, p.vector)
        first = np.arange(0, problem.N, step)
        used = np.zeros((T, tn, BK), bool)
        for c, v in set(zip((first // s.block_n).tolist(), (first // p.vector).tolist())):
            used[:, c] |= by_vector[:, v]
    if not colours_rows(problem, s, g0):
        in_tile = np.minimum(g0.kept, problem.kept_rows - np.arange(T) * g0.kept)   # kept rows of each tile
        used[in_tile < g0.KR, :, 0] = True
    return max(8, ceil_div(int(used.sum(axis=2).max()), 8) * 8)


def prepare(problem: Problem, s: Schedule, values: np.ndarray, indices: np.ndarray) -> Operands:
    N = problem.N
    g0 = geometry(problem, s)
    T, KR, BK, tn = g0.T, g0.KR, g0.BK, g0.tiles_n
    Np, Wp, upb = tn * s.block_n, T * KR, g0.upb
    at, chunks, real = _tile_rows(problem, s, indices, g0)
    bv = np.zeros((Wp, Np), dtype_of(problem.dtype).storage)
    bv[at, :N] = as_computed(values, problem.dtype)

    arows = None
    a_rows = None
    if s.a_load == "gather":     # every unit's kept rows in order: (T*tn, upb*KR) absolute K positions
        tile = np.arange(T * tn) // tn
        arows = (chunks.reshape(T * tn, KR, upb).transpose(0, 2, 1).reshape(T * tn, upb * KR)
                 + (tile * BK)[:, None]).astype(np.int32)
        return Operands(g0, wgmma_b_order(bv, g0, s) if s.wgmma else bv, None, arows)
    ldmatrix = gathers_with_ldmatrix(problem, s)
    if colours_rows(problem, s, g0):
        chunks, arows = _colour_rows(chunks, real, BK, tn)
        a_rows = arows.shape[1]
    elif s.a_load == "rows":
        chunks, arows = _compact_rows(chunks, BK, tn)
        a_rows = arows.shape[1]
    g = geometry(problem, s, a_rows)
    if ldmatrix:
        chunks = _spread_banks(chunks, bv, g, real)
    if s.wgmma:
        bv = wgmma_b_order(bv, g, s)
    if g.idx_bits == 32:   # byte offsets, unit-major: (T*tn, KR, upb) -> (T*tn, upb, KR)
        chunks = chunks.reshape(T * tn, KR, upb).transpose(0, 2, 1).reshape(T * tn, -1) * g.scale
    dt = INDEX_DTYPES[g.idx_bits]
    bi = np.zeros((T * tn, g.chunk_bytes), np.uint8)
    bi[:, :chunks.shape[1] * dt.itemsize] = _bytes(chunks, dt)
    return Operands(g, bv, bi, arows)


def _bytes(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    """(rows, cols) integers -> (rows, cols * itemsize) uint8, each entry little-endian in `dt`.

    The reshapes above return views whenever numpy can: with one index unit per block (upb = 1)
    and one K tile, `chunks` is a transposed view, and `astype` keeps that layout. Reinterpreting
    bytes needs a C-contiguous array, so make one rather than rely on how the view came out."""
    return np.ascontiguousarray(x, dtype=dt).view(np.uint8).reshape(x.shape[0], -1)


# wgmma reads B (16 kept rows x n columns of one index unit, a step) from shared memory as "K-major,
# no swizzle" (PTX ISA 9.7.15.5.1.2): 8x8 core matrices of 8 columns (rows of the core matrix) by 8
# kept rows, each 128 contiguous bytes, a column's 8 values one 16-byte row. The two core matrices
# of a column block along K sit LBO = 128 bytes apart, successive column blocks SBO = 256 bytes.
WGMMA_LBO, WGMMA_SBO = 128, 256


def wgmma_b_desc(unit: int, step: int, n: int, steps: int) -> tuple[int, int, int]:
    """(element offset in the stage, LBO bytes, SBO bytes) of the B operand of index unit `unit` of
    the block column at instruction step `step` (n columns; `steps` steps a K tile)."""
    return (unit * steps + step) * 16 * n, WGMMA_LBO, WGMMA_SBO


# wgmma's imm-trans-a for an A read from shared memory: 1, M-major (PTX ISA, wgmma.mma_async: the
# transpose operands are valid for .f16/.bf16 descriptors only); WGMMA_A_SWAP exchanges LBO and SBO
# of wgmma_a_desc. Both are here to be patched (scripts/probe_mma.py "patch") when a convention is
# checked on the GPU, as B's was (NOTES.md 27).
WGMMA_TRANS_A = 1
WGMMA_A_SWAP = False


def wgmma_a_desc(pitch: int, esize: int) -> tuple[int, int]:
    """(LBO, SBO) bytes of an A operand that wgmma reads M-major with the 128-byte swizzle from a
    buffer of `pitch` elements a row (nodes.Shared.swizzled): PTX ISA's canonical layout
    ((8,8,m),(8,k)):((1,8,LBO),(64,SBO)) in 16-bit elements, so the next 64 rows of A lie one 1 KB
    atom on (LBO) and the next 8 K rows one slab of 8 rows x pitch on (SBO)."""
    lbo, sbo = 1024, 8 * pitch * esize
    return (sbo, lbo) if WGMMA_A_SWAP else (lbo, sbo)


def wgmma_b_order(bv: np.ndarray, g: Geometry, s: Schedule) -> np.ndarray:
    """bv (T*KR, tn*BN) -> (T*tn, KR*BN): for each (K tile, block column) one contiguous chunk, per
    index unit and step its core matrices in wgmma's order (wgmma_b_desc). 16-bit values only."""
    T, KR, tn, upb, n = g.T, g.KR, g.tiles_n, g.upb, g.unit
    steps = KR // 16
    # rows k = step*16 + kb*8 + kc, columns = bn*BN + u*n + nb*8 + nr
    x = bv.reshape(T, steps, 2, 8, tn, upb, n // 8, 8)
    # -> (T, bn, u, step, nb, kb, nr, kc)
    return np.ascontiguousarray(x.transpose(0, 4, 5, 1, 6, 2, 7, 3)).reshape(T * tn, KR * s.block_n)


def layout_key(problem: Problem, s: Schedule) -> tuple:
    """What `prepare` reads from (problem, s) for given weights: schedules with equal keys get the
    same operands, so a cache of prepared weights (nmgen.api, nmgen.torch) may share them. It
    leaves out what prepare never reads (M, block_m beyond the shared A row size, the warp grid,
    stages, split-K). tests/test_operands_key.py prepares every schedule of small problems' spaces
    and holds this to it: a field missing here hands one kernel another's layout."""
    g = geometry(problem, s)
    ldmatrix = gathers_with_ldmatrix(problem, s)
    return (problem.dtype, s.block_n, s.k_windows, g.KR, g.unit, s.a_load, s.a_smem, s.wgmma,
            colours_rows(problem, s, g), (g.idx_bits == 32 or ldmatrix) and g.scale)


def colours_rows(problem: Problem, s: Schedule, g: Geometry | None = None) -> bool:
    """Whether `prepare` orders the "rows" lists for conflict-free ldmatrix gathers (_colour_rows):
    the tensor-core gather of a [k][m] shared A whose row size makes list positions and bank groups
    agree mod 8 (the space's padded rows always do). `g`: geometry(problem, s), where the caller has it."""
    return (s.a_load == "rows" and gathers_with_ldmatrix(problem, s) and COLOUR_ROWS
            and _residues_are_bank_groups((g or geometry(problem, s)).scale))


def gathers_with_ldmatrix(problem: Problem, s: Schedule) -> bool:
    """The kernel gathers A rows with ldmatrix: 16-bit operands on the tensor cores, A as [k][m]."""
    return for_dtype(problem.dtype).per_reg == 2 and s.a_smem == "km"


def _spread_banks(chunks: np.ndarray, bv: np.ndarray, g: Geometry, real: np.ndarray) -> np.ndarray:
    """Reorder the kept rows of every K tile, per index unit, so that each group of 8 consecutive
    rows (the rows one ldmatrix phase reads: half an mma step) has its gathered A rows in distinct
    bank groups as far as the rows allow; the B values of the unit's columns move with them (`bv`
    in place). The order of a sum's terms is free, so the product is unchanged.

    A row at position p of a stage starts at byte p * scale; ldmatrix serves 8 rows of 16 bytes in
    one pass only if they fall in the 8 distinct 16-byte groups of the 128-byte bank line: group
    (p * scale / 16) mod 8. Rows sorted by group and dealt round-robin to the KR/8 phases put at
    most ceil(c / (KR/8)) of a group's c rows into one phase: the more rows a tile holds, the fewer
    conflicts. The zero padding rows of a tile (`real` False: (T, KR)) are dealt last and then read
    the A row of the first kept row of their phase: lanes that name the same address cost no extra
    pass (their B values are zero, so the product does not change). chunks: (T*tn, KR*upb)
    positions, row-major."""
    T, tn, upb, KR = g.T, g.tiles_n, g.upb, g.KR
    phases = KR // 8
    pos = chunks.reshape(T, tn, KR, upb)
    pad = ~real[:, None, :, None]                                          # (T, 1, KR, 1)
    group = np.where(pad, 8, (pos * g.scale // 16) % 8)                      # padding sorts last
    order = np.argsort(group, axis=2, kind="stable")                        # the tile's rows by bank group
    deal = np.arange(KR).reshape(8, phases).T.ravel()                       # rank r -> phase r % phases
    perm = np.take(order, deal, axis=2)                                     # new row j <- old row perm[j]
    pos = np.take_along_axis(pos, perm, axis=2)
    padded = np.take_along_axis(np.broadcast_to(pad, pos.shape), perm, axis=2).reshape(T, tn, phases, 8, upb)
    by_phase = pos.reshape(T, tn, phases, 8, upb)
    # padding rows sort after every kept row, so a phase's first row is kept unless the phase is all padding
    by_phase[:] = np.where(padded, by_phase[:, :, :, :1, :], by_phase)
    # bv: (T*KR, tn*BN) as (T, KR, tn, upb) records of one unit's `unit` values, whole records moved
    # per (tile, block column, unit), one index a record (with an index a value, prepare of 8192x28672
    # 16:32 weights in 128x256 tiles took 4.2 s instead of 3.6)
    unit = np.dtype((np.void, g.unit * bv.itemsize))
    vals = bv.reshape(T, KR, tn, upb * g.unit).view(unit)
    vals[:] = np.take_along_axis(vals, perm.transpose(0, 2, 1, 3), axis=1)
    return pos.reshape(T * tn, KR * upb)


def _residues_are_bank_groups(scale: int) -> bool:
    """Whether list positions p and q of a shared A with `scale` bytes per row fall in the same
    ldmatrix bank group ((p * scale / 16) mod 8) exactly when p = q mod 8: scale / 16 odd (true
    of the mma path's padded rows: (block_m + 8) * 2 bytes with block_m a multiple of 16)."""
    return scale % 16 == 0 and (scale // 16) % 2 == 1


def _colour_rows(chunks: np.ndarray, real: np.ndarray, BK: int, tn: int):
    """The "rows" strategy's compacted lists, ordered so that ldmatrix gathers without bank conflicts
    where the rows allow (measured 2026-11-30: the sorted lists' gathers took 1.8-2.1 passes per
    ldmatrix phase, NOTES.md 36).

    Each K row a chunk (K tile, block column) uses gets a list position p; its bank group is fixed
    by p mod 8 (`_residues_are_bank_groups`). Every index unit's kept rows are later dealt to
    ldmatrix phases with at most one row of a group in each (`_spread_banks`), which is possible
    only if no group holds more than KR / 8 of the unit's rows. So the rows are coloured greedily,
    most-shared first: each takes the group that pushes the fewest of its units past KR / 8 rows,
    among the groups still below ceil(rows used / 8) rows (the list stays as short as the sorted
    one). Returns (positions (T*tn, KR*upb), arows (T*tn, L)) as `_compact_rows` does; the list
    slots no row fills repeat the chunk's first row."""
    C = chunks.shape[0]
    T, KR = real.shape
    upb = chunks.shape[1] // KR
    phases = KR // 8
    pos = chunks.reshape(C, KR, upb)
    kept = np.repeat(real, tn, axis=0)                                    # chunk c = tile * tn + block column
    # keep[c, w, u]: unit u multiplies K row w of chunk c (one flat scatter: the fastest numpy has)
    flat = (np.arange(C)[:, None, None] * BK + pos) * upb + np.arange(upb)
    keep = np.zeros(C * BK * upb, bool)
    keep[flat[np.broadcast_to(kept[:, :, None], pos.shape)]] = True
    keep = keep.reshape(C, BK, upb)
    used = keep.any(axis=2)
    cap = -(-used.sum(axis=1) // 8)                                       # rows a group may take
    count = np.zeros((C, upb, 8), np.int32)                               # a unit's rows per group
    # what adding a row to group g costs each of its units: 1e6 if that unit already has KR / 8 rows
    # there (a conflict), plus 64 per row it has there (ties go to the groups these units use least);
    # a row's cost is its units' sum, one small matrix product per chunk (exact in float64)
    unit_cost = np.zeros((C, upb, 8))
    size = np.zeros((C, 8), np.int64)                                     # the list's rows per group
    group = np.full((C, BK), -1, np.int64)
    ar = np.arange(C)
    order = np.argsort(-keep.sum(axis=2), axis=1, kind="stable")         # each chunk's most shared row first
    # the rows in that order, row-step major, so that each step below reads contiguous memory
    keep_in_order = np.ascontiguousarray(np.take_along_axis(keep, order[:, :, None], axis=1).transpose(1, 0, 2))
    used_in_order = keep_in_order.any(axis=2)
    for i in range(BK):
        units = keep_in_order[i]                                          # (C, upb)
        cost = np.matmul(units[:, None, :].astype(np.float64), unit_cost)[:, 0, :]
        cost += size + np.where(size >= cap[:, None], 1e9, 0)            # then the shorter group; none past cap
        best = np.argmin(cost, axis=1)
        on = used_in_order[i]
        c, g = ar[on], best[on]
        group[c, order[c, i]] = g
        size[c, g] += 1
        count[c, :, g] += units[on]
        n = count[c, :, g]
        unit_cost[c, :, g] = np.where(n >= phases, 1e6, 0.0) + 64.0 * n
    _repair_colours(keep, group, size, cap, phases)                      # where greedy left a conflict
    # slot of row w in its group: the used rows of that group before it, in K order
    onehot = (group[:, :, None] == np.arange(8)) & used[:, :, None]
    slot = np.take_along_axis(np.cumsum(onehot, axis=1, dtype=np.int32) - 1, np.maximum(group, 0)[:, :, None],
                              axis=2)[:, :, 0]
    where = slot * 8 + group                                              # list position of K row w
    L = max(8, 8 * int(size.max()))
    first = np.argmax(used, axis=1)
    tile = np.arange(C) // tn
    arows = np.empty((C, L), np.int32)
    arows[:] = (tile * BK + first)[:, None]
    cu, wu = np.nonzero(used)
    arows[cu, where[cu, wu]] = tile[cu] * BK + wu
    renum = np.take_along_axis(where, pos.reshape(C, -1), axis=1)         # padding rows: fixed when dealt
    return np.where(np.repeat(kept, upb, axis=1), renum, where[ar, first][:, None]), arows


def _repair_colours(keep: np.ndarray, group: np.ndarray, size: np.ndarray, cap: np.ndarray, phases: int,
                    steps: int = 12) -> None:
    """Local search after `_colour_rows`' greedy pass, on the chunks whose colouring left an index
    unit with more than `phases` rows in one bank group (each such row costs its ldmatrix phase a
    second pass). A step moves one row to another group below `cap` rows, or swaps the groups of two
    rows, whichever lowers the excess most (rows past `phases`, summed over units and groups); a
    chunk stops when its excess is 0 or no step lowers it, all chunks after `steps` steps (8 gave
    the passes of 64 at 16:32; each step of 4096 chunks takes ~0.1 s).

    Measured on random 128x1024x768 bf16 weights, 128x256 blocks (tests/test_mma.py): the greedy
    pass alone left a conflict in about one run in six at 12:32 (two windows a tile); 16:32's mean
    passes a phase went from 1.23 to 1.12 with the search.

    A step's gain needs no trial colouring: a unit's excess in a group changes by one only where its
    count is past `phases` (leaving) or at it (joining), so every move and swap of a chunk is scored
    by small matrix products. keep: (C, BK, upb) bool, which units use each K row; group: (C, BK)
    each used row's group, -1 unused; size: (C, 8) rows per group; cap: (C,). group and size change
    in place."""
    todo, BK = np.arange(keep.shape[0]), keep.shape[1]
    for _ in range(steps):
        U = keep[todo].astype(np.float32)                                    # (C', BK, upb)
        grp = group[todo]
        O = (grp[:, :, None] == np.arange(8)).astype(np.float32)             # (C', BK, 8); unused rows 0
        count = U.transpose(0, 2, 1) @ O                                     # (C', upb, 8)
        over = (count > phases).astype(np.float32)                           # leaving lowers the excess
        full = (count >= phases).astype(np.float32)                          # joining raises it
        todo, U, grp, O, over, full = (x[over.any(axis=(1, 2))] for x in (todo, U, grp, O, over, full))
        if not len(todo):
            return
        live = (grp >= 0)[:, :, None]
        # move row i from its group g to group h: gain = its units over in g - its units full in h
        over_r = O @ over.transpose(0, 2, 1)                                 # (C', BK, upb): over[u, g_i]
        full_r = O @ full.transpose(0, 2, 1)
        leave = (U * over_r).sum(axis=2)                                     # (C', BK)
        move = leave[:, :, None] - U @ full                                  # (C', BK, 8)
        move[(O > 0) | (size[todo][:, None, :] >= cap[todo][:, None, None]) | ~live] = -1
        # swap rows i (group g) and j (group h): the units only i has leave g and join h, those only
        # j has leave h and join g, shared units do not change. With D = U*full_r - full_r - U*over_r
        # the gain is leave_i + leave_j + D_i.U_j + U_i.D_j (expand "only i" as u_i (1 - u_j)). D <= 0,
        # so a swap gains only if leave_i or leave_j > 0: i ranges over the SWAP_ROWS rows of largest
        # leave (C' x SWAP_ROWS x BK products, not C' x BK x BK: BK is k_windows * m, 512 at 128:512)
        D = U * full_r - full_r - U * over_r                                 # (C', BK, upb)
        R = min(SWAP_ROWS, BK)
        first = np.argpartition(-leave, R - 1, axis=1)[:, :R]                # (C', R) row indices
        take = lambda x: np.take_along_axis(x, first[:, :, None], axis=1)   # noqa: E731 - (C', BK, k) -> (C', R, k)
        Ut = U.transpose(0, 2, 1)
        swap = (np.take_along_axis(leave, first, axis=1)[:, :, None] + leave[:, None, :]
                + take(D) @ Ut + take(U) @ D.transpose(0, 2, 1))             # (C', R, BK)
        g_first = np.take_along_axis(grp, first, axis=1)
        swap[(g_first[:, :, None] == grp[:, None, :]) | (g_first < 0)[:, :, None] | ~live.transpose(0, 2, 1)] = -1
        best_move, best_swap = move.reshape(len(todo), -1).max(axis=1), swap.reshape(len(todo), -1).max(axis=1)
        moving = (best_move >= best_swap) & (best_move > 0)
        swapping = ~moving & (best_swap > 0)
        c = todo[moving]
        i, h = np.divmod(move[moving].reshape(len(c), BK * 8).argmax(axis=1), 8)
        size[c, group[c, i]] -= 1
        size[c, h] += 1
        group[c, i] = h
        c = todo[swapping]
        r, j = np.divmod(swap[swapping].reshape(len(c), R * BK).argmax(axis=1), BK)
        i = first[swapping, r]
        group[c, i], group[c, j] = group[c, j], group[c, i]
        todo = todo[moving | swapping]


def _compact_rows(chunks: np.ndarray, BK: int, tn: int):
    """Renumber each chunk's As rows into the sorted list of distinct rows it uses.

    Returns (renumbered chunks, arows) with arows[c, j] the absolute K column of list entry j of
    chunk c (chunk c = tile * tn + block column), lists padded to a multiple of 8 entries."""
    P = chunks.shape[0]
    flat = (chunks + np.arange(P)[:, None] * BK).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    owner = uniq // BK
    start = np.searchsorted(owner, np.arange(P))
    counts = np.diff(np.append(start, len(uniq)))
    L = max(8, ceil_div(int(counts.max()), 8) * 8)
    renum = (inv.reshape(chunks.shape) - start[:, None])
    slot = np.arange(len(uniq)) - start[owner]
    tile = np.arange(P) // tn
    arows = np.empty((P, L), np.int32)
    arows[:] = (tile * BK + uniq[start] % BK)[:, None]          # pad with each list's first entry
    arows[owner, slot] = tile[owner] * BK + uniq % BK
    return renum, arows
