"""The Python API: compile a kernel for a problem, and run C = A @ B on numpy, torch or cupy arrays."""
from __future__ import annotations

import dataclasses
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
from .ir.build import a_leading_dim
from .ir.device import ARCHS, Device, for_arch
from .ir.dtypes import DTYPES, dtype as dtype_of, output_dtype, storage_name
from .ir.operands import Geometry, layout_key, prepare
from .ir.problem import Problem, as_int, parse_shape
from .ir.schedule import Schedule
from .ir.validate import validate
from .search.heuristic import as_schedule, default_schedule, schedule_fields

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
        self.problem, self.schedule = problem, schedule
        self.ir = build(problem, schedule, a_rows)
        self.gpu_arch = arch                           # the GPU's architecture it was made for
        self.arch = codegen.arch_of(self.ir, arch)     # the PTX target: sm_90a for wgmma kernels
        self.name = self.ir.name
        self.ptx = ptx or codegen.generate_ptx(self.ir, arch)
        self.cubin = cubin
        self._loaded = {}           # device ordinal -> loaded module (runtime.module)
        self._workspaces = None     # scratch of split-K into a 16-bit C or a tail split (ZeroedWorkspaces)
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
        """Raw launch on device pointers: A as the kernel reads it (its dtype, order and leading
        dimension: ir.build.a_leading_dim), C (M, N) of the problem's c_dtype. Under split-K an fp32
        C is zeroed first; a 16-bit C under split-K, and a tail split's tiles, are summed in this
        kernel's workspace for (device, stream), zero between launches (ir.nodes.SplitKReduce).
        Prefer `spmm`."""
        from .runtime.memory import memset32
        k = self.ir
        loaded = self.loaded(device)
        if k.zero_output:
            memset32(C_ptr, k.M * k.N, stream)
        ptrs = {"A": A_ptr, "C": C_ptr, "Bv": operands.bv.ptr, "Bi": operands.bi and operands.bi.ptr,
                "Arows": operands.arows and operands.arows.ptr}
        if k.workspace_words:
            ptrs["Work"] = self._workspace(device, stream)
            ptrs["Counts"] = ptrs["Work"] + 4 * k.work_words
        args = [ptrs[p.name] for p in k.params]
        loaded.launch(k.grid, k.threads, args, stream)

    def loaded(self, device: int = 0):
        """The kernel loaded into `device`'s primary context (runtime.module.LoadedKernel: its
        CUfunction handle, dynamic shared memory), loaded once per device (loading hashes the image,
        too slow for every launch). Makes that context current in this thread."""
        loaded = self._loaded.get(device)
        if loaded is None:
            from .runtime.module import load
            loaded = self._loaded[device] = load(self.cubin or self.ptx, self.name, self.ir.smem_bytes, device)
        return loaded

    def _workspace(self, device: int, stream: int) -> int:
        """The scratch of a kernel that reduces split parts itself (ir workspace_words: fp32 sums,
        tile counts) for (device, stream), zeroed once when made; each launch leaves it zeroed."""
        if self._workspaces is None:
            from .runtime.memory import ZeroedWorkspaces
            self._workspaces = ZeroedWorkspaces(self.ir.workspace_words)
        return self._workspaces.ptr(device, stream)

    def __call__(self, A, B: NMMatrix, out=None, stream=None):
        return spmm(A, B, out=out, kernel=self, stream=stream)

    def __repr__(self):
        return f"Kernel({self.name}, {self.problem}, {self.schedule.short()}, {self.arch})"


