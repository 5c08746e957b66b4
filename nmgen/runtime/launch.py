"""Launching loaded kernels with little host work: the CUDA driver called through ctypes, each
kernel's argument block packed once.

cuda-python's cuLaunchKernel packs its arguments anew on every call (a tuple of values and a tuple
of types). A `PackedLaunch` builds the `void **kernelParams` array once; a call patches the pointer
arguments that change (A and C) in place and calls libcuda's cuLaunchKernel with integers only
(about 1 us of host time). Functions return the CUresult as an int (0 = CUDA_SUCCESS) instead of
raising, so that the caller decides what to do with an error (`PreparedSpMM` retries once in the
right context, then raises CudaError naming it).

Nothing here runs at import; `libcuda()` loads the driver library on first use.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading

from ..errors import CudaError, CudaUnavailable

_lib = None
_lock = threading.Lock()

CUDA_SUCCESS = 0
# Errors that mean "not the context the function or stream belongs to": retried in that context
CONTEXT_ERRORS = frozenset({201, 400, 709})   # INVALID_CONTEXT, INVALID_HANDLE, CONTEXT_IS_DESTROYED


def _library_name() -> str:
    return "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"


def libcuda():
    """The CUDA driver library (ctypes), with the signatures of the calls used here. The driver is
    initialised through cuda-python first, so a machine without one raises CudaUnavailable with the
    same message as everywhere else in nmgen."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            from .driver import init
            init()
            _lib = bind(_open())
    return _lib


def _open():
    """The driver library cuda-python loaded: by its name, else by the path this process mapped it
    from (a driver outside the loader's search path, found by cuda-python's own search)."""
    try:
        return ctypes.CDLL(_library_name())
    except OSError as e:
        first = e
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libcuda.so" in line and line.split()[-1].startswith("/")}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise CudaUnavailable(f"cannot load the CUDA driver library {_library_name()} for nmgen's launches: {first}")


def bind(lib):
    """Set the argument and result types of the driver calls used here on `lib` (the CUDA driver,
    or a stand-in with the same functions in tests) and return it."""
    u, p = ctypes.c_uint, ctypes.c_void_p
    lib.cuLaunchKernel.argtypes = [p, u, u, u, u, u, u, u, p, p, p]
    lib.cuLaunchKernel.restype = ctypes.c_int
    lib.cuMemsetD32Async.argtypes = [ctypes.c_uint64, u, ctypes.c_size_t, p]
    lib.cuMemsetD32Async.restype = ctypes.c_int
    return lib


_STREAMS: dict = {}      # stream handle (int) -> its ctypes argument, made once (ctypes converts ints per call)


def stream_arg(stream: int) -> ctypes.c_void_p:
    arg = _STREAMS.get(stream)
    if arg is None:
        arg = _STREAMS[stream] = ctypes.c_void_p(stream)
    return arg


class PackedLaunch:
    """One kernel launch with its pointer (64-bit) arguments packed once.

    `function` is the CUfunction's handle (an int), `grid` (x, y, z) blocks, `block` threads (x),
    `smem` dynamic shared memory in bytes, `args` the initial argument values (device addresses or
    64-bit integers, in the kernel's parameter order). `set(i, value)` replaces argument i;
    calling the object with a stream handle (int, 0 = legacy default stream) enqueues the launch
    and returns the CUresult (int). Not thread-safe by itself: the owner serialises set + call.
    The driver call's own arguments are ctypes objects made here, once: converting eleven Python
    ints costs about a microsecond per call."""

    __slots__ = ("slots", "_pointers", "_params", "_launch", "nargs")

    def __init__(self, function: int, grid, block: int, smem: int, args):
        n = len(args)
        self.nargs = n
        self.slots = (ctypes.c_uint64 * n)(*[int(a) for a in args])
        base, size = ctypes.addressof(self.slots), ctypes.sizeof(ctypes.c_uint64)
        self._pointers = (ctypes.c_void_p * n)(*[base + i * size for i in range(n)])
        self._params = ctypes.c_void_p(ctypes.addressof(self._pointers))
        u = ctypes.c_uint
        gx, gy, gz = (int(g) for g in grid)
        self._launch = functools.partial(libcuda().cuLaunchKernel, ctypes.c_void_p(int(function)), u(gx), u(gy), u(gz),
                                         u(int(block)), u(1), u(1), u(int(smem)))

    def set(self, i: int, value: int) -> None:
        self.slots[i] = value

    def __call__(self, stream: int) -> int:
        return self._launch(stream_arg(stream), self._params, None)


def memset32(ptr: int, count: int, stream: int, value: int = 0) -> int:
    """Enqueue `count` 32-bit stores of `value` at device address `ptr` on `stream`; the CUresult."""
    return libcuda().cuMemsetD32Async(ptr, value, count, stream_arg(stream))


def error_name(code: int) -> str:
    """CUDA_ERROR_... name and description of a CUresult code."""
    from .driver import driver
    drv = driver()
    try:
        err = drv.CUresult(code)
        name, desc = drv.cuGetErrorName(err)[1], drv.cuGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        desc = desc.decode() if isinstance(desc, bytes) else ""
        return f"{name} ({desc})"
    except Exception:  # noqa: BLE001 - an unknown code still gets reported
        return f"CUresult {code}"


def raise_for(code: int, what: str) -> None:
    """Raise CudaError for a failed CUresult `code`, naming `what` was being done."""
    if code != CUDA_SUCCESS:
        desc = error_name(code)
        raise CudaError(f"{what} failed: {desc}", desc.split(" ", 1)[0])
