"""Which thread touches which element: the one definition that codegen and the interpreter share.

Every function here takes the thread index `tid` as an int, a numpy array of ints (the interpreter
evaluates all threads of a block at once) or an `Expr` (codegen lowers the result to LLVM), and
returns the same kind. Nothing here knows about LLVM or numpy beyond that.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

from .expr import and_, lt
from .instructions import FFMA, MathInstr, for_dtype, wgmma
from .problem import ceil_div
from .schedule import Schedule


def vector_width(extent: int) -> int:
    """Widest register vector (4, 2 or 1 floats) that divides a thread tile extent."""
    return 4 if extent % 4 == 0 else 2 if extent % 2 == 0 else 1


@dataclass(frozen=True)
class ComputeLayout:
    """Which thread holds which accumulator of a block tile, for the layout's instruction.

    Warp tiles, warps_m x warps_n of them (and warps_k slices, below), cover the block tile; how a
    warp tile is split among its lanes depends on the multiply-accumulate instruction (`instr`,
    ir.instructions):

    FFMA (CUDA cores): each lane holds a thread tile of thread_m x thread_n accumulators, laid out
    as follows.

    Warps are laid out row-major over (warps_m, warps_n). Inside a warp, lane bit 0 picks the
    column lane and bit 1 the row lane (the other bits split the same way): lanes L and L^1 then
    read the same A fragment and L and L^2 the same B fragment, and the hardware packs such
    pair-uniform shared-memory reads, halving their cost (L1/shared returns 128 bytes per cycle
    per SM; an 8x8 thread tile's fragments would otherwise need as many L1 cycles as its FFMAs).

    A thread's thread_m rows come in chunks of `row_vec` consecutive rows, the chunks interleaved
    with stride lanes_m * row_vec: a warp's row_vec-wide reads of one shared A row are then
    contiguous ("km": A stored [k][m], vector reads), or, with row_vec = 1, a warp's scalar reads
    of one A column hit different banks ("mk": A stored [m][k]). Columns likewise with b_vec.

    With warps_k > 1 the block has warps_k slices of warps_m x warps_n warps (slice = warp //
    (warps_m * warps_n)); every slice covers the whole block tile, over its share of the kept rows.

    mma (tensor cores): the warp tile is a grid of tiles_m x tiles_n instruction tiles (16 x 8),
    each spread over the 32 lanes by the instruction's C fragment; a lane holds c_regs accumulators
    of each. An 8-column instruction tile lies inside one index unit, so all its columns gather the
    same kept rows of A.

    Accumulators are numbered e = 0 .. acc_count-1 per thread: FFMA e = r * thread_n + c, mma
    e = (i * tiles_n + j) * c_regs + q (tile i, j, fragment element q); acc_row / acc_col give each
    one's block-local row and column, and `runs` the groups of consecutive columns a single vector
    store writes. The epilogues (store, split-K atomics, sliced-K reduction) go through these only.

    `unit` is the index granularity in columns: the prepared index holds one entry per `unit`
    consecutive columns (unit divides V, so a unit never straddles two vectors). When the warp tile
    lies inside one unit, a thread does a single index look-up per kept row for all its columns;
    otherwise one per group of columns (FFMA) or instruction tiles (mma) that share a unit.
    """
    block_m: int
    block_n: int
    warp_m: int
    warp_n: int
    thread_m: int
    thread_n: int
    unit: int
    row_vec: int = 0          # 0: the widest vector dividing thread_m
    warps_k: int = 1
    instr: MathInstr = FFMA

    @classmethod
    def of(cls, s: Schedule, vector: int, instr: MathInstr = FFMA) -> "ComputeLayout":
        return cls(s.block_m, s.block_n, s.warp_m, s.warp_n, s.thread_m, s.thread_n, gcd(vector, s.warp_n),
                   1 if s.a_smem == "mk" else 0, s.warps_k, instr)

    @classmethod
    def for_problem(cls, problem, s: Schedule) -> "ComputeLayout":
        """The layout of schedule `s` for `problem` (its vector length and its dtype's instruction,
        or the warpgroup mma as wide as an index unit allows with s.wgmma)."""
        instr = for_dtype(problem.dtype)
        if s.wgmma and problem.dtype in ("bf16", "f16"):
            unit = gcd(problem.pattern.vector, s.warp_n)
            instr = wgmma(problem.dtype, max((n for n in range(8, 257, 8) if unit % n == 0), default=8),
                          a_smem=bool(s.wgmma_a_smem))
        return cls.of(s, problem.pattern.vector, instr)

    @property
    def group_size(self) -> int:
        """Threads that execute one instruction tile together: 1 thread (FFMA), a warp (mma), a
        warpgroup of 4 warps (wgmma). The block's warp tiles are spread over such groups."""
        return 128 if self.instr.is_wgmma else 32

    @property
    def lanes_m(self): return self.warp_m // self.thread_m
    @property
    def lanes_n(self): return self.warp_n // self.thread_n
    @property
    def warps_m(self): return self.block_m // self.warp_m
    @property
    def warps_n(self): return self.block_n // self.warp_n
    @property
    def threads(self): return self.group_size * self.warps_m * self.warps_n * self.warps_k
    @property
    def a_vec(self): return self.row_vec or vector_width(self.thread_m)
    @property
    def b_vec(self): return vector_width(self.thread_n)
    @property
    def units_per_block(self): return self.block_n // self.unit

    def slice(self, tid):
        """Which share of the kept rows thread `tid` multiplies (0 <= slice < warps_k)."""
        return tid // (self.group_size * self.warps_m * self.warps_n)

    def warp_coords(self, tid):
        """(warp row, warp column) of thread `tid`'s warp tile (a warpgroup's, for wgmma)."""
        warp = tid // self.group_size
        if self.warps_k > 1:
            warp = warp % (self.warps_m * self.warps_n)
        return warp // self.warps_n, warp % self.warps_n

    def _coords(self, tid):
        """FFMA: (warp row, warp column, lane row, lane column) of thread `tid`."""
        wm, wn = self.warp_coords(tid)
        lane = tid % 32
        LN, LM = self.lanes_n, self.lanes_m
        if LN < 2 or LM < 2:           # a warp one thread wide: no pairs to form
            return wm, wn, lane // LN, lane % LN
        rest = lane // 4
        ln = (rest % (LN // 2)) * 2 + lane % 2
        lm = (rest // (LN // 2)) * 2 + (lane // 2) % 2
        return wm, wn, lm, ln

    def row(self, tid, r: int):
        """Block-local row of the thread's r-th accumulator row (0 <= r < thread_m)."""
        wm, _, lm, _ = self._coords(tid)
        q, e = divmod(r, self.a_vec)
        return wm * self.warp_m + q * (self.lanes_m * self.a_vec) + lm * self.a_vec + e

    def col(self, tid, c: int):
        """Block-local column of the thread's c-th accumulator column (0 <= c < thread_n)."""
        _, wn, _, ln = self._coords(tid)
        q, e = divmod(c, self.b_vec)
        return wn * self.warp_n + q * (self.lanes_n * self.b_vec) + ln * self.b_vec + e

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Columns that share one index look-up: FFMA thread-tile column numbers c, mma instruction
        tile columns j."""
        if self.instr.is_mma:
            per = max(1, self.unit // self.instr.n)
            return tuple(tuple(range(s, min(s + per, self.tiles_n))) for s in range(0, self.tiles_n, per))
        if self.unit % self.warp_n == 0:
            return (tuple(range(self.thread_n)),)
        g = min(self.unit, self.b_vec)
        return tuple(tuple(range(s, s + g)) for s in range(0, self.thread_n, g))

    def group_unit(self, tid, g: int):
        """Block-local index unit of look-up group g."""
        if self.instr.is_mma:
            _, wn = self.warp_coords(tid)
            return (wn * self.warp_n + self.groups[g][0] * self.instr.n) // self.unit
        return self.col(tid, self.groups[g][0]) // self.unit

    # ---- mma: the warp tile as a grid of instruction tiles --------------------------------------
    @property
    def tiles_m(self) -> int:
        return self.warp_m // self.instr.m

    @property
    def tiles_n(self) -> int:
        return self.warp_n // self.instr.n

    # ---- accumulators, whatever the instruction -------------------------------------------------
    @property
    def acc_count(self) -> int:
        """Accumulators per thread."""
        if self.instr.is_mma:
            return self.tiles_m * self.tiles_n * self.instr.c_regs
        return self.thread_m * self.thread_n

    def acc_row(self, tid, e: int):
        """Block-local row of thread `tid`'s accumulator e."""
        if self.instr.is_mma:
            q, t = e % self.instr.c_regs, e // self.instr.c_regs
            wm, _ = self.warp_coords(tid)
            return (wm * self.warp_m + (t // self.tiles_n) * self.instr.m
                    + self.instr.c_coord(tid % self.group_size, q)[0])
        return self.row(tid, e // self.thread_n)

    def acc_col(self, tid, e: int):
        """Block-local column of thread `tid`'s accumulator e."""
        if self.instr.is_mma:
            q, t = e % self.instr.c_regs, e // self.instr.c_regs
            _, wn = self.warp_coords(tid)
            return (wn * self.warp_n + (t % self.tiles_n) * self.instr.n
                    + self.instr.c_coord(tid % self.group_size, q)[1])
        return self.col(tid, e % self.thread_n)

    @property
    def runs(self) -> tuple[tuple[int, ...], ...]:
        """Accumulators in runs of consecutive columns of one row (for every thread alike): what
        one vector store writes. FFMA: b_vec columns of a thread-tile row; mma: the column pairs of
        the C fragment (elements 2h and 2h+1 of each instruction tile)."""
        if self.instr.is_mma:
            return tuple((e, e + 1) for e in range(0, self.acc_count, 2))
        v = self.b_vec
        return tuple(tuple(r * self.thread_n + c0 + i for i in range(v))
                     for r in range(self.thread_m) for c0 in range(0, self.thread_n, v))

    @property
    def c_vec(self) -> int:
        """Columns in each run (the widest C store a thread makes)."""
        return len(self.runs[0])

    # ---- mma: which shared-memory row each lane hands ldmatrix ---------------------------------
    # ldmatrix.x4 loads four 8x8 matrices of 16-bit elements: lane L gives the address of row L % 8
    # of matrix L // 8 (PTX ISA, ldmatrix). With .trans, a stored row of 8 elements becomes a column
    # of the fragment, so a [k][m] shared A tile yields row-major A fragments and a [k][n] B tile
    # "col" B fragments.
    @staticmethod
    def ldmatrix_a(lane):
        """(k within the instruction step, m offset) of the A row lane `lane` addresses for the x4
        load of one 16 x 16 A fragment: matrices (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7),
        (k 8-15, m 8-15), i.e. fragment registers a0..a3."""
        q, r = lane // 8, lane % 8
        return 8 * (q // 2) + r, 8 * (q % 2)

    @staticmethod
    def ldmatrix_b(lane):
        """(k within the step, n offset) of the B row lane `lane` addresses for the x4 load of two
        16 x 8 B fragments (instruction tiles j, j+1): matrices (k 0-7, tile j), (k 8-15, tile j),
        (k 0-7, tile j+1), (k 8-15, tile j+1), i.e. b0, b1 of tile j then of tile j+1."""
        q, r = lane // 8, lane % 8
        return 8 * (q % 2) + r, 8 * (q // 2)


@dataclass(frozen=True)
class CopyPlan:
    """How `threads` threads split a rows x cols tile copy (global -> shared) into cp.async's.

    Plain copies move `width` bytes per instruction along the contiguous source dimension,
    consecutive threads taking consecutive vectors (coalesced). Transposing copies (A: global
    [m][k] -> shared [k][m]) move one 4-byte element each; per instruction a warp covers a
    footprint of mf = 32/kf rows x kf columns, kf = gcd(cols, 8): whole 32-byte sectors in global
    memory, and with a shared row pitch of 4 (mod 32) words its 32 stores hit 32 different banks.
    A thread walks the footprint columns first (fc_n iterations on the same rows, addresses a few
    bytes apart: immediate offsets), then moves `warps` footprint rows down (a new base address:
    LDGSTS immediates are only 12 bits, so every distinct source row costs an address add).
    """
    rows: int
    cols: int
    esize: int
    width: int
    transpose: bool
    threads: int

    @property
    def elems(self) -> int:
        return self.width // self.esize

    def _foot(self):
        kf = gcd(self.cols, 8)
        mf = 32 // kf
        return kf, mf, ceil_div(self.rows, mf), self.cols // kf

    def gathered(self, r, c):
        """The index a row list replaces: the source column of a transposing copy (A row-major:
        K runs along its rows), the source row of a plain one (A column-major)."""
        return c if self.transpose else r

    @property
    def iterations(self) -> int:
        if self.transpose:
            _, _, fr_n, fc_n = self._foot()
            return ceil_div(fr_n, self.threads // 32) * fc_n
        return ceil_div(self.rows * (self.cols // self.elems), self.threads)

    def slot(self, it: int, tid):
        """(row, first column, guard) of thread `tid`'s copy in iteration `it`; guard 0 = no copy.

        Results are f(tid) + constants (`it` is a Python int), so codegen computes f(tid) once and
        folds the rest into address immediates."""
        if self.transpose:
            kf, mf, fr_n, fc_n = self._foot()
            warps = self.threads // 32
            warp, lane = tid // 32, tid % 32
            foot_row = (it // fc_n) * warps + warp
            r = foot_row * mf + lane // kf
            c = (it % fc_n) * kf + lane % kf
            guard = 1
            if fr_n % warps:
                guard = and_(guard, lt(foot_row, fr_n))
            if self.rows % mf:
                guard = and_(guard, lt(r, self.rows))
            return r, c, guard
        vpr = self.cols // self.elems
        total = self.rows * vpr
        guard = lt(it * self.threads + tid, total) if total % self.threads else 1
        if self.threads % vpr == 0:
            return it * (self.threads // vpr) + tid // vpr, (tid % vpr) * self.elems, guard
        v = it * self.threads + tid
        return v // vpr, (v % vpr) * self.elems, guard