def _problem(problem, pattern, vector, a_major=None, dtype=None, c_dtype=None) -> Problem:
    """A Problem from a Problem, "MxNxK" or (M, N, K), a pattern and a vector length (A row-major
    and float32 unless `a_major` / `dtype` say otherwise). Sizes must be integers >= 1: 2.5, 64.7,
    True or 0 raise (ShapeError / PatternError), never truncated. A Problem carries its own pattern,
    A order and dtypes: any of them also given, and different, is a ShapeError, never ignored."""
    if isinstance(problem, Problem):
        if pattern is not None and _pattern(pattern, vector) != problem.pattern or (
                pattern is None and vector is not None and as_int(vector, "vector") != problem.pattern.vector):
            raise ShapeError(f"pattern={pattern!r}, vector={vector!r} disagree with the problem's {problem.pattern}; "
                             f"pass the Problem alone")
        given = {"a_major": (a_major, problem.a_major), "dtype": (dtype and dtype_of(dtype).name, problem.dtype),
                 "c_dtype": (c_dtype and output_dtype(c_dtype), problem.c_dtype)}
        wrong = [f"{k}={v!r}" for k, (v, have) in given.items() if v is not None and v != have]
        if wrong:
            raise ShapeError(f"{' and '.join(wrong)} {'differs' if len(wrong) == 1 else 'differ'} from the problem "
                             f"{problem} (A {problem.a_major}-major, "
                             f"{problem.dtype}, C {problem.c_dtype}); pass the Problem alone, or "
                             f"dataclasses.replace(problem, ...) to change it")
        return problem
    if isinstance(problem, str):
        M, N, K = parse_shape(problem)
    elif isinstance(problem, (tuple, list)) and len(problem) == 3:
        M, N, K = problem
    else:
        raise ShapeError(f"problem {problem!r} must be a shape 'MxNxK', a tuple (M, N, K) or a nmgen.Problem")
    if pattern is None:
        raise ShapeError("give the pattern, e.g. compile('4096x4096x4096', pattern='8:32', vector=32)")
    return Problem(M, N, K, _pattern(pattern, vector), dtype_of(dtype or "f32").name, a_major or "row",
                   c_dtype)                                        # Problem checks the sizes


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


def compile(problem, pattern=None, vector=None, *, schedule: Schedule | dict | str | None = None, arch: str | None = None,
            B: NMMatrix | None = None, device: int = 0, a_major: str | None = None, dtype=None,
            c_dtype=None) -> Kernel:
    """Generate (or fetch from the cache) the kernel for `problem` ("MxNxK" or a Problem; `a_major`
    "col" for an A stored column-major, default "row"; `dtype` what A and B hold and how they
    multiply: "f32" (FFMA, the default), "tf32", "bf16" or "f16" (tensor cores); `c_dtype` C's dtype,
    by default A's). A Problem carries its own pattern, A order and dtypes: giving them too, different,
    is a ShapeError.

    Without `arch`, the GPU's architecture (sm_90 where there is no GPU). Without `schedule`, the
    tuning database's best for this GPU, or the performance model's best; a dict of schedule fields
    (or a JSON object of them, as the command line's --schedule) is laid over the default schedule
    for the problem (search.heuristic.default_schedule), e.g. schedule={"split_k": 2}. `B` supplies
    the real indices, which the "rows" A-loading strategy needs for its compacted row lists.
    ShapeError for a tensor-core dtype with V no multiple of 8."""
    problem = _problem(problem, pattern, vector, a_major, dtype, c_dtype)
    v = problem.pattern.vector
    if dtype_of(problem.dtype).compute == "mma" and v % 8:     # no schedule could: say why, not what failed
        raise ShapeError(f"V={v}: {problem.dtype} multiplies on the tensor cores, whose 8-column mma tiles must each "
                         f"lie inside one vector of columns sharing kept rows, so V must be a multiple of 8; use "
                         f"vector=8, 16, 32, ... or dtype='f32' (the FFMA path) for V={v}")
    if arch is not None and arch not in ARCHS:
        from .errors import CompileError
        raise CompileError(f"arch={arch!r} is not a GPU nmgen makes kernels for; choose one of {', '.join(ARCHS)} "
                           f"(the GPU's: sm_90's wgmma kernels take the PTX target sm_90a by themselves)")
    gpu = current_device(device)
    arch = arch or (gpu.arch if gpu else "sm_90")
    dev = gpu if gpu is not None and gpu.arch == arch else for_arch(arch)   # a GPU of another arch: typical
    if B is not None:
        _check_b(problem, B)
    if schedule is None:
        schedule = choose_schedule(problem, dev, B)
    else:
        schedule = as_schedule(schedule, problem, dev)
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
def host_operands(B: NMMatrix, problem: Problem, s: Schedule):
    """B laid out for schedule `s` (ir.operands.Operands), cached on B: correct because an NMMatrix's
    arrays are read-only. The cached arrays are made read-only too, so no caller can change what
    the device copies are later made from."""
    cache = _operands.setdefault(B, {})
    key = ("host",) + layout_key(problem, s)
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
    key = ("device", device) + layout_key(problem, s)
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
    if _storage(problem.dtype) != B.dtype:      # compile has no A: name the kernel's dtype
        want = _storage(problem.dtype)
        raise ShapeError(f"the kernel is compiled for {problem.dtype} (A and B holding {DTYPES[want].storage}) but B "
                         f"holds {DTYPES[B.dtype].storage} values: convert the weights once "
                         f"(B = B.astype({want!r})) or compile for dtype={B.dtype!r}")


