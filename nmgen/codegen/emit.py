"""LLVM IR -> PTX through llvmlite's NVPTX backend (O3 pipeline first: emit_assembly alone does not unroll)."""
from __future__ import annotations

import os
import threading

os.environ.setdefault("LLVMLITE_ENABLE_IR_LAYER_TYPED_POINTERS", "0")

import llvmlite.binding as llvm  # noqa: E402

from ..errors import CompileError  # noqa: E402
from .targets import Target  # noqa: E402

_lock = threading.Lock()       # LLVM's global state (options, target registry) is not thread-safe
_machines: dict[str, "llvm.TargetMachine"] = {}
_ready = False


def _init():
    global _ready
    if not _ready:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        # 32-bit shared-memory pointers: shared addresses fit 32 bits, and 64-bit ones cost an
        # extra instruction per address computation.
        llvm.set_option("nmgen", "--nvptx-short-ptr")
        _ready = True


def target_machine(t: Target):
    with _lock:
        _init()
        tm = _machines.get(t.arch)
        if tm is None:
            tm = llvm.Target.from_triple("nvptx64-nvidia-cuda").create_target_machine(
                cpu=t.arch, features=t.ptx_feature, opt=3)
            _machines[t.arch] = tm
        return tm


def data_layout(t: Target) -> str:
    return str(target_machine(t).target_data)


def llvm_version() -> str:
    return ".".join(str(x) for x in llvm.llvm_version_info)


def to_ptx(llvm_ir: str, t: Target) -> str:
    tm = target_machine(t)
    with _lock:
        try:
            mod = llvm.parse_assembly(llvm_ir)
            mod.verify()
        except RuntimeError as e:
            raise CompileError(f"generated LLVM IR does not verify: {e}") from None
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(mod, pb)
        return tm.emit_assembly(mod)
