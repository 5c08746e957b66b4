"""Code generation: kernel IR -> LLVM IR -> PTX (llvmlite NVPTX), and ptxas as a checker."""
from __future__ import annotations

from ..ir.nodes import Kernel
from .emit import data_layout, llvm_version, to_ptx
from .lower import lower
from .ptxas import Resources, assemble, assemble_cubin, find_ptxas, ptxas_version
from .targets import TARGETS, Target, arch_for_cc, kernel_arch, target_for


def arch_of(kernel: Kernel, arch: str) -> str:
    """The target `kernel` is generated for on a GPU of `arch` (sm_90a for wgmma kernels)."""
    return kernel_arch(kernel.layout.instr.is_wgmma, arch)


def llvm_ir(kernel: Kernel, arch: str) -> str:
    t = target_for(arch_of(kernel, arch))
    return str(lower(kernel, t, data_layout(t)))


def generate_ptx(kernel: Kernel, arch: str) -> str:
    """PTX text for `kernel` on a GPU of `arch` (sm_80, sm_86, sm_89, sm_90; wgmma kernels are
    generated for sm_90a)."""
    t = target_for(arch_of(kernel, arch))
    return to_ptx(str(lower(kernel, t, data_layout(t))), t)


__all__ = ["Resources", "TARGETS", "Target", "arch_for_cc", "arch_of", "kernel_arch", "assemble", "assemble_cubin", "find_ptxas", "generate_ptx", "llvm_ir",
           "llvm_version", "ptxas_version", "target_for"]