def _storage(dtype: str) -> str:
    return "f32" if dtype == "tf32" else dtype


def _check_dtypes(a_dtype: str, B: NMMatrix) -> None:
    """A and B must hold the same dtype (the kernels multiply one dtype): say how to convert."""
    if a_dtype != B.dtype:
        raise ShapeError(f"A holds {DTYPES[a_dtype].storage} but B holds {DTYPES[B.dtype].storage} values: the "
                         f"product runs in one dtype; convert the weights once (B = B.astype({a_dtype!r})) or A")


def compute_dtype(a_dtype: str, allow_tf32: bool, vector: int) -> str:
    """The problem dtype for an A of storage `a_dtype` times a B of vector length `vector`: float32
    runs on FFMA, or on the tensor cores in TF32 with allow_tf32. As torch's allow_tf32 (off by
    default) it is a permission, not a demand: a V the tensor cores cannot take (not a multiple of
    8: their 8-column tiles must lie in one vector) stays on FFMA. ShapeError for 16-bit operands
    with such a V (they have no FFMA path), as nmgen.torch's NMLinear raises."""
    if a_dtype in ("bf16", "f16") and vector % 8:     # before any GPU work: the call cannot run anywhere
        raise ShapeError(f"V={vector}: {a_dtype} multiplies on the tensor cores, whose 8-column mma tiles must "
                         f"each lie inside one vector of columns sharing kept rows, so V must be a multiple of 8; "
                         f"for V={vector} pass float32 A and B (the FFMA path)")
    return "tf32" if a_dtype == "f32" and allow_tf32 and vector % 8 == 0 else a_dtype


def _out_dtype(out, a_dtype: str) -> str:
    """C's dtype: `out`'s (f32, bf16 or f16) if given, else A's."""
    if out is None:
        return a_dtype
    from .runtime.arrays import device_view
    dv = device_view(out)
    name = storage_name(dv.dtype if dv is not None else getattr(out, "dtype", None) or np.float64)
    if name is None:
        raise ShapeError(f"out must hold float32, bfloat16 or float16, got {_describe(out)}")
    return name


