"""The kernel IR, run by the CPU interpreter, against the float64 reference on odd tiny problems."""
import dataclasses

import pytest

from nmgen.ir import HazardError, Schedule, build, for_arch, interpret, prepare, validate
from nmgen.ir.nodes import Barrier, For, If, LoadFragments, Wait
from nmgen.ir.operands import geometry
from nmgen.ir.validate import problems
from nmgen.search.heuristic import default_schedule
from helpers import assert_product, random_problem, run_interpreter

H100 = for_arch("sm_90")
SMALL = dict(block_m=32, block_n=64, warp_m=32, warp_n=16, thread_m=4, thread_n=4)

CASES = [  # (M, N, K, n, m, V, schedule or None for the default)
    (1, 40, 64, 2, 4, 1, None),
    (17, 100, 64, 8, 32, 32, None),
    (17, 100, 64, 8, 32, 32, Schedule(split_k=2, stages=2)),
    (17, 70, 96, 2, 4, 1, Schedule(**SMALL, k_windows=8)),
    (33, 50, 96, 2, 8, 4, None),
    (5, 130, 96, 4, 16, 64, None),
    (17, 100, 192, 4, 32, 32, Schedule(a_load="rows", k_windows=2, stages=4)),
    (16, 200, 128, 16, 32, 32, Schedule(**SMALL, split_k=3)),           # split-K not dividing 4 tiles
    (9, 33, 96, 3, 6, 3, Schedule(**SMALL, k_windows=2, split_k=5)),    # V=3: look-ups per column
    (20, 96, 160, 12, 32, 32, Schedule(a_load="rows", raster=1, k_windows=2)),  # last K tile partial
    (17, 100, 64, 8, 32, 32, Schedule(a_smem="mk")),                             # A kept [m][k] in shared
    (33, 70, 100, 2, 4, 1, Schedule(**SMALL, a_smem="mk", k_windows=8)),         # ... with a partial K tile
    (20, 96, 96, 3, 6, 3, Schedule(**SMALL, a_smem="mk", k_windows=2, split_k=3)),
    # windows of 512 rows: 16-bit K positions (an index chunk too wide for byte offsets)
    (5, 128, 1024, 4, 512, 1, Schedule(block_m=32, block_n=128, warp_m=32, warp_n=16, thread_m=4, thread_n=4)),
    # sliced K: 2 or 4 warps share each warp tile, partial sums added through shared memory
    (17, 100, 160, 8, 32, 32, Schedule(**SMALL, warps_k=2, k_windows=1)),
    (33, 70, 100, 2, 4, 1, Schedule(**SMALL, warps_k=4, k_windows=8, a_smem="mk")),
    (20, 96, 160, 12, 32, 32, Schedule(block_m=64, block_n=64, a_load="rows", k_windows=2, warps_k=4, stages=2)),
    (9, 33, 96, 3, 6, 3, Schedule(**SMALL, k_windows=2, split_k=2, warps_k=2)),   # with split-K too
    (17, 100, 128, 4, 32, 32, Schedule(**SMALL, warps_k=4)),   # one kept row a thread: no head to prefetch
    # a tail split: the last tiles' K split over blocks (uneven), the sums through the workspace
    (40, 200, 320, 8, 32, 32, Schedule(**SMALL, tail_tiles=3, tail_split=4)),
    (9, 33, 96, 3, 6, 3, Schedule(**SMALL, k_windows=2, warps_k=2, tail_tiles=1, tail_split=3)),
    # five warps a block (the tuner's wave-balancing block_n, search.refine): copies over 160 threads
    (20, 330, 192, 8, 32, 32, Schedule(block_m=32, block_n=160, warp_m=32, warp_n=32, thread_m=4, thread_n=8,
                                       a_load="rows", k_windows=2)),
]


COL_CASES = [  # A column-major: K rows copied as they are (16/8/4-byte copies by M's divisibility)
    (17, 100, 64, 8, 32, 32, None),
    (16, 100, 128, 4, 32, 32, Schedule(a_load="rows", k_windows=2)),
    (33, 70, 100, 2, 4, 1, Schedule(**SMALL, k_windows=8, split_k=2)),
    (30, 96, 160, 12, 32, 32, Schedule(a_load="rows", k_windows=2, stages=4)),
    (6, 50, 96, 2, 8, 4, Schedule(block_m=4, block_n=128, warp_m=4, warp_n=32, thread_m=1, thread_n=4)),
    (30, 96, 160, 12, 32, 32, Schedule(block_m=64, block_n=32, a_load="rows", k_windows=2, warps_k=3)),
    (17, 100, 64, 8, 32, 32, Schedule(**SMALL, warps_k=4)),
]


