"""Schedule space, performance model and tuner (with fake compile/measure: no GPU)."""
import math

import numpy as np
import pytest

import nmgen
from nmgen import NMMatrix, Pattern, Problem, Schedule
from nmgen.db import TuningDB
from nmgen.ir import for_arch, problems
from nmgen.ir.validate import shared_bytes
from nmgen.search import model
from nmgen.search.space import enumerate_space
from nmgen.search.tuner import Result, Tuner

H100 = for_arch("sm_90")
A100 = for_arch("sm_80")


@pytest.mark.parametrize("shape,pattern", [((4096, 4096, 4096), (16, 32, 32)), ((256, 2048, 2048), (8, 32, 32)),
                                           ((1, 4096, 4096), (4, 32, 32)), ((17, 100, 64), (2, 4, 1)),
                                           ((1000, 3000, 4096), (2, 8, 4))])
@pytest.mark.parametrize("device", [H100, A100], ids=["sm_90", "sm_80"])
def test_space_respects_every_limit(shape, pattern, device):
    p = Problem(*shape, Pattern(*pattern))
    space = enumerate_space(p, device)
    assert 20 <= len(space) <= 1800, len(space)     # small grids add split-K and sliced-K choices
    assert len({s.hash() for s in space}) == len(space)
    for s in space:
        assert problems(p, s, device) == []
        assert shared_bytes(p, s) <= device.smem_per_block and s.threads <= device.max_threads_per_block
        assert s.block_m <= max(16, 2 ** math.ceil(math.log2(p.M))) and s.a_pad == 4
        if p.pattern.vector >= 16:
            from nmgen.ir.layout import ComputeLayout
            assert len(ComputeLayout.of(s, p.pattern.vector).groups) == 1   # one index look-up per kept row


def test_split_k_only_where_the_grid_is_small():
    big = enumerate_space(Problem(4096, 4096, 4096, Pattern(8, 32, 32)), H100)
    assert {s.split_k for s in big} == {1}
    small = enumerate_space(Problem(1, 4096, 4096, Pattern(8, 32, 32)), H100)
    assert max(s.split_k for s in small) >= 8


def test_sliced_k_only_where_the_grid_is_small_and_unsplit():
    big = enumerate_space(Problem(4096, 4096, 4096, Pattern(8, 32, 32)), H100)
    assert {s.warps_k for s in big} == {1}
    small = enumerate_space(Problem(256, 2048, 2048, Pattern(8, 32, 32)), H100)
    assert {s.warps_k for s in small} == {1, 2, 4}
    assert all(s.split_k == 1 and s.threads <= 512 for s in small if s.warps_k > 1)


def test_model_sees_sliced_k_share_the_rows():
    """Sliced K divides each warp's kept rows (issue per warp and tile); the SM's work stays the same,
    plus the reduction, and (as measured) the extra warps hide no more latency."""
    p = Problem(256, 2048, 2048, Pattern(8, 32, 32))
    s = Schedule(block_m=32, block_n=128, warp_m=32, warp_n=32, thread_m=4, thread_n=8, k_windows=2)
    one, four = model.predict(p, s, H100, registers=96), model.predict(p, s.replace(warps_k=4), H100, registers=96)
    # FFMA per warp and tile: 4*8*16 rows -> 4*8*4; the copies are shared by 4x the threads
    assert one.issue_cycles - four.issue_cycles > 3 * 4 * 8 * 4
    assert one.time_us < four.time_us < 1.2 * one.time_us


def test_model_counts_by_hand():
    """Schedule() on 4096^3 8:32 x32: 8 kept rows per K tile, 8x8 thread tile, one look-up per row."""
    p = Problem(4096, 4096, 4096, Pattern(8, 32, 32))
    pr = model.predict(p, Schedule(), H100, registers=124)
    # issue per warp and tile: FFMA 8*64 + LDS 8*(2 A + 2 B) + 8/4 index vectors (byte offsets, four kept
    # rows per load) + IADD 8 + 1.5 * (16 A + 1 B + 1 index copies) + 30
    assert pr.issue_cycles == 512 + 32 + 2 + 8 + 1.5 * 18 + 30
    # L1: 8 * (8 A regs / 2 + 8 B regs / 2 + 1) + 4 * (16 + 1) + 1
    assert pr.l1_cycles == 8 * 9 + 4 * 17 + 1
    # 124 registers -> 128 allocated x 256 threads: 2 blocks per SM; 1024 blocks over 264 slots: 4 waves
    assert pr.blocks_per_sm == 2 and pr.waves == 4
    w = 8 * 2 / 4                                   # warps per scheduler
    tile = 0.722 * pr.issue_cycles * 8 / 4 / (w / (w + 1.866)) + 0.389 * pr.l1_cycles * 8 + 270 / 2
    assert pr.sm_us == pytest.approx(4 * 2 * 128 * tile / 1.98e9 * 1e6)
    # L2 bytes: per tile A 128x32 floats, B 8x128 floats, a 128-byte index chunk, 32x32 blocks x 128 tiles, + C
    assert pr.l2_bytes == 32 * 32 * 128 * (128 * 32 * 4 + 8 * 128 * 4 + 128) + 4096 * 4096 * 4
    assert pr.time_us == pytest.approx(max(pr.sm_us, pr.l2_us, pr.dram_us) + 3.0)