# ---- C = A @ B -------------------------------------------------------------------------------------
def spmm(A, B: NMMatrix, out=None, schedule: Schedule | dict | str | None = None, *, kernel: Kernel | None = None,
         stream: int | None = None, allow_tf32: bool = False):
    """C = A @ B for a dense A (M x K) and an n:m sparse B (NMMatrix, K x N).

    A and B hold the same dtype: float32 (FFMA on the CUDA cores, or TF32 tensor cores with
    `allow_tf32=True`, off by default as in torch, and a permission: a V that is not a multiple of
    8 stays on FFMA), bfloat16 or float16 (tensor cores; numpy
    bfloat16 is ml_dtypes.bfloat16). Products accumulate in float32; C has `out`'s dtype, else A's.

    numpy (or any host) A: copied to the GPU, C returned as numpy (or written into `out`, which may
    be A itself or overlap it: A is uploaded before the kernel runs and `out` written only after).
    torch / cupy / __cuda_array_interface__ / DLPack CUDA A: used in place on its library's current
    stream (or `stream`); C is `out` or a new array of the same library; nothing is synchronised.
    A may be row-major or column-major (a transposed view such as `x.t()`): each has its kernels.
    A GPU A must be in the order of a given `kernel` (an A that is both, such as M = 1, fits either);
    a host A is copied in the kernel's order. A GPU `out` must not overlap A (ShapeError).
    An empty A (M = 0) gives an empty (0, N) C (or `out`) without compiling or launching anything.
    `schedule`: as `compile`'s (a Schedule, or a dict / JSON object of fields over the default).

    Raises ShapeError for shapes, dtypes, layouts or an `out` that do not fit, ScheduleError for a
    schedule that cannot run it."""
    if schedule is not None:
        schedule_fields(schedule)       # a bad schedule= is reported before A is read or a GPU looked for
    if not isinstance(B, NMMatrix):
        raise ShapeError(f"B must be an nmgen.NMMatrix (build one with nmgen.compress or NMMatrix.from_dense), "
                         f"got {type(B).__name__}")
    from .runtime.arrays import device_view
    dv = device_view(A)
    if dv is None:
        a_major = _host_a_major(A, kernel)
        return _spmm_host(_host_a(A, a_major), B, out, schedule, kernel, a_major, allow_tf32)
    return _spmm_device(dv, B, out, schedule, kernel, stream, allow_tf32)


EITHER = "either"     # an A stored both row- and column-major: _kernel_for picks the order


def a_major_of(row_major: bool, col_major: bool, want: str | None = None) -> str | None:
    """The A order ("row" or "col") to run for an A stored row-major and/or column-major without
    gaps, or None when it is neither. An A that is both (M = 1, or K = 1: a size-1 dimension's
    stride never matters) is read correctly by kernels of either order: `want` (the given kernel's
    order) if given, else EITHER (decided with the problem's dtype: _either_order)."""
    if row_major and col_major:
        return want or EITHER
    return "row" if row_major else "col" if col_major else None


def _either_order(M, B, schedule, device, dtype, c_dtype) -> str:
    """The order to run an A that is both row- and column-major: with a given schedule, the first
    order it can run (row, then col: a tensor-core "rows" or "gather" schedule needs a column-major
    16-bit A); without one, the order whose tuning record is faster (`nmgen search --a-major col`
    tunes M = 1 decode shapes too); row where nothing says otherwise."""
    from .ir.errors import ScheduleError
    orders = {o: Problem(M, B.N, B.K, B.pattern, dtype, o, c_dtype) for o in ("row", "col")}
    if schedule is not None:
        try:
            compile(orders["row"], schedule=schedule, B=B, device=device)
            return "row"
        except ScheduleError as row_error:
            try:
                compile(orders["col"], schedule=schedule, B=B, device=device)
                return "col"
            except ScheduleError:
                raise row_error from None
    gpu = current_device(device)
    if gpu is None:
        return "row"
    from .search.choose import recorded_median
    us = {o: recorded_median(p, gpu) for o, p in orders.items()}
    return "col" if us["col"] is not None and (us["row"] is None or us["col"] < us["row"]) else "row"


