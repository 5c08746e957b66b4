"""Loading PTX into the current context and launching its kernel; a cache keyed by the image's hash,
the kernel's name and its shared memory."""
from __future__ import annotations

import ctypes
import hashlib
import threading
from dataclasses import dataclass

from ..errors import CudaError
from .driver import check, driver, use_device

# (device, image hash, kernel name, shared bytes) -> the loaded kernel: the name and the shared memory
# it was set up for are part of the key, so one image holding several kernels gives each its own
_cache: dict[tuple[int, str, str, int], "LoadedKernel"] = {}
_VOID_P = {n: (ctypes.c_void_p,) * n for n in range(1, 9)}
_lock = threading.Lock()


@dataclass
class LoadedKernel:
    name: str
    module: object
    function: object
    smem: int
    device: int

    def launch(self, grid, block: int, args: list[int], stream: int = 0) -> None:
        """Launch with pointer arguments `args` (device addresses) on `stream`."""
        params = (tuple(args), _VOID_P[len(args)])
        gx, gy, gz = grid
        try:
            check(driver().cuLaunchKernel(self.function, gx, gy, gz, block, 1, 1, self.smem, stream, params, 0),
                  f"launching kernel {self.name} (grid {gx}x{gy}x{gz}, {block} threads, {self.smem} B shared)")
        except CudaError as e:
            raise CudaError(str(e), e.code) from None


def load(image: str | bytes, name: str, smem: int, device: int = 0) -> LoadedKernel:
    """Load PTX text (the driver JIT-compiles it) or a cubin (bytes, from ptxas) and get the kernel."""
    data = image.encode() + b"\0" if isinstance(image, str) else bytes(image)
    key = (device, hashlib.sha256(data).hexdigest(), name, smem)
    k = _cache.get(key)
    if k is not None:
        return k
    with _lock:
        k = _cache.get(key)
        if k is not None:
            return k
        use_device(device)
        drv = driver()
        mod = check(drv.cuModuleLoadData(data), f"loading {name} ({'PTX, driver JIT' if isinstance(image, str) else 'cubin'})")
        fn = check(drv.cuModuleGetFunction(mod, name.encode()), f"cuModuleGetFunction({name})")
        FA = drv.CUfunction_attribute
        if smem > 48 * 1024:  # dynamic shared memory beyond 48 KB must be opted into
            check(drv.cuFuncSetAttribute(fn, FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem),
                  f"allowing {smem} B of shared memory for {name}")
        # prefer the largest shared-memory carve-out so several blocks fit per SM
        check(drv.cuFuncSetAttribute(fn, FA.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100),
              f"setting the shared-memory carve-out of {name}")
        k = _cache[key] = LoadedKernel(name, mod, fn, smem, device)
        return k