def test_model_charges_a_partial_last_wave_its_own_blocks():
    """An SM takes the next block when one ends: 1280 blocks on 132 SMs x 8 slots cost the busiest
    SM's 10 blocks, 10/8 of one full wave, not two whole waves (16)."""
    s = Schedule(block_m=128, block_n=32, warp_m=64, warp_n=32, thread_m=8, thread_n=8, k_windows=2, stages=2,
                 a_load="rows")                                             # 16 listed A rows: 8 blocks per SM
    p = Problem(1024, 5120, 5120, Pattern(8, 32, 32), a_major="col")        # 8 x 160 = 1280 blocks
    pr = model.predict(p, s, H100, registers=120, a_rows=16)
    assert pr.blocks_per_sm == 8 and pr.waves == 2
    full = Problem(1024, 132 * 32, 5120, Pattern(8, 32, 32), a_major="col")      # 8 x 132 = 1056 blocks: 8 per SM
    pf = model.predict(full, s, H100, registers=120, a_rows=16)
    assert pf.waves == 1
    assert pr.sm_us == pytest.approx(pf.sm_us * 10 / 8)


def test_model_charges_each_a_strategy_its_gather_conflicts():
    """ldmatrix gathers from "rows" lists cost fewer shared-memory passes than from "window" tiles,
    because prepare colours the lists (ir.operands._colour_rows); a list it cannot colour (a shared
    A row size that breaks position = bank group mod 8) is charged as a window."""
    from nmgen.ir.operands import colours_rows
    p = Problem(256, 1024, 1024, Pattern(16, 32, 32), "bf16", "col")
    rows = Schedule(thread_m=0, thread_n=0, a_pad=8, block_m=64, block_n=128, warp_m=64, warp_n=32, a_load="rows")
    plain = rows.replace(a_pad=0)            # 128-byte rows: every list position in one bank group
    assert colours_rows(p, rows) and not colours_rows(p, plain)
    assert not colours_rows(p, rows.replace(a_load="window"))
    assert not colours_rows(Problem(256, 1024, 1024, Pattern(16, 32, 32), "tf32", "col"), rows)   # scalar loads
    l1 = {name: model.predict(p, s, H100, a_rows=32).l1_cycles for name, s in (("rows", rows), ("plain", plain))}
    per_phase = model.GATHER_CONFLICTS
    assert l1["plain"] > l1["rows"] and per_phase["window"] > per_phase["rows"]


def test_model_decode_is_memory_bound():
    """M=1: reading the compressed weights dominates; DRAM bytes = A + B values + index + C."""
    p = Problem(1, 28672, 8192, Pattern(4, 32, 32))
    s = Schedule(block_m=1, block_n=256, warp_m=1, warp_n=128, thread_m=1, thread_n=4, k_windows=4, split_k=4)
    pr = model.predict(p, s, H100)
    b_values = 8192 // 8 * 28672 * 4
    assert pr.bound == "DRAM"
    assert b_values < pr.dram_bytes < 1.05 * b_values + 3 * 28672 * 4 + 8192 * 4 + 28672 * 4 * 3


def test_model_prefers_occupancy_and_fewer_copies():
    p = Problem(4096, 4096, 4096, Pattern(4, 32, 32))
    two = model.predict(p, Schedule(k_windows=2, stages=2), H100, registers=121)
    one = model.predict(p, Schedule(k_windows=2, stages=4), H100, registers=121)
    assert two.blocks_per_sm == 2 and one.blocks_per_sm == 1 and two.time_us < one.time_us
    mk = model.predict(p, Schedule(k_windows=2, a_smem="mk"), H100, registers=121)
    km = model.predict(p, Schedule(k_windows=2), H100, registers=121)
    assert mk.l1_cycles < km.l1_cycles


# ---- the tuner, with fakes in place of the GPU --------------------------------------------------------
SMALL = Problem(64, 256, 256, Pattern(8, 32, 32))


