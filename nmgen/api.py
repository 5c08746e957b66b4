"""The Python API: compile a kernel for a problem, and run C = A @ B on numpy, torch or cupy arrays."""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import codegen
from .arrays import host_matrix
from .errors import CudaUnavailable, ShapeError
from .format import NMMatrix, _pattern
from .ir import build, format_kernel
from .ir.device import Device, for_arch
from .ir.layout import ComputeLayout
from .ir.operands import Geometry, geometry, prepare
from .ir.problem import Problem, as_int, parse_shape
from .ir.schedule import Schedule
from .ir.validate import validate
from .search.heuristic import default_schedule

_kernels: dict = {}
_kernels_lock = threading.Lock()
# The weights laid out per schedule, and their device copies, per NMMatrix (by identity: an
# NMMatrix's arrays are read-only, so what it holds cannot change under the cache)
_operands: "weakref.WeakKeyDictionary[NMMatrix, dict]" = weakref.WeakKeyDictionary()


class Kernel:
    """A generated kernel for one (problem, schedule, arch): its IR, PTX, resources and launcher."""

    def __init__(self, problem: Problem, schedule: Schedule, arch: str, a_rows: int | None = None,
                 ptx: str | None = None, cubin: bytes | None = None, resources: codegen.Resources | None = None):
        """`ptx`, `cubin` and `resources`, when given, were made elsewhere (the tuner's workers)."""
        self.problem, self.schedule, self.arch = problem, schedule, arch
        self.ir = build(problem, schedule, a_rows)
        self.name = self.ir.name
        self.ptx = ptx or codegen.generate_ptx(self.ir, arch)
        self.cubin = cubin
        self._loaded = {}           # device ordinal -> loaded module (runtime.module)
        if resources is not None:
            self.__dict__["resources"] = resources

    @cached_property
    def resources(self) -> codegen.Resources:
        """ptxas's report (registers, spills, stack); needs ptxas (the test extra or CUDA on PATH)."""
        return codegen.assemble(self.ptx, self.arch, self.name)

    def ir_text(self) -> str:
        return format_kernel(self.ir)

    @property
    def smem_bytes(self) -> int:
        return self.ir.smem_bytes

    def launch(self, A_ptr: int, operands: "DeviceOperands", C_ptr: int, stream: int = 0, device: int = 0) -> None:
        """Raw launch on device pointers (C is zeroed first under split-K). Prefer `spmm`."""
        from .runtime.memory import memset32
        k = self.ir
        loaded = self._loaded.get(device)
        if loaded is None:    # once per device: loading hashes the image, too slow for every launch
            from .runtime.module import load
            loaded = self._loaded[device] = load(self.cubin or self.ptx, self.name, k.smem_bytes, device)
        if k.zero_output:
            memset32(C_ptr, k.M * k.N, stream)
        ptrs = {"A": A_ptr, "C": C_ptr, "Bv": operands.bv.ptr, "Bi": operands.bi and operands.bi.ptr,
                "Arows": operands.arows and operands.arows.ptr}
        args = [ptrs[p.name] for p in k.params]
        loaded.launch(k.grid, k.threads, args, stream)

    def __call__(self, A, B: NMMatrix, out=None, stream=None):
        return spmm(A, B, out=out, kernel=self, stream=stream)

    def __repr__(self):
        return f"Kernel({self.name}, {self.problem}, {self.schedule.short()}, {self.arch})"


def _problem(problem, pattern, vector, a_major) -> Problem:
    """A Problem from a Problem, "MxNxK" or (M, N, K), a pattern and a vector length. Sizes must be
    integers >= 1: 2.5, 64.7, True or 0 raise (ShapeError / PatternError), never truncated."""
    if isinstance(problem, Problem):
        if pattern is not None and _pattern(pattern, vector) != problem.pattern or (
                pattern is None and vector is not None and as_int(vector, "vector") != problem.pattern.vector):
            raise ShapeError(f"pattern={pattern!r}, vector={vector!r} disagree with the problem's {problem.pattern}; "
                             f"pass the Problem alone")
        return problem
    if isinstance(problem, str):
        M, N, K = parse_shape(problem)
    elif isinstance(problem, (tuple, list)) and len(problem) == 3:
        M, N, K = problem
    else:
        raise ShapeError(f"problem {problem!r} must be a shape 'MxNxK', a tuple (M, N, K) or a nmgen.Problem")
    if pattern is None:
        raise ShapeError("give the pattern, e.g. compile('4096x4096x4096', pattern='8:32', vector=32)")
    return Problem(M, N, K, _pattern(pattern, vector), a_major=a_major)   # Problem checks the sizes


