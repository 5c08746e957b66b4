"""The torch layer on the CPU: nmgen.torch's launch path down to cuLaunchKernel, with CPU tensors
standing in for CUDA ones and the kernels run by the IR interpreter.

What is real: nmgen.torch.kernels (the weight cache, preparing per M, the checks, the A copies,
the workspaces), nmgen.prepared.PreparedSpMM (the packed argument block, the split-K memset and
the split-K workspace), and ctypes' marshalling of every driver call (the stand-in library's
functions are ctypes callbacks with the driver's C signatures, bound by launch.bind). What is
emulated: the driver library (its calls read and write the process's own memory at the addresses
they get, which are CPU tensors' data pointers), kernel loading, and torch's stream and capture
queries. So a CPU test sees the bytes the GPU would: wrong argument order, a missing memset, a
workspace not zeroed, or a stale cached kernel give a wrong product here too.

Use `install(monkeypatch)` (after tests/fake_gpu.install, which fakes the driver's device queries).
"""
from __future__ import annotations

import ctypes
import types

import numpy as np

from nmgen.ir import interpret
from nmgen.ir.dtypes import DTYPES

_NP = {"f32": np.float32, "bf16": DTYPES["bf16"].storage, "f16": np.float16, "u8": np.uint8, "u16": np.uint16,
       "u32": np.uint32, "i32": np.int32}


def host(ptr: int, nbytes: int) -> np.ndarray:
    """A writable uint8 view of the process's memory [ptr, ptr + nbytes)."""
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), np.uint8)


def array(ptr: int, shape, dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    return host(ptr, int(np.prod(shape)) * dt.itemsize).view(dt).reshape(shape)


class Emulator:
    """The loaded functions (by handle) and the record of what was enqueued."""

    def __init__(self):
        self.functions: dict[int, object] = {}
        self.calls: list[tuple] = []         # ("launch", name, stream) / ("memset", ptr, count, stream)
        self.next = 0x1000

    def register(self, fn) -> int:
        self.next += 0x10
        self.functions[self.next] = fn
        return self.next

    def kernel_launches(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "launch"]


class Kernel:
    """A compiled nmgen kernel, run by the interpreter on the memory its arguments address."""

    def __init__(self, ir):
        self.ir = ir
        self.name = ir.name

    def __call__(self, args, stream):
        ir = self.ir
        arrays, c_ptr = {}, None
        for p, ptr in zip(ir.params, args):
            if p.name == "C":
                c_ptr = ptr
            elif p.name in ("Work", "Counts"):      # split-K scratch: read and left (zeroed) in place
                arrays[p.name] = array(ptr, (p.rows, p.cols), _NP[p.dtype])
            else:
                arrays[p.name] = array(ptr, (p.rows, p.cols), _NP[p.dtype]).copy()
        C = interpret(ir, arrays)
        out = array(c_ptr, (ir.M, ir.N), _NP[ir.param("C").dtype])
        if ir.zero_output:
            out += C.astype(out.dtype)      # atomic adds onto the zeroed target
        else:
            np.copyto(out, C.astype(out.dtype), where=~np.isnan(C.astype(np.float32)))


def driver_library(emu: Emulator):
    """Stand-ins for libcuda's cuLaunchKernel and cuMemsetD32Async: ctypes callbacks of the C
    signatures, so the arguments pass through ctypes' conversions as they would to the driver."""
    u, p = ctypes.c_uint, ctypes.c_void_p
    launch_t = ctypes.CFUNCTYPE(ctypes.c_int, p, u, u, u, u, u, u, u, p, p, p)
    memset_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, u, ctypes.c_size_t, p)

    def launch(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        fn = emu.functions.get(f)
        if fn is None or extra is not None or params is None:
            return 400                                      # CUDA_ERROR_INVALID_HANDLE
        n = len(fn.ir.params)
        slots = ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))
        args = [ctypes.c_uint64.from_address(slots[i]).value for i in range(n)]
        emu.calls.append(("launch", fn.name, stream or 0))
        fn(args, stream)
        return 0

    def memset(ptr, value, count, stream):
        emu.calls.append(("memset", ptr, count, stream or 0))
        array(ptr, (count,), np.uint32)[:] = value
        return 0

    lib = types.SimpleNamespace(cuLaunchKernel=launch_t(launch), cuMemsetD32Async=memset_t(memset))
    lib._keep = (launch, memset)
    return lib


def install(monkeypatch) -> Emulator:
    """Run nmgen.torch on CPU tensors (the emulated GPU is "device -1", torch's index of the CPU)."""
    import torch

    import nmgen.api as api
    from nmgen.runtime import launch, module
    import nmgen.torch.kernels as kernels

    emu = Emulator()
    loaded: dict = {}

    def kernel_loaded(self, device=0):
        h = loaded.get(id(self))
        if h is None:
            h = loaded[id(self)] = emu.register(Kernel(self.ir))
        return types.SimpleNamespace(function=h, smem=self.ir.smem_bytes)

    def load(image, name, smem, device=0):
        raise AssertionError(f"the emulated GPU loads kernels through Kernel.loaded, not {name}")

    def upload(a, device):
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy())

    monkeypatch.setattr(api.Kernel, "loaded", kernel_loaded)
    monkeypatch.setattr(module, "load", load)
    monkeypatch.setattr(launch, "_lib", launch.bind(driver_library(emu)))
    monkeypatch.setattr(kernels, "DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(kernels, "current_stream", lambda device: 0)
    monkeypatch.setattr(kernels, "capturing", lambda: False)
    monkeypatch.setattr(kernels, "_upload", upload)
    monkeypatch.setattr(kernels, "_entries", {})
    monkeypatch.setattr(kernels, "_workspaces", {})
    return emu
