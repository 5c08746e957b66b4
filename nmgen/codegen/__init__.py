"""Code generation: kernel IR -> LLVM IR -> PTX (llvmlite NVPTX), and ptxas as a checker."""
from __future__ import annotations

from ..ir.nodes import Kernel
from .emit import data_layout, llvm_version, to_ptx
from .lower import lower
from .ptxas import Resources, assemble, assemble_cubin, find_ptxas, ptxas_version
from .targets import TARGETS, Target, arch_for_cc, target_for


def llvm_ir(kernel: Kernel, arch: str) -> str:
    t = target_for(arch)
    return str(lower(kernel, t, data_layout(t)))


def generate_ptx(kernel: Kernel, arch: str) -> str:
    """PTX text for `kernel` on `arch` (sm_80, sm_86, sm_89, sm_90)."""
    t = target_for(arch)
    return to_ptx(str(lower(kernel, t, data_layout(t))), t)


__all__ = ["Resources", "TARGETS", "Target", "arch_for_cc", "assemble", "assemble_cubin", "find_ptxas", "generate_ptx", "llvm_ir",
           "llvm_version", "ptxas_version", "target_for"]