def current_device(ordinal: int = 0) -> Device | None:
    """The GPU's limits, or None where there is no GPU."""
    from .runtime import driver
    if not driver.available():
        return None
    return driver.device_info(ordinal)


def choose_schedule(problem: Problem, device: Device, B: NMMatrix | None = None) -> Schedule:
    """The schedule `spmm` runs when none is given: the tuning database's best for this problem,
    device and toolchain (`nmgen search` fills it), else the performance model's best."""
    from .search.choose import choose
    return choose(problem, device, B)


def compile(problem, pattern=None, vector=None, *, schedule: Schedule | None = None, arch: str | None = None,
            B: NMMatrix | None = None, device: int = 0, a_major: str = "row") -> Kernel:
    """Generate (or fetch from the cache) the kernel for `problem` ("MxNxK" or a Problem; `a_major`
    "col" for an A stored column-major).

    Without `arch`, the GPU's architecture (sm_90 where there is no GPU). Without `schedule`, the
    tuning database's best for this GPU, or the performance model's best. `B` supplies the real
    indices, which the "rows" A-loading strategy needs for its compacted row lists."""
    problem = _problem(problem, pattern, vector, a_major)
    if arch is not None:
        codegen.target_for(arch)
    gpu = current_device(device)
    arch = arch or (gpu.arch if gpu else "sm_90")
    dev = gpu if gpu is not None and gpu.arch == arch else for_arch(arch)   # a GPU of another arch: typical
    if B is not None:
        _check_b(problem, B)
    if schedule is None:
        schedule = choose_schedule(problem, dev, B)
    a_rows = None
    if schedule.a_load == "rows" and B is not None:
        a_rows = host_operands(B, problem, schedule).geometry.a_rows
    validate(problem, schedule, dev, a_rows)
    key = (problem, schedule, arch, a_rows)
    with _kernels_lock:
        k = _kernels.get(key)
    if k is None:
        k = Kernel(problem, schedule, arch, a_rows)
        with _kernels_lock:
            _kernels[key] = k
    return k


# ---- the weights, laid out per schedule (cached on the NMMatrix) -----------------------------------
def _layout_key(problem: Problem, s: Schedule) -> tuple:
    """What the prepared weights depend on (not M, not the thread tiles beyond the index unit):
    the index layout, and the shared A row size its byte offsets count in."""
    g = geometry(problem, s)
    return (s.block_n, s.k_windows, g.unit, s.a_load, g.idx_bits == 32 and g.scale)


def host_operands(B: NMMatrix, problem: Problem, s: Schedule):
    """B laid out for schedule `s` (ir.operands.Operands), cached on B: correct because an NMMatrix's
    arrays are read-only. The cached arrays are made read-only too, so no caller can change what
    the device copies are later made from."""
    cache = _operands.setdefault(B, {})
    key = ("host",) + _layout_key(problem, s)
    ops = cache.get(key)
    if ops is None:
        ops = prepare(problem, s, B.values, B.indices)
        for a in (ops.bv, ops.bi, ops.arows):
            if a is not None:
                a.flags.writeable = False
        cache[key] = ops
    return ops


@dataclass
class DeviceOperands:
    geometry: Geometry
    bv: object
    bi: object
    arows: object | None


def device_operands(B: NMMatrix, problem: Problem, s: Schedule, device: int = 0) -> DeviceOperands:
    from .runtime.memory import DeviceBuffer
    cache = _operands.setdefault(B, {})
    key = ("device", device) + _layout_key(problem, s)
    ops = cache.get(key)
    if ops is None:
        h = host_operands(B, problem, s)
        ops = cache[key] = DeviceOperands(h.geometry, DeviceBuffer.from_array(h.bv, device),
                                          DeviceBuffer.from_array(h.bi, device) if h.bi is not None else None,
                                          DeviceBuffer.from_array(h.arows, device) if h.arows is not None else None)
    return ops


def _check_b(problem: Problem, B: NMMatrix) -> None:
    if (B.K, B.N) != (problem.K, problem.N) or B.pattern != problem.pattern:
        raise ShapeError(f"B is a {B.K}x{B.N} {B.pattern} matrix, but the kernel was compiled for "
                         f"K={problem.K}, N={problem.N}, {problem.pattern}")


