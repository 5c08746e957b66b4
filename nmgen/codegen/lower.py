"""Kernel IR -> LLVM IR (llvmlite.ir) for the NVPTX backend.

Mapping:
  Copy       -> cp.async.{ca,cg}.shared.global.{4,8,16}[.s], one per plan slot (unrolled), with
                zero-fill (src-size 0, address clamped to the array base) outside the bounds
  Commit/Wait-> cp.async.commit_group / cp.async.wait_group N;  Barrier -> bar.sync 0
  SparseMMA  -> FFMA: per kept row: index load (u8/u16/byte offsets) -> vector loads of A and B from
                shared -> fma.rn.f32 on the thread tile;
                mma: per instruction step: each lane's index load -> ldmatrix.x4.trans of A (its lane
                hands the gathered K row) and of B, or scalar loads by the fragment tables (tf32, a
                row-major 16-bit A) -> mma.sync per instruction tile of the warp tile
                (sliced K: a thread's rows start at its slice's share, an offset in its base addresses);
                a `head` step's fragments come from the allocas a LoadFragments stored
  ReduceSlices -> slices 1.. st.shared.v{run} their sums, bar.sync, slice 0 ld.shared and adds
  StoreAcc   -> each run of consecutive accumulator columns (layout.runs): st.global.v2/v4 where C's rows
                are aligned for it (16-bit C: converted with cvt.rn first), scalar stores or (vector)
                atomic adds otherwise; staged (`via`, tensor cores): st.shared of the converted pairs,
                bar.sync, then ld.shared / st.global of 16-byte row vectors of the tile
  SplitKReduce -> fence.acq_rel.gpu; bar.sync; thread 0: atom.global.add.u32 on the tile's count;
                bar.red.or.pred hands "this block is last" to all; the last block: fence.acq_rel.gpu,
                then ld.global.cg.v{run} of the sums back into the accumulators each thread added
                them from and st.global.cg.v{run} of zero over them, then StoreAcc into C; the count
                zeroed
  For/If     -> branches;  index expressions -> i32 arithmetic (nuw/nsw: all indices are naturals)

Expressions that depend only on the thread index are computed once, in the entry block; the
accumulators are allocas that SROA promotes to registers (only constant indices touch them).
Global offsets are 64-bit (rows * leading dimension can pass 2^31).
"""
from __future__ import annotations

import os

os.environ.setdefault("LLVMLITE_ENABLE_IR_LAYER_TYPED_POINTERS", "0")

from llvmlite import ir  # noqa: E402

from ..ir.device import for_arch  # noqa: E402
from ..ir.expr import BinOp, Const, Expr, Select, Var, free_vars, split_offset  # noqa: E402
from ..ir.nodes import (DTYPE_BYTES, Barrier, Commit, Copy, For, If, Kernel, Let, LoadFragments,  # noqa: E402
                        LoadList, ReduceSlices, SparseMMA, SparseOperands, SplitKReduce, StoreAcc, Wait, ZeroAcc)
from .targets import Target  # noqa: E402

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
P1, P3 = ir.PointerType(addrspace=1), ir.PointerType(addrspace=3)
ELEM = {"f32": F32, "bf16": I16, "f16": I16, "u8": I8, "u16": I16, "i32": I32}   # 16-bit floats move as bits
# fp32 -> 16-bit float, rounded to nearest: one value (to an i16), or two packed (the first operand
# into the upper half: PTX ISA, cvt)
CVT1 = {"bf16": "cvt.rn.bf16.f32 $0, $1;", "f16": "cvt.rn.f16.f32 $0, $1;"}
CVT2 = {"bf16": "cvt.rn.bf16x2.f32 $0, $1, $2;", "f16": "cvt.rn.f16x2.f32 $0, $1, $2;"}
NUW = ("nuw", "nsw")