def _host_a(A, a_major: str) -> np.ndarray:
    """A as a (M, K) numpy matrix of its dtype (float32, bfloat16 or float16; other floats become
    float32) stored in order `a_major` (A itself where it already is; EITHER: in both)."""
    if a_major in ("row", EITHER):
        return host_matrix(A, "A")
    if isinstance(A, np.ndarray) and A.ndim == 2:   # through the transpose: an F-ordered A is not copied
        return host_matrix(A.T, "A").T
    return np.asfortranarray(host_matrix(A, "A"))


def _host_a_major(A, kernel: Kernel | None) -> str:
    """A host A is copied to the GPU anyway: take the given kernel's order; else keep A's own
    (EITHER when it is both), row-major for anything else."""
    if kernel is not None:
        return kernel.problem.a_major
    if isinstance(A, np.ndarray) and A.ndim == 2:
        return a_major_of(A.flags.c_contiguous, A.flags.f_contiguous) or "row"
    return "row"


def _kernel_for(M, B, schedule, kernel, device, a_major="row", dtype="f32", c_dtype=None) -> Kernel:
    if a_major == EITHER:
        a_major = _either_order(M, B, schedule, device, dtype, c_dtype)
    problem = Problem(M, B.N, B.K, B.pattern, dtype, a_major, c_dtype)
    if kernel is not None:
        if kernel.problem != problem:
            if dataclasses.replace(kernel.problem, c_dtype=problem.c_dtype) == problem:   # only C's dtype
                have, want = DTYPES[kernel.problem.c_dtype].storage, DTYPES[problem.c_dtype].storage
                raise ShapeError(f"the kernel writes a {have} C but this call asks for {want} (out's dtype, else "
                                 f"A's): pass an out of {have}, or compile the kernel with "
                                 f"c_dtype={problem.c_dtype!r}")
            raise ShapeError(f"the kernel was compiled for {kernel.problem}, not {problem}: compile one for "
                             f"this A and B, or call spmm without kernel= to have it compiled")
        if kernel.schedule.a_load == "rows":  # its row lists must be those of this B
            return compile(problem, schedule=kernel.schedule, arch=kernel.gpu_arch, B=B, device=device)
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


def _spmm_host(A: np.ndarray, B: NMMatrix, out, schedule, kernel, a_major, allow_tf32=False):
    from .runtime import driver
    from .runtime.memory import DeviceBuffer, download, synchronize
    M, K = A.shape
    _check_a(M, K, B)
    a_dtype = storage_name(A.dtype)
    _check_dtypes(a_dtype, B)
    c_dtype = _out_dtype(out, a_dtype)
    c_np = DTYPES[c_dtype].storage
    why = out is not None and (["it is not a numpy array"] if not isinstance(out, np.ndarray) else _out_problems(
        out.shape, (M, B.N), out.dtype, c_np, out.flags.c_contiguous, out.strides, out.flags.writeable))
    if why:
        raise ShapeError(f"out must be a writable C-contiguous {c_np} numpy array of shape ({M}, {B.N}), got "
                         f"{_describe(out)}: {'; '.join(why)}")
    compute = compute_dtype(a_dtype, allow_tf32, B.pattern.vector)   # a V the dtype cannot take: before "no GPU"
    if M == 0:   # an empty batch (an MoE expert given no tokens): nothing to compute, no GPU needed
        _check_empty_batch(kernel, B)
        return out if out is not None else np.empty((0, B.N), c_np)
    driver.init()
    k = _kernel_for(M, B, schedule, kernel, 0, a_major, compute, c_dtype)
    ops = device_operands(B, k.problem, k.schedule, 0)
    a = DeviceBuffer.from_array(kernel_a_layout(A, k.problem), 0)
    c = DeviceBuffer(M * B.N * c_np.itemsize, 0)
    poison(c.ptr, M * B.N, c_dtype)        # an element the kernel never writes comes back NaN
    k.launch(a.ptr, ops, c.ptr, 0, 0)
    synchronize(0, f"kernel {k.name}")
    result = out if out is not None else np.empty((M, B.N), c_np)
    return download(result, c.ptr)