# ---- C = A @ B -------------------------------------------------------------------------------------
def spmm(A, B: NMMatrix, out=None, schedule: Schedule | None = None, *, kernel: Kernel | None = None,
         stream: int | None = None):
    """C = A @ B for a dense A (M x K, float32) and an n:m sparse B (NMMatrix, K x N).

    numpy (or any host) A: copied to the GPU, C returned as numpy (or written into `out`, which may
    be A itself or overlap it: A is uploaded before the kernel runs and `out` written only after).
    torch / cupy / __cuda_array_interface__ / DLPack CUDA A: used in place on its library's current
    stream (or `stream`); C is `out` or a new array of the same library; nothing is synchronised.
    A may be row-major or column-major (a transposed view such as `x.t()`): each has its kernels.
    A GPU A must be in the order of a given `kernel` (an A that is both, such as M = 1, fits either);
    a host A is copied in the kernel's order. A GPU `out` must not overlap A (ShapeError).
    An empty A (M = 0) gives an empty (0, N) C (or `out`) without compiling or launching anything.

    Raises ShapeError for shapes, dtypes, layouts or an `out` that do not fit."""
    if not isinstance(B, NMMatrix):
        raise ShapeError(f"B must be an nmgen.NMMatrix (build one with nmgen.compress or NMMatrix.from_dense), "
                         f"got {type(B).__name__}")
    from .runtime.arrays import device_view
    dv = device_view(A)
    if dv is None:
        a_major = _host_a_major(A, kernel)
        return _spmm_host(_host_a(A, a_major), B, out, schedule, kernel, a_major)
    return _spmm_device(dv, B, out, schedule, kernel, stream)


def a_major_of(row_major: bool, col_major: bool, want: str | None = None) -> str | None:
    """The A order ("row" or "col") to run for an A stored row-major and/or column-major without
    gaps, or None when it is neither. An A that is both (M = 1, or K = 1: a size-1 dimension's
    stride never matters) is read correctly by kernels of either order: `want` (the given kernel's
    order) if given, else "row"."""
    if row_major and col_major:
        return want or "row"
    return "row" if row_major else "col" if col_major else None


def _host_a(A, a_major: str) -> np.ndarray:
    """A as a float32 (M, K) numpy matrix stored in order `a_major` (A itself where it already is)."""
    if a_major == "row":
        return host_matrix(A, "A")
    if isinstance(A, np.ndarray) and A.ndim == 2:   # through the transpose: an F-ordered A is not copied
        return host_matrix(A.T, "A").T
    return np.asfortranarray(host_matrix(A, "A"))


def _host_a_major(A, kernel: Kernel | None) -> str:
    """A host A is copied to the GPU anyway: take the given kernel's order; else keep A's own
    (column-major only when it is not also row-major), row-major for anything else."""
    if kernel is not None:
        return kernel.problem.a_major
    if isinstance(A, np.ndarray) and A.ndim == 2:
        return a_major_of(A.flags.c_contiguous, A.flags.f_contiguous) or "row"
    return "row"


def _kernel_for(M, B, schedule, kernel, device, a_major="row") -> Kernel:
    problem = Problem(M, B.N, B.K, B.pattern, a_major=a_major)
    if kernel is not None:
        if kernel.problem != problem:
            raise ShapeError(f"the kernel was compiled for {kernel.problem}, not {problem}: compile one for "
                             f"this A and B, or call spmm without kernel= to have it compiled")
        if kernel.schedule.a_load == "rows":  # its row lists must be those of this B
            return compile(problem, schedule=kernel.schedule, arch=kernel.arch, B=B, device=device)
        return kernel
    return compile(problem, schedule=schedule, B=B, device=device)


def _check_a(M, K, B):
    if K != B.K:
        raise ShapeError(f"A is {M}x{K} but B has K={B.K} rows: A's columns must equal B's rows")


def _check_empty_batch(kernel: Kernel | None, B: NMMatrix) -> None:
    """M = 0 runs no kernel, but a given kernel must still be one for this B."""
    if kernel is not None:
        p = kernel.problem
        if (p.K, p.N, p.pattern) != (B.K, B.N, B.pattern):
            raise ShapeError(f"the kernel was compiled for {p}, not for B ({B.K}x{B.N} {B.pattern})")


def _spmm_host(A: np.ndarray, B: NMMatrix, out, schedule, kernel, a_major):
    from .runtime import driver
    from .runtime.memory import DeviceBuffer, download, memset32, synchronize
    M, K = A.shape
    _check_a(M, K, B)
    A = A.T if a_major == "col" else A      # what is uploaded: (K, M) C-contiguous for column-major
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != (M, B.N) or out.dtype != np.float32
                            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ShapeError(f"out must be a writable C-contiguous float32 numpy array of shape ({M}, {B.N}), got "
                         f"{_describe(out)}")
    if M == 0:   # an empty batch (an MoE expert given no tokens): nothing to compute, no GPU needed
        _check_empty_batch(kernel, B)
        return out if out is not None else np.empty((0, B.N), np.float32)
    driver.init()
    k = _kernel_for(M, B, schedule, kernel, 0, a_major)
    ops = device_operands(B, k.problem, k.schedule, 0)
    a = DeviceBuffer.from_array(A, 0)
    c = DeviceBuffer(M * B.N * 4, 0)
    if os.environ.get("NMGEN_POISON_OUTPUT") == "1":   # debugging aid: unwritten elements come back NaN
        memset32(c.ptr, M * B.N, 0, 0x7FC00000)
    k.launch(a.ptr, ops, c.ptr, 0, 0)
    synchronize(0, f"kernel {k.name}")
    result = out if out is not None else np.empty((M, B.N), np.float32)
    return download(result, c.ptr)


