"""What a tuning record is valid for: the device and the toolchain that built the kernel.

The toolchain includes a fingerprint of the generator's own sources (the IR and codegen modules):
a record measured with other generated code is never taken for the current one."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from . import __version__


def fingerprint(folders) -> str:
    """8 hex digits over the .py files of `folders`."""
    h = hashlib.sha256()
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:8]


@lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """The fingerprint of the sources that decide the generated kernels (ir/, nmgen/codegen/)."""
    from . import codegen, ir
    return fingerprint(os.path.dirname(pkg.__file__) for pkg in (ir, codegen))


def nmgen_version() -> str:
    return f"{__version__}+g{generator_fingerprint()}"


def toolchain_key(arch: str, driver: int) -> str:
    """nmgen version + generator fingerprint | LLVM version | PTX ISA | CUDA driver version."""
    from .codegen import llvm_version, target_for
    return f"nmgen {nmgen_version()}|llvm {llvm_version()}|ptx {target_for(arch).ptx_version}|driver {driver}"


def toolchain_fields(arch: str, driver: int) -> dict:
    from .codegen import llvm_version, target_for
    return {"toolchain_key": toolchain_key(arch, driver), "nmgen_version": nmgen_version(),
            "llvm_version": llvm_version(), "ptx_isa": target_for(arch).ptx_version, "driver": driver}
