"""Timing measures the GPU, not the host: the hold kernel holds as long as asked, and a run the host
is slow to enqueue is still timed at the GPU's speed."""
import time

from nmgen.runtime.hold import hold
from nmgen.runtime.memory import Event, synchronize
from nmgen.runtime.timing import time_gpu


def test_hold_lasts_as_asked():
    hold(0)                      # load the module outside the events
    synchronize(0, "hold")
    for ns in (200_000, 2_000_000):
        start = Event().record(0)
        hold(ns)
        end = Event().record(0)
        end.synchronize()
        ms = end.elapsed_ms(start)
        assert ns / 1e6 <= ms < ns / 1e6 + 0.1, (ns, ms)


def test_a_run_slow_to_enqueue_is_timed_on_the_gpu():
    # 20 us on the GPU, ~300 us on the host: timed back to back without the hold, a sample would
    # measure the host (>= 300 us a run)
    def run():
        time.sleep(300e-6)
        hold(20_000)

    for flush in (None, lambda: None):
        t = time_gpu(run, 0, warmup=3, reps=5, flush=flush)
        assert 0.020 <= t.median_ms < 0.060, (flush, t)
