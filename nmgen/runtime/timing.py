"""Timing GPU work with CUDA events: warm-up first, then one event pair per run, median reported."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .memory import Event, synchronize


@dataclass(frozen=True)
class Timing:
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    reps: int
    warmup: int
    l2: str            # "warm": the same buffers every run, as the NM-SpMM paper measures

    def to_dict(self) -> dict:
        return asdict(self)


def time_gpu(run, stream: int = 0, warmup: int = 10, reps: int = 30, flush=None) -> Timing:
    """Time `run()` (which enqueues work on `stream`) `reps` times after `warmup` untimed runs.
    With `flush` (a callable enqueueing a write over more than the L2), it runs before every timed
    run, outside the events: each run then starts with a cold L2 ("flushed"); else "warm"."""
    for _ in range(warmup):
        run()
    synchronize(stream, "warm-up")
    events = [(Event(), Event()) for _ in range(reps)]
    for start, end in events:
        if flush is not None:
            flush()
        start.record(stream)
        run()
        end.record(stream)
    events[-1][1].synchronize()
    ms = [end.elapsed_ms(start) for start, end in events]
    return Timing(statistics.median(ms), statistics.fmean(ms), min(ms), max(ms), reps, warmup,
                  "flushed" if flush is not None else "warm")


class L2Flush:
    """A buffer twice the L2 size; calling it enqueues a memset over all of it."""

    def __init__(self, l2_bytes: int, stream: int = 0):
        from .memory import DeviceBuffer
        self.n = max(2 * l2_bytes, 1 << 24) // 4
        self.buf = DeviceBuffer(self.n * 4)
        self.stream = stream

    def __call__(self):
        from .memory import memset32
        memset32(self.buf.ptr, self.n, self.stream, 0)
