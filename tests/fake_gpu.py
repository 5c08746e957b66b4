"""A GPU on the CPU, for testing the API's host-side logic without one: `spmm`'s numpy and
in-place paths, its caches and checks, run unchanged down to the CUDA calls, which this replaces.

Memory is numpy bytes at fake 256-byte-aligned device addresses; a kernel launch runs the kernel's
IR in the CPU interpreter on the bytes its pointer arguments address (so a launch that reads an A
the memset of C wiped sees the wiped A, as the GPU would). `FakeCudaArray` is a device array with
__cuda_array_interface__ (the protocol cupy and numba use), with views, transposes and offsets.

Use the `fake_gpu` fixture of the test module that imports this; it patches the runtime modules
and gives the API fresh kernel and operand caches, so nothing made here reaches a real GPU's tests.
"""
from __future__ import annotations

import weakref

import numpy as np

from nmgen.ir import for_arch, interpret

from nmgen.ir.dtypes import DTYPES

_DTYPES = {"f32": np.float32, "bf16": DTYPES["bf16"].storage, "f16": np.float16, "u8": np.uint8,
           "u16": np.uint16, "u32": np.uint32, "i32": np.int32}


class FakeMemory:
    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.next = 1 << 32
        self.launches: list[str] = []     # kernel names, in launch order
        self.memsets = 0

    def alloc(self, nbytes: int) -> int:
        ptr = self.next
        self.next += (max(nbytes, 1) + 511) // 256 * 256
        self.blocks[ptr] = np.full(max(nbytes, 1), 0xA5, np.uint8)   # as cuMemAlloc: not zeroed
        return ptr

    def bytes(self, ptr: int, nbytes: int) -> np.ndarray:
        """A writable uint8 view of [ptr, ptr + nbytes) (inside one allocation)."""
        for base, b in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + len(b):
                return b[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"fake GPU: access of {nbytes} bytes at {ptr:#x} outside every allocation")

    def array(self, ptr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        return self.bytes(ptr, int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)

    def strided(self, ptr: int, shape, strides, dtype) -> np.ndarray:
        """What a device array with these byte strides holds (a copy)."""
        dtype = np.dtype(dtype)
        if 0 in shape:
            return np.empty(shape, dtype)
        lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
        hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + dtype.itemsize
        return _gather(self.bytes(ptr + lo, hi - lo), -lo, shape, strides, dtype)


def _gather(raw: np.ndarray, start: int, shape, strides, dtype) -> np.ndarray:
    return np.ndarray(shape, dtype, buffer=raw, offset=start, strides=strides).copy()


class FakeCudaArray:
    """A float32 device array in fake memory, seen through __cuda_array_interface__."""

    def __init__(self, mem: FakeMemory, ptr: int, shape, strides, dtype=np.float32, base=None):
        self.mem, self.ptr, self.shape, self.strides = mem, int(ptr), tuple(shape), tuple(strides)
        self.dtype = np.dtype(dtype)
        self.base = base           # keeps the allocation's owner alive, like a view does

    @classmethod
    def from_numpy(cls, mem: FakeMemory, a: np.ndarray, pad_bytes: int = 0) -> "FakeCudaArray":
        """A C-ordered device copy of `a`, starting `pad_bytes` into its allocation."""
        a = np.ascontiguousarray(a)
        ptr = mem.alloc(a.nbytes + pad_bytes) + pad_bytes
        mem.bytes(ptr, a.nbytes)[:] = a.reshape(-1).view(np.uint8)
        return cls(mem, ptr, a.shape, a.strides, a.dtype)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": self.strides, "version": 3, "stream": None}

    @property
    def T(self) -> "FakeCudaArray":
        return FakeCudaArray(self.mem, self.ptr, self.shape[::-1], self.strides[::-1], self.dtype, self)

    def view(self, offset_elems: int, shape, strides_elems) -> "FakeCudaArray":
        """Another view of the same memory (offset and strides in elements, as torch's as_strided)."""
        it = self.dtype.itemsize
        return FakeCudaArray(self.mem, self.ptr + offset_elems * it, shape, tuple(s * it for s in strides_elems),
                             self.dtype, self)

    def numpy(self) -> np.ndarray:
        return self.mem.strided(self.ptr, self.shape, self.strides, self.dtype)


class FakeBuffer:
    """runtime.memory.DeviceBuffer on fake memory."""
    mem: FakeMemory = None

    def __init__(self, nbytes: int, device: int = 0):
        self.nbytes, self.device = max(int(nbytes), 1), device
        self.ptr = self.handle = self.mem.alloc(self.nbytes)

    @classmethod
    def from_array(cls, a: np.ndarray, device: int = 0, stream: int = 0) -> "FakeBuffer":
        a = np.ascontiguousarray(a)
        buf = cls(a.nbytes, device)
        buf.upload(a, stream)
        return buf

    def upload(self, a: np.ndarray, stream: int = 0) -> None:
        a = np.ascontiguousarray(a)
        self.mem.bytes(self.ptr, a.nbytes)[:] = a.reshape(-1).view(np.uint8)


class FakeLoaded:
    """A loaded kernel: its launch interprets the kernel's IR on the memory its arguments address."""

    def __init__(self, mem: FakeMemory, ir):
        self.mem, self.ir = mem, ir

    def launch(self, grid, block, args, stream=0):
        ir, mem = self.ir, self.mem
        assert len(args) == len(ir.params), (args, ir.params)
        arrays, c_ptr = {}, None
        for p, ptr in zip(ir.params, args):
            if p.name == "C":
                c_ptr = ptr
            elif p.name in ("Work", "Counts"):      # split-K scratch: read and left (zeroed) in place
                arrays[p.name] = mem.array(ptr, (p.rows, p.cols), _DTYPES[p.dtype])
            else:
                arrays[p.name] = mem.array(ptr, (p.rows, p.cols), _DTYPES[p.dtype]).copy()
        mem.launches.append(ir.name)
        C = interpret(ir, arrays)   # what the kernel itself writes
        out = mem.array(c_ptr, (ir.M, ir.N), _DTYPES[ir.param("C").dtype])
        if ir.zero_output:
            out += C              # atomic adds onto the zeroed C
        else:
            np.copyto(out, C, where=~np.isnan(C.astype(np.float32)))   # only what the kernel writes


class _Driver:
    """The few cuda.bindings.driver calls the API makes outside runtime.memory."""

    def __init__(self, mem: FakeMemory):
        self.mem = mem

    def cuMemcpyDtoDAsync(self, dst, src, nbytes, stream):
        self.mem.bytes(int(dst), nbytes)[:] = self.mem.bytes(int(src), nbytes).copy()
        return (0,)

    def cuStreamSynchronize(self, stream):
        return (0,)

    class CUDA_MEMCPY2D:                      # the fields the API sets
        pass

    class CUmemorytype:
        CU_MEMORYTYPE_DEVICE = 2

    def cuMemcpy2DAsync(self, cp, stream):
        for r in range(cp.Height):
            self.mem.bytes(int(cp.dstDevice) + r * cp.dstPitch, cp.WidthInBytes)[:] = \
                self.mem.bytes(int(cp.srcDevice) + r * cp.srcPitch, cp.WidthInBytes).copy()
        return (0,)


def install(monkeypatch) -> FakeMemory:
    """Patch the runtime so the API runs on a fake H100; returns its memory."""
    import nmgen.api as api
    from nmgen.runtime import arrays, driver, memory, module

    mem = FakeMemory()
    FakeBuffer.mem = mem
    kernels: dict = {}

    def fake_load(image, name, smem, device=0):
        for k in kernels.values():
            if image in (k.ptx, k.cubin):
                return FakeLoaded(mem, k.ir)
        raise AssertionError(f"fake GPU: no compiled kernel has this image ({name})")

    def download(dst, ptr, stream=0):
        assert dst.flags.c_contiguous and dst.flags.writeable
        dst.reshape(-1).view(np.uint8)[:] = mem.bytes(ptr, dst.nbytes)
        return dst

    def memset32(ptr, count, stream=0, value=0):
        mem.memsets += 1
        mem.bytes(ptr, 4 * count).view(np.uint32)[:] = value

    def memset16(ptr, count, value, stream=0):
        mem.memsets += 1
        mem.bytes(ptr, 2 * count).view(np.uint16)[:] = value

    def empty_like_owner(owner, shape, dtype="f32"):
        from nmgen.ir.dtypes import DTYPES
        return FakeCudaArray.from_numpy(mem, np.empty(shape, DTYPES[dtype].storage))

    drv = _Driver(mem)
    monkeypatch.setattr(api, "_kernels", kernels)
    monkeypatch.setattr(api, "_operands", weakref.WeakKeyDictionary())
    monkeypatch.setattr(driver, "init", lambda: None)
    monkeypatch.setattr(driver, "available", lambda: True)
    monkeypatch.setattr(driver, "device_info", lambda ordinal=0: for_arch("sm_90"))
    monkeypatch.setattr(driver, "use_device", lambda ordinal=0: None)
    monkeypatch.setattr(driver, "driver", lambda: drv)
    monkeypatch.setattr(driver, "check", lambda result, what: None)
    monkeypatch.setattr(memory, "DeviceBuffer", FakeBuffer)
    monkeypatch.setattr(memory, "download", download)
    monkeypatch.setattr(memory, "memset32", memset32)
    monkeypatch.setattr(memory, "memset16", memset16)
    monkeypatch.setattr(memory, "synchronize", lambda stream=0, what="": None)
    monkeypatch.setattr(module, "load", fake_load)
    monkeypatch.setattr(arrays, "_device_of", lambda ptr: 0)
    monkeypatch.setattr(arrays, "empty_like_owner", empty_like_owner)
    return mem
