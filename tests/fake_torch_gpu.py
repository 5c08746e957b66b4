"""The torch layer on the CPU: nmgen.torch's launch path down to cuLaunchKernel, with CPU tensors
standing in for CUDA ones and the kernels run by the IR interpreter.

What is real: nmgen.torch.kernels (the weight cache, preparing per M, the checks, the A copies,
the workspaces), nmgen.prepared.PreparedSpMM and nmgen.runtime.launch (the packed argument block,
the split-K memset and the split-K workspace, the driver calls' arguments: the stand-ins take
cuda-python's types and read the parameter block through its address). What is emulated: the
driver's calls (they read and write the process's own memory at the addresses they get, which
are CPU tensors' data pointers), kernel loading, and torch's stream and capture
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
    """Stand-ins for cuda-python's cuLaunchKernel and cuMemsetD32Async with their signatures and
    argument types (the real CUfunction / CUstream wrappers, the parameter block as the int address
    of a void* array, results as (CUresult,) tuples), reading and writing the process's memory."""
    from cuda.bindings import driver as real

    def launch(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        if not isinstance(f, real.CUfunction) or not isinstance(stream, real.CUstream):
            raise TypeError(f"cuLaunchKernel takes a CUfunction and a CUstream, got {type(f)} and {type(stream)}")
        fn = emu.functions.get(int(f))
        if fn is None or extra not in (0, None) or not isinstance(params, int) or not params:
            return (real.CUresult(400),)                    # CUDA_ERROR_INVALID_HANDLE
        n = len(fn.ir.params)
        slots = ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))
        args = [ctypes.c_uint64.from_address(slots[i]).value for i in range(n)]
        emu.calls.append(("launch", fn.name, int(stream)))
        fn(args, int(stream))
        return (real.CUresult(0),)

    def memset(ptr, value, count, stream):
        if not isinstance(stream, real.CUstream):
            raise TypeError(f"cuMemsetD32Async takes a CUstream, got {type(stream)}")
        emu.calls.append(("memset", ptr, count, int(stream)))
        array(ptr, (count,), np.uint32)[:] = value
        return (real.CUresult(0),)

    return types.SimpleNamespace(cuLaunchKernel=launch, cuMemsetD32Async=memset, CUfunction=real.CUfunction,
                                 CUstream=real.CUstream)


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
    monkeypatch.setattr(launch, "_drv", driver_library(emu))
    monkeypatch.setattr(launch, "_STREAMS", {})
    monkeypatch.setattr(kernels, "DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(kernels, "current_stream", lambda device: 0)
    monkeypatch.setattr(kernels, "capturing", lambda: False)
    monkeypatch.setattr(kernels, "_upload", upload)
    monkeypatch.setattr(kernels, "_entries", {})
    monkeypatch.setattr(kernels, "_workspaces", {})
    return emu
