"""The fuzzer's CPU tier: random problems and schedules through the interpreter (a fresh seed each
run, printed), and the fuzzer's own mechanics."""
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest

from nmgen import Pattern, fuzz
from nmgen.ir.device import for_arch
from nmgen.ir.validate import problems

H100 = for_arch("sm_90")


def test_interpreted_fuzz_has_no_failures(tmp_path):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"fuzz seed {seed}")
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, "-m", "nmgen.cli", "fuzz", "--interpret", "--cases", "150", "--seed", str(seed),
                        "--quiet", "--json", str(out)], capture_output=True, text=True)
    s = json.loads(out.read_text())
    assert r.returncode == 0 and s["failures"] == 0, r.stdout + r.stderr
    assert s["cases"] >= 140
    kinds = s["counts"]
    for key, values in (("split_k", "True"), ("sliced_k", "True"), ("a_load", "rows"), ("prefetch", "True"),
                        ("refill_row", "True"), ("a_major", "col"), ("empty_batch", "True"), ("dtype", "f32"),
                        ("dtype", "bf16"), ("dtype", "tf32"), ("dtype", "f16"), ("out_dtype", "f32"),
                        ("out_dtype", "bf16"), ("a_load", "gather")):
        assert kinds[key].get(values, 0) > 0, (key, kinds)


