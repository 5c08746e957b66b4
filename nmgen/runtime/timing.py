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
    l2: str            # "flushed" (cold, one run a sample) or "warm, batches of N" (the paper's method)

    def to_dict(self) -> dict:
        return asdict(self)


def time_gpu(run, stream: int = 0, warmup: int = 10, reps: int = 30, flush=None, batch: int | None = None) -> Timing:
    """Median time of `run()` (which enqueues work on `stream`) over `reps` samples after `warmup`.

    With `flush` (a callable enqueueing a write over more than the L2) it runs before every sample,
    outside the events, and each sample is one run starting from a cold L2 ("flushed"). Without,
    L2 stays warm and a sample is a batch of back-to-back runs between one pair of events, so the
    GPU never waits for the host to enqueue the next one; the batch is sized from the warm-up to
    last about 0.5 ms (or given)."""
    for _ in range(warmup):
        run()
    synchronize(stream, "warm-up")
    if flush is None and batch is None:
        start = Event().record(stream)
        for _ in range(3):
            run()
        end = Event().record(stream)
        end.synchronize()
        per_run = max(end.elapsed_ms(start) / 3, 1e-4)
        batch = max(1, min(200, int(0.5 / per_run)))
    batch = 1 if flush is not None else batch
    events = [(Event(), Event()) for _ in range(reps)]
    for start, end in events:
        if flush is not None:
            flush()
        start.record(stream)
        for _ in range(batch):
            run()
        end.record(stream)
    events[-1][1].synchronize()
    ms = [end.elapsed_ms(start) / batch for start, end in events]
    return Timing(statistics.median(ms), statistics.fmean(ms), min(ms), max(ms), reps, warmup,
                  "flushed" if flush is not None else f"warm, batches of {batch}")


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
