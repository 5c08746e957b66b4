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


def time_gpu(run, stream: int = 0, warmup: int = 10, reps: int = 30, l2: str = "warm") -> Timing:
    """Time `run()` (which enqueues work on `stream`) `reps` times after `warmup` untimed runs."""
    for _ in range(warmup):
        run()
    synchronize(stream, "warm-up")
    events = [(Event(), Event()) for _ in range(reps)]
    for start, end in events:
        start.record(stream)
        run()
        end.record(stream)
    events[-1][1].synchronize()
    ms = [end.elapsed_ms(start) for start, end in events]
    return Timing(statistics.median(ms), statistics.fmean(ms), min(ms), max(ms), reps, warmup, l2)