# the loop forms: fragments loaded after each tile's barrier, across it (rotated), or the copies
# issued after the tile's first kept row
LOOPS = {"plain": {}, "rotated": {"prefetch": 1}, "refill-after-row-1": {"refill_row": 1}}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("M,N,K,n,m,v,schedule,a_major", [c + ("row",) for c in CASES] + [c + ("col",) for c in COL_CASES])
def test_interpreter_matches_reference(rng, M, N, K, n, m, v, schedule, a_major, loop):
    p, A, B = random_problem(rng, M, N, K, n, m, v, a_major)
    s = (schedule or default_schedule(p, H100)).replace(**LOOPS[loop])
    a_rows = prepare(p, s, B.values, B.indices).geometry.a_rows
    if s.refill_row and s.refill_row >= geometry(p, s, a_rows).KR // s.warps_k:   # one kept row a warp
        assert any("refill_row=1 must be below" in w for w in problems(p, s, H100, a_rows))
        return
    validate(p, s, H100, a_rows)
    C = run_interpreter(p, s, A, B)
    assert_product(C, A, B)


def _without(body, kind):
    """The kernel body with statements of `kind` removed (recursively, inside loops and ifs)."""
    out = []
    for st in body:
        if isinstance(st, kind):
            continue
        if isinstance(st, (For, If)):
            st = dataclasses.replace(st, body=_without(st.body, kind))
        out.append(st)
    return tuple(out)


def _with_wait(body, pending):
    out = []
    for st in body:
        if isinstance(st, Wait):
            st = Wait(pending)
        if isinstance(st, (For, If)):
            st = dataclasses.replace(st, body=_with_wait(st.body, pending))
        out.append(st)
    return tuple(out)


@pytest.mark.parametrize("mutate,match,loop", [
    (lambda body: _without(body, Barrier), "no barrier|not waited", "plain"),
    (lambda body: _with_wait(body, 2), "pending", "plain"),
    (lambda body: _without(body, Barrier), "no barrier|not waited|while threads may still be reading", "rotated"),
    (lambda body: _with_wait(body, 2), "pending", "rotated"),
    (lambda body: _without(body, LoadFragments), "no LoadFragments filled", "rotated"),
    (lambda body: _without(body, Barrier), "no barrier|not waited", "refill-after-row-1"),
    (lambda body: _with_wait(body, 2), "pending", "refill-after-row-1"),
])
def test_interpreter_catches_pipeline_races(rng, mutate, match, loop):
    p, A, B = random_problem(rng, 17, 64, 256, 8, 32, 32)
    s = Schedule(stages=3, **LOOPS[loop])
    ops = prepare(p, s, B.values, B.indices)
    k = build(p, s)
    broken = dataclasses.replace(k, body=mutate(k.body))
    with pytest.raises(HazardError, match=match):
        interpret(broken, {"A": A, "Bv": ops.bv, "Bi": ops.bi})


def test_interpreter_catches_reduction_over_live_stages(rng):
    """Sliced K's partial sums overlay the pipeline buffers: without the barrier after the last
    tile a slow warp could still be reading them."""
    p, A, B = random_problem(rng, 17, 64, 256, 8, 32, 32)
    s = Schedule(**SMALL, warps_k=2, stages=2)
    ops = prepare(p, s, B.values, B.indices)
    k = build(p, s)
    assert isinstance(k.body[-3], Barrier)
    broken = dataclasses.replace(k, body=k.body[:-3] + k.body[-2:])
    with pytest.raises(HazardError, match="ReduceSlices"):
        interpret(broken, {"A": A, "Bv": ops.bv, "Bi": ops.bi})


def test_sliced_k_needs_a_divisible_share(rng):
    p = random_problem(rng, 17, 64, 256, 12, 32, 32)[0]
    why = " ".join(__import__("nmgen.ir.validate", fromlist=["problems"]).problems(p, Schedule(warps_k=5), H100))
    assert "warps_k=5 does not divide the 12 kept rows" in why


def test_rows_strategy_compacts_the_copied_rows(rng):
    p, A, B = random_problem(rng, 8, 256, 512, 4, 32, 32)
    s = Schedule(a_load="rows", k_windows=2)
    ops = prepare(p, s, B.values, B.indices)
    # 4 vectors x 2 windows x 4 kept rows: at most 32 of the 64 K rows of a tile
    assert ops.geometry.a_rows <= 32 < ops.geometry.BK
    assert ops.arows.max() < p.K
