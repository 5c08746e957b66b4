"""Timing GPU work with CUDA events: warm-up first, then one event pair per sample (one run L2
flushed, or a batch of runs L2 warm), each sample behind a hold; the median reported."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from .memory import Event, synchronize

# beyond 1.5x the measured enqueue time: the event records and the flush's memset (host side)
HOLD_MARGIN_NS = 50_000


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
    L2 stays warm and a sample is a batch of back-to-back runs between one pair of events (the
    paper's method), the batch sized from the warm-up to last about 0.5 ms (or given).

    Either way the GPU must never wait for the host inside a sample, or a ~10 us kernel is timed at
    the speed of Python enqueuing it: each sample starts behind a hold (hold.py) longer than the
    host took to enqueue that many runs during the warm-up."""
    from .hold import hold
    warmup = max(warmup, 3)
    enqueue = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        run()
        enqueue.append(time.perf_counter() - t0)
    host_s = statistics.median(enqueue)     # enqueueing one run, seconds (not the first: loading)
    synchronize(stream, "warm-up")

    def covered(runs: int):
        """A hold covering the host's enqueueing of `runs` runs and the sample's events, with margin."""
        hold(int(1.5 * runs * host_s * 1e9) + HOLD_MARGIN_NS, stream)

    if flush is None and batch is None:
        covered(3)
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
        covered(batch)
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
