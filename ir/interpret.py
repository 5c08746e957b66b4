"""Run the kernel IR on the CPU with numpy, one thread block at a time.

It executes what the GPU would: the copy plans and the compute layout thread by thread (vectorised
over the block's threads), the pipeline's copy groups, waits and barriers. On top of the values it
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

import numpy as np

from .errors import HazardError
from .expr import evaluate
from .nodes import (Barrier, Commit, Copy, For, If, Kernel, Let, LoadFragments, LoadList, ReduceSlices, SparseFMA,
                    SparseOperands, StoreAcc, Wait, ZeroAcc)
from .operands import INDEX_DTYPES

_NP = {"f32": np.float32, "u8": np.uint8, "u16": np.uint16, "i32": np.int32}
_POISON = {"f32": np.nan, "u8": 0xEE, "u16": 0xEEEE, "i32": -0x11111112}


@dataclass
class _Stage:
    state: str = "empty"     # empty | pending | landed | visible
    read: bool = False       # read since the last barrier


@dataclass
class _Block:
    env: dict
    smem: dict
    stages: dict
    acc: np.ndarray
    open_group: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    regs: dict = field(default_factory=dict)     # per-thread register lists: name -> (iterations, threads)
    frags: dict = field(default_factory=dict)    # fragment registers: name -> (A, B) of one row per thread


class Interpreter:
    def __init__(self, kernel: Kernel):
        self.k = kernel
        tid = np.arange(kernel.threads)
        lay = kernel.layout
        self.rows = np.stack([lay.row(tid, r) for r in range(lay.thread_m)], 1)   # (threads, TM)
        self.cols = np.stack([lay.col(tid, c) for c in range(lay.thread_n)], 1)   # (threads, TN)
        self.slice = np.broadcast_to(lay.slice(tid), tid.shape)                     # sliced K: share of the rows
        self.units = np.empty_like(self.cols)                                     # index unit per column
        for gi, group in enumerate(lay.groups):
            u = lay.group_unit(tid, gi)
            for c in group:
                self.units[:, c] = u
        self._check_partition()
        self._slots = {}
        self.written = None

    def _check_partition(self):
        lay = self.k.layout
        for q in range(lay.warps_k):      # each slice's thread tiles cover the block tile once
            mine = self.slice == q
            cover = np.zeros((lay.block_m, lay.block_n), np.int64)
            np.add.at(cover, (self.rows[mine][:, :, None], self.cols[mine][:, None, :]), 1)
            if not (cover == 1).all():
                raise HazardError(f"thread tiles (slice {q}) do not partition the {lay.block_m}x{lay.block_n} "
                                  f"block tile (an element owned {cover.min()}..{cover.max()} times)")
        if (self.cols // lay.unit != self.units).any():
            raise HazardError("an index look-up group spans two index units")

    # ---- launch ---------------------------------------------------------------------------------
    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """`arrays` maps each param name to its 2-D array; returns C (poisoned, or zeroed for split-K, first)."""
        k = self.k
        for p in k.params:
            if p.name == "C":
                continue
            a = arrays[p.name]
            if a.shape != (p.rows, p.cols) or a.dtype != _NP[p.dtype]:
                raise ValueError(f"param {p.name}: expected {p.dtype} ({p.rows}, {p.cols}), got {a.dtype} {a.shape}")
        C = np.zeros((k.M, k.N), np.float32) if k.zero_output else np.full((k.M, k.N), np.nan, np.float32)
        self.arrays = dict(arrays, C=C)
        self.written = np.zeros((k.M, k.N), bool)
        gx, gy, gz = k.grid
        for z in range(gz):
            for x in range(gx):
                self._run_block({"ctaid_x": x, "ctaid_z": z})
        return C

    def _run_block(self, env):
        k = self.k
        smem = {b.name: np.full((b.stages, b.rows, b.pitch), _POISON[b.dtype], _NP[b.dtype]) for b in k.shared}
        stages = {(b.name, s): _Stage() for b in k.shared for s in range(b.stages)}
        lay = k.layout
        blk = _Block(env=dict(env), smem=smem, stages=stages,
                     acc=np.full((k.threads, lay.thread_m, lay.thread_n), np.nan, np.float32))
        self._exec(k.body, blk)

    def _exec(self, body, blk: _Block):
        for st in body:
            if isinstance(st, Let):
                blk.env[st.var] = self._scalar(st.value, blk)
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
            elif isinstance(st, Barrier):
                for s in blk.stages.values():
                    if s.state == "landed":
                        s.state = "visible"
                    s.read = False
            elif isinstance(st, ZeroAcc):
                blk.acc[:] = 0
            elif isinstance(st, LoadFragments):
                self._load_fragments(st, blk)
            elif isinstance(st, SparseFMA):
                self._fma(st, blk)
            elif isinstance(st, ReduceSlices):
                self._reduce(st, blk)
            elif isinstance(st, StoreAcc):
                self._store(st, blk)
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
            if cp.bound_cols is not None:
                ok &= cols < cp.bound_cols
            if ((rows[ok] >= src.shape[0]) | (cols[ok] >= src.shape[1])).any():
                raise HazardError(f"copy {cp.src} -> {cp.dst} reads outside {cp.src} {src.shape}")
            v = np.zeros(r.shape, src.dtype)
            v[ok] = src[rows[ok], cols[ok]]
            values.append(v)
        buf = blk.smem[cp.dst]

        def apply():
            for e, v in enumerate(values):
                if plan.transpose:
                    buf[stage, c + e, r] = v
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

    def _fragments(self, ops: SparseOperands, stage: int, rows, blk: _Block, what: str):
        """Each thread's fragments of rows `rows` of its share of `stage`: A (threads, J, TM, TN)
        (one A value per row and column: the look-up depends on the column's unit) and B (threads, J, TN)."""
        k = self.k
        for name in (ops.a, ops.b, ops.idx):
            self._visible(blk, name, stage, what)
        As, Bs = blk.smem[ops.a][stage], blk.smem[ops.b][stage]
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
        i = self.slice[:, None] * ops.share + np.asarray(rows, np.int64)[None, :]          # (threads, J)
        idx = entries[i[:, :, None], self.units[:, None, :]]   # (threads, J, TN): K position in the A tile
        if (idx >= ops.a_rows).any():
            raise HazardError(f"index {idx.max()} points past the {ops.a_rows} K positions of the shared A tile")
        r = self.rows[:, None, :, None]
        a = As[r, idx[:, :, None, :]] if ops.a_layout == "mk" else As[idx[:, :, None, :], r]   # As[m][k] / As[k][m]
        return a, Bs[i[:, :, None], self.cols[:, None, :]]

    def _load_fragments(self, st: LoadFragments, blk: _Block):
        if not 0 <= st.row < st.ops.share:
            raise HazardError(f"LoadFragments row {st.row} is outside a thread's {st.ops.share} kept rows")
        blk.frags[st.dst] = self._fragments(st.ops, self._scalar(st.stage, blk), [st.row], blk, "LoadFragments")

    def _fma(self, op: SparseFMA, blk: _Block):
        rows = op.rows
        if not (0 <= rows.start and rows.stop <= op.ops.share):
            raise HazardError(f"SparseFMA rows [{rows.start}, {rows.stop}) are outside a thread's "
                              f"{op.ops.share} kept rows")
        parts = []
        if op.head and len(rows):      # row `first` from registers, used up
            if op.head not in blk.frags:
                raise HazardError(f"SparseFMA uses fragment registers {op.head!r} that no LoadFragments filled "
                                  f"since they were last used")
            parts.append(blk.frags.pop(op.head))
            rows = rows[1:]
        if len(rows):
            parts.append(self._fragments(op.ops, self._scalar(op.stage, blk), rows, blk, "SparseFMA"))
        for a, b in parts:
            blk.acc += np.einsum("tkrc,tkc->trc", a, b, dtype=np.float32)

    def _reduce(self, op: ReduceSlices, blk: _Block):
        """Slices 1.. hand their partial sums to slice 0 through `op.buf`, which overlays the
        pipeline buffers: nothing may still be landing in them or be read without a barrier since."""
        for (name, stage), st in blk.stages.items():
            if st.state == "pending" or st.read:
                raise HazardError(f"ReduceSlices writes over {name} stage {stage} while it is "
                                  f"{'still being copied into' if st.state == 'pending' else 'being read'}: "
                                  f"wait for every copy group and put a barrier first")
        if blk.open_group:
            raise HazardError("ReduceSlices with cp.async copies not yet committed and waited for")
        lay = self.k.layout
        share = np.zeros((lay.block_m, lay.block_n), np.float32)
        for q in range(1, lay.warps_k):
            mine = self.slice == q
            np.add.at(share, (self.rows[mine][:, :, None], self.cols[mine][:, None, :]), blk.acc[mine])
        first = self.slice == 0
        blk.acc[first] += share[self.rows[first][:, :, None], self.cols[first][:, None, :]]

    def _store(self, op: StoreAcc, blk: _Block):
        C = self.arrays[op.dst]
        rows = self._scalar(op.row0, blk) + self.rows[:, :, None] + 0 * self.cols[:, None, :]
        cols = self._scalar(op.col0, blk) + self.cols[:, None, :] + 0 * self.rows[:, :, None]
        ok = (rows < self.k.M) & (cols < self.k.N) & (self.slice == 0)[:, None, None]   # sliced K: slice 0 stores
        rows, cols, vals = rows[ok], cols[ok], blk.acc[ok]
        if op.atomic:
            np.add.at(C, (rows, cols), vals)
        else:
            if self.written[rows, cols].any():
                raise HazardError("two threads store the same element of C without atomics")
            self.written[rows, cols] = True
            C[rows, cols] = vals


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
    dense B) and the per-tile work of every block. Without `s`, the least any schedule needs (one
    block tile of 16 x 32, one window a K tile)."""
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
