import json

import pytest

from nmgen.ir import Pattern, Problem, Schedule, ScheduleError, ShapeError, for_arch, problems, validate
from nmgen.ir.expr import Var, evaluate, split_offset
from nmgen.ir.validate import shared_bytes


def test_schedule_json_round_trip_and_hash():
    s = Schedule(block_m=64, split_k=3, a_load="rows")
    assert Schedule.from_json(s.to_json()) == s
    assert Schedule.from_dict(json.loads(s.to_json())).hash() == s.hash()
    assert len(s.hash()) == 16 and s.hash() != s.replace(split_k=4).hash()
    assert Schedule().hash() == Schedule().hash()


@pytest.mark.parametrize("text,match", [
    ('{"block_m": 64, "nonsense": 1}', "unknown schedule field"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be an object"),
    ('{"a_load": "everything"}', 'a_load="everything" must be one of'),
    ('{"stages": "3"}', r'stages="3" \(string\) must be an integer'),
    ('{"stages": true}', r"stages=true \(boolean\) must be an integer"),
    ('{"split_k": 1, "split_k": 2}', r"schedule field 'split_k' is given twice \(1 and 2\); give it once"),
])
def test_schedule_json_errors(text, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_json(text)


@pytest.mark.parametrize("field,value,match", [
    ("split_k", 0, r"split_k=0 is out of range: it must be at least 1 \(1: no split\)"),
    ("raster", 0, r"raster=0 is out of range: it must be at least 1 \(1: plain order\)"),
    ("a_pad", -1, r"a_pad=-1 is out of range: it must be at least 0 \(0: no padding\)"),
    ("block_m", 0, r"block_m=0 is out of range: it must be at least 1$"),
])
def test_out_of_range_schedule_fields_state_the_range(field, value, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule(**{field: value})


@pytest.mark.parametrize("dtype,how", [("f32", "f32 uses FFMA on the CUDA cores"), ("tf32", "tf32 uses mma.sync")])
def test_wgmma_refusal_names_what_the_dtype_runs_on(dtype, how):
    why = problems(Problem(64, 64, 64, Pattern(2, 4, 8), dtype), Schedule(wgmma=1), for_arch("sm_90"))
    assert f"wgmma runs bf16 and f16 here; {how} (wgmma=0)" in why


def test_problem_errors():
    with pytest.raises(ShapeError, match="pad K to 128"):
        Problem(4, 4, 100, Pattern(8, 32, 32))
    with pytest.raises(ShapeError, match="M=0 must be a positive integer"):
        Problem(0, 4, 32, Pattern(8, 32, 32))
    assert Problem(4, 4, 64, Pattern(8, 32, 32)).kept_rows == 16


def test_validity_explains_every_reason():
    p = Problem(4096, 4096, 4096, Pattern(8, 32, 32))
    h100 = for_arch("sm_90")
    why = problems(p, Schedule(warp_m=48), h100)
    assert any("does not divide block tile" in w for w in why)
    why = problems(p, Schedule(thread_m=4), h100)
    assert any("threads per warp, not 32" in w for w in why)
    why = problems(p, Schedule(stages=8, k_windows=8), h100)
    assert any("KB of shared memory per block" in w and "227.0 KB" in w for w in why)
    why = problems(Problem(64, 64, 64, Pattern(8, 32, 32)), Schedule(split_k=3), h100)
    assert any("split_k=3 exceeds the 2 K tiles" in w for w in why)
    why = problems(p, Schedule(a_pad=2), h100)
    assert any("16-byte aligned" in w for w in why)
    with pytest.raises(ScheduleError, match="cannot run"):
        validate(p, Schedule(thread_m=16, thread_n=16, warp_m=128, warp_n=64), h100)
    assert problems(p, Schedule(), h100) == []


def test_shared_memory_accounting():
    p = Problem(4096, 4096, 4096, Pattern(8, 32, 32))
    # 3 stages x (32 x 132 A + 8 x 128 B) floats + 3 index chunks of 8 rows x 4 units x 4-byte offsets
    s = Schedule()
    assert shared_bytes(p, s) == 3 * 32 * 132 * 4 + 3 * 8 * 128 * 4 + 3 * 8 * 4 * 4


def test_expressions_fold_and_split():
    t = Var("tid")
    assert (t * 1 + 0) is t
    e = (t // 32) * 4 + 8 * 3 + (t % 8)
    v, c = split_offset(e)
    assert c == 24 and evaluate(v, {"tid": 77}) + c == evaluate(e, {"tid": 77})
    assert evaluate((t - 5) * 2, {"tid": 9}) == 8


def test_min_blocks_beyond_what_an_sm_holds_is_refused():
    """A register bound for more resident blocks than an SM can hold is meaningless (ptxas takes
    .minnctapersm 1000 without a word): validation names the most that fit."""
    from nmgen.ir import ScheduleError, for_arch, validate
    from nmgen.ir.problem import Pattern, Problem
    from nmgen.ir.schedule import Schedule
    p = Problem(256, 256, 256, Pattern(2, 4, 1))
    s = Schedule(block_m=64, block_n=64, warp_m=32, warp_n=64, thread_m=8, thread_n=8, k_windows=4)
    h100 = for_arch("sm_90")
    most = min(h100.max_blocks_per_sm, h100.max_threads_per_sm // s.threads)
    validate(p, s.replace(min_blocks=most), h100)
    validate(p, s.replace(min_blocks=0), h100)                  # 0: no bound
    with pytest.raises(ScheduleError, match=f"min_blocks=1000 asks for .* holds at most {most}: use min_blocks <= "
                                            f"{most} \\(0 for no bound\\)"):
        validate(p, s.replace(min_blocks=1000), h100)


def test_split_k_beyond_the_k_tiles_names_the_smaller_k_tile_that_allows_it():
    from nmgen.ir import ScheduleError, for_arch, validate
    from nmgen.ir.problem import Pattern, Problem
    from nmgen.ir.schedule import Schedule
    p = Problem(33, 72, 96, Pattern(5, 32, 24), "bf16")
    s = Schedule(block_m=64, block_n=32, warp_m=64, warp_n=8, thread_m=0, thread_n=0, k_windows=3, a_pad=8,
                 a_smem="mk", split_k=3)
    with pytest.raises(ScheduleError, match="use split_k <= 1, or k_windows=1 for 3 K tiles"):
        validate(p, s, for_arch("sm_90"))
    validate(p, s.replace(k_windows=1), for_arch("sm_90"))


def test_a_pipeline_of_fewer_than_two_stages_is_refused_as_the_space_would():
    from nmgen.ir.schedule import Schedule
    for stages in (0, 1):
        with pytest.raises(ScheduleError, match=f"stages={stages} is out of range: it must be at least 2"):
            Schedule(stages=stages)


@pytest.mark.parametrize("c_dtype,match", [
    ("f64", r"output dtype 'f64' is not one of f32, bf16, f16: C holds"),
    ("tf32", r"\(tf32 is a way of computing from float32 inputs; its C is f32\)")])
def test_an_output_dtype_error_names_the_output_dtypes(c_dtype, match):
    """Not the input dtypes (tf32 among them): C holds float32, bfloat16 or float16."""
    with pytest.raises(ShapeError, match=match):
        Problem(16, 64, 64, Pattern(8, 32, 32), "bf16", "col", c_dtype)
    assert Problem(16, 64, 64, Pattern(8, 32, 32), "tf32", "col").c_dtype == "f32"
    assert Problem(16, 64, 64, Pattern(8, 32, 32), "bf16", "col", "float16").c_dtype == "f16"