def fake_compile(problem_dict, schedule_json, arch, a_rows):
    return "// ptx", None, {"registers": 64, "spill_stores": 0, "spill_loads": 0, "stack_frame": 0,
                            "shared_static": 0, "barriers": 1}


class FakeGPU:
    """Times from the model (x1.1), wrong results for schedules with 3 stages, a kill after `kill_after`."""

    def __init__(self, tuner, kill_after=None):
        self.tuner, self.kill_after, self.calls = tuner, kill_after, []

    def __call__(self, s, pred, compiled):
        if self.kill_after is not None and len(self.calls) == self.kill_after:
            raise KeyboardInterrupt
        self.calls.append(s.hash())
        rec = self.tuner.base_record(s, pred)
        if s.stages == 3:
            rec.update(status="wrong_result", error="relative error 1e-2")
            return Result(s, "wrong_result", record=rec)
        rec.update(status="ok", median_us=pred.time_us * 1.1, reps=20, warmup=5, l2="flushed")
        return Result(s, "ok", median_us=rec["median_us"], record=rec)


def make_tuner(tmp_path, **kw):
    db = TuningDB(tmp_path / "t.db")
    B = NMMatrix.from_dense(np.random.default_rng(0).standard_normal((256, 256)), SMALL.pattern, prune_first=True)
    t = Tuner(SMALL, H100.replace(driver=13000), db, B, workers=0, progress=False, compile_fn=fake_compile, **kw)
    return t, db


def test_model_topk_measures_the_models_best(tmp_path):
    t, db = make_tuner(tmp_path)
    gpu = t.measure = FakeGPU(t)
    todo, space, _ = t.plan("model-topk", topk=5)
    t.run("model-topk", topk=5, remeasure=0, refine=0)
    assert gpu.calls == [s.hash() for s, _ in todo] and len(gpu.calls) == 5
    # the best-ranked member of each of the 5 best families (schedules that differ only in what the
    # model cannot rank - stages, loop form - are one family: measuring each would measure ties)
    from nmgen.search.space import family
    firsts = {}
    for s, _ in t.ranked():
        firsts.setdefault(family(s), s.hash())
    assert gpu.calls == list(firsts.values())[:5]
    assert len({family(s) for s, _ in todo}) == 5


def test_killed_search_resumes_and_failures_are_not_retried(tmp_path):
    t, db = make_tuner(tmp_path)
    space = len(t.ranked())
    t.measure = FakeGPU(t, kill_after=7)
    with pytest.raises(KeyboardInterrupt):
        t.run("exhaustive", remeasure=0, refine=0)
    assert len(db.recorded(*t.keys)) == 7           # everything measured before the kill is kept
    gpu = t.measure = FakeGPU(t)
    t.run("exhaustive", budget=10, remeasure=0, refine=0)
    assert len(gpu.calls) == 10 and not set(gpu.calls) & set(list(db.recorded(*t.keys))[:0])
    t.run("exhaustive", remeasure=0, refine=0)
    rec = db.recorded(*t.keys)
    assert len(rec) == space                         # every schedule measured exactly once overall
    assert len(gpu.calls) == space - 7 and len(set(gpu.calls)) == len(gpu.calls)
    assert "wrong_result" in rec.values()
    again = t.measure = FakeGPU(t)
    t.run("exhaustive", remeasure=0, refine=0)
    assert again.calls == []                          # nothing left: failures are not retried
    best = db.best(*t.keys)
    assert best["status"] == "ok" and best["median_us"] == min(
        r["median_us"] for r in db.rows(t.keys[0], status="ok"))


def test_quality_numbers():
    from nmgen.search.quality import quality, spearman
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # the model's order: two depths of one family (k_windows 1), then k_windows 2 (the fastest), ...
    scheds = [Schedule(k_windows=1, stages=2), Schedule(k_windows=1, stages=3)] + [Schedule(k_windows=k) for k in
                                                                                   range(2, 10)]
    rows = [{"status": "ok", "model_us": i + 1, "median_us": t, "schedule": s.to_json()}
            for i, (s, t) in enumerate(zip(scheds, [12, 11, 10, 40, 50, 60, 70, 80, 90, 100]))]
    q = quality(rows)                      # top 10% = the model's first: 12 us against the best 10 us
    assert q["k"] == 1 and q["topk_gap"] == pytest.approx(0.2) and q["best_schedule"] == scheds[2].to_json()
    # top 20%: one schedule of each of the 2 best families (as model-topk measures), not both depths
    q = quality(rows, fraction=0.2)
    assert q["k"] == 2 and q["topk_gap"] == pytest.approx(0.0) and q["topk_schedule"] == scheds[2].to_json()