def _describe(x) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    return f"{type(x).__name__} {dtype} {tuple(shape)}" if shape is not None else type(x).__name__


def _device_out(out, dv, N: int):
    """`out` checked against A's (M, N) product (a new array of A's library when None)."""
    from .runtime.arrays import device_view, empty_like_owner
    M = dv.shape[0]
    if out is None:
        return empty_like_owner(dv.owner, (M, N))
    ov = device_view(out)
    if ov is None or ov.shape != (M, N) or ov.dtype != np.float32 or not ov.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous float32 GPU array of shape ({M}, {N}), got {_describe(out)}"
                         + (f" with strides {ov.strides} bytes" if ov is not None else ""))
    if ov.device != dv.device:
        raise ShapeError(f"A is on GPU {dv.device} but out is on GPU {ov.device}")
    return out


def _spmm_device(dv, B: NMMatrix, out, schedule, kernel, stream):
    from .runtime.arrays import byte_range, device_view, overlaps
    from .runtime.memory import DeviceBuffer
    from .runtime.driver import check, driver, use_device
    if len(dv.shape) != 2:
        raise ShapeError(f"A must be a 2-D matrix, got shape {dv.shape}")
    M, K = dv.shape
    _check_a(M, K, B)
    if dv.dtype != np.float32:
        raise ShapeError(f"A has dtype {dv.dtype}; nmgen computes in float32: convert it (e.g. A.float())")
    if M == 0:   # an empty batch: an empty C of A's library, nothing launched
        _check_empty_batch(kernel, B)
        return _device_out(out, dv, B.N)
    # column-major: a transposed view, its K rows contiguous, used as they are
    a_major = a_major_of(dv.c_contiguous, dv.f_contiguous, kernel.problem.a_major if kernel else None)
    if a_major is None:
        raise ShapeError(f"A must be row-major or column-major without gaps (shape {dv.shape}, strides "
                         f"{dv.strides} bytes); call .contiguous() (torch) or cupy.ascontiguousarray")
    if dv.ptr % 4:
        raise ShapeError("A's data pointer is not 4-byte aligned")
    out = _device_out(out, dv, B.N)
    ov = device_view(out)
    if overlaps(dv, ov):   # the kernel reads A while it writes C (and split-K zeroes C before it starts)
        a0, a1 = byte_range(dv.ptr, dv.shape, dv.strides, 4)
        o0, o1 = byte_range(ov.ptr, ov.shape, ov.strides, 4)
        raise ShapeError(f"out overlaps A: A {dv.shape} lies in bytes [{a0:#x}, {a1:#x}) and out {ov.shape} in "
                         f"[{o0:#x}, {o1:#x}); pass a separate output array (or none: spmm allocates one)")
    use_device(dv.device)
    stream = dv.stream if stream is None else int(stream)
    k = _kernel_for(M, B, schedule, kernel, dv.device, a_major)
    a_ptr, temporaries = dv.ptr, []
    if a_ptr % k.ir.a_alignment:   # the kernel copies A in 16-byte vectors: use an aligned copy of it
        temporaries.append(DeviceBuffer(M * K * 4, dv.device))
        check(driver().cuMemcpyDtoDAsync(temporaries[-1].ptr, a_ptr, M * K * 4, stream), "cuMemcpyDtoDAsync (align A)")
        a_ptr = temporaries[-1].ptr
    ops = device_operands(B, k.problem, k.schedule, dv.device)
    if ov.ptr % k.ir.c_alignment:   # vector stores need aligned rows: go through an aligned buffer
        temporaries.append(DeviceBuffer(M * B.N * 4, dv.device))
        k.launch(a_ptr, ops, temporaries[-1].ptr, stream, dv.device)
        check(driver().cuMemcpyDtoDAsync(ov.ptr, temporaries[-1].ptr, M * B.N * 4, stream), "cuMemcpyDtoDAsync")
    else:
        k.launch(a_ptr, ops, ov.ptr, stream, dv.device)
    if temporaries:   # they are freed on return: the work queued on the stream must finish first
        check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize")
    return out


__all__ = ["CudaUnavailable", "Kernel", "compile", "current_device", "default_schedule", "device_operands", "spmm"]
