"""Device buffers, copies and events (driver API, every result checked)."""
from __future__ import annotations

import weakref

import numpy as np

from ..errors import ShapeError
from .driver import check, driver


class DeviceBuffer:
    """cuMemAlloc'd memory, freed when the object goes away."""

    def __init__(self, nbytes: int, device: int = 0):
        from .driver import use_device
        use_device(device)
        self.nbytes = max(int(nbytes), 1)
        self.device = device
        self.handle = check(driver().cuMemAlloc(self.nbytes), f"cuMemAlloc({self.nbytes} bytes)")
        self.ptr = int(self.handle)
        self._finalizer = weakref.finalize(self, _free, self.handle)

    @classmethod
    def from_array(cls, a: np.ndarray, device: int = 0, stream: int = 0) -> "DeviceBuffer":
        a = np.ascontiguousarray(a)
        buf = cls(a.nbytes, device)
        buf.upload(a, stream)
        return buf

    def upload(self, a: np.ndarray, stream: int = 0) -> None:
        a = np.ascontiguousarray(a)
        check(driver().cuMemcpyHtoDAsync(self.handle, a.ctypes.data, a.nbytes, stream), "cuMemcpyHtoDAsync")
        check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize")  # `a` may be a temporary


def _free(handle):
    try:
        driver().cuMemFree(handle)
    except Exception:  # noqa: BLE001 - interpreter shutdown: the context may be gone already
        pass


def download(dst: np.ndarray, ptr: int, stream: int = 0) -> np.ndarray:
    # the copy writes dst.nbytes raw bytes at dst's data pointer: only right for a dense, writable dst
    if not (dst.flags.c_contiguous and dst.flags.writeable):
        raise ShapeError(f"download needs a C-contiguous writable array, got strides {dst.strides}"
                         f"{'' if dst.flags.writeable else ' (read-only)'}")
    check(driver().cuMemcpyDtoHAsync(dst.ctypes.data, ptr, dst.nbytes, stream), "cuMemcpyDtoHAsync")
    check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize")
    return dst


def memset32(ptr: int, count: int, stream: int = 0, value: int = 0) -> None:
    check(driver().cuMemsetD32Async(ptr, value, count, stream), "cuMemsetD32Async")


class ZeroedWorkspaces:
    """Scratch of `words` 32-bit words per (device, stream), zeroed in stream order when made and
    never again: for kernels that leave their scratch zeroed (split-K's in-kernel reduction into a
    16-bit C, ir.nodes.SplitKReduce). Launches on one stream run in order and so share one; two
    streams get two. `ptr(device, stream)`: its device address (allocated on first use)."""

    def __init__(self, words: int):
        self.words = int(words)
        self.buffers: dict[tuple[int, int], DeviceBuffer] = {}

    def ptr(self, device: int, stream: int) -> int:
        buf = self.buffers.get((device, stream))
        if buf is None:
            buf = DeviceBuffer(4 * self.words, device)
            memset32(buf.ptr, self.words, stream)
            self.buffers[(device, stream)] = buf
        return buf.ptr


def memset16(ptr: int, count: int, value: int, stream: int = 0) -> None:
    """Enqueue `count` 16-bit stores of `value` at `ptr` (a NaN poison for a 16-bit C)."""
    check(driver().cuMemsetD16Async(ptr, value, count, stream), "cuMemsetD16Async")


def synchronize(stream: int = 0, what: str = "stream") -> None:
    check(driver().cuStreamSynchronize(stream), f"cuStreamSynchronize after {what}")


class Event:
    def __init__(self):
        self.handle = check(driver().cuEventCreate(0), "cuEventCreate")
        self._finalizer = weakref.finalize(self, _destroy_event, self.handle)

    def record(self, stream: int = 0) -> "Event":
        check(driver().cuEventRecord(self.handle, stream), "cuEventRecord")
        return self

    def synchronize(self) -> None:
        check(driver().cuEventSynchronize(self.handle), "cuEventSynchronize")

    def elapsed_ms(self, start: "Event") -> float:
        return float(check(driver().cuEventElapsedTime(start.handle, self.handle), "cuEventElapsedTime"))


def _destroy_event(handle):
    try:
        driver().cuEventDestroy(handle)
    except Exception:  # noqa: BLE001
        pass