def test_recorded_top_lists_the_fastest_distinct_schedules_of_this_toolchain(tmp_path):
    from nmgen.search.choose import recorded_top
    from nmgen.toolchain import toolchain_key
    p = Problem(256, 2048, 2048, Pattern(8, 32, 32))
    db = TuningDB(tmp_path / "t.db")
    tc = toolchain_key(H100.arch, H100.driver)
    scheds = [Schedule(stages=s, k_windows=k) for s in (2, 3) for k in (1, 2)]
    for i, (s, us) in enumerate(zip(scheds, (30.0, 10.0, 20.0, 40.0))):
        db.record({"problem_key": p.key(), "device_key": H100.key(), "toolchain_key": tc, "status": "ok",
                   "schedule_hash": s.hash(), "schedule": s.to_json(), "median_us": us})
    db.record({"problem_key": p.key(), "device_key": H100.key(), "toolchain_key": "older", "status": "ok",
               "schedule_hash": "x", "schedule": Schedule(stages=4).to_json(), "median_us": 1.0})
    assert recorded_top(p, H100, db, 3) == [scheds[1], scheds[2], scheds[0]]


def test_model_topk_also_measures_the_bests_of_nearby_problems(tmp_path):
    from nmgen.search.neighbours import distance
    t, db = make_tuner(tmp_path)
    ranked = [s for s, _ in t.ranked()]
    low = ranked[-1]                                  # the model's last choice for SMALL
    far = ranked[-2]

    def rec(problem, s, us):
        db.record({"problem_key": problem.key(), "device_key": t.keys[1], "toolchain_key": t.keys[2],
                   "status": "ok", "schedule_hash": s.hash(), "schedule": s.to_json(), "median_us": us,
                   "M": problem.M, "N": problem.N, "K": problem.K, "keep_n": problem.pattern.n,
                   "window_m": problem.pattern.m, "vector": problem.pattern.vector})

    near = Problem(64, 256, 512, SMALL.pattern)                       # K twice: a neighbour
    other_pattern = Problem(64, 256, 256, Pattern(4, 32, 32))          # not comparable
    too_far = Problem(64, 256, 2048, SMALL.pattern)                    # K eight times
    col = Problem(64, 256, 256, SMALL.pattern, a_major="col")          # other A order
    assert distance(SMALL, near) == 1.0 and distance(SMALL, too_far) is None
    assert distance(SMALL, other_pattern) is None and distance(SMALL, col) is None
    rec(near, low, 5.0)
    for p in (other_pattern, too_far, col):
        rec(p, far, 1.0)
    todo, _, _ = t.plan("model-topk", topk=3)
    hashes = [s.hash() for s, _ in todo]
    from nmgen.search.tuner import best_families
    assert hashes[:3] == [s.hash() for s, _ in best_families(t.ranked(), 3)]   # the model's best first
    assert hashes[3:] == [low.hash()]                                  # then the neighbour's best only


