"""The tile-level kernel IR: small frozen nodes.

Statements are block-collective: every thread of the block executes each one, and how a
statement's elements are split over threads is fixed by `layout` (CopyPlan, ComputeLayout), which
both codegen and the interpreter use. Index expressions are `ir.expr` trees over the variables
bound by `Let` and `For`, plus the special registers `tid`, `ctaid_x`, `ctaid_z`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .expr import IntLike
from .layout import ComputeLayout, CopyPlan

DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "u8": 1, "u16": 2, "i32": 4}


@dataclass(frozen=True)
class Param:
    """A global-memory array argument, row-major (rows, cols)."""
    name: str
    dtype: str
    rows: int
    cols: int
    readonly: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Shared:
    """A shared-memory buffer of `stages` copies of a (rows, pitch) tile; `offset` in bytes.
    Element (r, c) of a stage sits at r * pitch + c, or, `swizzled` (16-bit elements, rows a
    multiple of 8, pitch a multiple of 64, no padding), as wgmma reads an M-major operand with the
    128-byte swizzle (PTX ISA, "Shared Memory Matrix Layout": canonical layout
    ((8,8,m),(8,k)):((1,8,LBO),(64,SBO)) in elements, then 16-byte chunk bits 4-6 of the address
    XORed with bits 7-9): each run of 8 rows is a slab of pitch / 64 atoms of 1 KB, atom a holding
    columns 64a..64a+63 of the 8 rows, row r%8 a 128-byte line of it whose 16-byte chunk q sits at
    position q ^ (r % 8). A warp's 16-byte stores along a row then hit 8 distinct bank groups."""
    name: str
    dtype: str
    stages: int
    rows: int
    pitch: int          # elements per row, padding included
    offset: int = 0
    doc: str = ""
    swizzled: bool = False

    def element(self, r, c):
        """Element offset of (r, c) inside a stage (index expressions or numpy arrays)."""
        if not self.swizzled:
            return r * self.pitch + c
        return (r // 8) * (8 * self.pitch) + (c // 64) * 512 + (r % 8) * 64 + ((c // 8 % 8) ^ (r % 8)) * 8 + c % 8

    @property
    def stage_bytes(self) -> int:
        return self.rows * self.pitch * DTYPE_BYTES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.stages * self.stage_bytes


@dataclass(frozen=True)
class Let:
    var: str
    value: IntLike


@dataclass(frozen=True)
class For:
    """Serial run-time loop, var in [start, stop)."""
    var: str
    start: IntLike
    stop: IntLike
    body: tuple


@dataclass(frozen=True)
class If:
    cond: IntLike
    body: tuple


@dataclass(frozen=True)
class Copy:
    """Asynchronous copy of a tile from global to shared (cp.async), into the open copy group.

    Plain:      dst[stage][r][c] = src[row(r)][col0 + c]
    Transposed: dst[stage][c][r] = src[row0 + r][col(c)]
    row(r) = row0 + r and col(c) = col0 + c, except that with `row_list` the gathered index
    (plan.gathered: the column of a transposing copy, the row of a plain one) is the value a
    LoadList put in those registers for this copy slot.
    Elements with row >= bound_rows or col >= bound_cols (when given) are zero-filled.
    """
    dst: str
    stage: IntLike
    src: str
    row0: IntLike
    col0: IntLike
    plan: CopyPlan
    bound_rows: Optional[int] = None
    bound_cols: Optional[int] = None
    row_list: Optional[str] = None


@dataclass(frozen=True)
class LoadList:
    """Each thread loads into registers `dst` the list entries its slots of `plan` will copy:
    dst[it] = src.flat[offset + plan.gathered(row, column) of the thread's slot it]. Issued an iteration ahead of the
    Copy that uses them, so the global-memory latency hides behind the FMAs in between."""
    dst: str
    src: str
    offset: IntLike
    plan: CopyPlan


@dataclass(frozen=True)
class Commit:
    """Close the open cp.async group."""


@dataclass(frozen=True)
class Wait:
    """Wait until at most `pending` of this thread's committed groups are still in flight."""
    pending: int


@dataclass(frozen=True)
class MmaWait:
    """Wait until at most `pending` of this warp's committed groups of asynchronous warpgroup mma
    (wgmma) are still running: their accumulators may then be read and the shared memory they read
    reused (after a barrier, for the other warps' groups)."""
    pending: int


@dataclass(frozen=True)
class AsyncProxyFence:
    """fence.proxy.async.shared::cta: shared memory this thread wrote through the generic proxy
    (cp.async included) becomes visible to the async proxy - the tensor cores' wgmma reads. Each
    writing thread fences before the barrier after which the async reads may start."""


@dataclass(frozen=True)
class Barrier:
    """__syncthreads(): every thread arrives, and shared memory writes before it are visible after it."""


@dataclass(frozen=True)
class ZeroAcc:
    """Set the register accumulators (layout.acc_count per thread) to zero."""


@dataclass(frozen=True)
class SparseOperands:
    """Where a K tile's sparse product reads its operands: A(idx(i, c), row) * Bs[stage][i][c]
    for the `kept` rows i of a K tile and the block's columns c, idx(i, c) =
    Is[stage][i * units_per_block + unit(c)], a K position in the shared A tile (< a_rows), and
    A(k, m) = As[stage][k][m] ("km") or As[stage][m][k] ("mk").
    The rows are multiplied in steps of `step` (the instruction's k: 1 for FFMA, 16 or 8 for mma).
    With `slices` > 1 a thread of slice q (layout.slice) takes only the kept rows
    q * share <= i < (q + 1) * share, share = kept / slices; "step j" of a thread is rows
    q * share + j * step ... + step - 1 of the tile.
    With `offsets` > 0 the index chunk holds, unit-major (Is[stage][unit * kept + i], 32-bit), the
    byte offset idx(i, c) * offsets of the A row inside the stage instead of idx itself.
    With no `idx` ("gather") nothing is looked up: idx(i, c) = unit(c) * kept + i."""
    a: str
    b: str
    idx: str
    kept: int
    a_rows: int
    a_layout: str = "km"
    slices: int = 1
    offsets: int = 0
    step: int = 1

    @property
    def share(self) -> int:
        """Kept rows of a K tile one slice multiplies."""
        return self.kept // self.slices

    @property
    def steps(self) -> int:
        """Instruction steps of a slice's share."""
        return self.share // self.step


@dataclass(frozen=True)
class LoadFragments:
    """Each thread loads into registers `dst` its fragments of step `step` of its share of `stage`:
    the index look-ups, then A at those K positions and B. A later SparseMMA(head=dst) multiplies
    them; in between the stage may be overwritten. This is how a K tile's first fragments are
    loaded before the previous tile's last products are issued."""
    dst: str
    stage: IntLike
    ops: SparseOperands
    step: int


@dataclass(frozen=True)
class SparseMMA:
    """acc += A * B (see SparseOperands) over steps first <= j < stop of each thread's share of
    `stage` (stop None: the end of the share), with the layout's multiply-accumulate instruction
    (FFMA on a thread tile, or mma on a warp's fragments). With `head`, step `first` is not read
    from shared memory: its fragments are the registers a LoadFragments filled (and are used up).
    wgmma: the steps' A fragments are loaded, then all their wgmma issued and committed as one
    asynchronous group, which reads B from the stage until an MmaWait retires it."""
    stage: IntLike
    ops: SparseOperands
    first: int = 0
    stop: Optional[int] = None
    head: str = ""

    @property
    def steps(self) -> range:
        return range(self.first, self.ops.steps if self.stop is None else self.stop)


@dataclass(frozen=True)
class ReduceSlices:
    """Sliced K: the threads of slices 1.. write their accumulators to `buf`[slice - 1][row][col],
    a barrier, then slice 0 adds them to its own (the only slice StoreAcc stores). `buf` overlays
    the pipeline's buffers: every copy must have landed and a barrier must follow the last read."""
    buf: str


@dataclass(frozen=True)
class StoreAcc:
    """C[row0 + row][col0 + col] = acc (or += with `atomic`) for each accumulator's (row, col)
    (layout.acc_row / acc_col), converted to C's dtype, masked to the problem's M x N; with sliced
    K (layout.warps_k > 1) by the threads of slice 0 only. With `at`, the same elements (masked by
    their place in C) go to dst[at[0] + row][at[1] + col]: a workspace laid out by tile.
    With `via` (plain stores only) the tile goes through that shared buffer: each thread writes its
    accumulators there (converted), a barrier, then the block writes whole rows of the tile in
    vectors of Kernel.c_staged elements. The buffer overlays the pipeline's: every copy must have
    landed and a barrier must follow the last read of a stage (as for ReduceSlices)."""
    dst: str
    row0: IntLike
    col0: IntLike
    atomic: bool
    at: Optional[tuple] = None    # (row, col) of `dst` the tile's first element goes to; None: (row0, col0)
    via: str = ""


@dataclass(frozen=True)
class SplitKReduce:
    """Split-K in one launch (the serial split-K reduction): a 16-bit C, or the tail of a tail
    split (its whole tiles store C plainly). Before it, StoreAcc added the block's partial sums
    atomically into the fp32 workspace `work`. Each block then counts itself in `counts`[0][tile]
    (one i32 per tile that is split); the block that counts
    `splits` (every split's sums are in) reads its (rows, cols) tile at (row0, col0) of `work`,
    masked to M x N, stores it into `dst` rounded to dst's dtype, and stores zero over what it read
    and over its count. The tile's sums sit in `work` at work_origin (a tail split's workspace holds
    its tail tiles only, one (rows, cols) tile after another). So `work` and `counts` are zero after
    the launch as before it: the launcher zeroes them once, when it allocates them, not before
    every launch.

    Ordering (PTX ISA, memory consistency model): every thread's adds, then a gpu-scope fence and
    a barrier, before the count (an atomic add by thread 0); the last block fences again before it
    reads `work` through L2 (ld.global.cg), where the other blocks' atomic adds were performed."""
    dst: str
    work: str
    counts: str
    row0: IntLike
    col0: IntLike
    rows: int
    cols: int
    splits: int
    tile: IntLike             # the tile's count: counts[0][tile]
    work_at: Optional[tuple] = None   # (row, col) of `work` where the tile's sums start; None: (row0, col0)

    @property
    def work_origin(self) -> tuple:
        return self.work_at if self.work_at is not None else (self.row0, self.col0)


Stmt = Union[Let, For, If, Copy, LoadList, Commit, Wait, MmaWait, AsyncProxyFence, Barrier, ZeroAcc, LoadFragments,
             SparseMMA, ReduceSlices, StoreAcc, SplitKReduce]


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    shared: tuple[Shared, ...]
    threads: int
    grid: tuple[int, int, int]
    layout: ComputeLayout
    idx_bits: int
    M: int
    N: int
    body: tuple
    zero_output: bool = False      # the launcher must zero C first (split-K into an fp32 C accumulates atomically)
    a_alignment: int = 4           # bytes A's base address must be aligned to (16-byte copies of A rows)
    min_blocks: int = 0
    c_staged: int = 0              # elements of C a thread stores at once from a staged tile (StoreAcc.via); 0: none
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def workspace_words(self) -> int:
        """32-bit words of the zeroed scratch a kernel that reduces split K parts itself needs
        (SplitKReduce: split-K into a 16-bit C, or a tail split): its "Work" fp32 partial sums ((M, N);
        a tail split's (tail_tiles * block_m, block_n)), then its "Counts" (one per tile split); 0
        for others. The launcher passes the scratch's address as Work and address + 4 * (Work's
        elements) as Counts."""
        if not any(p.name == "Work" for p in self.params):
            return 0
        return self.work_words + self.param("Counts").cols

    @property
    def work_words(self) -> int:
        """fp32 elements of "Work" (0 without): the offset of "Counts" in the scratch, in words."""
        if not any(p.name == "Work" for p in self.params):
            return 0
        return self.param("Work").rows * self.param("Work").cols

    @property
    def store_vec(self) -> int:
        """Accumulator columns a thread stores (or adds) with one vector access: a run of the layout
        (layout.c_vec) where every row of the (M, N) target starts on a boundary of it, else 1."""
        vec = self.layout.c_vec
        return vec if self.N % vec == 0 else 1

    @property
    def c_alignment(self) -> int:
        """Bytes C's base address must be aligned to: a thread's run of consecutive columns
        (layout.runs) is stored (or atomically added, where the target has vector atomics) with
        one vector access when every row of C starts on such a boundary, and so is a staged tile's
        row vector of c_staged elements."""
        return DTYPE_BYTES[self.param("C").dtype] * max(self.store_vec, self.c_staged)

    @property
    def smem_bytes(self) -> int:
        return max((s.offset + s.nbytes for s in self.shared), default=0)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def buffer(self, name: str) -> Shared:
        for s in self.shared:
            if s.name == name:
                return s
        raise KeyError(name)
