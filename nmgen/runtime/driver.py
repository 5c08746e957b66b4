"""The CUDA driver through cuda-python: initialisation, checked calls, devices and primary contexts.

Nothing here runs at import: `import nmgen` works without a driver. The first call that needs the
GPU initialises CUDA and raises CudaUnavailable, with the reason, where there is none.
"""
from __future__ import annotations

import threading
from functools import lru_cache

from ..ir.device import TENSOR_MACS, Device
from ..errors import CudaError, CudaUnavailable

_lock = threading.Lock()
_initialised = False
_failure: str | None = None
_contexts: dict[int, object] = {}


def driver():
    """The cuda.bindings.driver module (raises CudaUnavailable if cuda-python is missing)."""
    try:
        from cuda.bindings import driver as drv
    except ImportError as e:  # pragma: no cover - cuda-python is a dependency
        raise CudaUnavailable(f"cuda-python is not installed ({e}); pip install cuda-python") from None
    return drv


def check(result, what: str):
    """Unpack a cuda-python (CUresult, *values) tuple; raise CudaError naming the error and `what`."""
    drv = driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        _, desc = drv.cuGetErrorString(err)
        name = name.decode() if isinstance(name, bytes) else str(err)
        desc = desc.decode() if isinstance(desc, bytes) else ""
        raise CudaError(f"{what} failed: {name} ({desc})", name)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def init() -> None:
    """Initialise CUDA once per process; where that fails, every later call raises the same error
    at once (a machine does not grow a driver while the process runs)."""
    global _initialised, _failure
    if _initialised:
        return
    if _failure is not None:
        raise CudaUnavailable(_failure)
    with _lock:
        if _initialised:
            return
        try:
            _init_locked()
        except CudaUnavailable as e:
            _failure = str(e)
            raise
        _initialised = True


def _init_locked() -> None:
    drv = driver()
    try:
        r = drv.cuInit(0)
    except Exception as e:  # noqa: BLE001 - no libcuda.so raises from the loader, not a CUresult
        raise CudaUnavailable(f"no CUDA driver on this machine ({type(e).__name__}: {e}); nmgen needs an "
                              f"NVIDIA GPU to run kernels (generating PTX works without one)") from None
    err = r[0] if isinstance(r, tuple) else r
    if err != drv.CUresult.CUDA_SUCCESS:
        raise CudaUnavailable(f"CUDA could not be initialised ({drv.cuGetErrorName(err)[1]!r}): "
                              f"no usable GPU or driver")
    if check(drv.cuDeviceGetCount(), "cuDeviceGetCount") < 1:
        raise CudaUnavailable("the CUDA driver sees no GPU")


def available() -> bool:
    try:
        init()
        return True
    except CudaUnavailable:
        return False


def use_device(ordinal: int = 0):
    """Make `ordinal`'s primary context current in this thread (the one torch and cupy use)."""
    init()
    drv = driver()
    ctx = _contexts.get(ordinal)
    if ctx is None:
        with _lock:
            ctx = _contexts.get(ordinal)
            if ctx is None:
                dev = check(drv.cuDeviceGet(ordinal), f"cuDeviceGet({ordinal})")
                ctx = _contexts[ordinal] = check(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
    cur = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if cur is None or int(cur) != int(ctx):
        check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return ctx


@lru_cache(maxsize=None)
def device_info(ordinal: int = 0) -> Device:
    """The device's limits and rates as an ir.Device (read once)."""
    init()
    drv = driver()
    dev = check(drv.cuDeviceGet(ordinal), f"cuDeviceGet({ordinal})")
    A = drv.CUdevice_attribute

    def attr(name):
        return check(drv.cuDeviceGetAttribute(getattr(A, name), dev), f"cuDeviceGetAttribute({name})")

    name = check(drv.cuDeviceGetName(256, dev), "cuDeviceGetName")
    name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
    major, minor = attr("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"), attr("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")
    from ..codegen.targets import arch_for_cc
    arch = arch_for_cc(major, minor)
    mem_khz, bus = attr("CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE"), attr("CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH")
    # datasheet-style peak (DDR: 2 transfers per clock); the model scales it to what copies reach
    peak_bw = 2.0 * mem_khz * 1e3 * bus / 8
    return Device(
        name=name, arch=arch,
        sms=attr("CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"),
        smem_per_block=attr("CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"),
        smem_per_sm=attr("CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"),
        regs_per_sm=attr("CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR"),
        max_threads_per_block=attr("CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK"),
        max_threads_per_sm=attr("CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR"),
        max_blocks_per_sm=attr("CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR"),
        l2_bytes=attr("CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE"),
        clock_khz=attr("CU_DEVICE_ATTRIBUTE_CLOCK_RATE"),
        mem_bandwidth=0.9 * peak_bw,
        reserved_smem_per_block=attr("CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK"),
        tensor_macs_per_sm=TENSOR_MACS[arch],
        driver=check(drv.cuDriverGetVersion(), "cuDriverGetVersion"),
    )