def kernel_a_layout(A: np.ndarray, problem: Problem) -> np.ndarray:
    """A (M x K, in `problem`'s order already) as the kernel reads it: (K, M) rows for a column-major
    A, rows of its leading dimension (16-bit rows of odd length get one element of padding)."""
    X = A.T if problem.a_major == "col" else A
    lda = a_leading_dim(problem)
    if lda == X.shape[1]:
        return X
    padded = np.zeros((X.shape[0], lda), X.dtype)
    padded[:, :X.shape[1]] = X
    return padded


# NaN of each C dtype: what an unwritten element of C reads as
_NAN_BITS = {"f32": 0x7FC00000, "bf16": 0x7FC0, "f16": 0x7E00}


def poison(ptr: int, count: int, c_dtype: str, stream: int = 0) -> None:
    from .runtime.memory import memset16, memset32
    if c_dtype == "f32":
        memset32(ptr, count, stream, _NAN_BITS["f32"])
    else:
        memset16(ptr, count, _NAN_BITS[c_dtype], stream)


def _out_problems(shape, want_shape, dtype, want_dtype, c_contiguous: bool, strides, writable: bool = True) -> list:
    """Which of `out`'s requirements fail (shape, dtype, C order, writable), each with what to do."""
    why = []
    if tuple(shape) != tuple(want_shape):
        why.append(f"its shape is {tuple(shape)}, not {tuple(want_shape)}")
    if np.dtype(dtype) != np.dtype(want_dtype):
        why.append(f"it holds {dtype}, not {want_dtype}")
    if not c_contiguous:
        es = np.dtype(dtype).itemsize
        dense = f", row-major without gaps is {(shape[1] * es, es)}" if len(shape) == 2 else ""
        why.append(f"it is not C-contiguous: its strides are {tuple(strides)} bytes{dense}; pass a row-major array "
                   f"(a new one) or none")
    if not writable:
        why.append("it is read-only")
    return why


def _describe(x) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    return f"{type(x).__name__} {dtype} {tuple(shape)}" if shape is not None else type(x).__name__


def _device_out(out, dv, N: int, c_dtype: str):
    """`out` checked against A's (M, N) product of dtype `c_dtype` (a new array of A's library when None)."""
    from .runtime.arrays import device_view, empty_like_owner
    M = dv.shape[0]
    if out is None:
        return empty_like_owner(dv.owner, (M, N), c_dtype)
    ov = device_view(out)
    why = ["it is not on a GPU (A is)"] if ov is None else _out_problems(
        ov.shape, (M, N), ov.dtype, DTYPES[c_dtype].storage, ov.c_contiguous, ov.strides)
    if why:
        raise ShapeError(f"out must be a C-contiguous {DTYPES[c_dtype].storage} GPU array of shape ({M}, {N}), "
                         f"got {_describe(out)}: {'; '.join(why)}")
    if ov.device != dv.device:
        raise ShapeError(f"A is on GPU {dv.device} but out is on GPU {ov.device}")
    return out


