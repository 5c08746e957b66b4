"""A kernel bound to one weight matrix, one M and one GPU, launched with one driver call.

`nmgen.spmm` checks its inputs, looks up the kernel and the weights' device copies, and packs the
launch arguments on every call (about 140 us of host time at 1x4096x4096). A `PreparedSpMM` does
all of that once: it holds the loaded CUfunction, the weights' device addresses, grid, block,
shared memory and a packed argument block in which only A and C (and a workspace) are patched
per call. A launch is then one cuLaunchKernel (plus, under split-K into an fp32 C, the memset that
zeroes C first; a 16-bit C under split-K, and a tail split, are reduced in the kernel, in a
workspace it leaves zeroed):
a few microseconds of host time, nothing allocated, nothing synchronised, nothing compiled. CUDA
graphs capture it like any other launch.

It checks nothing per call: the caller passes device addresses of the right size, dtype, order
and alignment (`a_alignment`, `c_alignment`, `lda`). nmgen.torch builds these for torch tensors.
"""
from __future__ import annotations

import threading
from typing import Mapping

from .errors import ShapeError
from .ir.build import a_leading_dim
from .runtime.launch import CONTEXT_ERRORS, PackedLaunch, memset32, raise_for
from .runtime.memory import ZeroedWorkspaces

_POINTERS = ("A", "C", "Work", "Counts")      # patched per call


