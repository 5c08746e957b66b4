"""The tail split on the CPU: which grids get one, what the tuner's refinements and the model make
of it, how a schedule asks for it and what it is refused for. (Its kernels run in the interpreter
in tests/test_mma.py and tests/test_interpreter.py, assemble in tests/test_codegen.py, and run on
the GPU in tests/gpu.)"""
import pytest

from nmgen import Pattern, Problem, Schedule
from nmgen.errors import ScheduleError
from nmgen.ir import build, for_arch
from nmgen.ir.validate import problems
from nmgen.search.heuristic import as_schedule
from nmgen.search.model import predict
from nmgen.search.refine import refinements
from nmgen.search.space import enumerate_space, family, tail_split

H100 = for_arch("sm_90")          # 132 SMs, as the H200
MMA128 = dict(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=0, thread_n=0, a_pad=8, k_windows=4,
              a_load="rows", prefetch=1)


def bf16(M, N, K, pattern="8:32"):
    return Problem(M, N, K, Pattern.parse(pattern, 32), "bf16", "col")


def test_a_short_last_wave_is_split_over_the_slots_it_leaves():
    """1024x5120x5120 in 128x256 tiles, one block per SM: 160 tiles, 132 + 28; the 28 split 4 ways
    (112 blocks, 132 // 28 = 4) over 40 K tiles."""
    s = Schedule(**MMA128)
    t = tail_split(bf16(1024, 5120, 5120), s, H100, 1)
    assert (t.tail_tiles, t.tail_split) == (28, 4) and t.replace(tail_tiles=0, tail_split=1) == s
    k = build(bf16(1024, 5120, 5120), t, 32 * 4)
    assert k.grid == (132 + 28 * 4, 1, 1) and k.workspace_words == 28 * 128 * 256 + 28


@pytest.mark.parametrize("shape,per_sm,why", [
    ((512, 4096, 11008), 1, "one partial wave (64 tiles): that is split_k"),
    ((4096, 4096, 4096), 1, "512 tiles: the last wave 116 of 132, more than half full"),
    ((4096, 8192, 8192), 1, "1024 tiles: the last wave 100 of 132"),
    ((1024, 5120, 256), 1, "2 K tiles: no part would keep MIN_TAIL_PART_TILES"),
    ((1024, 5120, 5120), 0, "no block fits"),
    ((264 * 128, 256, 4096), 2, "264 tiles on 2 x 132 slots: no last wave to split"),
])
def test_no_tail_where_it_cannot_help(shape, per_sm, why):
    assert tail_split(bf16(*shape), Schedule(**MMA128), H100, per_sm) is None, why


def test_split_k_and_a_tail_are_not_both_offered():
    s = Schedule(**MMA128, split_k=2)
    assert tail_split(bf16(1024, 5120, 5120), s, H100, 1) is None


def test_the_space_offers_a_tail_beside_its_schedule_in_the_same_family():
    p = bf16(1024, 5120, 5120)
    space = enumerate_space(p, H100)
    tails = [s for s in space if s.tail_tiles]
    assert tails and all(not problems(p, s, H100) for s in tails[:50])
    plain = {s.hash() for s in space if not s.tail_tiles}
    assert all(s.replace(tail_tiles=0, tail_split=1).hash() in plain for s in tails)
    assert all(family(s) == family(s.replace(tail_tiles=0, tail_split=1)) for s in tails)
    decode = enumerate_space(Problem(1, 4096, 4096, Pattern(8, 32, 32), "bf16", "col"), H100)
    assert not any(s.tail_tiles for s in decode)          # one wave: split-K's domain


def test_the_model_prices_the_tail_below_the_idle_wave_for_mma_sync():
    """Measured on the H200 (benchmarks/2026-12-01-h200-tail-split): 99.8 -> 89.1 us at 8:32, 128.4 ->
    104.5 at 12:32, 147.5 -> 118.6 at 16:32; the model's ratios 4%, 2% and 8% lower."""
    for pattern, kw, measured in (("8:32", 4, 89.1 / 99.8), ("12:32", 4, 104.5 / 128.4), ("16:32", 2, 118.6 / 147.5)):
        p = bf16(1024, 5120, 5120, pattern)
        s = Schedule(**dict(MMA128, k_windows=kw))
        t = s.replace(tail_tiles=28, tail_split=4)
        ratio = predict(p, t, H100, 240).time_us / predict(p, s, H100, 240).time_us
        assert ratio < 1 and abs(ratio / measured - 1) < 0.1, (pattern, ratio, measured)


