"""A one-thread kernel that keeps a stream busy for a given time.

Timing a kernel of ~10 us in batches of back-to-back launches measures the host, not the GPU, when
the host takes longer to enqueue a launch (cuda-python's cuLaunchKernel plus, under split-K, a
memset) than the GPU takes to run it: the GPU waits between launches. Enqueuing a hold first, longer
than the host needs to enqueue the batch, puts the whole batch in the queue before the GPU reaches
it, so the events around the batch time the GPU alone.

The kernel spins on %globaltimer (nanoseconds) and touches no memory, so it leaves the L2 as it was
(warm, or just flushed).
"""
from __future__ import annotations

from ..errors import CudaError
from .driver import check, driver
from .module import load

NAME = "nmgen_hold"

# PTX ISA 8.0 for sm_80, the oldest pair nmgen emits (codegen/targets.py): the driver JIT compiles it
# for whatever GPU runs it.
PTX = f"""\
.version 8.0
.target sm_80
.address_size 64

// Spin until %globaltimer has advanced by `ns` nanoseconds since the kernel started.
.visible .entry {NAME}(.param .u64 ns)
{{
    .reg .u64   %start, %now, %ns, %elapsed;
    .reg .pred  %wait;
    ld.param.u64    %ns, [ns];
    mov.u64         %start, %globaltimer;
SPIN:
    mov.u64         %now, %globaltimer;
    sub.u64         %elapsed, %now, %start;
    setp.lt.u64     %wait, %elapsed, %ns;
    @%wait bra      SPIN;
    ret;
}}
"""


def hold(ns: int, stream: int = 0, device: int | None = None) -> None:
    """Enqueue on `stream` a kernel that runs for `ns` nanoseconds (one thread, no memory traffic).
    `device`: the stream's GPU; by default that of the current context (where the timed work runs)."""
    if device is None:
        device = _current_device()
    load(PTX, NAME, 0, device).launch((1, 1, 1), 1, [max(0, int(ns))], stream)


def _current_device() -> int:
    """The ordinal of the current context's device; 0 where no context is current yet."""
    try:
        return int(check(driver().cuCtxGetDevice(), "cuCtxGetDevice"))
    except CudaError:
        return 0