class Lowerer:
    def __init__(self, kernel: Kernel, target: Target, data_layout: str):
        self.k = kernel
        self.target = target
        m = self.m = ir.Module(name=kernel.name)
        m.triple = "nvptx64-nvidia-cuda"
        m.data_layout = data_layout
        smem = ir.GlobalVariable(m, ir.ArrayType(I8, 0), "smem", addrspace=3)
        smem.linkage = "external"
        # 1024 bytes where a buffer is swizzled: the swizzle pattern repeats every 1 KB of the
        # shared window (PTX ISA, matrix descriptor: base offset 0 needs the operand so aligned)
        smem.align = 1024 if any(x.swizzled for x in kernel.shared) else 16
        smem.type = P3  # llvmlite still types globals; shared pointers are opaque
        self.smem = smem
        fn = self.fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [P1] * len(kernel.params)), kernel.name)
        fn.calling_convention = "ptx_kernel"
        self.args = {}
        for p, a in zip(kernel.params, fn.args):
            a.name = p.name
            a.add_attribute("noalias")   # O3 infers readonly for inputs, giving ld.global.nc
            self.args[p.name] = a
        # exact block size: ptxas budgets registers for it, LLVM learns the range of tid
        m.add_named_metadata("nvvm.annotations", [fn, "reqntidx", ir.Constant(I32, kernel.threads)])
        if kernel.min_blocks:
            bound = ir.Constant(I32, launch_bound(kernel, target))
            m.add_named_metadata("nvvm.annotations", [fn, "minctasm", bound])
        self.entry = fn.append_basic_block("entry")
        self.eb = ir.IRBuilder(self.entry)
        start = fn.append_basic_block("start")
        self.b = ir.IRBuilder(start)
        self._start = start
        self._decls = {}
        self._tid_cache = {}
        self.env = {
            "tid": self._call("llvm.nvvm.read.ptx.sreg.tid.x", I32, [], b=self.eb),
            "ctaid_x": self._call("llvm.nvvm.read.ptx.sreg.ctaid.x", I32, [], b=self.eb),
            "ctaid_z": self._call("llvm.nvvm.read.ptx.sreg.ctaid.z", I32, [], b=self.eb),
        }
        lay = kernel.layout
        self.acc = [self.eb.alloca(F32, name=f"acc{e}") for e in range(lay.acc_count)]   # layout.acc_row/col
        self.regs = {}     # register lists (LoadList): name -> one i32 alloca per copy slot
        self.frags = {}    # fragment registers (LoadFragments): name -> (nesting of the values, allocas)

    # ---- module -----------------------------------------------------------------------------------
    def lower(self) -> ir.Module:
        self._body(self.k.body)
        self.b.ret_void()
        self.eb.branch(self._start)
        return self.m

    def _call(self, name, ret, args, b=None, argtypes=None):
        fn = self._decls.get(name)
        if fn is None:
            fn = ir.Function(self.m, ir.FunctionType(ret, argtypes or [a.type for a in args]), name)
            self._decls[name] = fn
        return (b or self.b).call(fn, args)

    # ---- index expressions ------------------------------------------------------------------------
    def val(self, e) -> ir.Value:
        """i32 value of an index expression. Its constant part is added last, at the use, so that
        the variable part is shared (and thread-only parts are computed once in the entry block)."""
        v, c = split_offset(e)
        x = self._var_part(v)
        if c == 0:
            return x
        return self.b.add(x, ir.Constant(I32, c), flags=NUW) if c > 0 else self.b.sub(x, ir.Constant(I32, -c))

    def _var_part(self, e) -> ir.Value:
        if not isinstance(e, Expr):
            return ir.Constant(I32, int(e))
        if isinstance(e, Const):
            return ir.Constant(I32, e.value)
        if isinstance(e, Var):
            return self.env[e.name]
        if free_vars(e) <= {"tid"}:          # per-thread constant: once, in the entry block
            v = self._tid_cache.get(e)
            if v is None:
                saved, self.b = self.b, self.eb
                try:
                    v = self._tid_cache[e] = self._build(e, self.eb)
                finally:
                    self.b = saved
            return v
        return self._build(e, self.b)

    def _build(self, e, b: ir.IRBuilder) -> ir.Value:
        if isinstance(e, Select):
            return b.select(b.icmp_unsigned("!=", self.val(e.cond), ir.Constant(I32, 0)), self.val(e.a), self.val(e.b))
        assert isinstance(e, BinOp), e
        op = e.op
        if op not in ("+", "-", "*") and any(isinstance(o, Const) and o.value < 0 for o in (e.a, e.b)):
            # the i32 values are compared and divided unsigned here but as Python ints by the
            # interpreter: a negative operand would make the two disagree (a kernel that runs on
            # the CPU and not on the GPU)
            raise ValueError(f"index expression {e} applies {op!r} to a negative constant")
        x, y = self.val(e.a), self.val(e.b)
        if op == "+":
            return b.add(x, y, flags=NUW)
        if op == "-":
            return b.sub(x, y, flags=("nsw",))
        if op == "*":
            return b.mul(x, y, flags=NUW)
        if op == "//":
            return b.udiv(x, y)
        if op == "%":
            return b.urem(x, y)
        if op == "^":
            return b.xor(x, y)
        if op in ("min", "max"):
            return b.select(b.icmp_unsigned("<" if op == "min" else ">", x, y), x, y)
        if op in ("<", "<=", "==", "!="):
            return b.zext(b.icmp_unsigned(op, x, y), I32)
        if op in ("and", "or"):
            zero = ir.Constant(I32, 0)
            cx, cy = b.icmp_unsigned("!=", x, zero), b.icmp_unsigned("!=", y, zero)
            return b.zext(b.and_(cx, cy) if op == "and" else b.or_(cx, cy), I32)
        raise ValueError(f"unknown index operator {op!r}")

    def cond(self, e) -> ir.Value:
        return self.b.icmp_unsigned("!=", self.val(e), ir.Constant(I32, 0))

    # ---- addresses --------------------------------------------------------------------------------
    def gptr(self, param: str, row, col, col_value: ir.Value | None = None,
             row_value: ir.Value | None = None) -> ir.Value:
        """Address of param[row][col]: 64-bit element offset, its constant part an immediate.
        `col_value` / `row_value` replace `col` / `row` when loaded at run time (a row list)."""
        p = self.k.param(param)
        b = self.b
        rv, rc = split_offset(row)
        if row_value is not None:
            rv, rc = None, 0
        if col_value is None:
            cv, cc = split_offset(col)
            cvar = self._var_part(cv)
        else:
            cvar, cc = col_value, 0
        rvar = row_value if row_value is not None else self._var_part(rv)
        off = b.add(b.mul(b.zext(rvar, I64), ir.Constant(I64, p.cols), flags=NUW), b.zext(cvar, I64), flags=NUW)
        ptr = b.gep(self.args[param], [off], inbounds=True, source_etype=ELEM[p.dtype])
        const = rc * p.cols + cc
        return b.gep(ptr, [ir.Constant(I64, const)], inbounds=True, source_etype=ELEM[p.dtype]) if const else ptr

    def sptr(self, byte_offset: ir.Value, const: int = 0) -> ir.Value:
        p = self.b.gep(self.smem, [byte_offset], inbounds=True, source_etype=I8)
        return self.b.gep(p, [ir.Constant(I32, const)], inbounds=True, source_etype=I8) if const else p

    def sptr_expr(self, base: ir.Value, offset) -> ir.Value:
        """Shared address base + offset (an index expression in bytes), constant part as immediate."""
        v, c = split_offset(offset)
        return self.sptr(self.b.add(base, self._var_part(v), flags=NUW) if v != 0 else base, c)

    def stage_base(self, name: str, stage) -> ir.Value:
        buf = self.k.buffer(name)
        return self.b.add(ir.Constant(I32, buf.offset),
                          self.b.mul(self.val(stage), ir.Constant(I32, buf.stage_bytes), flags=NUW), flags=NUW)

    # ---- statements -------------------------------------------------------------------------------
    def _body(self, body):
        for st in body:
            getattr(self, "_" + type(st).__name__)(st)

    def _Let(self, st: Let):
        self.env[st.var] = self.val(st.value)

    def _For(self, st: For):
        b, fn = self.b, self.fn
        start, stop = self.val(st.start), self.val(st.stop)
        # Keep the loop a loop: where LLVM can count its trips (one K tile per split, or a few)
        # it deletes or fully unrolls it, and ptxas, scheduling the straight-line result, hoists
        # the index loads and addresses of every kept row at once and spills. An opaque copy of
        # the bound (a mov that ptxas removes) hides the count.
        stop = b.call(ir.InlineAsm(ir.FunctionType(I32, [I32]), "mov.u32 $0, $1;", "=r,r"), [stop])
        pre = b.block
        head, body, done = (fn.append_basic_block(f"{st.var}.{s}") for s in ("head", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        phi = b.phi(I32, name=st.var)
        phi.add_incoming(start, pre)
        b.cbranch(b.icmp_unsigned("<", phi, stop), body, done)
        b.position_at_end(body)
        self.env[st.var] = phi
        self._body(st.body)
        phi.add_incoming(b.add(phi, ir.Constant(I32, 1), flags=NUW), b.block)
        b.branch(head)
        b.position_at_end(done)

    def _If(self, st: If):
        if not isinstance(st.cond, Expr):
            if st.cond:
                self._body(st.body)
            return
        with self.b.if_then(self.cond(st.cond)):
            self._body(st.body)

    def _Commit(self, st: Commit):
        self._call("llvm.nvvm.cp.async.commit.group", ir.VoidType(), [])

    def _Wait(self, st: Wait):
        self._call("llvm.nvvm.cp.async.wait.group", ir.VoidType(), [ir.Constant(I32, st.pending)])

    def _Barrier(self, st: Barrier):
        self._call("llvm.nvvm.barrier.cta.sync.aligned.all", ir.VoidType(), [ir.Constant(I32, 0)])

    def _ZeroAcc(self, st: ZeroAcc):
        for a in self.acc:
            self.b.store(ir.Constant(F32, 0.0), a)

    def _Copy(self, cp: Copy):
        plan, buf = cp.plan, self.k.buffer(cp.dst)
        esize = DTYPE_BYTES[buf.dtype]
        base = self.stage_base(cp.dst, cp.stage)
        for it in range(plan.iterations):
            r, c, guard = plan.slot(it, Var("tid"))
            if isinstance(guard, Expr):
                with self.b.if_then(self.cond(guard)):
                    self._copy_one(cp, buf, esize, base, r, c, it)
            elif guard:
                self._copy_one(cp, buf, esize, base, r, c, it)

    def _LoadList(self, st: LoadList):
        """One register per distinct column among the thread's slots (a transposing plan reuses
        each column for every row group), loaded now and read by the Copy an iteration later."""
        b, plan = self.b, st.plan
        slots = [plan.slot(it, Var("tid")) for it in range(plan.iterations)]
        index = [plan.gathered(r, c) for r, c, _ in slots]
        if st.dst not in self.regs:
            by_index = {}
            self.regs[st.dst] = [by_index.setdefault(i, self.eb.alloca(I32, name=f"{st.dst}{len(by_index)}"))
                                 for i in index]
        done = set()
        for it, (i, (_, _, guard)) in enumerate(zip(index, slots)):
            reg = self.regs[st.dst][it]
            if id(reg) in done:
                continue
            done.add(id(reg))
            ptr = self.gptr(st.src, 0, st.offset + i)
            if isinstance(guard, Expr):   # an idle slot may point past the list: read its first entry
                ptr = b.select(self.cond(guard), ptr, self.args[st.src])
            b.store(b.load(ptr, typ=I32, align=4), reg)

    def _copy_one(self, cp: Copy, buf, esize, base, r, c, it=0):
        b, plan = self.b, cp.plan
        if plan.transpose:      # one element: dst[c][r] = src[row0 + r][col(c)]
            dst = self.sptr_expr(base, (c * buf.pitch + r) * esize)
            row = cp.row0 + r
            col_expr, col_value = cp.col0 + c, None
            if cp.row_list is not None:   # compacted rows: the column a LoadList prefetched
                col_expr = None
                col_value = b.load(self.regs[cp.row_list][it], typ=I32)
            ok = None
            if cp.bound_rows is not None:
                ok = b.icmp_unsigned("<", self.val(row), ir.Constant(I32, cp.bound_rows))
            if cp.bound_cols is not None:
                col = col_value if col_value is not None else self.val(col_expr)
                okc = b.icmp_unsigned("<", col, ir.Constant(I32, cp.bound_cols))
                ok = okc if ok is None else b.and_(ok, okc)
            src = self.gptr(cp.src, row, col_expr, col_value=col_value)
            if ok is None:
                self._call("llvm.nvvm.cp.async.ca.shared.global.4", ir.VoidType(), [dst, src])
            else:               # zero-fill: src-size 0 reads nothing; keep the address inside the array anyway
                src = b.select(ok, src, self.args[cp.src])
                size = b.select(ok, ir.Constant(I32, 4), ir.Constant(I32, 0))
                self._call("llvm.nvvm.cp.async.ca.shared.global.4.s", ir.VoidType(), [dst, src, size])
            return
        dst = self.sptr_expr(base, _element(buf, r, c) * esize)
        if cp.row_list is not None:   # compacted rows of a column-major A: the row a LoadList prefetched
            src = self.gptr(cp.src, 0, cp.col0 + c, row_value=b.load(self.regs[cp.row_list][it], typ=I32))
        else:
            src = self.gptr(cp.src, cp.row0 + r, cp.col0 + c)
        kind = "cg" if plan.width == 16 else "ca"       # 16-byte copies may bypass L1
        ok = None   # bounds are checked per vector: the builder makes vectors never straddle them
        if cp.bound_rows is not None:
            assert cp.row_list is None, "listed rows are always inside A"
            ok = b.icmp_unsigned("<", self.val(cp.row0 + r), ir.Constant(I32, cp.bound_rows))
        if cp.bound_cols is not None:
            okc = b.icmp_unsigned("<", self.val(cp.col0 + c), ir.Constant(I32, cp.bound_cols))
            ok = okc if ok is None else b.and_(ok, okc)
        if ok is None:
            self._call(f"llvm.nvvm.cp.async.{kind}.shared.global.{plan.width}", ir.VoidType(), [dst, src])
        else:
            src = b.select(ok, src, self.args[cp.src])
            size = b.select(ok, ir.Constant(I32, plan.width), ir.Constant(I32, 0))
            self._call(f"llvm.nvvm.cp.async.{kind}.shared.global.{plan.width}.s", ir.VoidType(), [dst, src, size])

    def _LoadFragments(self, st: LoadFragments):
        """The step's fragments into allocas (SROA makes them registers, carried around the loop)."""
        frags = self._reader(st.ops, st.stage).step(st.step)
        flat = _flatten(frags)
        saved = self.frags.get(st.dst)
        if saved is None:
            saved = self.frags[st.dst] = (frags, [self.eb.alloca(x.type, name=f"{st.dst}{i}") for i, x in enumerate(flat)])
        for x, r in zip(flat, saved[1]):
            self.b.store(x, r)

    def _SparseMMA(self, op: SparseMMA):
        if self.k.layout.instr.is_wgmma:
            return self._wgmma_group(op)
        steps = op.steps
        reader = self._reader(op.ops, op.stage) if len(steps) > (1 if op.head else 0) else None
        for j in steps:
            if op.head and j == steps.start:
                shape, regs = self.frags[op.head]
                frags = _unflatten(shape, [self.b.load(r, typ=r.allocated_type) for r in regs])
            else:
                frags = reader.step(j)
            (self._mma if self.k.layout.instr.is_mma else self._ffma)(frags)

    def _wgmma_group(self, op: SparseMMA):
        """A K tile's steps as one asynchronous group: every A fragment loaded first (ldmatrix writes
        registers the wgmma then read, so wgmma.fence comes after them), then one wgmma per step,
        m-tile and n-tile (B through its descriptor; A through one too where the instruction reads
        it from shared memory: M-major, imm-trans-a 1), then commit. An MmaWait retires the group."""
        lay, b = self.k.layout, self.b
        ins = lay.instr
        reader = self._reader(op.ops, op.stage)
        steps = list(op.steps)
        frags = {} if ins.a_from_smem else {j: reader.step(j)[0] for j in steps}
        self._call("llvm.nvvm.wgmma.fence.sync.aligned", ir.VoidType(), [])
        group_of = {j: g for g, js in enumerate(lay.groups) for j in js}
        outs = ",".join(f"${q}" for q in range(ins.c_regs))
        n_in = ins.c_regs
        if ins.a_from_smem:     # d, a-desc, b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b
            from ..ir.operands import WGMMA_TRANS_A
            a_types, a_text = [I64], f"${n_in}, ${n_in + 1}, p, 1, 1, {WGMMA_TRANS_A}, 0"
        else:                   # d, a (4 registers), b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-b
            a_types = [I32] * 4
            a_text = f"{{${n_in},${n_in + 1},${n_in + 2},${n_in + 3}}}, ${n_in + 4}, p, 1, 1, 0"
        text = "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n" + ins.ptx + f" {{{outs}}}, {a_text};\n}}"
        constraints = ",".join(["=f"] * ins.c_regs + ["l" if t is I64 else "r" for t in a_types] + ["l"]
                               + [str(q) for q in range(ins.c_regs)])
        ret = ir.LiteralStructType([F32] * ins.c_regs)
        asm = ir.InlineAsm(ir.FunctionType(ret, a_types + [I64] + [F32] * ins.c_regs), text, constraints,
                           side_effect=True)
        for j in steps:
            for i in range(lay.tiles_m):
                for t in range(lay.tiles_n):
                    e0 = (i * lay.tiles_n + t) * ins.c_regs
                    acc = [b.load(self.acc[e0 + q], typ=F32) for q in range(ins.c_regs)]
                    a = [reader.a_descriptor(j, i, group_of[t])] if ins.a_from_smem else frags[j][group_of[t]][i]
                    d = b.call(asm, a + [reader.b_descriptor(j, t)] + acc)
                    for q in range(ins.c_regs):
                        b.store(b.extract_value(d, q), self.acc[e0 + q])
        self._call("llvm.nvvm.wgmma.commit_group.sync.aligned", ir.VoidType(), [])

    def _AsyncProxyFence(self, st):
        self._call("llvm.nvvm.fence.proxy.async.shared_cta", ir.VoidType(), [])

    def _MmaWait(self, st):
        self._call("llvm.nvvm.wgmma.wait_group.sync.aligned", ir.VoidType(), [ir.Constant(I64, st.pending)])
        if st.pending == 0:
            self._fence_accumulators()

    def _fence_accumulators(self):
        """Every group retired: pass each accumulator through an empty volatile asm ("+f"), so that
        what reads them next (the epilogue's cvt.rn, which LLVM sees as pure) cannot be scheduled
        above the wait. The wgmma writes them asynchronously, which LLVM does not know; the asm only
        orders, it emits no instruction. Not after a wait that leaves a group in flight: a copy of
        a register still being written would itself be the hazard."""
        lay, b = self.k.layout, self.b
        chunk = lay.instr.c_regs                # one asm per wgmma's accumulator registers
        for e0 in range(0, len(self.acc), chunk):
            regs = self.acc[e0:e0 + chunk]
            ret = ir.LiteralStructType([F32] * len(regs))
            asm = ir.InlineAsm(ir.FunctionType(ret, [F32] * len(regs)), "",
                               ",".join(["=f"] * len(regs) + [str(q) for q in range(len(regs))]), side_effect=True)
            d = b.call(asm, [b.load(r, typ=F32) for r in regs])
            for q, r in enumerate(regs):
                b.store(b.extract_value(d, q), r)

    def _ffma(self, frags):
        """acc[r][c] += A[group(c)][r] * B[c] over the thread tile (one kept row)."""
        lay = self.k.layout
        a, bvals = frags
        group_of = {c: g for g, cols in enumerate(lay.groups) for c in cols}
        for r in range(lay.thread_m):
            for c in range(lay.thread_n):
                acc = self.acc[r * lay.thread_n + c]
                x = self.b.load(acc, typ=F32)
                self.b.store(self._call("llvm.fma.f32", F32, [a[group_of[c]][r], bvals[c], x]), acc)

    def _mma(self, frags):
        """One mma.sync per instruction tile (i, j) of the warp tile, on A fragment (group(j), i) and
        B fragment j; the accumulators in and out through the C fragment's registers."""
        lay, b = self.k.layout, self.b
        ins = lay.instr
        a, bf = frags
        group_of = {j: g for g, js in enumerate(lay.groups) for j in js}
        half2 = ir.VectorType(ir.HalfType(), 2)
        optype = half2 if ins.dtype == "f16" else I32
        ret = ir.LiteralStructType([F32] * ins.c_regs)
        argtypes = [optype] * (ins.a_regs + ins.b_regs) + [F32] * ins.c_regs

        def operand(x):
            return b.bitcast(x, half2) if optype is half2 else x
        for i in range(lay.tiles_m):
            for j in range(lay.tiles_n):
                e0 = (i * lay.tiles_n + j) * ins.c_regs
                c = [b.load(self.acc[e0 + q], typ=F32) for q in range(ins.c_regs)]
                args = [operand(x) for x in a[group_of[j]][i] + bf[j]] + c
                d = self._call(ins.intrinsic, ret, args, argtypes=argtypes)
                for q in range(ins.c_regs):
                    b.store(b.extract_value(d, q), self.acc[e0 + q])

    def _reader(self, ops: SparseOperands, stage):
        return (_MmaReader if self.k.layout.instr.is_mma else _TileReader)(self, ops, stage)

    def _vload(self, base, offsets, vec):
        """Scalars from shared memory at base + each offset (byte expressions), `vec` floats per load."""
        return self._vload_parts({}, [split_offset(o) for o in offsets], vec, base)

    def _vload_parts(self, bases, parts, vec, base=None):
        """Like _vload, for offsets split into (variable, constant): the address of each load is
        bases[variable] (precomputed) or base + variable, plus the constant as an immediate."""
        b, out = self.b, []
        ty = F32 if vec == 1 else ir.VectorType(F32, vec)
        for v, c in parts:
            addr = bases.get(v) if v in bases else (base if v == 0 else b.add(base, self._var_part(v), flags=NUW))
            x = b.load(self.sptr(addr, c), typ=ty, align=4 * vec)
            out += [x] if vec == 1 else [b.extract_element(x, ir.Constant(I32, e)) for e in range(vec)]
        return out

    def _slice_is(self, cmp: str, q: int) -> ir.Value:
        return self.b.icmp_unsigned(cmp, self.val(self.k.layout.slice(Var("tid"))), ir.Constant(I32, q))

    def _ReduceSlices(self, st: ReduceSlices):
        """Slice q >= 1 stores its sums to buf[q - 1]; after a barrier slice 0 adds every buf[q],
        a run of accumulators (layout.runs) per vector access."""
        lay, b = self.k.layout, self.b
        buf = self.k.buffer(st.buf)
        tid = Var("tid")
        vec = lay.c_vec
        ty = F32 if vec == 1 else ir.VectorType(F32, vec)

        def addr(base, e):    # buf row/column of accumulator e from a slice's base: thread part + immediate
            return self.sptr_expr(base, (lay.acc_row(tid, e) * buf.pitch + lay.acc_col(tid, e)) * 4)

        with b.if_then(self._slice_is("!=", 0)):
            q = self.val(lay.slice(tid) - 1)
            base = b.add(ir.Constant(I32, buf.offset), b.mul(q, ir.Constant(I32, buf.stage_bytes), flags=NUW), flags=NUW)
            for run in lay.runs:
                b.store(self._acc_vector(run), addr(base, run[0]), align=4 * vec)
        self._Barrier(None)
        with b.if_then(self._slice_is("==", 0)):
            for q in range(buf.stages):
                base = ir.Constant(I32, buf.offset + q * buf.stage_bytes)
                for run in lay.runs:
                    x = b.load(addr(base, run[0]), typ=ty, align=4 * vec)
                    for i, e in enumerate(run):
                        part = x if vec == 1 else b.extract_element(x, ir.Constant(I32, i))
                        b.store(b.fadd(b.load(self.acc[e], typ=F32), part), self.acc[e])

    def _acc_vector(self, run) -> ir.Value:
        """Accumulators `run` as one float or a <len x float>."""
        vals = [self.b.load(self.acc[e], typ=F32) for e in run]
        if len(vals) == 1:
            return vals[0]
        v = ir.Constant(ir.VectorType(F32, len(vals)), ir.Undefined)
        for i, x in enumerate(vals):
            v = self.b.insert_element(v, x, ir.Constant(I32, i))
        return v

    def _StoreAcc(self, st: StoreAcc):
        if self.k.layout.warps_k > 1:          # sliced K: slice 0 holds the sums
            with self.b.if_then(self._slice_is("==", 0)):
                self._store_acc(st)
        else:
            self._store_acc(st)

    def _store_acc(self, st: StoreAcc):
        """Each run of accumulators in vectors as wide as C's alignment allows (k.c_alignment);
        rows and columns past M and N masked."""
        c_dt = self.k.param(st.dst).dtype
        if st.via:
            return self._store_staged(st, c_dt)
        vec = self._atomic_vec() if st.atomic else self.k.store_vec
        self._each_acc_part(st.row0, st.col0, vec, lambda row, col, part: self._store(st, row, col, part, c_dt),
                            st.at)

    def _store_staged(self, st: StoreAcc, c_dt: str):
        """The tile through shared buffer st.via (its pitch makes a row an odd number of 16-byte
        units, so a warp's fragment writes, 8 rows x 4 lanes, meet no bank twice; ir.build.c_stage_pitch):
        each thread's runs of accumulators, converted, in pairs; bar.sync; then thread t stores the
        tile's row vectors t, t + threads, ... (k.c_staged elements each, up to 16 bytes; a warp
        writes 512 contiguous bytes of a 256-column bf16 row), those past M or N left out."""
        k, lay, b = self.k, self.k.layout, self.b
        buf = k.buffer(st.via)
        es = DTYPE_BYTES[c_dt]
        tid = Var("tid")
        base = ir.Constant(I32, buf.offset)
        for run in lay.runs:
            for part in (run[i:i + 2] for i in range(0, len(run), 2)):
                row, col = lay.acc_row(tid, part[0]), lay.acc_col(tid, part[0])
                self._store_converted(self.sptr_expr(base, (row * buf.pitch + col) * es), part, c_dt)
        self._Barrier(None)
        vec = k.c_staged
        nbytes = vec * es
        typ = ir.VectorType(I32, nbytes // 4) if nbytes > 4 else ir.IntType(8 * nbytes)
        per_row = lay.block_n // vec
        total = lay.block_m * per_row
        for it in range(-(-total // k.threads)):
            v = tid + it * k.threads
            r, c = v // per_row, (v % per_row) * vec
            conds = []
            if total % k.threads and (it + 1) * k.threads > total:
                conds.append(b.icmp_unsigned("<", self.val(v), ir.Constant(I32, total)))
            if k.M % lay.block_m:
                conds.append(b.icmp_unsigned("<", self.val(st.row0 + r), ir.Constant(I32, k.M)))
            if k.N % lay.block_n:     # N % vec == 0: a vector is wholly inside C or wholly past it
                conds.append(b.icmp_unsigned("<", self.val(st.col0 + c), ir.Constant(I32, k.N)))
            ok = None
            for x in conds:
                ok = x if ok is None else b.and_(ok, x)

            def emit():
                x = b.load(self.sptr_expr(base, (r * buf.pitch + c) * es), typ=typ, align=nbytes)
                b.store(x, self.gptr(st.dst, st.row0 + r, st.col0 + c), align=nbytes)
            if ok is None:
                emit()
            else:
                with b.if_then(ok):
                    emit()

    def _atomic_vec(self) -> int:
        """Accumulators one atomic add takes: a run of C's alignment (k.store_vec) where the target has
        vector atomics (red.global.add.v2/v4.f32 are sm_90's), else 1. SplitKReduce reads the sums
        back in the same parts."""
        vec = self.k.store_vec
        return vec if self.target.cc >= 90 and vec in (2, 4) else 1

    def _each_acc_part(self, row0, col0, vec: int, emit, at=None):
        """emit(row, col, part) for each `vec` consecutive accumulators `part` of a run (layout.runs),
        at (row0 + row, col0 + col) of an (M, N) array, under a mask where the tile passes M or N;
        with `at`, emitted at (at[0] + row, at[1] + col) instead (a workspace laid out by tile),
        masked the same."""
        k, lay, b = self.k, self.k.layout, self.b
        tid = Var("tid")
        for run in lay.runs:
            for part in (run[i:i + vec] for i in range(0, len(run), vec)):
                local = lay.acc_row(tid, part[0]), lay.acc_col(tid, part[0])
                row, col = row0 + local[0], col0 + local[1]
                where = (row, col) if at is None else (at[0] + local[0], at[1] + local[1])
                ok = None
                if k.M % lay.block_m:
                    ok = b.icmp_unsigned("<", self.val(row), ir.Constant(I32, k.M))
                if k.N % lay.block_n:
                    okc = b.icmp_unsigned("<", self.val(col), ir.Constant(I32, k.N - (len(part) - 1)))
                    ok = okc if ok is None else b.and_(ok, okc)
                if ok is None:
                    emit(*where, part)
                else:
                    with b.if_then(ok):
                        emit(*where, part)

    def _store(self, st, row, col, part, c_dt):
        b = self.b
        ptr = self.gptr(st.dst, row, col)
        if not st.atomic:
            return self._store_converted(ptr, part, c_dt)
        vals = [b.load(self.acc[e], typ=F32) for e in part]
        if len(part) > 1:
            # one reduction of 2 or 4 floats (flushes denormal sums to zero, like all f32 vector red)
            regs = ", ".join(f"${i + 1}" for i in range(len(part)))
            red = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [P1] + [F32] * len(part)),
                               f"red.global.add.v{len(part)}.f32 [$0], {{{regs}}};", "l" + ",f" * len(part),
                               side_effect=True)
            b.call(red, [ptr] + vals)
        else:
            b.atomic_rmw("fadd", ptr, vals[0], "monotonic")

    def _store_converted(self, ptr: ir.Value, part, c_dt: str):
        """Accumulators `part` (consecutive columns) to ptr (global or shared) in C's dtype: fp32 as
        one vector, a 16-bit pair as one 32-bit word (cvt.rn ...x2, the second column in the upper
        half), other 16-bit runs one element at a time."""
        b = self.b
        if c_dt == "f32":
            b.store(self._acc_vector(part), ptr, align=4 * len(part))
            return
        vals = [b.load(self.acc[e], typ=F32) for e in part]
        if len(part) == 2:
            cvt = ir.InlineAsm(ir.FunctionType(I32, [F32, F32]), CVT2[c_dt], "=r,f,f")
            b.store(b.call(cvt, [vals[1], vals[0]]), ptr, align=4)
            return
        for i, x in enumerate(vals):
            cvt = ir.InlineAsm(ir.FunctionType(I16, [F32]), CVT1[c_dt], "=h,f")
            p = b.gep(ptr, [ir.Constant(I64, i)], inbounds=True, source_etype=I16) if i else ptr
            b.store(b.call(cvt, [x]), p, align=2)

    def _SplitKReduce(self, st: SplitKReduce):
        k, b = self.k, self.b
        fence = ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), "fence.acq_rel.gpu;", "~{memory}", side_effect=True)
        tid = self.env["tid"]
        first = b.icmp_unsigned("==", tid, ir.Constant(I32, 0))
        count = b.gep(self.args[st.counts], [b.zext(self.val(st.tile), I64)], inbounds=True, source_etype=I32)
        # every thread's atomic adds to the sums are performed (gpu scope) before thread 0 counts the block
        b.call(fence, [])
        self._Barrier(None)
        flag = self.eb.alloca(I32, name="last")            # promoted to a register (SROA)
        b.store(ir.Constant(I32, 0), flag)
        with b.if_then(first):
            b.call(fence, [])              # cumulative: what the barrier made visible to thread 0 is released too
            before = b.atomic_rmw("add", count, ir.Constant(I32, 1), "monotonic")
            b.call(fence, [])              # acquire, by the thread that read the count, before the barrier hands it on
            b.store(b.zext(b.icmp_unsigned("==", before, ir.Constant(I32, st.splits - 1)), I32), flag)
        # thread 0's finding, handed to the block: bar.red.or.pred is a barrier that ORs a predicate
        vote = ir.InlineAsm(ir.FunctionType(I32, [I32]),
                            "{ .reg .pred %p, %q; setp.ne.u32 %p, $1, 0; bar.red.or.pred %q, 0, %p; "
                            "selp.u32 $0, 1, 0, %q; }", "=r,r", side_effect=True)
        last = b.call(vote, [b.load(flag, typ=I32)])
        with b.if_then(b.icmp_unsigned("!=", last, ir.Constant(I32, 0))):
            b.call(fence, [])              # acquire: the other blocks' sums, as the count saw them
            # The tile's sums come back into the accumulators each thread stored them from (the layout's
            # runs, vector loads): every load is independent, so a thread has all of them in flight at
            # once. (A strided loop over the tile, one scalar load an iteration, took ~0.35 us an
            # iteration: ~45 us for a 128 x 256 tile on the H200.) Then the usual store into C.
            if k.layout.warps_k > 1:       # sliced K: slice 0's accumulators cover the tile
                with b.if_then(self._slice_is("==", 0)):
                    self._take_sums(st, self._atomic_vec())
            else:
                self._take_sums(st, self._atomic_vec())
            with b.if_then(first):
                b.store(ir.Constant(I32, 0), count, align=4)

    def _take_sums(self, st: SplitKReduce, vec: int):
        """Load the tile's fp32 sums from `work` into the accumulators (ld.global.cg: through L2, where
        the other blocks' atomic adds were performed), store zero over them, then store C from them."""
        b = self.b
        vt = ir.LiteralStructType([F32] * vec) if vec > 1 else F32
        regs = ", ".join(f"${i}" for i in range(vec))
        load = ir.InlineAsm(ir.FunctionType(vt, [P1]),
                            f"ld.global.cg.v{vec}.f32 {{{regs}}}, [${vec}];" if vec > 1
                            else "ld.global.cg.f32 $0, [$1];", ",".join(["=f"] * vec) + ",l", side_effect=True)
        zeros = ", ".join(f"${i + 1}" for i in range(vec))
        clear = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [P1] + [F32] * vec),
                             f"st.global.cg.v{vec}.f32 [$0], {{{zeros}}};" if vec > 1
                             else "st.global.cg.f32 [$0], $1;", "l" + ",f" * vec, side_effect=True)
        zero = ir.Constant(F32, 0.0)

        def take(row, col, part):
            src = self.gptr(st.work, row, col)
            x = b.call(load, [src])
            for i, e in enumerate(part):
                b.store(b.extract_value(x, i) if vec > 1 else x, self.acc[e])
            b.call(clear, [src] + [zero] * vec)
        self._each_acc_part(st.row0, st.col0, vec, take, st.work_at)
        self._store_acc(StoreAcc(st.dst, st.row0, st.col0, atomic=False))