def test_refinements_are_one_step_from_a_measured_schedule():
    from nmgen.search.refine import refinements, wave_balanced_block_n
    p = Problem(4096, 4096, 4096, Pattern(12, 32, 32), a_major="col")
    s = Schedule(block_m=64, block_n=256, warp_m=64, warp_n=32, k_windows=2, stages=2)
    got = refinements(p, s, H100, registers=127)
    assert s.replace(prefetch=1) in got                     # the other loop form, unbounded
    assert s.replace(prefetch=1, min_blocks=2) in got       # ... and held to the 2 blocks/SM of 127 registers
    # copies after the first one or two kept rows, held to the same 2 blocks/SM
    assert s.replace(refill_row=1, min_blocks=2) in got and s.replace(refill_row=2, min_blocks=2) in got
    assert s.replace(block_m=128) in got                    # 16 warps; 512 columns would pass the 256 limit
    assert s.replace(stages=3) in got                       # the next depth the space offers (none below 2)
    assert len(got) == 6 and all(problems(p, c, H100) == [] for c in got)
    # the depths next to a tensor-core schedule's, of the depths its kind is offered
    bf = Problem(4096, 4096, 4096, Pattern(16, 32, 32), "bf16", "col")
    w = Schedule(block_m=64, block_n=256, warp_m=64, warp_n=128, thread_m=0, thread_n=0, a_pad=8, k_windows=2,
                 stages=4, wgmma=1)
    assert {c.stages for c in refinements(bf, w, H100, None) if c.replace(stages=4) == w} == {3, 6}
    # a tensor-core K tile twice as deep, at the deepest depth up to the measured one that fits
    m = Schedule(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=0, thread_n=0, a_pad=8, k_windows=2,
                 stages=4, a_load="rows", prefetch=1)
    deeper = [c for c in refinements(bf, m, H100, None) if c.k_windows != m.k_windows]
    assert deeper == [m.replace(k_windows=4, stages=3)], [c.short() for c in deeper]   # 4 stages: 270 KB
    twelve = Problem(4096, 4096, 4096, Pattern(12, 32, 32), "bf16", "col")     # 8 windows of 128x256: none fits
    assert all(c.k_windows == 4 for c in refinements(twelve, m.replace(k_windows=4, stages=3), H100, None))
    # 130 registers: one block of 256 threads a SM, though shared memory would take two
    assert s.replace(min_blocks=2) in refinements(p, s, H100, registers=130)
    # from a prefetching schedule: back to the plain loop; no bound without a register count
    pf = refinements(p, s.replace(prefetch=1, min_blocks=2), H100, registers=None)
    assert pf[0] == s and s.replace(refill_row=1) in pf
    # from a refill_row schedule: the rotated loop has no refill_row; the other row count is tried
    rf = refinements(p, s.replace(refill_row=1), H100, registers=None)
    assert s.replace(prefetch=1) in rf and s.replace(refill_row=2) in rf and s.replace(refill_row=1) not in rf
    # a grid whose last wave is short: 1024x5120 in 128x256 tiles is 160 blocks for 132 SMs (two waves);
    # 128x160 is 256 blocks in the same two waves, 5/8 of the work each. 4096x4096's 512 tiles fill theirs
    mid = Problem(1024, 5120, 5120, Pattern(8, 32, 32), "bf16", "col")
    m8 = m.replace(k_windows=4, stages=3)
    assert [c.block_n for c in refinements(mid, m8, H100, registers=241) if c.block_n < 256] == [160]
    assert wave_balanced_block_n(mid, m8, H100, 1) == 160
    assert wave_balanced_block_n(Problem(4096, 4096, 4096, Pattern(8, 32, 32), "bf16", "col"), m8, H100, 1) is None


class FasterWithPrefetch(FakeGPU):
    """The fake GPU, with prefetching schedules 20% faster than the model says (registers recorded)."""

    def __call__(self, s, pred, compiled):
        r = super().__call__(s, pred, compiled)
        if r.status == "ok":
            r.record.update(registers=64, median_us=r.record["median_us"] * (0.8 if s.prefetch else 1.0))
            r.median_us = r.record["median_us"]
        return r


def test_tuner_refines_its_best_schedules(tmp_path):
    t, db = make_tuner(tmp_path)
    gpu = t.measure = FasterWithPrefetch(t)
    t.run("model-topk", topk=5, remeasure=0, refine=2)
    ranked = {s.hash() for s, _ in t.ranked()}
    extra = gpu.calls[5:]
    from nmgen.search.tuner import best_families
    assert gpu.calls[:5] == [s.hash() for s, _ in best_families(t.ranked(), 5)] and len(extra) > 2   # then refinements
    assert len(set(gpu.calls)) == len(gpu.calls)                                 # nothing measured twice
    best = Schedule.from_json(db.best(*t.keys)["schedule"])
    assert best.prefetch == 1 and best.hash() not in ranked                     # found outside the ranked space
    (tmp_path / "b").mkdir()
    t2, _ = make_tuner(tmp_path / "b")
    again = t2.measure = FasterWithPrefetch(t2)
    t2.run("model-topk", topk=5, remeasure=0, refine=2, budget=7)
    assert again.calls == gpu.calls[:7]                                         # the budget holds for refinements


# ---- dtypes: the problem key carries them; records of two dtypes never mix ----------------------------
@pytest.mark.parametrize("problem", [SMALL, Problem(5, 7, 96, Pattern(3, 32, 8), "bf16", "col", "f32"),
                                     Problem(5, 7, 96, Pattern(3, 32, 8), "tf32", "row", "bf16"),
                                     Problem(5, 7, 96, Pattern(3, 32, 8), "f16", "col")])
def test_problem_of_a_key_is_the_problem(problem):
    assert Problem.from_key(problem.key()) == problem


@pytest.mark.parametrize("key", ["64x64x64", "64x64x64:2:4:1:f32:Arow", "64x64x64:2:4:1:f32:Cf32",
                                 "64x64x64:2:4:1:fp32", "64x64x64:2:4:1:bf16:Cf32:Acol", "64x64x64: 2:4:1:f32",
                                 "64x64x64:2:4:1:f32:Acol:Cbf16:x", "64x64x64:2:4:1:bf16:Ctf32"])