def test_drawn_cases_are_valid_and_varied():
    rng = np.random.default_rng(0)
    cases = [fuzz.draw_case(rng, H100, fuzz.GPU_LIMITS, ("numpy", "torch"), ("f32",)) for _ in range(300)]
    for c in cases:
        assert c.M * c.N * c.K <= fuzz.GPU_LIMITS.macs and c.K % c.pattern.m == 0
        if c.schedule is not None:
            assert problems(c.problem, c.schedule, H100) == []
    assert any(c.M == 0 for c in cases) and any(c.M == 1 for c in cases)
    assert any(c.pattern.m == 64 for c in cases) and any(c.pattern.vector == 128 for c in cases)
    assert any(c.K // c.pattern.m % 2 == 1 and c.K // c.pattern.m > 1 for c in cases)
    assert any(c.N % 8 for c in cases) and {c.array for c in cases} == {"numpy", "torch"}
    assert any(c.schedule is None for c in cases)
    assert any(c.schedule and c.schedule.split_k > 1 and fuzz_uneven(c) for c in cases)


def test_drawn_dtypes_are_valid_and_varied():
    """Every dtype is drawn; the tensor-core ones only with V a multiple of 8 and mma schedules."""
    rng = np.random.default_rng(0)
    cases = [fuzz.draw_case(rng, H100, fuzz.GPU_LIMITS, ("numpy", "torch")) for _ in range(80)]
    for c in cases:
        if c.schedule is not None:
            assert problems(c.problem, c.schedule, H100) == []
    assert {c.dtype for c in cases} == {"f32", "tf32", "bf16", "f16"}
    assert all(c.pattern.vector % 8 == 0 and (c.schedule is None or c.schedule.mma) for c in cases if c.dtype != "f32")
    assert any(c.c_dtype for c in cases) and any(c.dtype == "f32" and c.pattern.vector % 8 for c in cases)


def test_without_f32_every_case_takes_a_tensor_core_vector():
    rng = np.random.default_rng(1)
    cases = [fuzz.draw_case(rng, H100, fuzz.CPU_LIMITS, dtypes=("bf16", "tf32")) for _ in range(100)]
    assert {c.dtype for c in cases} == {"bf16", "tf32"} and all(c.pattern.vector % 8 == 0 for c in cases)
    assert {c.pattern.vector for c in cases} <= set(fuzz.MMA_VECTORS)


def test_a_case_round_trips_through_its_dict():
    rng = np.random.default_rng(2)
    for c in (fuzz.draw_case(rng, H100, fuzz.CPU_LIMITS) for _ in range(40)):
        assert fuzz.case_from_dict(json.loads(json.dumps(c.to_dict()))) == c


def fuzz_uneven(c):
    from nmgen.ir.operands import geometry
    return geometry(c.problem, c.schedule).T % c.schedule.split_k != 0


def test_a_failure_is_reported_with_a_command_that_replays_it(monkeypatch):
    """A deliberately broken interpreter result fails, and its command names the case's schedule and seed."""
    import nmgen.checking as checking
    real = checking.run_interpreter
    monkeypatch.setattr(checking, "run_interpreter", lambda *a: real(*a) * np.float32(1.001))
    seen = []
    outs = fuzz.fuzz(5, 3, H100, interpret=True, progress=False, on_failure=seen.append)
    failed = [o for o in outs if not o.ok and o.case.M]
    assert failed and len(seen) == len([o for o in outs if not o.ok])
    line = failed[0].case.command(interpret=True)
    args = shlex.split(line)
    assert args[:2] == ["nmgen", "check"] and "--seed" in args and "--interpret" in args
    assert str(failed[0].case.seed) in args and "--dtype" in args


def test_a_time_limit_or_ctrl_c_stops_with_the_cases_run_so_far(monkeypatch):
    """Both stop before the drawn count; what ran is a prefix of the same seed's full run."""
    import nmgen.checking as checking
    full = fuzz.fuzz(6, 4, H100, interpret=True, progress=False)
    assert full.stopped is None
    timed_out = fuzz.fuzz(6, 4, H100, interpret=True, progress=False, time_limit_s=1e-9)
    assert timed_out == [] and timed_out.stopped == "the time limit"
    real, calls = checking.run_interpreter, []

    def interrupted_on_the_third(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(checking, "run_interpreter", interrupted_on_the_third)
    part = fuzz.fuzz(6, 4, H100, interpret=True, progress=False)
    assert 0 < len(part) < len(full) and [o.case for o in part] == [o.case for o in full[:len(part)]]
    assert part.stopped == "Ctrl-C"


def test_cases_too_large_for_the_interpreter_are_reported_as_skipped_not_stopped(monkeypatch, tmp_path, capsys):
    from nmgen.cli import main
    real, calls = fuzz._fits_interpreter, []

    def first_too_large(case):
        calls.append(case)
        return len(calls) > 1 and real(case)
    monkeypatch.setattr(fuzz, "_fits_interpreter", first_too_large)
    out = tmp_path / "fuzz.json"
    assert main(["fuzz", "--interpret", "--cases", "3", "--seed", "4", "--quiet", "--json", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == "2 cases on CPU interpreter (seed 4): 0 failed; 1 drawn case too large for the interpreter was skipped"
    s = json.loads(out.read_text())
    assert (s["drawn"], s["cases"], s["skipped"], s["stopped"]) == (3, 2, 1, None)


def test_the_summary_line_says_what_stopped_the_run():
    from nmgen.cli.fuzz import summary_line
    s = {"cases": 50, "where": "CPU interpreter", "seed": 0, "failures": 0, "drawn": 200, "skipped": 2,
         "stopped": "the time limit"}
    assert summary_line(s) == ("50 cases on CPU interpreter (seed 0): 0 failed; 2 drawn cases too large for the "
                               "interpreter were skipped; stopped by the time limit after 50 of 198")


@pytest.fixture
def gpu(monkeypatch):
    """The API on a fake H100 (tests/fake_gpu.py): launches run the kernel IR in the interpreter."""
    import fake_gpu
    return fake_gpu.install(monkeypatch)


def test_gpu_cases_run_spmm_in_their_dtype(gpu, monkeypatch):
    """The GPU path of run_case (on the fake GPU): numpy A and B stored in the case's dtype, C of
    its output dtype, tf32 with allow_tf32; the empty batch gives an empty C of A's dtype."""
    import nmgen.api as api
    from nmgen.ir.dtypes import DTYPES
    seen = []
    real = api.spmm

    def spy(A, B, out=None, **kw):
        seen.append((str(A.dtype), B.dtype, None if out is None else str(out.dtype), kw.get("allow_tf32", False)))
        return real(A, B, out=out, **kw)
    monkeypatch.setattr(api, "spmm", spy)
    rng = np.random.default_rng(5)
    cases = [c for c in (fuzz.draw_case(rng, H100, fuzz.CPU_LIMITS, dtypes=(d,)) for d in ("bf16", "f16", "tf32")
                         for _ in range(12)) if c.M == 0 or fuzz._fits_interpreter(c)]
    cases.append(fuzz.Case(0, 40, 64, Pattern(2, 32, 8), "col", None, 3, dtype="bf16"))
    for c in cases:
        seen.clear()
        o = fuzz.run_case(c, H100, interpret=False)
        assert o.ok, (c, o.detail)
        store = "f32" if c.dtype == "tf32" else c.dtype
        want = (str(DTYPES[store].storage), store, None if c.M == 0 else str(DTYPES[c.out_dtype].storage),
                c.dtype == "tf32")
        assert seen == [want], (c, seen)
    assert {c.dtype for c in cases} == {"bf16", "f16", "tf32"} and any(c.c_dtype for c in cases)


def test_an_empty_batch_is_drawn_when_asked_and_every_run_has_one():
    # by chance alone (3% of cases) a 150-case run missed the empty batch in 13 of 1000 seeds
    rng = np.random.default_rng(1)
    cases = [fuzz.draw_case(rng, H100, fuzz.CPU_LIMITS, empty_batch=True) for _ in range(20)]
    assert all(c.M == 0 and c.schedule is None for c in cases)
    assert {c.K % c.pattern.m for c in cases} == {0} and len({c.N for c in cases}) > 1
    s = fuzz.summary(fuzz.fuzz(fuzz.EMPTY_EVERY, 2, H100, interpret=True, progress=False), 2, H100, True)
    assert s["counts"]["empty_batch"].get("True", 0) >= 1
