"""Run the kernel IR on the CPU with numpy, one thread block at a time.

It executes what the GPU would: the copy plans and the compute layout thread by thread (vectorised
over the block's threads), the pipeline's copy groups, waits and barriers. Tensor-core steps are
executed as the hardware defines them, not as the builder intends: each lane's ldmatrix row
address comes from the layout (as codegen computes it), the matrix rows are handed out to the
lanes by the PTX ISA's ldmatrix rule, and the mma multiplies the matrices its fragments hold by
the instruction's fragment table, with the inputs rounded to their dtype and fp32 sums: a layout
mistake gives a wrong C here, on the CPU. On top of the values it
tracks each shared-memory stage's state, so an ordering bug fails here instead of racing on a GPU:

  a copy is issued        -> stage "pending"   (its data is not in shared memory yet)
  a wait retires its group -> "landed"          (visible to the issuing threads only)
  a barrier                -> "visible"         (visible to all)
  reading a stage that is not "visible", copying into a stage read since the last barrier, or into
  one with a copy still pending, raises HazardError. Shared memory starts as NaN (poison).

Slow by design (tiny problems only): it is a checker, not a fast path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from .dtypes import round_tf32
from .errors import HazardError
from .expr import evaluate
from .nodes import (AsyncProxyFence, Barrier, Commit, Copy, For, If, Kernel, Let, LoadFragments, LoadList, MmaWait,
                    ReduceSlices, SparseMMA, SparseOperands, SplitKReduce, StoreAcc, Wait, ZeroAcc)
from .operands import INDEX_DTYPES

_NP = {"f32": np.float32, "bf16": ml_dtypes.bfloat16, "f16": np.float16, "u8": np.uint8, "u16": np.uint16,
       "i32": np.int32}
_POISON = {"f32": np.nan, "bf16": np.nan, "f16": np.nan, "u8": 0xEE, "u16": 0xEEEE, "i32": -0x11111112}


@dataclass
class _Stage:
    state: str = "empty"     # empty | pending | landed | visible
    read: bool = False       # read since the last barrier
    async_ok: bool = False   # fenced into the async proxy (wgmma may read it) since its copy landed


@dataclass
class _Block:
    env: dict
    smem: dict
    stages: dict
    acc: np.ndarray
    open_group: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    regs: dict = field(default_factory=dict)     # per-thread register lists: name -> (iterations, threads)
    frags: dict = field(default_factory=dict)    # fragment registers: name -> fragments of one step per thread
    mma_groups: list = field(default_factory=list)   # wgmma groups in flight: the stages each still reads


def _bcast(x, n):
    return np.broadcast_to(np.asarray(x), (n,))


class Interpreter:
    def __init__(self, kernel: Kernel):
        self.k = kernel
        tid = np.arange(kernel.threads)
        lay = kernel.layout
        T = kernel.threads
        # every accumulator's block-local row and column: (threads, acc_count)
        self.rows = np.stack([_bcast(lay.acc_row(tid, e), T) for e in range(lay.acc_count)], 1)
        self.cols = np.stack([_bcast(lay.acc_col(tid, e), T) for e in range(lay.acc_count)], 1)
        self.slice = np.broadcast_to(lay.slice(tid), tid.shape)                     # sliced K: share of the rows
        self.group_units = np.stack([_bcast(lay.group_unit(tid, g), T) for g in range(len(lay.groups))], 1)  # (T, G)
        if lay.instr.is_mma:
            self._init_mma(tid)
        else:                            # FFMA thread tiles: rows (T, TM), columns and their index units (T, TN)
            self.frow = np.stack([_bcast(lay.row(tid, r), T) for r in range(lay.thread_m)], 1)
            self.fcol = np.stack([_bcast(lay.col(tid, c), T) for c in range(lay.thread_n)], 1)
            self.funits = np.empty_like(self.fcol)
            for gi, group in enumerate(lay.groups):
                for c in group:
                    self.funits[:, c] = self.group_units[:, gi]
        self._check_partition()
        self._slots = {}
        self.written = None

    def _check_partition(self):
        lay = self.k.layout
        for q in range(lay.warps_k):      # each slice's accumulators cover the block tile once
            mine = self.slice == q
            cover = np.zeros((lay.block_m, lay.block_n), np.int64)
            np.add.at(cover, (self.rows[mine], self.cols[mine]), 1)
            if not (cover == 1).all():
                raise HazardError(f"accumulators (slice {q}) do not partition the {lay.block_m}x{lay.block_n} "
                                  f"block tile (an element owned {cover.min()}..{cover.max()} times)")
        units = self.funits if not lay.instr.is_mma else self.group_units[:, self.acc_group]
        cols = self.fcol if not lay.instr.is_mma else self.cols
        if (cols // lay.unit != units).any():
            raise HazardError("an index look-up group spans two index units")

    def _init_mma(self, tid):
        """The instruction's fragment tables as index arrays, each checked to be a bijection onto
        its matrix (a table with a hole or a double entry would go unnoticed otherwise)."""
        lay, ins = self.k.layout, self.k.layout.instr
        lanes = np.arange(ins.lanes)
        self.lane, self.warp = tid % 32, tid // 32
        self.lane_g = tid % ins.lanes                         # the thread within its instruction group
        self.wm, self.wn = (np.asarray(x) for x in lay.warp_coords(tid))
        tables = {}
        tables_of = [("C", ins.c_regs, ins.c_coord, (ins.m, ins.n))]
        if not ins.a_from_smem:           # nor A's where wgmma reads it from shared memory
            tables_of.insert(0, ("A", ins.a_regs * ins.per_reg, ins.a_coord, (ins.m, ins.k)))
        if not ins.is_wgmma:              # wgmma's B comes through a descriptor, not registers
            tables_of.insert(1, ("B", ins.b_regs * ins.per_reg, ins.b_coord, (ins.k, ins.n)))
        for name, count, coord, shape in tables_of:
            rc = np.array([[coord(int(t), e) for e in range(count)] for t in lanes])       # (32, count, 2)
            cover = np.zeros(shape, np.int64)
            np.add.at(cover, (rc[..., 0], rc[..., 1]), 1)
            if not (cover == 1).all():
                raise HazardError(f"{ins.name}: the {name} fragment table does not cover the {shape} matrix once")
            tables[name] = rc
        self.frag_table = tables
        # a warp's own (row, k) of its A fragment (scalar loads): rows 16w.. of wgmma are added as m0
        self.warp_a_table = np.array([[(r % 16, k) for r, k in (ins.a_coord(int(t), e) for e in
                                       range(ins.a_regs * ins.per_reg))] for t in range(32)]) if ins.a_regs else None
        group_of = {j: g for g, js in enumerate(lay.groups) for j in js}
        per_tile = ins.c_regs
        self.acc_group = np.array([group_of[(e // per_tile) % lay.tiles_n] for e in range(lay.acc_count)])

    # ---- launch ---------------------------------------------------------------------------------
    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """`arrays` maps each param name to its 2-D array (a split-K workspace, "Work" and "Counts",
        may be left out: zeros, as the launcher provides it); returns C (poisoned, or zeroed for
        split-K into an fp32 C, first). Raises HazardError if the kernel leaves its workspace
        anything but zero (the next launch relies on it)."""
        k = self.k
        scratch = {p.name: np.zeros((p.rows, p.cols), _NP[p.dtype]) for p in k.params if p.name in ("Work", "Counts")}
        arrays = {**scratch, **arrays}
        for p in k.params:
            if p.name == "C":
                continue
            a = arrays[p.name]
            if a.shape != (p.rows, p.cols) or a.dtype != _NP[p.dtype]:
                raise ValueError(f"param {p.name}: expected {p.dtype} ({p.rows}, {p.cols}), got {a.dtype} {a.shape}")
        c_np = _NP[k.param("C").dtype]
        C = np.zeros((k.M, k.N), c_np) if k.zero_output else np.full((k.M, k.N), np.nan, c_np)
        self.arrays = dict(arrays, C=C)
        self.written = np.zeros((k.M, k.N), bool)
        gx, gy, gz = k.grid
        for z in range(gz):
            for x in range(gx):
                self._run_block({"ctaid_x": x, "ctaid_z": z})
        for name in scratch:
            if self.arrays[name].any():
                raise HazardError(f"the kernel leaves its split-K workspace {name} non-zero: the next launch, "
                                  f"which relies on it being zero, would add to stale sums")
        return C

    def _run_block(self, env):
        k = self.k
        smem = {b.name: np.full((b.stages, b.rows, b.pitch), _POISON[b.dtype], _NP[b.dtype]) for b in k.shared}
        stages = {(b.name, s): _Stage() for b in k.shared for s in range(b.stages)}
        lay = k.layout
        blk = _Block(env=dict(env), smem=smem, stages=stages, acc=np.full((k.threads, lay.acc_count), np.nan, np.float32))
        self._exec(k.body, blk)

    def _exec(self, body, blk: _Block):
        for st in body:
            if isinstance(st, Let):
                v = blk.env[st.var] = self._scalar(st.value, blk)
                if v < 0:    # the GPU's index arithmetic is unsigned: it would wrap around there
                    raise HazardError(f"{st.var} = {st.value} is {v}: index values must not be negative")
            elif isinstance(st, For):
                for v in range(self._scalar(st.start, blk), self._scalar(st.stop, blk)):
                    blk.env[st.var] = v
                    self._exec(st.body, blk)
            elif isinstance(st, If):
                if self._scalar(st.cond, blk):
                    self._exec(st.body, blk)
            elif isinstance(st, Copy):
                self._copy(st, blk)
            elif isinstance(st, LoadList):
                self._load_list(st, blk)
            elif isinstance(st, Commit):
                blk.groups.append(blk.open_group)
                blk.open_group = []
            elif isinstance(st, Wait):
                while len(blk.groups) > st.pending:
                    for key, apply in blk.groups.pop(0):
                        apply()
                        blk.stages[key].state = "landed"
                        blk.stages[key].async_ok = False
            elif isinstance(st, AsyncProxyFence):
                for s in blk.stages.values():
                    if s.state in ("landed", "visible"):
                        s.async_ok = True
            elif isinstance(st, MmaWait):
                del blk.mma_groups[:max(0, len(blk.mma_groups) - st.pending)]
            elif isinstance(st, Barrier):
                for s in blk.stages.values():
                    if s.state == "landed":
                        s.state = "visible"
                    s.read = False
            elif isinstance(st, ZeroAcc):
                blk.acc[:] = 0
            elif isinstance(st, LoadFragments):
                self._load_fragments(st, blk)
            elif isinstance(st, SparseMMA):
                self._multiply(st, blk)
            elif isinstance(st, ReduceSlices):
                self._reduce(st, blk)
            elif isinstance(st, StoreAcc):
                self._store(st, blk)
            elif isinstance(st, SplitKReduce):
                self._split_k_reduce(st, blk)
            else:
                raise TypeError(f"interpreter cannot run {type(st).__name__}")

    def _scalar(self, e, blk) -> int:
        v = evaluate(e, blk.env)
        if not isinstance(v, (int, np.integer)):
            raise HazardError(f"block-uniform value {e} depends on the thread")
        return int(v)

    # ---- copies ---------------------------------------------------------------------------------
    def _plan_slots(self, plan):
        """(row, col, iteration, thread) of every guarded-in copy slot; checks the plan copies each
        tile element exactly once."""
        if plan not in self._slots:
            tid = np.arange(plan.threads)
            its = [plan.slot(it, tid) for it in range(plan.iterations)]
            r = np.concatenate([np.broadcast_to(x[0], tid.shape) for x in its])
            c = np.concatenate([np.broadcast_to(x[1], tid.shape) for x in its])
            g = np.concatenate([np.broadcast_to(x[2], tid.shape) for x in its]).astype(bool)
            it_idx = np.repeat(np.arange(plan.iterations), plan.threads)
            thr = np.tile(tid, plan.iterations)
            r, c, it_idx, thr = r[g], c[g], it_idx[g], thr[g]
            cover = np.zeros((plan.rows, plan.cols), np.int64)
            for e in range(plan.elems):
                np.add.at(cover, (r, c + e), 1)
            if not (cover == 1).all():
                raise HazardError(f"copy plan {plan} does not copy every tile element exactly once")
            self._slots[plan] = (r, c, it_idx, thr)
        return self._slots[plan]

    def _load_list(self, st: LoadList, blk: _Block):
        r, c, it_idx, thr = self._plan_slots(st.plan)
        src = self.arrays[st.src].ravel()
        idx = self._scalar(st.offset, blk) + st.plan.gathered(r, c)
        if (idx >= src.size).any():
            raise HazardError(f"LoadList reads past the end of {st.src}")
        regs = np.full((st.plan.iterations, st.plan.threads), -1, np.int64)   # -1: never loaded
        regs[it_idx, thr] = src[idx]
        blk.regs[st.dst] = regs

    def _copy(self, cp: Copy, blk: _Block):
        stage = self._scalar(cp.stage, blk)
        key = (cp.dst, stage)
        st = blk.stages[key]
        if st.read:
            raise HazardError(f"copy into {cp.dst} stage {stage} while threads may still be reading it "
                              f"(no barrier since it was last read)")
        if st.state == "pending" or any(k == key for k, _ in blk.open_group):
            raise HazardError(f"copy into {cp.dst} stage {stage} while an earlier copy into it is still in flight")
        if any(key in g for g in blk.mma_groups):
            raise HazardError(f"copy into {cp.dst} stage {stage} while a wgmma group still reads it (no MmaWait "
                              f"retired it, or no barrier after the other warps' waits)")
        src = self.arrays[cp.src]
        r, c, it_idx, thr = self._plan_slots(cp.plan)
        row0, col0 = self._scalar(cp.row0, blk), self._scalar(cp.col0, blk)
        plan = cp.plan
        values = []
        for e in range(plan.elems):
            rows, cols = row0 + r, col0 + c + e
            if cp.row_list is not None:
                if cp.row_list not in blk.regs:
                    raise HazardError(f"copy uses registers {cp.row_list} before any LoadList filled them")
                listed = blk.regs[cp.row_list][it_idx, thr]
                if plan.transpose:
                    cols = listed
                else:
                    rows = listed
            ok = np.ones(r.shape, bool)
            if cp.bound_rows is not None:
                ok &= rows < cp.bound_rows
            if cp.bound_cols is not None:         # checked on a vector's first element, as the GPU does
                ok &= cols - e < cp.bound_cols
            if ((rows[ok] >= src.shape[0]) | (cols[ok] >= src.shape[1])).any():
                raise HazardError(f"copy {cp.src} -> {cp.dst} reads outside {cp.src} {src.shape}")
            v = np.zeros(r.shape, src.dtype)
            v[ok] = src[rows[ok], cols[ok]]
            values.append(v)
        buf = blk.smem[cp.dst]

        layout = self.k.buffer(cp.dst)

        def apply():
            for e, v in enumerate(values):
                if plan.transpose:
                    buf[stage, c + e, r] = v
                elif layout.swizzled:           # the stage as wgmma addresses it: flat, swizzled
                    buf[stage].reshape(-1)[layout.element(r, c + e)] = v
                else:
                    buf[stage, r, c + e] = v

        st.state = "pending"
        blk.open_group.append((key, apply))

    # ---- compute and store ----------------------------------------------------------------------
    def _visible(self, blk, name, stage, what):
        s = blk.stages[(name, stage)]
        if s.state != "visible":
            raise HazardError(f"{what} reads {name} stage {stage} while it is {s.state}: its copy group "
                              f"was not waited for, or no barrier followed the wait")
        s.read = True

    def _index_entries(self, ops: SparseOperands, stage: int, blk: _Block) -> np.ndarray:
        """The stage's index chunk as K positions in the shared A tile: (kept, units_per_block)."""
        k = self.k
        raw = blk.smem[ops.idx][stage, 0]
        upb = k.layout.units_per_block
        dt = INDEX_DTYPES[k.idx_bits]
        entries = raw[: ops.kept * upb * dt.itemsize].view(dt).astype(np.int64)
        if ops.offsets:                                    # unit-major byte offsets of shared A rows
            entries = entries.reshape(upb, ops.kept).T
            if (entries % ops.offsets).any():
                raise HazardError(f"an index offset is not a multiple of the {ops.offsets}-byte A row")
            entries = entries // ops.offsets
        else:
            entries = entries.reshape(ops.kept, upb)
        if (entries >= ops.a_rows).any():
            raise HazardError(f"index {entries.max()} points past the {ops.a_rows} K positions of the shared A tile")
        return entries

    def _operands(self, ops: SparseOperands, stage: int, blk: _Block, what: str):
        for name in (ops.a, ops.b) + ((ops.idx,) if ops.idx else ()):
            self._visible(blk, name, stage, what)
        if ops.idx:
            entries = self._index_entries(ops, stage, blk)
        else:                   # "gather": unit u's kept row i is shared A row u * kept + i
            upb = self.k.layout.units_per_block
            entries = np.arange(upb)[None, :] * ops.kept + np.arange(ops.kept)[:, None]
        return blk.smem[ops.a][stage], blk.smem[ops.b][stage], entries

    def _fragments(self, ops: SparseOperands, stage: int, steps, blk: _Block, what: str):
        """The fragments of steps `steps` of each thread's share of `stage`: FFMA (A (threads, J, TM,
        TN): one A value per row and column, the look-up depending on the column's unit; B (threads,
        J, TN)), or mma (see _mma_fragments)."""
        As, Bs, entries = self._operands(ops, stage, blk, what)
        if self.k.layout.instr.is_mma:
            return [self._mma_fragments(ops, As, Bs, entries, j) for j in steps]
        i = self.slice[:, None] * ops.share + np.asarray(steps, np.int64)[None, :]          # (threads, J)
        idx = entries[i[:, :, None], self.funits[:, None, :]]   # (threads, J, TN): K position in the A tile
        r = self.frow[:, None, :, None]
        a = As[r, idx[:, :, None, :]] if ops.a_layout == "mk" else As[idx[:, :, None, :], r]   # As[m][k] / As[k][m]
        return a, Bs[i[:, :, None], self.fcol[:, None, :]]

    # ---- mma: fragments as ldmatrix (or scalar loads) hand them out, and the instruction --------
    def _mma_fragments(self, ops: SparseOperands, As, Bs, entries, step: int):
        """(A, B) registers of one instruction step, as float32 values of the rounded operands:
        A (threads, G, tiles_m, a elements), B (threads, tiles_n, b elements)."""
        lay = self.k.layout
        ins = lay.instr
        first = self.slice * ops.share + step * ins.k                   # (threads,) the step's first kept row
        ldmatrix = ins.per_reg == 2
        read_a = self._a_descriptor if ins.a_from_smem else self._a_fragment
        a = np.stack([np.stack([read_a(ops, As, entries, first, g, i, ldmatrix and ops.a_layout == "km")
                                for i in range(lay.tiles_m)], 1) for g in range(len(lay.groups))], 1)
        if ins.is_wgmma:    # B is read by the tensor cores through descriptors, per warpgroup
            b = np.stack([self._b_descriptor(Bs, ops, first, j) for j in range(lay.tiles_n)], 1)
            return a, b
        b = np.stack([self._b_fragment(Bs, first, j, ldmatrix) for j in range(lay.tiles_n)], 1)
        if ins.dtype == "tf32":            # the kernel rounds A to TF32 as it loads it (cvt.rna); B was rounded offline
            a = round_tf32(a)
        return a, b

    def _a_fragment(self, ops, As, entries, first, g: int, i: int, ldmatrix: bool) -> np.ndarray:
        """Each thread's A fragment of m-tile i, look-up group g: (threads, a elements)."""
        lay = self.k.layout
        ins = lay.instr
        unit = self.group_units[:, g]
        m0 = self.wm * lay.warp_m + i * ins.m                          # (threads,) the tile's first row
        if ins.is_wgmma:                                               # warp w of a group: rows 16w..
            m0 = m0 + 16 * ((self.lane_g // 32) % 4)
        if ldmatrix:     # x4.trans: lane L hands row (k_L, m_L); lane t gets rows 2(t%4)+h of matrix q, column t//4
            k_in, m_off = (np.asarray(x) for x in lay.ldmatrix_a(self.lane))
            pos = entries[first + k_in, unit]                           # the K position each lane addresses
            rows = As[pos[:, None], (m0 + m_off)[:, None] + np.arange(8)[None, :]]   # (threads, 8): its 16 bytes
            return self._ldmatrix_trans(rows, ins.a_regs)
        e = np.arange(ins.a_regs * ins.per_reg)
        rc = self.frag_table["A"][self.lane] if not ins.is_wgmma else self.warp_a_table[self.lane]
        pos = entries[first[:, None] + rc[..., 1], unit[:, None]]
        m = m0[:, None] + rc[..., 0]
        vals = As[m, pos] if ops.a_layout == "mk" else As[pos, m]
        return vals.astype(np.float32).reshape(len(first), e.size)

    def _a_descriptor(self, ops, As, entries, first, g: int, i: int, _ldmatrix=False) -> np.ndarray:
        """The (64 x k) A matrix wgmma reads through its descriptor for m-tile i, look-up group g
        (instr.a_from_smem; "gather": the group's unit's kept rows): the start as the lowerer computes
        it (shared A row unit * kept + the step's first kept row, the warpgroup's first row m0), then
        the PTX ISA's rule for an M-major operand with the 128-byte swizzle, independently of how the
        copies placed it (nodes.Shared.element): element (m, k) at byte start + (m % 8) * 2 +
        (m // 8 % 8) * 16 + (m // 64) * LBO + (k % 8) * 128 + (k // 8) * SBO, its bits 4-6 XORed with
        bits 7-9 (the stage starts 1 KB-aligned; operands.wgmma_a_desc). Returns (threads, 64, k)."""
        from .operands import wgmma_a_desc
        lay, ins = self.k.layout, self.k.layout.instr
        buf = self.k.buffer(ops.a)
        if buf.offset % 1024 or buf.stage_bytes % 1024:     # the swizzle below is taken relative to the stage
            raise HazardError(f"{buf.name}'s stages start {buf.offset} + k * {buf.stage_bytes} bytes into shared "
                              f"memory: the 128-byte swizzle repeats every 1 KB, so they must be 1 KB-aligned")
        lbo, sbo = wgmma_a_desc(buf.pitch, 2)
        flat = As.reshape(-1)
        m = np.arange(ins.m)[:, None]
        k = np.arange(ins.k)[None, :]
        rel = (m % 8) * 2 + (m // 8 % 8) * 16 + (m // 64) * lbo + (k % 8) * 128 + (k // 8) * sbo
        krow = self.group_units[:, g] * ops.kept + first                 # (threads,) multiples of 8
        m0 = self.wm * lay.warp_m + i * ins.m                            # multiples of 64
        start = 2 * buf.element(krow, m0)                                 # bytes: a slab's, an atom's start
        byte = start[:, None, None] + rel[None]
        byte = byte ^ (((byte >> 7) & 7) << 4)
        return flat[byte // 2].astype(np.float32)

    def _b_descriptor(self, Bs, ops, first, j: int) -> np.ndarray:
        """The (k x n) B matrix wgmma reads for n-tile j of each thread's warpgroup: through the
        matrix descriptor (operands.wgmma_b_desc), decoded by the PTX ISA's rule for K-major, no
        swizzle: element (k, c) at start + (k // 8) * LBO + (c // 8) * SBO + (c % 8) * 16 + (k % 8) * 2
        bytes. Returns (threads, k, n) float32."""
        from .operands import wgmma_b_desc
        ins = self.k.layout.instr
        flat = Bs.reshape(-1)
        out = np.empty((len(first), ins.k, ins.n), np.float32)
        k = np.arange(ins.k)[:, None]
        c = np.arange(ins.n)[None, :]
        for t in range(len(first)):
            start, lbo, sbo = wgmma_b_desc(int(self.group_units[t, j]), int(first[t]) // ins.k, ins.n,
                                           ops.kept // ins.k)
            byte = 2 * start + (k // 8) * lbo + (c // 8) * sbo + (c % 8) * 16 + (k % 8) * 2
            out[t] = flat[byte // 2]
        return out

    def _b_fragment(self, Bs, first, j: int, ldmatrix: bool) -> np.ndarray:
        """Each thread's B fragment of n-tile j: (threads, b elements)."""
        lay = self.k.layout
        ins = lay.instr
        n0 = self.wn * lay.warp_n + j * ins.n
        if ldmatrix:     # tiles (2p, 2p+1) come from one x4 load: lane L hands row k_L of column block n_L
            k_in, n_off = (np.asarray(x) for x in lay.ldmatrix_b(self.lane))
            pair0 = self.wn * lay.warp_n + (j - j % 2) * ins.n
            rows = Bs[(first + k_in)[:, None], (pair0 + n_off)[:, None] + np.arange(8)[None, :]]
            pair = j - j % 2 + 1 < lay.tiles_n                          # a last tile alone: .x2, lanes 0-15
            regs = self._ldmatrix_trans(rows, 4 if pair else 2)         # b0, b1 of tile 2p, then of 2p+1
            return regs[:, 4 * (j % 2): 4 * (j % 2) + 4]
        rc = self.frag_table["B"][self.lane]                            # (threads, elements, 2): (k, col)
        return Bs[first[:, None] + rc[..., 0], n0[:, None] + rc[..., 1]].astype(np.float32)

    def _ldmatrix_trans(self, rows: np.ndarray, matrices: int) -> np.ndarray:
        """ldmatrix.sync.aligned.m8n8.x{matrices}.trans.b16 (PTX ISA): `rows` (threads, 8) is the
        16-byte row each lane addresses (lane 8q + r: row r of matrix q). Lane t receives in its
        register q the elements [2(t%4)][t//4] and [2(t%4)+1][t//4] of matrix q. Returns (threads,
        2 * matrices) float32, register q's elements at 2q, 2q+1."""
        t = self.lane
        base = self.warp * 32
        out = np.empty((len(t), 2 * matrices), np.float32)
        for q in range(matrices):
            for h in range(2):
                out[:, 2 * q + h] = rows[base + 8 * q + 2 * (t % 4) + h, t // 4]
        return out

    def _mma(self, blk: _Block, a: np.ndarray, b: np.ndarray):
        """acc += A B for every (m-tile, n-tile) of every warp (warpgroup, for wgmma): the fragments
        placed into the instruction's matrices by its tables, multiplied with fp32 sums, the sum put
        back by C's."""
        lay = self.k.layout
        ins = lay.instr
        T = len(self.lane)
        W = T // 32
        if ins.is_wgmma:
            return self._wgmma(blk, a, b)
        group_of = {j: g for g, js in enumerate(lay.groups) for j in js}
        ta, tb, tc = self.frag_table["A"], self.frag_table["B"], self.frag_table["C"]
        lanes = np.arange(32)[:, None]
        for i in range(lay.tiles_m):
            for j in range(lay.tiles_n):
                A = np.zeros((W, ins.m, ins.k), np.float32)
                B = np.zeros((W, ins.k, ins.n), np.float32)
                A[:, ta[..., 0], ta[..., 1]] = a[:, group_of[j], i].reshape(W, 32, -1)
                B[:, tb[..., 0], tb[..., 1]] = b[:, j].reshape(W, 32, -1)
                e = (i * lay.tiles_n + j) * ins.c_regs + np.arange(ins.c_regs)
                acc = blk.acc.reshape(W, 32, -1)
                C = np.zeros((W, ins.m, ins.n), np.float32)
                C[:, tc[..., 0], tc[..., 1]] = acc[:, :, e]
                D = np.matmul(A, B, dtype=np.float32) + C
                acc[:, lanes, e[None, :]] = D[:, tc[..., 0], tc[..., 1]]

    def _wgmma(self, blk: _Block, a: np.ndarray, b: np.ndarray):
        """acc += A B per warpgroup and (m-tile, n-tile): A (64 x 16) from the group's 128 threads'
        registers by the instruction's table, B as the descriptor gave it, C by the table."""
        lay, ins = self.k.layout, self.k.layout.instr
        T = len(self.lane)
        G = T // 128
        group_of = {j: g for g, js in enumerate(lay.groups) for j in js}
        ta, tc = self.frag_table.get("A"), self.frag_table["C"]
        threads = np.arange(128)[:, None]
        acc = blk.acc.reshape(G, 128, -1)
        for i in range(lay.tiles_m):
            for j in range(lay.tiles_n):
                if ins.a_from_smem:                                      # as the descriptor gave it
                    A = a[::128, group_of[j], i]
                else:
                    A = np.zeros((G, ins.m, ins.k), np.float32)
                    A[:, ta[..., 0], ta[..., 1]] = a[:, group_of[j], i].reshape(G, 128, -1)
                B = b[::128, j]                                          # (G, k, n): one per warpgroup
                e = (i * lay.tiles_n + j) * ins.c_regs + np.arange(ins.c_regs)
                C = np.zeros((G, ins.m, ins.n), np.float32)
                C[:, tc[..., 0], tc[..., 1]] = acc[:, :, e]
                D = np.matmul(A, B, dtype=np.float32) + C
                acc[:, threads, e[None, :]] = D[:, tc[..., 0], tc[..., 1]]

    def _load_fragments(self, st: LoadFragments, blk: _Block):
        if not 0 <= st.step < st.ops.steps:
            raise HazardError(f"LoadFragments step {st.step} is outside a thread's {st.ops.steps} steps")
        blk.frags[st.dst] = self._fragments(st.ops, self._scalar(st.stage, blk), [st.step], blk, "LoadFragments")

    def _multiply(self, op: SparseMMA, blk: _Block):
        steps = op.steps
        if not (0 <= steps.start and steps.stop <= op.ops.steps):
            raise HazardError(f"SparseMMA steps [{steps.start}, {steps.stop}) are outside a thread's "
                              f"{op.ops.steps} steps")
        parts = []
        if op.head and len(steps):      # step `first` from registers, used up
            if op.head not in blk.frags:
                raise HazardError(f"SparseMMA uses fragment registers {op.head!r} that no LoadFragments filled "
                                  f"since they were last used")
            parts.append(blk.frags.pop(op.head))
            steps = steps[1:]
        if len(steps):
            parts.append(self._fragments(op.ops, self._scalar(op.stage, blk), steps, blk, "SparseMMA"))
        lay = self.k.layout
        if lay.instr.is_wgmma:            # one asynchronous group reading the stage until retired
            if blk.mma_groups and not lay.instr.a_from_smem:
                raise HazardError("a wgmma group loads new A fragments while an earlier group is in flight: its A "
                                  "registers may be overwritten (retire it with MmaWait(0) first)")
            stage = self._scalar(op.stage, blk)
            keys = {(op.ops.b, stage)} | ({(op.ops.a, stage)} if lay.instr.a_from_smem else set())
            for key in sorted(keys):
                if not blk.stages[key].async_ok:
                    raise HazardError(f"wgmma reads {key[0]} stage {key[1]} through the async proxy, but what "
                                      f"cp.async wrote there was not fenced into it (fence.proxy.async before the "
                                      f"barrier)")
            blk.mma_groups.append(keys)
        for part in parts:
            if lay.instr.is_mma:
                for a, b in part:
                    self._mma(blk, a, b)
            else:
                a, b = part
                blk.acc += np.einsum("tkrc,tkc->trc", a, b, dtype=np.float32).reshape(blk.acc.shape)

    def _accumulators_settled(self, blk: _Block, what: str) -> None:
        if blk.mma_groups:
            raise HazardError(f"{what} reads the accumulators while {len(blk.mma_groups)} wgmma group(s) are in "
                              f"flight: MmaWait(0) first")

    def _overlay_free(self, blk: _Block, what: str):
        """A buffer overlaying the pipeline's may be written: nothing still landing in a stage, and
        no stage read without a barrier since."""
        for (name, stage), st in blk.stages.items():
            if st.state == "pending" or st.read:
                raise HazardError(f"{what} writes over {name} stage {stage} while it is "
                                  f"{'still being copied into' if st.state == 'pending' else 'being read'}: "
                                  f"wait for every copy group and put a barrier first")
        if blk.open_group:
            raise HazardError(f"{what} with cp.async copies not yet committed and waited for")

    def _reduce(self, op: ReduceSlices, blk: _Block):
        """Slices 1.. hand their partial sums to slice 0 through `op.buf`, which overlays the
        pipeline buffers: nothing may still be landing in them or be read without a barrier since."""
        self._overlay_free(blk, "ReduceSlices")
        lay = self.k.layout
        share = np.zeros((lay.block_m, lay.block_n), np.float32)
        for q in range(1, lay.warps_k):
            mine = self.slice == q
            np.add.at(share, (self.rows[mine], self.cols[mine]), blk.acc[mine])
        first = self.slice == 0
        blk.acc[first] += share[self.rows[first], self.cols[first]]

    def _store(self, op: StoreAcc, blk: _Block):
        self._accumulators_settled(blk, "StoreAcc")
        if op.via:         # staged through a buffer over the pipeline's: as ReduceSlices, nothing may land or be read
            if op.atomic:
                raise HazardError("StoreAcc stages plain stores only, not atomic adds")
            self._overlay_free(blk, f"StoreAcc through {op.via}")
        C = self.arrays[op.dst]
        rows = self._scalar(op.row0, blk) + self.rows
        cols = self._scalar(op.col0, blk) + self.cols
        ok = (rows < self.k.M) & (cols < self.k.N) & (self.slice == 0)[:, None]   # sliced K: slice 0 stores
        if op.at is not None:     # the same elements, at their place in a workspace laid out by tile
            if not op.atomic:
                raise HazardError(f"StoreAcc into {op.dst} at a tile's place adds partial sums: it must be atomic")
            rows = self._scalar(op.at[0], blk) + self.rows
            cols = self._scalar(op.at[1], blk) + self.cols
        rows, cols, vals = rows[ok], cols[ok], blk.acc[ok]
        if op.atomic:
            if C.dtype != np.float32:
                raise HazardError(f"atomic adds go into fp32 arrays, not {op.dst} of {C.dtype} (a 16-bit C is "
                                  f"accumulated in an fp32 workspace)")
            np.add.at(C, (rows, cols), vals)
        else:
            if self.written[rows, cols].any():
                raise HazardError("two threads store the same element of C without atomics")
            self.written[rows, cols] = True
            C[rows, cols] = vals.astype(C.dtype)     # rounded to nearest, as cvt.rn does


    def _split_k_reduce(self, op: SplitKReduce, blk: _Block):
        """The block counts itself; the one that completes its tile's count rounds the tile's sums
        into C and zeroes the sums and the count (blocks run one after another here, so the
        ordering the GPU needs fences for holds by construction)."""
        counts, work, C = self.arrays[op.counts], self.arrays[op.work], self.arrays[op.dst]
        tile = self._scalar(op.tile, blk)
        counts[0, tile] += 1
        if counts[0, tile] < op.splits:
            return
        r0, c0 = self._scalar(op.row0, blk), self._scalar(op.col0, blk)
        r1, c1 = min(r0 + op.rows, self.k.M), min(c0 + op.cols, self.k.N)
        w0, v0 = (self._scalar(x, blk) for x in op.work_origin)
        if self.written[r0:r1, c0:c1].any():
            raise HazardError("two blocks store the same tile of C")
        self.written[r0:r1, c0:c1] = True
        sums = work[w0:w0 + r1 - r0, v0:v0 + c1 - c0]
        C[r0:r1, c0:c1] = sums.astype(C.dtype)      # rounded to nearest, as cvt.rn does
        sums[:] = 0
        counts[0, tile] = 0


def interpret(kernel: Kernel, arrays: dict[str, np.ndarray]) -> np.ndarray:
    return Interpreter(kernel).run(arrays)


# Measured on the CI machine (one core of a 2-core x86 VM, numpy 2.4): about 0.8-3 ms per K tile of a
# block (the statements' numpy calls) and 12-60 s per 10^9 multiply-adds of the padded tiles; the
# estimate takes the top of both ranges.
SECONDS_PER_TILE = 3e-3
SECONDS_PER_MAC = 60e-9


def estimate_cost(problem, s=None) -> tuple[float, int]:
    """(seconds, bytes) an interpreter run of `problem` under schedule `s` takes, roughly (an upper
    estimate): the host operands (prepared B padded to whole tiles, A, C, the float64 reference's
    dense B) and the per-tile work of every block. Without `s`, under a 16 x 32 block tile with one
    window a K tile: its bytes are about any schedule's, but its time far exceeds that of the larger
    tiles schedules have (many small tiles): judge time under the schedule that will run."""
    from .operands import geometry
    from .schedule import Schedule
    if s is None:
        s = Schedule(block_m=16, block_n=32, warp_m=16, warp_n=32, thread_m=4, thread_n=4, k_windows=1)
    g = geometry(problem, s)
    steps = g.tiles_m * g.tiles_n * g.T
    macs = g.tiles_m * s.block_m * g.tiles_n * s.block_n * g.T * g.KR
    seconds = steps * SECONDS_PER_TILE + macs * SECONDS_PER_MAC
    M, N, K = problem.M, problem.N, problem.K
    nbytes = (4 * g.T * g.KR * g.tiles_n * s.block_n          # bv, padded
              + g.T * g.tiles_n * (g.chunk_bytes + 8 * g.chunk_entries)   # bi and its int64 staging
              + 4 * M * K + 12 * M * N                        # A, C, its bookkeeping
              + 8 * 2 * K * N)                                # dense float64 B of the reference and its |B|
    return seconds, nbytes