def test_refinements_of_a_tail_schedule_reshape_the_grid_without_its_old_tail():
    """A tail counts tiles of its own grid: the block tiles the refinements propose start from the
    schedule without it (and get their own where they have a short last wave), and the schedule is
    also measured without its tail."""
    p = bf16(1024, 5120, 5120)
    t = Schedule(**MMA128, tail_tiles=28, tail_split=4)
    out = refinements(p, t, H100, 240, lambda s: 128)
    plain = t.replace(tail_tiles=0, tail_split=1)
    assert plain in out
    for c in out:
        if (c.block_m, c.block_n) != (t.block_m, t.block_n):
            tiles = -(-1024 // c.block_m) * -(-5120 // c.block_n)
            assert c.tail_tiles == 0 or c.tail_tiles == tiles % 132, c.short()
    assert any(c.block_n == 160 and not c.tail_tiles for c in out)      # the wave-balanced block_n, plain
    fresh = refinements(p, plain, H100, 240, lambda s: 128)
    assert t in fresh                                                   # and the other way round


def test_a_schedule_omits_the_tail_fields_at_their_defaults_so_recorded_hashes_stay():
    """Schedules recorded before the tail split existed keep their JSON, hash and kernel name."""
    assert Schedule().hash() == "2a7df1f09ed1b1d5"
    assert Schedule(split_k=3, a_load="rows").hash() == "721f0d367d82e5d9"
    assert "tail" not in Schedule().to_json()
    t = Schedule(tail_tiles=3, tail_split=2)
    assert Schedule.from_json(t.to_json()) == t and t.hash() != Schedule().hash() and "tail3x2" in t.short()
    assert Schedule.from_json('{"tail_tiles": 0, "tail_split": 1}').hash() == Schedule().hash()


@pytest.mark.parametrize("fields,match", [
    (dict(tail_tiles=3), "go together"),
    (dict(tail_split=4), "go together"),
    (dict(tail_tiles=10**6, tail_split=2), "exceeds the grid's 256 output tiles"),
    (dict(tail_tiles=3, tail_split=99), "exceeds the 80 K tile(s)"),
    (dict(tail_tiles=3, tail_split=2, split_k=2), "not both"),
])
def test_bad_tails_are_refused_with_what_to_do(fields, match):
    p = Problem(1024, 4096, 5120, Pattern(8, 32, 32))
    why = "; ".join(problems(p, Schedule(k_windows=2, **fields), H100))
    assert match in why and "shared memory" not in why, why


def test_a_tail_split_of_a_single_k_tile_says_the_k_tile_is_the_cause():
    """17x33x160 at 5:32 in one K tile of 5 windows: no tail split fits; the message names k_windows."""
    p = Problem(17, 33, 160, Pattern(5, 32, 8), "bf16", "col")
    s = as_schedule({"split_k": 1, "block_m": 16, "block_n": 16, "warp_m": 16, "warp_n": 8, "tail_tiles": 2,
                     "tail_split": 3, "k_windows": 5}, p, H100)
    why = "; ".join(problems(p, s, H100))
    assert "k_windows=1 for 5 K tiles" in why, why


def test_negative_tail_fields_are_refused_when_the_schedule_is_made():
    with pytest.raises(ScheduleError, match="tail_tiles=-1 is out of range"):
        Schedule(tail_tiles=-1)
    with pytest.raises(ScheduleError, match="tail_split=0 is out of range"):
        Schedule(tail_split=0)


def test_a_tail_asked_for_replaces_the_default_split_k():
    """64x4096x4096 is 32 tiles: the default schedule splits K 9 ways; a user's tail without split_k
    takes its place instead of being refused for both."""
    p = Problem(64, 4096, 4096, Pattern(8, 32, 32))
    s = as_schedule({"tail_tiles": 4, "tail_split": 2}, p, H100)
    assert (s.split_k, s.tail_tiles, s.tail_split) == (1, 4, 2) and not problems(p, s, H100)
    both = as_schedule({"tail_tiles": 4, "tail_split": 2, "split_k": 3}, p, H100)
    assert "not both" in "; ".join(problems(p, both, H100))
    default = as_schedule({}, p, H100)
    for none in ({"tail_tiles": 0}, {"tail_tiles": 0, "tail_split": 1}):     # no tail asked: the default's split
        assert as_schedule(none, p, H100).split_k == default.split_k > 1