class PreparedSpMM:
    """C (M x N) = A (M x K) @ B for one compiled kernel and one weight matrix on one GPU.

    kernel:   a nmgen.Kernel (nmgen.compile): its problem fixes M, N, K, the pattern, A's dtype
              and order, and C's dtype.
    operands: device addresses (ints) of the kernel's weight operands by parameter name: "Bv"
              and, where the kernel has them, "Bi" and "Arows" (B laid out for the kernel's
              schedule: nmgen.api.host_operands / device_operands). The caller keeps that memory
              alive as long as this object launches.
    device:   the GPU's ordinal; the kernel is loaded into its primary context (the one torch and
              cupy use) when this object is made.

    Attributes a caller needs to feed it: `lda` (elements from one row of A to the next as the
    kernel reads it), `a_alignment` / `c_alignment` (bytes A's and C's addresses must be aligned
    to), `workspace_bytes` (the scratch a kernel that reduces split parts itself needs - split-K
    into a 16-bit C, a tail split - 16-byte aligned (sm_90's vector atomics and loads read 4
    floats at once): fp32 partial sums and tile counts, ir.nodes.SplitKReduce; 0 otherwise),
    `launches` (driver
    calls per launch with a zeroed workspace: 2 for split-K into an fp32 C, else 1).

    Raises ShapeError when an operand the kernel reads is missing."""

    def __init__(self, kernel, operands: Mapping[str, int], device: int = 0):
        k = kernel.ir
        self.kernel, self.problem, self.device = kernel, kernel.problem, int(device)
        self.M, self.N, self.K = kernel.problem.M, kernel.problem.N, kernel.problem.K
        names = [p.name for p in k.params]
        missing = [n for n in names if n not in _POINTERS and not operands.get(n)]
        if missing:
            raise ShapeError(f"kernel {kernel.name} reads the operands {names}; no device address was given for "
                             f"{', '.join(missing)} (got {sorted(operands)})")
        loaded = kernel.loaded(self.device)
        self._a, self._c = names.index("A"), names.index("C")
        self._main = PackedLaunch(int(loaded.function), k.grid, k.threads, loaded.smem,
                                  [0 if n in _POINTERS else int(operands[n]) for n in names])
        self.zero_words = self.M * self.N if k.zero_output else 0
        self.workspace_words = k.workspace_words
        self.workspace_bytes = 4 * self.workspace_words
        # the workspace's two parts: its slots in the argument block, the counts' byte offset in it
        self._work = (names.index("Work"), names.index("Counts"), 4 * k.work_words) if self.workspace_words else None
        self._plain = not (self.zero_words or self.workspace_words)
        self.launches = 1 + bool(self.zero_words)
        self._slots = self._main.slots
        self.lda = a_leading_dim(kernel.problem)
        self.a_alignment = k.a_alignment
        self.c_alignment = k.c_alignment
        self._what = (f"launching kernel {kernel.name} (grid {k.grid[0]}x{k.grid[1]}x{k.grid[2]}, {k.threads} "
                      f"threads, {loaded.smem} B shared)")
        self._lock = threading.Lock()
        self._workspaces = ZeroedWorkspaces(self.workspace_words)    # used when the caller passes none

    @classmethod
    def for_matrix(cls, B, M: int, *, dtype=None, c_dtype=None, allow_tf32: bool = False, a_major: str = "row",
                   schedule=None, device: int = 0) -> "PreparedSpMM":
        """Compile (or fetch) the kernel for an (M, K) A times the NMMatrix `B` and bind it to B's
        device copies on GPU `device` (made once and cached on B). A and B hold B's dtype (float32
        runs on FFMA, or TF32 tensor cores with allow_tf32); C `c_dtype`, by default A's."""
        from .api import compile, compute_dtype, device_operands
        from .ir.dtypes import dtype as dtype_of
        storage = dtype_of(dtype).name if dtype is not None else B.dtype
        if storage != B.dtype:
            raise ShapeError(f"dtype={storage!r} but B holds {B.dtype} values: convert B once (B.astype({storage!r}))")
        compute = compute_dtype(storage, allow_tf32, B.pattern.vector)
        k = compile((M, B.N, B.K), B.pattern, schedule=schedule, B=B, device=device, a_major=a_major, dtype=compute,
                    c_dtype=c_dtype)
        ops = device_operands(B, k.problem, k.schedule, device)
        p = cls(k, {"Bv": ops.bv.ptr, "Bi": ops.bi.ptr if ops.bi else 0, "Arows": ops.arows.ptr if ops.arows else 0},
                device)
        p._keep = ops       # the device copies live as long as B's cache and this object
        return p

    def launch(self, a_ptr: int, c_ptr: int, stream: int = 0, workspace: int = 0,
               workspace_zeroed: bool = False) -> None:
        """Enqueue C = A @ B on `stream` (a CUstream handle as an int; 0: the legacy default stream).

        a_ptr: A as the kernel reads it (its dtype; rows of `lda` elements; `a_alignment`-aligned).
        c_ptr: C, (M, N) row-major of the problem's c_dtype, `c_alignment`-aligned; it must not
               overlap A.
        workspace: address of `workspace_bytes` bytes of scratch for a kernel that reduces split
               parts itself (split-K into a 16-bit C, a tail split), used in stream order (one per
               stream launched on concurrently); 0: this object's own for `stream`, allocated and
               zeroed on first use (not while a CUDA graph is being captured: pass one then).
        workspace_zeroed: the workspace holds zeros when this launch reaches it in stream order, so
               no memset clears it first. The kernel leaves it zeroed, so a workspace zeroed when
               made and used only by these launches stays so; pass False for any other (the memset
               is then enqueued before the kernel).

        Raises CudaError (naming the CUDA error) if the driver refuses the launch; a launch made
        while another GPU's context is current in this thread is retried once in the right one."""
        if self._plain:                 # one launch, nothing zeroed or converted: the common case, inlined
            with self._lock:
                slots = self._slots
                slots[self._a] = a_ptr
                slots[self._c] = c_ptr
                rc = self._main(stream)
                if rc:
                    self._recover(rc, a_ptr, c_ptr, stream, workspace)
            return
        with self._lock:       # (two threads making this object's first workspace must not make two)
            if self.workspace_words and not workspace:
                workspace, workspace_zeroed = self._workspaces.ptr(self.device, stream), True
            rc = self._enqueue(a_ptr, c_ptr, stream, workspace, workspace_zeroed)
            if rc:
                self._recover(rc, a_ptr, c_ptr, stream, workspace)

    def _enqueue(self, a_ptr: int, c_ptr: int, stream: int, workspace: int, zeroed: bool) -> int:
        slots = self._slots
        slots[self._a] = a_ptr
        slots[self._c] = c_ptr
        if self.zero_words:         # split-K adds its fp32 partial sums atomically into C: zero it first
            rc = memset32(c_ptr, self.zero_words, stream)
            if rc:
                return rc
        if self._work:
            work, counts, offset = self._work
            slots[work] = workspace
            slots[counts] = workspace + offset
            if not zeroed:
                rc = memset32(workspace, self.workspace_words, stream)
                if rc:
                    return rc
        return self._main(stream)

    def _recover(self, rc: int, a_ptr: int, c_ptr: int, stream: int, workspace: int) -> None:
        """A launch refused for the context (none current in this thread, or another GPU's) is made
        again in this GPU's primary context, the caller's context restored after; others raise."""
        if rc not in CONTEXT_ERRORS:
            raise_for(rc, self._what)
        from .runtime.driver import check, driver, use_device
        drv = driver()
        previous = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
        ctx = use_device(self.device)
        try:
            rc = self._enqueue(a_ptr, c_ptr, stream, workspace, False)   # (a refused launch ran nothing)
        finally:
            if previous is None or int(previous) != int(ctx):
                check(drv.cuCtxSetCurrent(previous if previous is not None else drv.CUcontext(0)),
                      "cuCtxSetCurrent (restoring the caller's context)")
        raise_for(rc, self._what)

    def __repr__(self):
        return f"PreparedSpMM({self.kernel.name}, {self.problem}, {self.kernel.schedule.short()}, GPU {self.device})"


__all__ = ["PreparedSpMM"]