def test_a_key_no_problem_writes_is_refused(key):
    from nmgen.errors import ShapeError
    with pytest.raises(ShapeError, match="is not a problem key"):
        Problem.from_key(key)


def test_neighbours_are_of_the_same_dtype():
    """A bf16 problem's neighbours are the bf16 records; the f32 record of the same shape is not one."""
    from nmgen.search.neighbours import _problem_of, neighbour_schedules
    bf16 = Problem(64, 256, 256, Pattern(8, 32, 32), "bf16")
    near_bf16 = Problem(64, 256, 512, Pattern(8, 32, 32), "bf16")
    near_f32 = Problem(64, 256, 512, Pattern(8, 32, 32))
    near_f32_out = Problem(64, 256, 512, Pattern(8, 32, 32), "bf16", c_dtype="f32")
    s_bf16, s_f32, s_out = (Schedule(thread_m=0, thread_n=0, a_pad=8, stages=st) for st in (2, 3, 4))
    records = [{"problem_key": p.key(), "schedule": s.to_json(), "median_us": 1.0}
               for p, s in ((near_bf16, s_bf16), (near_f32, s_f32), (near_f32_out, s_out))]
    assert [_problem_of(r) for r in records] == [near_bf16, near_f32, near_f32_out]
    assert neighbour_schedules(bf16, records) == [s_bf16]
    assert neighbour_schedules(SMALL, records) == [s_f32]


@pytest.fixture
def fake_device(monkeypatch):
    """The tuner's GPU path on the fake H100 (tests/fake_gpu.py: kernels run in the interpreter);
    timing is one run, 1 ms."""
    import fake_gpu
    import nmgen.api as api
    from nmgen.runtime import timing
    mem = fake_gpu.install(monkeypatch)
    init = api.Kernel.__init__

    def registered(self, *a, **kw):            # the fake GPU loads the kernels it knows: the tuner's too
        init(self, *a, **kw)
        api._kernels[("tuner", id(self))] = self
    monkeypatch.setattr(api.Kernel, "__init__", registered)

    def once(run, stream=0, warmup=10, reps=30, flush=None, batch=None):
        run()
        return timing.Timing(1.0, 1.0, 1.0, 1.0, reps, warmup, "flushed")
    monkeypatch.setattr(timing, "time_gpu", once)
    monkeypatch.setattr(timing, "L2Flush", lambda l2_bytes, stream=0: (lambda: None))
    return mem


@pytest.mark.parametrize("dtype,c_dtype,a_major", [("bf16", None, "col"), ("f16", "f32", "row"), ("tf32", None, "row"),
                                                   ("bf16", "f16", "row"), ("f32", None, "col")])
def test_tuner_measures_and_checks_in_the_problems_dtype(tmp_path, fake_device, dtype, c_dtype, a_major):
    """Inputs of the dtype (A in the kernel's layout: odd 16-bit rows padded), C of the C dtype,
    every candidate checked against the tensor-core bound, recorded under the dtype's key."""
    from nmgen.ir.dtypes import DTYPES
    p = Problem(17, 48, 96, Pattern(4, 32, 16), dtype, a_major, c_dtype)
    db = TuningDB(tmp_path / "t.db")
    t = Tuner(p, H100.replace(driver=13000), db, workers=0, progress=False, rng=np.random.default_rng(1))
    todo, _, _ = t.plan("model-topk", topk=2)      # 2 families, and each kernel kind's best they lack
    results = t.run("model-topk", topk=2, remeasure=1, refine=0)
    assert len(results) == len(todo) >= 2 and all(r.status == "ok" for r in results), [r.error for r in results]
    store = "f32" if dtype == "tf32" else dtype
    assert t.B.dtype == store and t.A.dtype == DTYPES[store].storage
    assert t.c_dev.nbytes == 17 * 48 * DTYPES[p.c_dtype].itemsize
    assert {r["problem_key"] for r in db.rows()} == {p.key()}
    assert all(Schedule.from_json(r["schedule"]).mma == (dtype != "f32") for r in db.rows())


def test_tuner_catches_a_wrong_bf16_result(tmp_path, fake_device, monkeypatch):
    import fake_gpu
    real = fake_gpu.interpret

    def off_by_one_product(ir, arrays):
        C = real(ir, arrays)
        C[3, 5] += 0.5                       # about one product of normal values: far above the bound
        return C
    monkeypatch.setattr(fake_gpu, "interpret", off_by_one_product)
    p = Problem(17, 48, 96, Pattern(4, 32, 16), "bf16")
    t = Tuner(p, H100.replace(driver=13000), TuningDB(tmp_path / "t.db"), workers=0, progress=False)
    results = t.run("model-topk", topk=1, remeasure=0, refine=0)
    # every candidate (one family, and each kernel kind's best it lacks) is caught
    assert {r.status for r in results} == {"wrong_result"} and all("(3, 5)" in r.error for r in results)