class _TileReader:
    """Loads a thread's fragments of one K tile stage, row by row: the index look-up, then A at
    that K position for the thread's rows (per look-up group) and B for its columns.

    "km": A(k, m) at k * pitch + m; the thread's row offset is added to the stage base once per
          tile, per kept row and look-up group only idx * pitch (one IMAD), vector loads.
    "mk": A(k, m) at m * pitch + k; the thread's row offsets times the pitch are immediates,
          per kept row and group only idx * 4 is added, then one scalar load per row.
    Byte offsets (ops.offsets): the multiply was done offline; one vector load brings up to four
    kept rows' offsets (kept for the rows after it), then one add per row and group."""

    def __init__(self, lw: Lowerer, ops: SparseOperands, stage):
        k, lay, b = lw.k, lw.k.layout, lw.b
        self.lw, self.ops = lw, ops
        a_buf, b_buf = k.buffer(ops.a), k.buffer(ops.b)
        a_base, self.b_base, self.i_base = (lw.stage_base(n, stage) for n in (ops.a, ops.b, ops.idx))
        self.ity, self.isz = ir.IntType(k.idx_bits), k.idx_bits // 8
        tid = Var("tid")
        row_off = [lay.row(tid, q * lay.a_vec) * 4 for q in range(lay.thread_m // lay.a_vec)]
        self.col_off = [lay.col(tid, q * lay.b_vec) * 4 for q in range(lay.thread_n // lay.b_vec)]
        self.first = lay.slice(tid) * ops.share if ops.slices > 1 else 0   # sliced K: the thread's first kept row
        mk = ops.a_layout == "mk"
        self.scale = 4 if mk else a_buf.pitch * 4
        self.b_pitch = b_buf.pitch * 4
        self.row_parts = [split_offset(o * (a_buf.pitch if mk else 1)) for o in row_off]
        self.a_thread = {v: b.add(a_base, lw._var_part(v), flags=NUW) for v, _ in self.row_parts}
        groups = range(len(lay.groups))
        if ops.offsets:
            assert ops.offsets == self.scale, (ops.offsets, self.scale)
            self.units = [lay.group_unit(tid, g) * ops.kept * 4 for g in groups]
            self.ovec = next(v for v in (4, 2, 1) if ops.kept % v == 0 and ops.share % v == 0)
            self.offs = {}    # (group, j) -> byte offset of the thread's kept row j
        else:
            self.units = [lay.group_unit(tid, g) * self.isz for g in groups]

    def _a_row(self, g: int, j: int) -> ir.Value:
        """Byte offset of the A row that look-up group g multiplies with kept row j."""
        lw, b, ops = self.lw, self.lw.b, self.ops
        i = self.first + j
        if not ops.offsets:
            ip = lw.sptr_expr(self.i_base, self.units[g] + i * lw.k.layout.units_per_block * self.isz)
            return b.mul(b.zext(b.load(ip, typ=self.ity, align=self.isz), I32), ir.Constant(I32, self.scale), flags=NUW)
        if (g, j) not in self.offs:
            j0, v = j - j % self.ovec, self.ovec
            ip = lw.sptr_expr(self.i_base, self.units[g] + (self.first + j0) * 4)
            if v == 1:
                self.offs[g, j0] = b.load(ip, typ=I32, align=4)
            else:
                x = b.load(ip, typ=ir.VectorType(I32, v), align=4 * v)
                for e in range(v):
                    self.offs[g, j0 + e] = b.extract_element(x, ir.Constant(I32, e))
        return self.offs[g, j]

    def step(self, j: int):
        """(a[g][r], b[c]) of kept row j: the thread's A values per look-up group and row, B values
        per column."""
        lw, b, lay = self.lw, self.lw.b, self.lw.k.layout
        a = []
        for g in range(len(lay.groups)):
            off = self._a_row(g, j)
            a.append(lw._vload_parts({v: b.add(self.a_thread[v], off, flags=NUW) for v in self.a_thread},
                                     self.row_parts, lay.a_vec))
        i = self.first + j
        bvals = lw._vload(self.b_base, [o + i * self.b_pitch for o in self.col_off], lay.b_vec)
        return a, bvals


class _MmaReader:
    """Loads a warp's mma fragments of one K tile stage, step by step (instr.k kept rows a step).

    Each lane loads the index of the kept row it needs (the gather), then:
    A, 16-bit, [k][m] ("km"): ldmatrix.x4.trans per m-tile, the lane handing the address of its
          gathered K row (layout.ldmatrix_a): one index load per lane and step, one ldmatrix per tile;
    A otherwise (tf32, or "mk"): every fragment element by the instruction's A table, scalar loads
          (tf32: rounded with cvt.rna as loaded; 16-bit: two halves packed into a register);
    B, 16-bit: ldmatrix.x4.trans per pair of n-tiles (layout.ldmatrix_b); tf32: scalar loads by the
          B table (the values were rounded to TF32 when the weights were prepared).
    Thread-constant parts of every address are computed once (entry block); the step and tile parts
    are immediates."""

    def __init__(self, lw: Lowerer, ops: SparseOperands, stage):
        k, lay = lw.k, lw.k.layout
        self.lw, self.ops, self.ins = lw, ops, lay.instr
        a_buf, b_buf = k.buffer(ops.a), k.buffer(ops.b)
        self.a_base, self.b_base = lw.stage_base(ops.a, stage), lw.stage_base(ops.b, stage)
        self.i_base = lw.stage_base(ops.idx, stage) if ops.idx else None
        self.es = DTYPE_BYTES[a_buf.dtype]
        self.a_pitch, self.b_pitch = a_buf.pitch, b_buf.pitch
        self.tid = tid = Var("tid")
        self.lane = tid % 32
        self.wm, self.wn = lay.warp_coords(tid)
        # the first row of the thread's A fragment in its warp tile: wgmma's warp w holds rows 16w..
        self.m_warp = self.wm * lay.warp_m + (16 * ((tid // 32) % 4) if self.ins.is_wgmma else 0)
        self.a_lane = tid % self.ins.lanes if self.ins.is_wgmma else self.lane   # the A table's thread
        self.first = lay.slice(tid) * ops.share if ops.slices > 1 else 0   # sliced K: the thread's first kept row
        self.ldm_a = self.ins.per_reg == 2 and ops.a_layout == "km"
        self.ldm_b = self.ins.per_reg == 2
        self.isz, self.ity = k.idx_bits // 8, ir.IntType(k.idx_bits)
        self._pos = {}

    def _row_offset(self, g: int, krow) -> ir.Value:
        """Byte offset (scale applied) of the shared A row that look-up group g gathers for kept row
        `krow` (an index expression: thread part + step constant)."""
        key = (g, krow)
        if key not in self._pos:
            lw, ops, lay = self.lw, self.ops, self.lw.k.layout
            unit = lay.group_unit(self.tid, g)
            if not ops.idx:                 # "gather": unit u's kept row i is row u * kept + i, no look-up
                scale = self.a_pitch * self.es if ops.a_layout == "km" else self.es
                self._pos[key] = lw.val((unit * ops.kept + krow) * scale)
            elif ops.offsets:               # unit-major 32-bit byte offsets
                ip = lw.sptr_expr(self.i_base, (unit * ops.kept + krow) * 4)
                self._pos[key] = lw.b.load(ip, typ=I32, align=4)
            else:
                ip = lw.sptr_expr(self.i_base, (krow * lay.units_per_block + unit) * self.isz)
                scale = self.a_pitch * self.es if ops.a_layout == "km" else self.es
                pos = lw.b.zext(lw.b.load(ip, typ=self.ity, align=self.isz), I32)
                self._pos[key] = lw.b.mul(pos, ir.Constant(I32, scale), flags=NUW)
        return self._pos[key]

    def step(self, j: int):
        """(a[g][i], b[t]): the lane's A fragment registers per look-up group and m-tile, and B
        fragment registers per n-tile, of step j (i32 values)."""
        lay = self.lw.k.layout
        k0 = self.first + j * self.ins.k
        a = [[self._a_ldmatrix(g, k0, i) if self.ldm_a else self._a_scalar(g, k0, i) for i in range(lay.tiles_m)]
             for g in range(len(lay.groups))]
        b = []
        if self.ins.is_wgmma:     # B is read from shared memory by the tensor cores (b_descriptor)
            return a, b
        for t in range(lay.tiles_n):
            if not self.ldm_b:
                b.append(self._b_scalar(k0, t))
            elif t % 2 == 0:
                b += self._b_ldmatrix(k0, t, pair=t + 1 < lay.tiles_n)
        return a, b

    def b_descriptor(self, j: int, t: int) -> ir.Value:
        """The 64-bit wgmma matrix descriptor of n-tile t's B at step j."""
        from ..ir.operands import wgmma_b_desc
        unit = self.lw.k.layout.group_unit(self.tid, t)
        start, lbo, sbo = wgmma_b_desc(0, j, self.ins.n, self.ops.kept // self.ins.k)
        # the unit's part of the start: units lie (KR * n) elements apart
        offset = self.lw.val((unit * self.ops.kept * self.ins.n + start) * self.es)
        return self._descriptor(self.lw.sptr(self.lw.b.add(self.b_base, offset, flags=NUW)), lbo, sbo)

    def a_descriptor(self, j: int, i: int, g: int) -> ir.Value:
        """The 64-bit wgmma matrix descriptor of the A operand (64 rows x 16 kept rows, M-major with
        the 128-byte swizzle: nodes.Shared.swizzled) of m-tile i and look-up group g at step j: the
        group's unit's kept rows (unit * kept + j * 16 ..., "gather"), the warpgroup's rows."""
        from ..ir.operands import wgmma_a_desc
        lay, buf = self.lw.k.layout, self.lw.k.buffer(self.ops.a)
        unit = lay.group_unit(self.tid, g)
        krow = unit * self.ops.kept + self.first + j * self.ins.k      # a multiple of 8: a slab's first row
        m0 = self.wm * lay.warp_m + i * self.ins.m                     # a multiple of 64
        lbo, sbo = wgmma_a_desc(buf.pitch, self.es)
        # buf.element(krow, m0), written linearly (both multiples of 8) so that the step and m-tile
        # parts fold into immediates
        return self._descriptor(self.lw.sptr_expr(self.a_base, (krow * buf.pitch + m0 * 8) * self.es), lbo, sbo,
                                swizzle128=True)

    def _descriptor(self, ptr: ir.Value, lbo: int, sbo: int, swizzle128: bool = False) -> ir.Value:
        """The wgmma matrix descriptor of the operand at shared pointer `ptr` (PTX ISA 9.7.15.5.1.2.2):
        bits 0-13 the start address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, bits 62-63 the swizzle
        (0 none, 1 128 bytes). The start is the shared-window address, not the offset into nmgen's
        dynamic buffer (which starts past the block's reserved shared memory): the pointer's value."""
        b = self.lw.b
        addr = b.ptrtoint(ptr, I32)
        field = b.and_(b.lshr(addr, ir.Constant(I32, 4)), ir.Constant(I32, 0x3FFF))
        bits = ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | ((1 << 62) if swizzle128 else 0)
        return b.or_(b.zext(field, I64), ir.Constant(I64, bits))

    def _ldmatrix(self, addr, count: int) -> list:
        lw = self.lw
        ret = ir.LiteralStructType([I32] * count)
        v = lw._call(f"llvm.nvvm.ldmatrix.sync.aligned.m8n8.x{count}.trans.b16.p3", ret, [addr], argtypes=[P3])
        return [lw.b.extract_value(v, q) for q in range(count)]

    def _a_ldmatrix(self, g: int, k0, i: int) -> list:
        lw, lay = self.lw, self.lw.k.layout
        k_in, m_off = lay.ldmatrix_a(self.lane)
        if not self.ops.idx:    # "gather": the whole address is the thread's part plus immediates
            unit = lay.group_unit(self.tid, g)
            row = (unit * self.ops.kept + k0 + k_in) * self.a_pitch + self.m_warp + m_off
            return self._ldmatrix(lw.sptr_expr(self.a_base, (row + i * self.ins.m) * self.es), 4)
        off = self._row_offset(g, k0 + k_in)
        thread = lw._var_part((self.m_warp + m_off) * self.es)
        base = lw.b.add(lw.b.add(self.a_base, thread, flags=NUW), off, flags=NUW)
        return self._ldmatrix(lw.sptr(base, i * self.ins.m * self.es), 4)

    def _b_ldmatrix(self, k0, t: int, pair: bool) -> list:
        """B fragments of n-tiles t (and t+1 with `pair`): [[b0, b1], [b0, b1]]."""
        lw, lay = self.lw, self.lw.k.layout
        k_in, n_off = lay.ldmatrix_b(self.lane)
        addr = lw.sptr_expr(self.b_base, ((k0 + k_in) * self.b_pitch + self.wn * lay.warp_n + t * self.ins.n + n_off)
                            * self.es)
        r = self._ldmatrix(addr, 4 if pair else 2)
        return [r[0:2], r[2:4]] if pair else [r[0:2]]

    def _a_scalar(self, g: int, k0, i: int) -> list:
        """A fragment of m-tile i element by element (instruction A table): (row, k) -> the gathered
        K position of kept row k0 + k, row wm * warp_m + 16 i + row."""
        lw, lay, ins, b = self.lw, self.lw.k.layout, self.ins, self.lw.b
        vals = []
        for e in range(ins.a_regs * ins.per_reg):
            r, kk = ins.a_coord(self.a_lane, e)
            off = self._row_offset(g, k0 + kk)
            m = (self.wm * lay.warp_m + i * ins.m + r) * self.es
            if self.ops.a_layout == "km":       # A(k, m) at k * pitch + m: the offset is k * pitch
                addr = lw.sptr_expr(b.add(self.a_base, off, flags=NUW), m)
            else:                               # A(k, m) at m * pitch + k: the offset is k
                addr = lw.sptr_expr(b.add(self.a_base, off, flags=NUW), m * self.a_pitch)
            vals.append(b.load(addr, typ=F32 if self.es == 4 else I16, align=self.es))
        return self._registers(vals, tf32=ins.dtype == "tf32")

    def _b_scalar(self, k0, t: int) -> list:
        lw, lay, ins, b = self.lw, self.lw.k.layout, self.ins, self.lw.b
        vals = []
        for e in range(ins.b_regs * ins.per_reg):
            kk, c = ins.b_coord(self.lane, e)
            addr = lw.sptr_expr(self.b_base, ((k0 + kk) * self.b_pitch + self.wn * lay.warp_n + t * ins.n + c) * self.es)
            vals.append(b.load(addr, typ=F32 if self.es == 4 else I16, align=self.es))
        return self._registers(vals, tf32=False)

    def _registers(self, vals, tf32: bool) -> list:
        """Elements -> 32-bit fragment registers: tf32 one a register (A rounded with cvt.rna here),
        16-bit two a register, the first in the low half."""
        lw, b = self.lw, self.lw.b
        if self.es == 4:
            if tf32:
                return [lw._call("llvm.nvvm.f2tf32.rna", I32, [v]) for v in vals]
            return [b.bitcast(v, I32) for v in vals]
        regs = []
        for lo, hi in zip(vals[0::2], vals[1::2]):
            regs.append(b.or_(b.zext(lo, I32), b.shl(b.zext(hi, I32), ir.Constant(I32, 16))))
        return regs


def _element(buf, r, c):
    """buf.element(r, c) with the constant parts of r and c pulled out where the layout allows
    (a swizzled buffer: whole slabs of 8 rows and whole 64-column atoms), so that they fold into
    the address's immediate instead of a swizzle computed per copy."""
    if not buf.swizzled:
        return buf.element(r, c)
    rv, rc = split_offset(r)
    cv, cc = split_offset(c)
    if rc % 8 or cc % 64:
        return buf.element(r, c)
    return buf.element(rv, cv) + buf.element(rc, cc)


def _flatten(x) -> list:
    return [v for y in x for v in _flatten(y)] if isinstance(x, (list, tuple)) else [x]


def _unflatten(shape, flat: list):
    """`flat` (as _flatten(shape) lists values) in the nesting of `shape`."""
    it = iter(flat)

    def build(s):
        return [build(y) for y in s] if isinstance(s, (list, tuple)) else next(it)
    return build(shape)


def launch_bound(kernel: Kernel, target: Target) -> int:
    """The blocks per SM ptxas is asked to fit registers for (.minnctapersm): the kernel's
    min_blocks, capped at what the target's shared memory lets run at once - a bound beyond it
    only buys spills (a 62 KB block under min_blocks=8 compiled to 32 registers and 2.9 KB of
    spills for blocks that never fit)."""
    dev = for_arch(target.arch.rstrip("a"))
    fit = dev.smem_per_sm // (kernel.smem_bytes + dev.reserved_smem_per_block)
    return max(1, min(kernel.min_blocks, fit))


def lower(kernel: Kernel, target: Target, data_layout: str) -> ir.Module:
    return Lowerer(kernel, target, data_layout).lower()
