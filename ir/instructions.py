"""Multiply-accumulate instructions as data: each is a table row and its fragment layouts.

An instruction computes D (m x n) = A (m x k) B (k x n) + C with fp32 C and D, executed by `lanes`
threads together. Its fragments say which lane holds which element: element i of lane L's A
fragment is A[a_coord(L, i)], and likewise for B and C. A fragment's elements fill 32-bit registers
`per_reg` at a time, element 2r in the low half of register r (16-bit operands).

  ffma                 m1n1k1, one thread: the CUDA-core thread tile is a grid of these
  mma.m16n8k16.bf16    a warp; A 4 registers (8 bf16), B 2 (4 bf16), C 4 floats
  mma.m16n8k16.f16     the same for float16
  mma.m16n8k8.tf32     a warp; A 4 registers (4 tf32), B 2, C 4
  wgmma.m64nNk16       (sm_90a) a warpgroup of 4 warps, asynchronous; A from registers (warp w holds
                       rows 16w..16w+15 as the m16n8k16 A fragment), B read by the tensor cores from
                       shared memory through a matrix descriptor (no per-lane fragment), C N/2 floats
                       a thread: N/8 m16n8 C fragments side by side, warp w's in rows 16w..
  wgmma.m64nNk16.ss    the same with A read from shared memory too, through a second descriptor
                       (M-major, 128-byte swizzle): no A fragment (a_regs = 0)

The mma layouts are the PTX ISA's ("Matrix fragments for mma.m16n8k16 with floating point type" and
"... mma.m16n8k8 ... .tf32", PTX ISA 8.x, section 9.7.14.5; "Register fragments" of wgmma,
section 9.7.15.5.1.1), with groupID = lane / 4 and threadID_in_group = lane % 4.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MathInstr:
    name: str
    m: int
    n: int
    k: int
    lanes: int          # threads executing one instruction together
    dtype: str          # operand dtype (ir.dtypes): f32, tf32, bf16, f16
    a_regs: int         # 32-bit registers per lane for A, B and C
    b_regs: int
    c_regs: int
    per_reg: int        # operand elements per 32-bit register
    intrinsic: str      # the LLVM NVVM intrinsic ("" for ffma: llvm.fma.f32)
    ptx: str            # the PTX opcode, for reports

    @property
    def is_mma(self) -> bool:
        return self.lanes > 1

    @property
    def is_wgmma(self) -> bool:
        return self.lanes == 128

    @property
    def a_from_smem(self) -> bool:
        """wgmma reading A through a shared-memory descriptor: no lane holds an A fragment."""
        return self.is_wgmma and self.a_regs == 0

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    def a_coord(self, lane, i):
        """(row, k) of element i (0 <= i < a_regs * per_reg) of `lane`'s A fragment (`lane`: the
        thread of a warpgroup, 0..127, for wgmma)."""
        if not self.is_mma:
            return 0, 0
        if self.is_wgmma:
            r, k = MMA_BF16.a_coord(lane % 32, i)
            return 16 * (lane // 32) + r, k
        g, t = lane // 4, lane % 4
        if self.k == 16:          # m16n8k16, 16-bit: register r holds elements 2r, 2r+1
            r, h = i // 2, i % 2
            return g + 8 * (r % 2), 2 * t + h + 8 * (r // 2)
        return g + 8 * (i % 2), t + 4 * (i // 2)          # m16n8k8 tf32: one element a register

    def b_coord(self, lane, i):
        """(k, col) of element i (0 <= i < b_regs * per_reg) of `lane`'s B fragment."""
        if not self.is_mma:
            return 0, 0
        g, t = lane // 4, lane % 4
        if self.k == 16:
            r, h = i // 2, i % 2
            return 2 * t + h + 8 * r, g
        return t + 4 * i, g

    def c_coord(self, lane, i):
        """(row, col) of accumulator i (0 <= i < c_regs) of `lane` (for wgmma the thread of the
        warpgroup: accumulators 4j..4j+3 are an m16n8 C fragment at columns 8j..)."""
        if not self.is_mma:
            return 0, 0
        if self.is_wgmma:
            r, c = MMA_BF16.c_coord(lane % 32, i % 4)
            return 16 * (lane // 32) + r, 8 * (i // 4) + c
        g, t = lane // 4, lane % 4
        return g + 8 * (i // 2), 2 * t + i % 2


FFMA = MathInstr("ffma", 1, 1, 1, 1, "f32", 1, 1, 1, 1, "", "fma.rn.f32")
MMA_BF16 = MathInstr("mma.m16n8k16.bf16", 16, 8, 16, 32, "bf16", 4, 2, 4, 2, "llvm.nvvm.mma.m16n8k16.row.col.bf16",
                     "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
MMA_F16 = MathInstr("mma.m16n8k16.f16", 16, 8, 16, 32, "f16", 4, 2, 4, 2, "llvm.nvvm.mma.m16n8k16.row.col.f32.f32",
                    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
MMA_TF32 = MathInstr("mma.m16n8k8.tf32", 16, 8, 8, 32, "tf32", 4, 2, 4, 1, "llvm.nvvm.mma.m16n8k8.row.col.tf32",
                     "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")

BY_DTYPE = {"f32": FFMA, "tf32": MMA_TF32, "bf16": MMA_BF16, "f16": MMA_F16}


def for_dtype(dtype: str) -> MathInstr:
    """The instruction a problem of operand dtype `dtype` multiplies with (mma.sync for the tensor
    cores: wgmma is a schedule's choice, see `wgmma`)."""
    return BY_DTYPE[str(dtype)]


def wgmma(dtype: str, n: int, a_smem: bool = False) -> MathInstr:
    """wgmma.mma_async m64nNk16 (bf16 or f16, fp32 accumulators) with A from registers, or with
    `a_smem` from shared memory through a descriptor: N columns, a multiple of 8 up to 256 (PTX ISA:
    the .shape list of wgmma)."""
    if dtype not in ("bf16", "f16") or n % 8 or not 8 <= n <= 256:
        raise ValueError(f"wgmma m64n{n}k16 .{dtype} is not an instruction (bf16/f16, N a multiple of 8 to 256)")
    return MathInstr(f"wgmma.m64n{n}k16.{dtype}" + (".ss" if a_smem else ""), 64, n, 16, 128, dtype,
                     0 if a_smem else 4, 0, n // 2, 2, "", f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{dtype}.{dtype}")