def test_model_topk_measures_each_kernel_kinds_best(tmp_path):
    """A bf16 problem on Hopper: past the model's best families, model-topk measures the best-predicted
    schedule of each kernel kind (mma.sync, wgmma with A in registers, wgmma with A from shared
    memory) that they lack, so a bias of the model between kinds cannot hide a kind."""
    from nmgen.search.model import pipeline_kind
    from nmgen.search.tuner import best_families, kind_leaders
    p = Problem(4096, 4096, 4096, Pattern(4, 32, 32), "bf16", "col")
    B = NMMatrix.from_dense(np.random.default_rng(0).standard_normal((4096, 256)).astype(np.float32).repeat(16, 1),
                            p.pattern, prune_first=True)
    t = Tuner(p, H100.replace(driver=13000), TuningDB(tmp_path / "t.db"), B, workers=0, progress=False,
              compile_fn=fake_compile)
    ranked = t.ranked()
    top = best_families(ranked, 1)
    todo, _, _ = t.plan("model-topk", topk=1)
    leaders = todo[1:]
    assert [s.hash() for s, _ in todo[:1]] == [s.hash() for s, _ in top]
    assert sorted(pipeline_kind(s) for s, _ in todo) == [0, 1, 2]      # one of each kind
    for s, _ in leaders:          # each the best-ranked of its kind
        assert s == next(x for x, _ in ranked if pipeline_kind(x) == pipeline_kind(s))
    assert kind_leaders(ranked, ranked) == []                          # nothing to add to a list with all kinds


def test_records_of_two_dtypes_never_mix(tmp_path):
    """One shape tuned as f32 and as bf16 into one database: two problems, each with its own
    records, plans and best; neither skips a schedule because the other measured it."""
    from nmgen.search.choose import recorded_best, recorded_top
    db = TuningDB(tmp_path / "t.db")
    dev = H100.replace(driver=13000)
    B = NMMatrix.from_dense(np.random.default_rng(0).standard_normal((256, 256)), SMALL.pattern, prune_first=True)
    bf16 = Problem(SMALL.M, SMALL.N, SMALL.K, SMALL.pattern, "bf16")
    tuners = {}
    for p in (SMALL, bf16, Problem(SMALL.M, SMALL.N, SMALL.K, SMALL.pattern, "bf16", c_dtype="f32")):
        t = Tuner(p, dev, db, B, workers=0, progress=False, compile_fn=fake_compile)
        t.measure = FakeGPU(t)
        before = t.plan("model-topk", topk=4)[0]
        t.run("model-topk", topk=4, remeasure=0, refine=0)
        assert len(before) >= 4 and [s.hash() for s, _ in before] == t.measure.calls
        tuners[p] = t
    assert len({t.keys[0] for t in tuners.values()}) == 3
    for p, t in tuners.items():
        rows = db.rows(p.key())
        assert len(rows) == len(t.measure.calls) and {r["problem_key"] for r in rows} == {p.key()}
        best = recorded_best(p, dev, db)
        assert best is not None and best.mma == (p.dtype == "bf16") and best in recorded_top(p, dev, db, 4)
    assert tuners[bf16].B.dtype == "bf16" and tuners[SMALL].B.dtype == "f32"


@pytest.mark.parametrize("shape,pattern,dtype", [((4096, 4096, 4096), (16, 32, 32), "f32"),
                                                 ((17, 100, 64), (2, 4, 1), "f32"),
                                                 ((256, 2048, 2048), (8, 32, 32), "bf16"),
                                                 ((33, 520, 96), (4, 8, 8), "f16"),
                                                 ((128, 1024, 512), (2, 4, 8), "tf32")])
def test_sampled_schedules_are_schedules_of_the_space(shape, pattern, dtype):
    # The fuzzer draws with sample_space; every draw must be one enumerate_space would list, and
    # warpgroup tiles among the draws where the space has them.
    from nmgen.search.space import sample_space
    p = Problem(*shape, Pattern(*pattern), dtype=dtype)
    listed = enumerate_space(p, H100)
    space = {s.hash() for s in listed}
    rng = np.random.default_rng(1)
    draws = [sample_space(p, H100, rng) for _ in range(60)]
    assert all(s is not None and s.hash() in space for s in draws)
    assert any(s.wgmma for s in draws) == any(s.wgmma for s in listed)
    assert len({s.hash() for s in draws}) > 20