def _spmm_device(dv, B: NMMatrix, out, schedule, kernel, stream, allow_tf32=False):
    from .runtime.arrays import byte_range, device_view, overlaps
    from .runtime.memory import DeviceBuffer
    from .runtime.driver import check, driver, use_device
    if len(dv.shape) != 2:
        raise ShapeError(f"A must be a 2-D matrix, got shape {dv.shape}")
    M, K = dv.shape
    _check_a(M, K, B)
    a_dtype = storage_name(dv.dtype)
    if a_dtype is None:
        raise ShapeError(f"A has dtype {dv.dtype}; nmgen computes with float32, bfloat16 or float16: convert it "
                         f"(e.g. A.float() or A.bfloat16())")
    _check_dtypes(a_dtype, B)
    c_dtype = _out_dtype(out, a_dtype)
    es = dv.dtype.itemsize
    compute = compute_dtype(a_dtype, allow_tf32, B.pattern.vector)   # an empty batch too: as a full one
    if M == 0:   # an empty batch: an empty C of A's library, nothing launched
        _check_empty_batch(kernel, B)
        return _device_out(out, dv, B.N, c_dtype)
    # column-major: a transposed view, its K rows contiguous, used as they are
    a_major = a_major_of(dv.c_contiguous, dv.f_contiguous, kernel.problem.a_major if kernel else None)
    if a_major is None:
        raise ShapeError(f"A must be row-major or column-major without gaps (shape {dv.shape}, strides "
                         f"{dv.strides} bytes); call .contiguous() (torch) or cupy.ascontiguousarray")
    if dv.ptr % es:
        raise ShapeError(f"A's data pointer is not {es}-byte aligned")
    out = _device_out(out, dv, B.N, c_dtype)
    ov = device_view(out)
    if overlaps(dv, ov):   # the kernel reads A while it writes C (and split-K zeroes C before it starts)
        a0, a1 = byte_range(dv.ptr, dv.shape, dv.strides, es)
        o0, o1 = byte_range(ov.ptr, ov.shape, ov.strides, ov.dtype.itemsize)
        raise ShapeError(f"out overlaps A: A {dv.shape} lies in bytes [{a0:#x}, {a1:#x}) and out {ov.shape} in "
                         f"[{o0:#x}, {o1:#x}); pass a separate output array (or none: spmm allocates one)")
    use_device(dv.device)
    stream = dv.stream if stream is None else int(stream)
    k = _kernel_for(M, B, schedule, kernel, dv.device, a_major, compute, c_dtype)
    a_ptr, temporaries = dv.ptr, []
    rows, extent = (K, M) if k.problem.a_major == "col" else (M, K)
    lda = a_leading_dim(k.problem)
    if a_ptr % k.ir.a_alignment or lda != extent:
        # the kernel copies A's rows in 16-byte (or narrower) vectors from rows of lda elements: copy A
        # into an aligned buffer of that pitch (16-bit rows of odd length get a padding element)
        temporaries.append(DeviceBuffer(rows * lda * es, dv.device))
        _copy_rows(temporaries[-1].ptr, lda * es, a_ptr, extent * es, extent * es, rows, stream)
        a_ptr = temporaries[-1].ptr
    ops = device_operands(B, k.problem, k.schedule, dv.device)
    c_bytes = M * B.N * ov.dtype.itemsize
    if ov.ptr % k.ir.c_alignment:   # vector stores need aligned rows: go through an aligned buffer
        temporaries.append(DeviceBuffer(c_bytes, dv.device))
        k.launch(a_ptr, ops, temporaries[-1].ptr, stream, dv.device)
        check(driver().cuMemcpyDtoDAsync(ov.ptr, temporaries[-1].ptr, c_bytes, stream), "cuMemcpyDtoDAsync")
    else:
        k.launch(a_ptr, ops, ov.ptr, stream, dv.device)
    if temporaries:   # they are freed on return: the work queued on the stream must finish first
        check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize")
    return out


def _copy_rows(dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int, stream: int) -> None:
    """Enqueue a device-to-device copy of `rows` rows of `width` bytes between pitched buffers."""
    from .runtime.driver import check, driver
    drv = driver()
    cp = drv.CUDA_MEMCPY2D()
    cp.srcMemoryType = cp.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
    cp.srcDevice, cp.srcPitch = src, src_pitch
    cp.dstDevice, cp.dstPitch = dst, dst_pitch
    cp.WidthInBytes, cp.Height = width, rows
    check(drv.cuMemcpy2DAsync(cp, stream), "cuMemcpy2DAsync (A into the kernel's row pitch)")


__all__ = ["CudaUnavailable", "Kernel", "compile", "current_device", "default_schedule", "device_operands", "spmm"]
