"""The limits of a GPU that decide whether a schedule can run, and the rates the model uses.

Plain values: the runtime fills one in from the driver; `for_arch` gives typical figures for an
architecture when there is no GPU (CI, `nmgen search --dry-run`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class Device:
    name: str
    arch: str                       # "sm_90"
    sms: int
    smem_per_block: int             # opt-in maximum dynamic shared memory per block, bytes
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    l2_bytes: int = 50 * 2**20
    clock_khz: int = 1980000        # SM boost clock
    mem_bandwidth: float = 3.0e12   # bytes/s a device-to-device copy reaches (read + write)
    l2_bandwidth: float = 5.5e12    # bytes/s from L2 to the SMs (estimate)
    fp32_lanes_per_sm: int = 128    # FFMA lanes per SM per clock
    tensor_macs_per_sm: int = 1024  # bf16/f16 multiply-adds per SM per clock through mma.sync (fp32 accumulate)
    reserved_smem_per_block: int = 1024
    driver: int = 0                 # cuDriverGetVersion, 0 when unknown

    @property
    def cc(self) -> tuple[int, int]:
        return int(self.arch[3]), int(self.arch[4])

    def key(self) -> str:
        return f"{self.name}|{self.arch}|{self.sms}"

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> "Device":
        return replace(self, **kw)


_TYPICAL = {
    # name, sms, smem/block opt-in, smem/SM, max threads/SM, max blocks/SM, L2, clock kHz, DRAM B/s, L2 B/s, fp32
    # lanes, bf16 mma.sync MACs per SM per clock (datasheet dense fp16/bf16 with fp32 accumulation: A100 312
    # TF/s; GA102/AD102 consumer parts accumulate fp32 at a quarter of that per SM; H100 mma.sync taken at the
    # A100's per-SM rate, wgmma's full rate being twice it)
    "sm_80": ("A100-SXM4-80GB (typical)", 108, 166912, 167936, 2048, 32, 40 * 2**20, 1410000, 1.7e12, 4.0e12, 64, 1024),
    "sm_86": ("RTX 3090 (typical)", 82, 101376, 102400, 1536, 16, 6 * 2**20, 1695000, 0.85e12, 2.0e12, 128, 256),
    "sm_89": ("RTX 4090 (typical)", 128, 101376, 102400, 1536, 24, 72 * 2**20, 2520000, 0.9e12, 4.0e12, 128, 256),
    "sm_90": ("H100 SXM (typical)", 132, 232448, 233472, 2048, 32, 50 * 2**20, 1980000, 3.0e12, 5.5e12, 128, 1024),
}
TENSOR_MACS = {arch: row[-1] for arch, row in _TYPICAL.items()}


def for_arch(arch: str) -> Device:
    if arch not in _TYPICAL:
        raise ValueError(f"unknown architecture {arch!r}; nmgen targets {', '.join(ARCHS)}")
    name, sms, smb, sms_sm, thr, blk, l2, clk, bw, l2bw, lanes, tensor = _TYPICAL[arch]
    return Device(name=name, arch=arch, sms=sms, smem_per_block=smb, smem_per_sm=sms_sm, max_threads_per_sm=thr,
                  max_blocks_per_sm=blk, l2_bytes=l2, clock_khz=clk, mem_bandwidth=bw, l2_bandwidth=l2bw,
                  fp32_lanes_per_sm=lanes, tensor_macs_per_sm=tensor)