@pytest.mark.parametrize("dtype,forms", [("bf16", {0, 1}), ("f16", {0, 1}), ("tf32", {0}), ("f32", {0})])
def test_space_offers_the_loop_forms_the_model_ranks(dtype, forms):
    # 16-bit mma.sync schedules come in both loop forms (the fitted model's PIPELINE_FACTOR tells them
    # apart); elsewhere the model would tie them, so the refinements try the rotated loop instead.
    from nmgen.search.space import sample_space
    p = Problem(512, 1024, 1024, Pattern(8, 32, 32), dtype=dtype)
    space = enumerate_space(p, H100)
    assert {s.prefetch for s in space if not s.wgmma} == forms
    assert all(s.prefetch == 0 for s in space if s.wgmma)
    rng = np.random.default_rng(3)
    assert {sample_space(p, H100, rng).prefetch for _ in range(80)} == forms


def test_model_ranks_pipeline_depth_and_loop_form_of_16_bit_mma():
    # The fitted factors (search.model.PIPELINE_FACTOR): on a tile whose blocks per SM do not change
    # with depth, the rotated loop at 3-4 stages is predicted fastest, as measured on the H200; a depth
    # the table does not list takes its nearest; FFMA and tf32 predictions do not see the loop form.
    p = Problem(4096, 4096, 4096, Pattern(16, 32, 32), dtype="bf16")
    base = Schedule(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=0, thread_n=0, k_windows=2,
                    a_load="rows", a_pad=8)
    t = {(st, pf): model.predict(p, base.replace(stages=st, prefetch=pf), H100, 200).time_us
         for st in (2, 3, 4) for pf in (0, 1)}
    assert min(t, key=t.get) == (4, 1) and t[(2, 1)] > t[(2, 0)] > t[(3, 0)] > t[(3, 1)]
    assert model.predict(p, base.replace(stages=4, prefetch=1), H100, 200).blocks_per_sm == 1
    assert model.pipeline_factor(base.replace(stages=6, prefetch=1)) == model.PIPELINE_FACTOR[(0, 4, 1)]
    assert model.pipeline_factor(base.replace(stages=8, wgmma=1)) == model.PIPELINE_FACTOR[(1, 6, 0)]
    # wgmma reading A from shared memory is its own kind (one factor, every depth)
    smem = base.replace(wgmma=1, wgmma_a_smem=1, stages=5)
    assert model.pipeline_kind(smem) == 2 and model.pipeline_factor(smem) == model.PIPELINE_FACTOR[(2, 4, 0)] < 1
    for dtype, tile in (("f32", dict(thread_m=8, thread_n=8, warp_m=64, warp_n=32)), ("tf32", {})):
        q = Problem(4096, 4096, 4096, Pattern(16, 32, 32), dtype=dtype)
        s = base.replace(**tile, stages=3)
        assert model.predict(q, s, H100, 128).time_us == model.predict(q, s.replace(prefetch=1), H100, 128).time_us


def test_the_model_picks_a_rows_schedule_without_weights_where_nothing_else_fits():
    """3:4096 with V = 16: a whole window a K tile is 1.1 MB of shared memory, so only "rows" runs;
    without B (ptx, compile) the model ranks those by their bound instead of giving up."""
    from nmgen.search.choose import model_best
    p = Problem(17, 100, 4096, Pattern(3, 4096, 16), "f32", "row")
    s = model_best(p, for_arch("sm_90"))
    assert s.a_load == "rows"
    assert nmgen.compile("17x100x4096", pattern="3:4096", vector=16, arch="sm_90").schedule.a_load == "rows"


def test_windows_of_thousands_of_rows_still_get_a_schedule():
    """A row-major 16-bit A is copied whole windows at a time: 3:2048 fits only one window of 16 rows
    a stage (the space's and the default's last resort); 3:4096 fits nothing, and says to store A
    column-major, which copies only the kept rows."""
    from nmgen.errors import ScheduleError
    from nmgen.search.space import k_windows_choices
    row = Problem(17, 100, 4096, Pattern(3, 2048, 32), "bf16", "row")
    assert k_windows_choices(row) == [1, 2]
    assert nmgen.compile(row, arch="sm_90").schedule.k_windows == 1
    with pytest.raises(ScheduleError, match=r"store A column-major \(--a-major col"):
        nmgen.compile(Problem(17, 100, 4096, Pattern(3, 4096, 32), "bf16", "row"), arch="sm_90")
    assert nmgen.compile(Problem(17, 100, 4096, Pattern(3, 4096, 32), "bf16", "col"), arch="sm_90")
