"""GPU arrays from other libraries, used in place: torch CUDA tensors, anything with
__cuda_array_interface__ (cupy, numba), and DLPack CUDA arrays (through cupy or torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

_DLPACK_CUDA = 2


@dataclass
class DeviceArray:
    ptr: int
    shape: tuple
    strides: tuple      # bytes
    dtype: np.dtype
    stream: int         # the stream the owner wants work on (0: legacy default)
    device: int
    owner: object       # the original object (kept alive while we use its memory)

    @property
    def f_contiguous(self) -> bool:
        """Column-major without gaps (a transposed view of a row-major array)."""
        return dense(self.shape[::-1], self.strides[::-1], self.dtype.itemsize)

    @property
    def c_contiguous(self) -> bool:
        """Row-major without gaps."""
        return dense(self.shape, self.strides, self.dtype.itemsize)


def dense(shape, strides, itemsize: int) -> bool:
    """Whether elements lie without gaps in the order of `shape`, its last dimension fastest.

    A size-1 dimension is never stepped along, so its stride is ignored (torch gives a (1, K) view
    of a (K, 1) tensor strides (1, 1), cupy may give anything): a (1, K) array with contiguous K
    is both row- and column-major. An empty array is both too (it has no bytes to place)."""
    if any(n == 0 for n in shape):
        return True
    want = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1:
            if s != want:
                return False
            want *= n
    return True


def byte_range(ptr: int, shape, strides, itemsize: int) -> tuple[int, int]:
    """[start, end) of the bytes an array's elements lie in (strides in bytes, any sign); an empty
    array has none: (ptr, ptr)."""
    if any(n == 0 for n in shape):
        return ptr, ptr
    start = ptr + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    end = ptr + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize
    return start, end


def overlaps(a: DeviceArray, b: DeviceArray) -> bool:
    """Whether two arrays' byte ranges share a byte. Exact for arrays without gaps (what spmm
    accepts); for gapped views it may say True for interleaved ones that share no element."""
    a0, a1 = byte_range(a.ptr, a.shape, a.strides, a.dtype.itemsize)
    b0, b1 = byte_range(b.ptr, b.shape, b.strides, b.dtype.itemsize)
    return a0 < a1 and b0 < b1 and a0 < b1 and b0 < a1     # an empty array overlaps nothing


def _torch_view(x) -> DeviceArray:
    import torch
    if x.device.type != "cuda":
        raise ShapeError("a torch tensor on the CPU is not a device array")
    from ..ir.dtypes import DTYPES
    np_dtype = np.dtype(str(x.dtype).replace("torch.", "")) if x.dtype != torch.bfloat16 else DTYPES["bf16"].storage
    return DeviceArray(x.data_ptr(), tuple(x.shape), tuple(s * x.element_size() for s in x.stride()), np_dtype,
                       torch.cuda.current_stream(x.device).cuda_stream, x.device.index or 0, x)


def _cai_view(x) -> DeviceArray:
    d = x.__cuda_array_interface__
    dtype = np.dtype(d["typestr"])
    if dtype.kind == "V" and dtype.itemsize == 2:   # the protocol has no bfloat16 ("|V2"): the array may say
        from ..ir.dtypes import storage_name
        own = getattr(x, "dtype", None)
        if own is not None and storage_name(own) == "bf16":
            dtype = np.dtype(own)
    shape = tuple(d["shape"])
    strides = d.get("strides")
    if strides is None:
        acc, st = dtype.itemsize, []
        for n in reversed(shape):
            st.append(acc)
            acc *= n
        strides = tuple(reversed(st))
    stream = d.get("stream")
    if type(x).__module__.startswith("cupy"):
        import cupy
        stream = cupy.cuda.get_current_stream().ptr
    stream = 0 if stream in (None, 1) else int(stream)   # 1 = legacy default stream in the protocol
    ptr = int(d["data"][0])
    return DeviceArray(ptr, shape, tuple(strides), dtype, stream, _device_of(ptr), x)


def _device_of(ptr: int) -> int:
    from .driver import check, driver, init
    if ptr == 0:
        return 0
    init()
    drv = driver()
    return int(check(drv.cuPointerGetAttribute(drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr),
                     "cuPointerGetAttribute(device ordinal)"))


def device_view(x) -> DeviceArray | None:
    """A view of `x` if it lives on a GPU, else None (host data: the caller copies it)."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return _torch_view(x) if getattr(x, "is_cuda", False) else None
    if hasattr(x, "__cuda_array_interface__"):
        return _cai_view(x)
    if hasattr(x, "__dlpack_device__") and not isinstance(x, np.ndarray):
        dev_type, _ = x.__dlpack_device__()
        if int(dev_type) == _DLPACK_CUDA:
            for lib in ("cupy", "torch"):
                try:
                    m = __import__(lib)
                except ImportError:
                    continue
                return device_view(m.from_dlpack(x))
            raise ShapeError("a DLPack CUDA array needs cupy or torch installed to be read in place")
    return None


def empty_like_owner(owner, shape, dtype: str = "f32") -> object:
    """A new device array of `shape` and `dtype` ("f32", "bf16", "f16") from the same library as
    `owner` (torch or cupy; cupy has no bfloat16)."""
    mod = type(owner).__module__
    if mod.startswith("torch"):
        import torch
        return torch.empty(shape, dtype=getattr(torch, {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype]),
                           device=owner.device)
    if mod.startswith("cupy"):
        import cupy
        if dtype == "bf16":
            raise ShapeError("cupy has no bfloat16: pass out= (e.g. a torch tensor) for a bfloat16 C")
        with cupy.cuda.Device(owner.device.id):
            return cupy.empty(shape, dtype={"f32": cupy.float32, "f16": cupy.float16}[dtype])
    raise ShapeError(f"pass out= for {type(owner).__name__} inputs (nmgen can allocate torch and cupy outputs)")
