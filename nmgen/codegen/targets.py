"""The (cpu, PTX ISA) pairs nmgen emits. LLVM aborts the whole process on an invalid pair, so
nothing reaches LLVM without passing `target_for` first."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError


@dataclass(frozen=True)
class Target:
    arch: str          # sm_90
    ptx_feature: str   # +ptx81
    ptx_version: str   # 8.1

    @property
    def cc(self) -> int:
        return int(self.arch[3:5])


# PTX 8.0 (CUDA 12.0 drivers) everywhere; sm_90 uses 8.1 for the vector red.global.add.v4.f32.
# All are below the 9.0 ceiling of CUDA 13.0 drivers.
TARGETS = {
    "sm_80": Target("sm_80", "+ptx80", "8.0"),
    "sm_86": Target("sm_86", "+ptx80", "8.0"),
    "sm_89": Target("sm_89", "+ptx80", "8.0"),
    "sm_90": Target("sm_90", "+ptx81", "8.1"),
    # Hopper's architecture-specific features (wgmma): only for kernels that use them, which run
    # on compute capability 9.0 exactly
    "sm_90a": Target("sm_90a", "+ptx81", "8.1"),
}


def target_for(arch: str) -> Target:
    try:
        return TARGETS[arch]
    except KeyError:
        raise CompileError(f"architecture {arch!r} is not supported; choose one of {', '.join(TARGETS)}") from None


def arch_for_cc(major: int, minor: int) -> str:
    """The newest supported target a device of compute capability major.minor runs."""
    cc = major * 10 + minor
    fits = [a for a, t in TARGETS.items() if t.cc <= cc and (t.cc // 10 == major or cc >= 90 and t.cc == 90)
            and not a.endswith("a")]
    if not fits or cc < 80:
        raise CompileError(f"compute capability {major}.{minor} is not supported; nmgen needs 8.0 or newer")
    return max(fits, key=lambda a: TARGETS[a].cc)


def kernel_arch(uses_wgmma: bool, arch: str) -> str:
    """The target a kernel is generated for on a GPU of `arch`: sm_90a where it uses wgmma (an
    architecture-specific feature of compute capability 9.0), else `arch`."""
    if uses_wgmma:
        if arch not in ("sm_90", "sm_90a"):
            raise CompileError(f"wgmma kernels run on compute capability 9.0 (sm_90a), not {arch}")
        return "sm_90a"
    return arch
