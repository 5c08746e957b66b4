"""What a tuning record is valid for: the device and the toolchain that built the kernel."""
from __future__ import annotations

from . import __version__


def toolchain_key(arch: str, driver: int) -> str:
    """nmgen version | LLVM version | PTX ISA | CUDA driver version."""
    from .codegen import llvm_version, target_for
    return f"nmgen {__version__}|llvm {llvm_version()}|ptx {target_for(arch).ptx_version}|driver {driver}"


def toolchain_fields(arch: str, driver: int) -> dict:
    from .codegen import llvm_version, target_for
    return {"toolchain_key": toolchain_key(arch, driver), "nmgen_version": __version__,
            "llvm_version": llvm_version(), "ptx_isa": target_for(arch).ptx_version, "driver": driver}
