"""Launching loaded kernels with little host work: each kernel's argument block packed once.

cuda-python's cuLaunchKernel packs its arguments anew on every call when they come as a tuple of
values and a tuple of types. A `PackedLaunch` builds the `void **kernelParams` array once (ctypes
memory); a call patches the pointer arguments that change (A and C) in place and passes the
array's address, an int, with the function and stream handles made once. On the H200 machine
(2026-11-30, scripts/launch_call_cost.py) that call cost 5.8-6.0 us of host time, the same call
through ctypes with its argument types declared (nmgen's launch before) 6.3-6.6 us; the rest is
the driver's own.

Functions here return the CUresult (an int; 0 = CUDA_SUCCESS) instead of raising, so that the
caller decides what to do with an error (`PreparedSpMM` retries once in the right context, then
raises CudaError naming it).
"""
from __future__ import annotations

import ctypes

from ..errors import CudaError

CUDA_SUCCESS = 0
# Errors that mean "not the context the function or stream belongs to": retried in that context
CONTEXT_ERRORS = frozenset({201, 400, 709})   # INVALID_CONTEXT, INVALID_HANDLE, CONTEXT_IS_DESTROYED

_drv = None      # the driver calls: cuda.bindings.driver (tests put an emulation in its place)


def calls():
    """The module whose cuLaunchKernel / cuMemsetD32Async / CUfunction / CUstream are used (cuda-python's
    driver bindings, after the driver is initialised: a machine without one raises CudaUnavailable)."""
    global _drv
    if _drv is None:
        from .driver import driver, init
        init()
        _drv = driver()
    return _drv


_STREAMS: dict = {}      # stream handle (int) -> its CUstream, made once (cuda-python wraps an int per call)


def stream_handle(stream: int):
    h = _STREAMS.get(stream)
    if h is None:
        h = _STREAMS[stream] = calls().CUstream(stream)
    return h


class PackedLaunch:
    """One kernel launch with its pointer (64-bit) arguments packed once.

    `function` is the CUfunction's handle (an int), `grid` (x, y, z) blocks, `block` threads (x),
    `smem` dynamic shared memory in bytes, `args` the initial argument values (device addresses or
    64-bit integers, in the kernel's parameter order). `slots[i] = value` replaces argument i;
    calling the object with a stream handle (int, 0 = legacy default stream) enqueues the launch
    and returns the CUresult (int). Not thread-safe by itself: the owner serialises set + call."""

    __slots__ = ("slots", "_pointers", "_params", "_launch", "_shape")

    def __init__(self, function: int, grid, block: int, smem: int, args):
        n = len(args)
        self.slots = (ctypes.c_uint64 * n)(*[int(a) for a in args])
        base, size = ctypes.addressof(self.slots), ctypes.sizeof(ctypes.c_uint64)
        self._pointers = (ctypes.c_void_p * n)(*[base + i * size for i in range(n)])
        self._params = ctypes.addressof(self._pointers)
        drv = calls()
        self._launch = drv.cuLaunchKernel
        gx, gy, gz = (int(g) for g in grid)
        self._shape = (drv.CUfunction(int(function)), gx, gy, gz, int(block), 1, 1, int(smem))

    def __call__(self, stream: int) -> int:
        f, gx, gy, gz, bx, by, bz, smem = self._shape
        return self._launch(f, gx, gy, gz, bx, by, bz, smem, stream_handle(stream), self._params, 0)[0]


def memset32(ptr: int, count: int, stream: int, value: int = 0) -> int:
    """Enqueue `count` 32-bit stores of `value` at device address `ptr` on `stream`; the CUresult."""
    return calls().cuMemsetD32Async(ptr, value, count, stream_handle(stream))[0]


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
